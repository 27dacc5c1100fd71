"""Calling ServiceNow through a connection: automations never hold its credentials."""
