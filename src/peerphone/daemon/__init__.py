"""The node daemon: configuration, data directory, service and control API."""
