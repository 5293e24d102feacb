"""Ed25519 identities: key pairs, node ids and a caching signature verifier."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Hashable
from typing import Any, NewType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

NodeId = NewType("NodeId", bytes)
"""sha256 of a node's raw Ed25519 public key (32 bytes)."""

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def node_id_of(public_key: bytes) -> NodeId:
    """The NodeId that a raw 32-byte Ed25519 public key stands for."""
    return NodeId(hashlib.sha256(public_key).digest())


def short(node: bytes) -> str:
    """A short, stable printable form of an id or key (for logs and tables)."""
    return node[:4].hex()


class KeyPair:
    """An Ed25519 signing key with its raw public key and NodeId."""

    __slots__ = ("_private", "node_id", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.node_id: NodeId = node_id_of(self.public)

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """Derive a key pair from 32 secret bytes (used for deterministic simulation)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_rng(cls, rng: random.Random) -> KeyPair:
        """A key pair drawn from an injected random source (simulation only: not secret)."""
        return cls.from_seed(rng.randbytes(32))

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's CSPRNG (real nodes)."""
        return cls.from_seed(os.urandom(32))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key, for saving to the node's data directory."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature by `public_key` over `data`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class SignatureVerifier:
    """Verifies signatures, remembering recent results.

    The same signed record reaches a node many times (replication, refresh, lookups); a
    verification is a pure function of (key, signature, data), so its result can be cached.
    In the simulator one verifier is shared by every node, which is sound for the same reason.
    """

    __slots__ = ("_cache", "_memo", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries  # bound on remembered results (FIFO eviction)
        self._cache: dict[tuple[bytes, bytes, bytes], bool] = {}
        self._memo: dict[Hashable, object] = {}
        self.hits = 0
        self.misses = 0

    def recall(self, key: Hashable) -> object | None:
        """A result remembered with `remember` (e.g. a checked record's body), or None."""
        return self._memo.get(key)

    def remember(self, key: Hashable, value: object) -> None:
        _bounded_put(self._memo, key, value, self.max_entries)

    def verify(self, public_key: bytes, signature: bytes, data: bytes) -> bool:
        key = (public_key, signature, data)
        cached = self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        result = verify_signature(public_key, signature, data)
        _bounded_put(self._cache, key, result, self.max_entries)
        return result


def _bounded_put(cache: dict[Any, Any], key: Hashable, value: object, limit: int) -> None:
    if len(cache) >= limit:
        # dicts keep insertion order: drop the oldest eighth in one go
        for stale in list(cache)[: limit // 8 + 1]:
            del cache[stale]
    cache[key] = value
