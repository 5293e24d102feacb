"""What an attacker on the ring does first: grind node keys until an id lands where it wants."""

from __future__ import annotations

import os

from peerphone.identity import KeyPair

MAX_GRIND_TRIES = 100_000


def grind_after(key: bytes, positions: list[bytes]) -> KeyPair:
    """A node key whose id lies in [key, the first of `positions` at or after key): by id,
    the first replica of `key`."""
    later = sorted(p for p in positions if p >= key)
    high = later[0] if later else None
    for i in range(MAX_GRIND_TRIES):
        keys = KeyPair.from_seed(i.to_bytes(4, "big") + os.urandom(28))
        if keys.node_id >= key and (high is None or keys.node_id < high):
            return keys
    raise AssertionError(f"no key landed after {key.hex()[:8]} in {MAX_GRIND_TRIES} tries")
