"""Hostile supernodes for the simulator: they grind their ring position next to chosen names
and serve forged name and presence records for them.

A hostile supernode runs the real `SupernodeCore` with two changes, the ones a patched node
would make: a `Fetch` for a target name is answered with a name and a presence record signed
by the attacker's own key (with a sequence far above the genuine one), and a watch
subscription for a target gets the same forgery as a notification. Its node key is ground
(by trying fresh keys) until its id lands on the ring right after the target's directory key,
so it becomes the target's first replica. Several hostile nodes may share one /24 and attack
the same names together. The world counts every record a client accepted for a target whose
owner is not the target's real key: the directory's promise is that this stays 0.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.directory import RecordStore
from peerphone.overlay.ring import Ring
from peerphone.overlay.supernode import SupernodeConfig, SupernodeCore
from peerphone.records import (
    MemberBody,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    Status,
    make_record,
    user_key,
)

MAX_GRIND_TRIES = 200_000  # keys tried for one position before giving up
FORGED_SEQ = 2**60  # far above any genuine sequence (they follow the clock in ms)
FORGED_TTL_S = 30 * 86_400.0  # valid for any simulated run (records cap at 31 days)


def grind_key(rng: random.Random, low: bytes, high: bytes | None) -> KeyPair:
    """A key pair whose node id lies in [low, high) on the ring (high None: anywhere >= low,
    wrapping is not needed for the arcs the world asks for)."""
    for _ in range(MAX_GRIND_TRIES):
        keys = KeyPair.from_rng(rng)
        node = keys.node_id
        if node >= low and (high is None or node < high):
            return keys
    raise RuntimeError(f"no key landed in the arc after {MAX_GRIND_TRIES} tries")


def positions_after(ring: Ring, key: bytes) -> bytes | None:
    """The first member at or after `key`: a node id in [key, this) becomes the first
    replica of `key` (None: the arc runs to the end of the id space)."""
    ids = ring.ids()
    later = [n for n in ids if n >= key]
    return later[0] if later else None


class ForgingStore(RecordStore):
    """A replica's record store that answers with forgeries for the target keys: what a
    patched node's Fetch and Subscribe answers read (`handle_fetch`, `handle_subscribe`)."""

    def __init__(self, verifier: SignatureVerifier, forge: Callable[[bytes], list[Record]]):
        super().__init__(verifier)
        self.forge = forge
        self.forged_sent = 0

    def get(self, key: bytes) -> list[Record]:
        forged = self.forge(key)
        if forged:
            self.forged_sent += 1
            return forged
        return super().get(key)


class HostileSupernode(SupernodeCore):
    """A supernode that forges the directory for its target names (simulation only)."""

    def __init__(
        self,
        keys: KeyPair,
        body: MemberBody,
        now: float,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: SupernodeConfig,
        targets: Iterable[str],
        attacker: KeyPair,
    ) -> None:
        super().__init__(keys, body, now, rng, verifier, config, seed=True)
        self.attacker = attacker  # the "user key" the forged records are signed with
        self.targets = {user_key(name): name for name in targets}
        self._expires_ms = int((now + FORGED_TTL_S) * 1000)
        self._forgeries: dict[bytes, list[Record]] = {}
        self.store = ForgingStore(verifier, self.forged)
        self.lookups.local_records = self.store.get

    @property
    def forged_sent(self) -> int:
        store = self.store
        return store.forged_sent if isinstance(store, ForgingStore) else 0

    def forged(self, key: bytes) -> list[Record]:
        """Name and presence records for a target key, signed by the attacker."""
        name = self.targets.get(key)
        if name is None:
            return []
        cached = self._forgeries.get(key)
        if cached is not None:
            return cached
        presence = PresenceBody(
            name, "hostile", Status.ONLINE, [bytes(self.me)], [], ["voice"], bytes(self.me)
        )
        expires_ms = self._expires_ms
        records = [
            make_record(RecordKind.NAME, self.attacker, FORGED_SEQ, expires_ms, NameBody(name)),
            make_record(RecordKind.PRESENCE, self.attacker, FORGED_SEQ, expires_ms, presence),
        ]
        self._forgeries[key] = records
        return records
