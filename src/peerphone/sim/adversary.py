"""Hostile supernodes for the simulator: they get as close as they can to chosen names on the
ring and serve forged name and presence records for them.

A hostile supernode runs the real `SupernodeCore` with two changes, the ones a patched node
would make: a `Fetch` for a target name is answered with a name and a presence record signed
by the attacker's own key (with a sequence far above the genuine one), and a watch
subscription for a target gets the same forgery as a notification. A supernode's ring
position follows its public /24 (`overlay.ring.position_of`), so grinding keys no longer
moves it; the attacker instead picks, among the many /24s it can rent hosts in
(`RANGES_TRIED`), the one whose positions land nearest after the target's directory key.
Several hostile nodes share that /24 and attack the same names together. The world counts
every record a client accepted for a target whose owner is not the target's real key: the
directory's promise is that this stays 0.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.directory import RecordStore
from peerphone.overlay.independence import address_group
from peerphone.overlay.ring import Ring, position_of
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

RANGES_TRIED = 1024  # public /24s an attacker can get addresses in (renting hosts)
FORGED_SEQ = 2**60  # far above any genuine sequence (they follow the clock in ms)
FORGED_TTL_S = 30 * 86_400.0  # valid for any simulated run (records cap at 31 days)


def choose_range(ring: Ring, key: bytes, count: int, tries: int, base: int) -> str:
    """The /24 (as "45.A.B") whose first `count` ring positions lie nearest after `key`
    among `tries` candidates: the best an attacker who can get hosts in that many ranges
    can do, now that a position follows the range and not the node key."""
    best: tuple[int, str] | None = None
    for i in range(tries):
        n = base + i
        prefix = f"45.{(n >> 8) % 256}.{n % 256}"
        group = address_group(f"{prefix}.1:4433")
        distance = max(
            _distance(key, position_of(NodeId(bytes(32)), group, rank)) for rank in range(count)
        )
        if best is None or distance < best[0]:
            best = (distance, prefix)
    assert best is not None
    return best[1]


def _distance(key: bytes, position: bytes) -> int:
    """How far `position` lies after `key`, going round the ring."""
    return (int.from_bytes(position, "big") - int.from_bytes(key, "big")) % (1 << 256)


def ring_of(positions: Iterable[tuple[NodeId, bytes | None]]) -> Ring:
    ring = Ring()
    for node, position in positions:
        ring.add(node, position)
    return ring


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
