"""roomcast for Python."""
