"""Local run and test tooling: the Functions host emulation and the stand-ins. Never deployed."""
