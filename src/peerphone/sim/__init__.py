"""Deterministic discrete-event simulator running the real overlay cores on virtual time."""
