"""Attacking processes for the security tests (never part of the package)."""
