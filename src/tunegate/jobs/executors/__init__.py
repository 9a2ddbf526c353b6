"""Executors beside the built-in local one, registered by name in tunegate.plugins (ray: the Ray cluster)."""
