"""Unattended renewal of connection credentials and the notices it sends."""
