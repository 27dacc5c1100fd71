"""ServiceNow connections: the HTTP API, its validation, storage and credential checks."""
