"""Local stand-ins for the services the app talks to, speaking their real wire formats."""
