"""The directory's record store on one supernode: the acceptance rule and soft state.

`RecordStore.accept(record, now)` is the one place that decides whether a record may be
stored: a valid signature and body (records.check_record), the right owner (first come first
served for names; presence only by the key the name is bound to), a strictly higher sequence
(or the identical record), bounded expiry and size, and room in the store.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass, field

from peerphone.errors import RecordRejected
from peerphone.identity import SignatureVerifier
from peerphone.records import (
    DEFAULT_LIMITS,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    RecordLimits,
    check_record,
    user_key,
)
from peerphone.wire import ReasonCode

MAX_RECORDS_PER_SUPERNODE = 2_000_000  # name + presence records held by one replica
MAX_SUBSCRIBERS_PER_KEY = 64  # supernodes watching one user
SUBSCRIPTION_TTL_S = 900.0  # a watch lapses unless renewed within this time


class Verdict(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class KeyEntry:
    """What one replica holds under one directory key."""

    name: Record | None = None
    presence: Record | None = None
    subscribers: dict[bytes, float] = field(default_factory=dict)  # supernode -> expiry

    def records(self) -> list[Record]:
        return [r for r in (self.name, self.presence) if r is not None]


AcceptObserver = Callable[[bytes, Record | None, Record], None]


class RecordStore:
    """Name and presence records held by one supernode as a replica, keyed by user key."""

    def __init__(
        self,
        verifier: SignatureVerifier,
        limits: RecordLimits = DEFAULT_LIMITS,
        max_records: int = MAX_RECORDS_PER_SUPERNODE,
    ) -> None:
        self.verifier = verifier
        self.limits = limits
        self.max_records = max_records
        self.entries: dict[bytes, KeyEntry] = {}
        self.sorted_keys: list[bytes] = []  # for hand-over of one ring arc
        self.record_count = 0
        self.observer: AcceptObserver | None = None  # the simulator's invariant checker

    def accept(self, record: Record, now: float) -> tuple[Verdict, bytes, bool]:
        """Store `record` if the acceptance rule allows it; return verdict, key and whether
        its content (not just sequence and expiry) differs from what it replaced.

        Raises RecordRejected with the reason otherwise.
        """
        body = check_record(record, now, self.verifier, self.limits)
        if not isinstance(body, (NameBody, PresenceBody)):
            raise RecordRejected("not a directory record")
        key = user_key(body.username)
        entry = self.entries.get(key)
        if record.kind is RecordKind.NAME:
            current = entry.name if entry else None
            if current is not None and current.owner != record.owner and current.expires() > now:
                raise RecordRejected(ReasonCode.NAME_TAKEN)
        else:
            bound = entry.name if entry else None
            if bound is None:
                raise RecordRejected("no name record for this user here")
            if bound.owner != record.owner:
                raise RecordRejected("presence not signed by the name's key")
            current = entry.presence if entry else None
        if current is not None and current.owner == record.owner:
            if record == current:
                return Verdict.DUPLICATE, key, False
            if record.seq <= current.seq:
                raise RecordRejected("sequence not higher")
        if current is None and self.record_count >= self.max_records:
            raise RecordRejected("store full")
        if entry is None:
            entry = KeyEntry()
            self.entries[key] = entry
            insort(self.sorted_keys, key)
        if self.observer is not None:
            self.observer(key, current, record)
        if current is None:
            self.record_count += 1
        if record.kind is RecordKind.NAME:
            if entry.presence is not None and entry.presence.owner != record.owner:
                entry.presence = None  # a previous owner's presence is meaningless now
                self.record_count -= 1
            entry.name = record
        else:
            entry.presence = record
        changed = current is None or current.owner != record.owner or current.body != record.body
        return Verdict.STORED, key, changed

    def get(self, key: bytes) -> list[Record]:
        entry = self.entries.get(key)
        return entry.records() if entry else []

    def subscribe(self, key: bytes, supernode: bytes, now: float) -> bool:
        entry = self.entries.get(key)
        if entry is None:
            entry = KeyEntry()
            self.entries[key] = entry
            insort(self.sorted_keys, key)
        if supernode not in entry.subscribers and len(entry.subscribers) >= MAX_SUBSCRIBERS_PER_KEY:
            return False
        entry.subscribers[supernode] = now + SUBSCRIPTION_TTL_S
        return True

    def unsubscribe(self, key: bytes, supernode: bytes) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.subscribers.pop(supernode, None)

    def subscribers(self, key: bytes) -> list[bytes]:
        entry = self.entries.get(key)
        return sorted(entry.subscribers) if entry else []

    def drop(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.record_count -= len(entry.records())
            i = bisect_left(self.sorted_keys, key)
            if i < len(self.sorted_keys) and self.sorted_keys[i] == key:
                del self.sorted_keys[i]

    def expire(self, now: float) -> int:
        """Forget expired records (after the skew grace) and lapsed watches; count records."""
        grace = self.limits.max_clock_skew_s
        dropped = 0
        empty: list[bytes] = []
        for key in self.sorted_keys:
            entry = self.entries[key]
            if entry.presence is not None and entry.presence.expires() + grace < now:
                entry.presence = None
                dropped += 1
            if entry.name is not None and entry.name.expires() + grace < now:
                entry.name = None
                dropped += 1
            if entry.subscribers:
                for sub, until in list(entry.subscribers.items()):
                    if until < now:
                        del entry.subscribers[sub]
            if entry.name is None and entry.presence is None and not entry.subscribers:
                empty.append(key)
        self.record_count -= dropped
        for key in empty:
            self.drop(key)
        return dropped
