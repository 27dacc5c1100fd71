"""Talking to ServiceNow instances: the client, instance URLs and safe outbound HTTP."""
