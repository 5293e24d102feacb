"""Invariants checked while a simulation runs; a violation names the seed that reproduces it."""

from __future__ import annotations

from collections.abc import Callable

from peerphone.errors import PeerphoneError
from peerphone.identity import verify_signature
from peerphone.overlay.snapshots import SupernodeSnapshot
from peerphone.records import NameBody, PresenceBody, Record, RecordKind, decode_body, user_key


class InvariantViolation(PeerphoneError):
    """The simulated system did something it must never do."""


class InvariantChecker:
    """Watches record acceptance, admission and election for rule breaks."""

    def __init__(self, seed: int, clock: Callable[[], float], verify_every: int = 50) -> None:
        self.seed = seed
        self.clock = clock
        self.verify_every = verify_every  # re-verify every Nth accepted record without cache
        self.accepts = 0
        self.checked_signatures = 0

    def fail(self, what: str) -> None:
        raise InvariantViolation(
            f"invariant broken at t={self.clock():.3f}s: {what} (reproduce with --seed {self.seed})"
        )

    def on_accept(self, key: bytes, old: Record | None, new: Record) -> None:
        self.accepts += 1
        if old is not None and old.kind is not new.kind:
            self.fail("a record replaced one of another kind")
        if old is not None and old.owner == new.owner and new.seq <= old.seq:
            self.fail(f"accepted sequence {new.seq} over {old.seq}")
        if (
            old is not None
            and old.owner != new.owner
            and (new.kind is RecordKind.PRESENCE or old.expires() > self.clock())
        ):
            self.fail("a record of another owner replaced a live one")
        if self.accepts % self.verify_every == 0 or (old is not None and old.owner != new.owner):
            self.checked_signatures += 1
            if not verify_signature(new.owner, new.sig, new.signed_payload()):
                self.fail("accepted a record with a bad signature")
            body = decode_body(new)
            if not isinstance(body, (NameBody, PresenceBody)) or user_key(body.username) != key:
                self.fail("record stored under a key that is not its user's")

    def check_admission(self, sn: SupernodeSnapshot) -> int:
        primaries = sn.clients_served
        if primaries != sn.primary_count:
            self.fail("supernode's client count drifted from its client table")
        if primaries > sn.max_clients:
            self.fail(f"supernode holds {primaries} clients, admission limit {sn.max_clients}")
        return primaries

    def check_promotion(self, eligible: bool, seed_node: bool, node: str) -> None:
        if not (eligible or seed_node):
            self.fail(f"ineligible node {node} became a supernode")
