"""Triggers: new and changed ServiceNow records become signed events for the Automate365 engine."""
