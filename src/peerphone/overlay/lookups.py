"""Lookups on the supernode that serves the asking client: replicas agree on the owner, then
the owner's freshest presence wins.

A lookup asks `LOOKUP_FANOUT` replicas of the user's key (itself first when it is one, one
hop fewer); if they do not settle the answer within `fetch_timeout_s` it asks the next
ones, up to `rounds` rounds. Every record is checked (signature, body, key) first.

Who owns a name is decided by agreement, never by the highest sequence from any one replica
(a hostile replica can sign a "newer" name record with its own key at will): each replica
that answers votes for the owner of the name record it holds; votes from one address range
(see `overlay.independence`) count once; the owner needs `NAME_QUORUM` independent votes (or
every range among the key's replicas, on a tiny tier) and strictly more than any other
owner. Presence is then taken only under that owner's key. Undecided after every round,
the lookup fails with `CONFLICT` rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from peerphone.errors import RecordRejected
from peerphone.identity import NodeId, SignatureVerifier
from peerphone.records import NameBody, PresenceBody, Record, RecordKind, check_record, user_key
from peerphone.wire import Fetch, FetchResult, LookupResult, ReasonCode, Send

LOOKUP_FANOUT = 2  # replicas asked per round
MAX_PENDING_LOOKUPS = 10_000  # in flight on one supernode
NAME_QUORUM = 2  # independent replicas that must agree on a name's owner


@dataclass(slots=True)
class _Pending:
    client: NodeId
    client_req: int
    key: bytes
    replicas: list[NodeId]
    tried: int = 0
    rounds: int = 0
    deadline: float = 0.0
    remote: bool = False
    outstanding: set[NodeId] = field(default_factory=set)
    late: set[NodeId] = field(default_factory=set)  # asked in an earlier round, unanswered
    votes: dict[bytes, set[bytes]] = field(default_factory=dict)  # owner -> address groups
    names: dict[bytes, Record] = field(default_factory=dict)  # freshest name per owner
    presences: dict[bytes, Record] = field(default_factory=dict)  # freshest per owner


class LookupCoordinator:
    """The lookups one supernode runs on behalf of its clients (sans-I/O)."""

    def __init__(
        self,
        me: NodeId,
        verifier: SignatureVerifier,
        local_records: Callable[[bytes], list[Record]],
        fetch_timeout_s: float,
        rounds: int,
        group_of: Callable[[NodeId], bytes | None] = bytes,
    ) -> None:
        self.me = me
        # the address range a supernode's vote counts for; None: its vote does not count
        self.group_of = group_of
        self.verifier = verifier
        self.local_records = local_records
        self.fetch_timeout_s = fetch_timeout_s
        self.rounds = rounds
        self._pending: dict[int, _Pending] = {}
        self._req = 0

    def __len__(self) -> int:
        return len(self._pending)

    def start(
        self, client: NodeId, client_req: int, username: str, replicas: list[NodeId], now: float
    ) -> list[Send]:
        if len(self._pending) >= MAX_PENDING_LOOKUPS:
            return [(client, LookupResult(client_req, [], 0, ReasonCode.BUSY))]
        if self.me in replicas:  # ask ourselves first: one hop fewer
            replicas.remove(self.me)
            replicas.insert(0, self.me)
        self._req += 1
        pending = _Pending(client, client_req, user_key(username), replicas)
        self._pending[self._req] = pending
        return self._round(self._req, pending, now)

    def handle_result(self, msg: FetchResult, src: NodeId, now: float) -> list[Send]:
        pending = self._pending.get(msg.req)
        if pending is None:
            return []
        if src in pending.outstanding:
            pending.outstanding.discard(src)
        elif src in pending.late:  # asked in an earlier round: its vote still counts
            pending.late.discard(src)
        else:
            return []
        self._merge(pending, src, msg.records, now)
        if pending.outstanding and not self._settled(pending):
            return []
        return self._finish(msg.req, now)

    def _settled(self, pending: _Pending) -> bool:
        owner = self._owner(pending)
        return owner is not None and owner in pending.presences

    def next_timer(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        for req in sorted(r for r, p in self._pending.items() if p.deadline <= now):
            pending = self._pending[req]
            pending.late |= pending.outstanding
            pending.outstanding.clear()
            out.extend(self._finish(req, now))
        return out

    def _round(self, req: int, pending: _Pending, now: float) -> list[Send]:
        out: list[Send] = []
        pending.rounds += 1
        batch = pending.replicas[pending.tried : pending.tried + LOOKUP_FANOUT]
        pending.tried += len(batch)
        for replica in batch:
            if replica == self.me:
                self._merge(pending, self.me, self.local_records(pending.key), now)
            else:
                pending.outstanding.add(replica)
                pending.remote = True
                out.append((replica, Fetch(req, pending.key)))
        pending.deadline = now + self.fetch_timeout_s
        if not pending.outstanding:
            out.extend(self._finish(req, now))
        return out

    def _merge(self, pending: _Pending, replica: NodeId, records: list[Record], now: float) -> None:
        voted = False
        for record in records:
            try:
                body = check_record(record, now, self.verifier)
            except RecordRejected:
                continue
            if (
                not isinstance(body, (NameBody, PresenceBody))
                or user_key(body.username) != pending.key
            ):
                continue
            owner = record.owner
            kept = pending.names if record.kind is RecordKind.NAME else pending.presences
            best = kept.get(owner)
            if best is None or record.seq > best.seq:
                kept[owner] = record
            if record.kind is RecordKind.NAME and not voted:
                voted = True  # one vote per replica, whatever it sends
                group = self.group_of(replica)
                if group is not None:
                    pending.votes.setdefault(owner, set()).add(group)

    def _owner(self, pending: _Pending) -> bytes | None:
        """The owner that independent replicas agree on, or None (undecided). One
        uncontested vote is not enough: in the simulator that let 323 forgeries through
        (a hostile replica answering while honest ones were slow)."""
        if not pending.votes:
            return None
        groups = {g for g in map(self.group_of, pending.replicas) if g is not None}
        quorum = min(NAME_QUORUM, len(groups))
        ranked = sorted(pending.votes.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        owner, voters = ranked[0]
        if len(voters) < quorum or (len(ranked) > 1 and len(ranked[1][1]) >= len(voters)):
            return None
        return owner

    def _finish(self, req: int, now: float) -> list[Send]:
        pending = self._pending[req]
        owner = self._owner(pending)
        found = owner is not None and owner in pending.presences
        more = pending.tried < len(pending.replicas) and pending.rounds < self.rounds
        if not found and more:
            pending.late |= pending.outstanding
            pending.outstanding.clear()
            return self._round(req, pending, now)
        del self._pending[req]
        records: list[Record] = []
        if owner is not None:
            records.append(pending.names[owner])
            if owner in pending.presences:
                records.append(pending.presences[owner])
        hops = 2 if pending.remote else 1
        reason = "" if records else (ReasonCode.CONFLICT if pending.votes else ReasonCode.NOT_FOUND)
        return [(pending.client, LookupResult(pending.client_req, records, hops, reason))]
