"""A client's lookups and its buddies' presence: who owns a name (pins), which presence
record verifies, and what watched users are doing."""

from __future__ import annotations

from peerphone.errors import RecordRejected
from peerphone.identity import NodeId
from peerphone.overlay.client_base import (
    MAX_PENDING_LOOKUPS,
    MAX_WATCHED,
    PIN_MISMATCH,
    ClientBase,
    PendingLookup,
)
from peerphone.overlay.events import (
    KeyChanged,
    KeyPinned,
    LookupDone,
    PresenceChanged,
)
from peerphone.records import (
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    check_record,
    decode_body,
)
from peerphone.wire import (
    Lookup,
    LookupResult,
    PresenceUpdate,
    ReasonCode,
    Send,
)


class ClientLookups(ClientBase):
    """The lookup part of the client role."""

    def lookup(self, username: str, now: float) -> tuple[int, list[Send]]:
        """Start a lookup; its LookupDone event carries the returned request id."""
        self._req += 1
        req = self._req
        cfg = self.config
        if len(self._lookups) >= MAX_PENDING_LOOKUPS:
            self._events.append(
                LookupDone(req, username, None, None, 0, now, now, "too many lookups")
            )
            return req, []
        pending = PendingLookup(username, now, now + cfg.lookup_deadline_s, 0.0, None)
        self._lookups[req] = pending
        return req, self._send_lookup(req, pending, now)

    def handle_lookup_result(self, msg: LookupResult, src: NodeId, now: float) -> list[Send]:
        pending = self._lookups.get(msg.req)
        if pending is None:
            return []
        if msg.reason == ReasonCode.NOT_ATTACHED and src == pending.sent_to:
            # the supernode forgot us: re-attach; the lookup goes out again once attached
            pending.sent_to = None
            return self.connection_lost(src, now) if src == self.primary else []
        if pending.second is not None and src in (pending.sent_to, pending.second):
            if pending.first is None:
                pending.first = msg  # wait for the other supernode's answer
                return []
            first = pending.first
            hops = max(first.hops, msg.hops)
            if ReasonCode.CONFLICT in (first.reason, msg.reason):
                # one side's replicas disagree: so do we, whatever the other side says
                msg = LookupResult(msg.req, [], hops, ReasonCode.CONFLICT)
            else:
                msg = LookupResult(msg.req, [*first.records, *msg.records], hops, msg.reason)
        del self._lookups[msg.req]
        self._finish_lookup(msg, pending, now)
        return []

    def _finish_lookup(self, msg: LookupResult, pending: PendingLookup, now: float) -> None:
        presence, reason = self._verified_presence(
            pending.username, msg.records, now, report_change=True
        )
        if presence is not None:
            self._buddy_seen(pending.username, presence)
        elif not msg.records and msg.reason:
            reason = msg.reason  # the supernode's own word (e.g. the replicas disagree)
        if pending.buddy:
            return  # our own lookup (of a watched user): nobody waits for its event
        status = None
        if presence is not None:
            status = _presence_body(presence).status
        self._events.append(
            LookupDone(
                msg.req,
                pending.username,
                presence,
                status,
                msg.hops,
                pending.started,
                now,
                reason or msg.reason,
            )
        )

    def handle_presence_update(self, msg: PresenceUpdate, src: NodeId, now: float) -> list[Send]:
        by_user: dict[str, list[Record]] = {}
        for record in msg.records:
            try:
                body = check_record(record, now, self.verifier)
            except RecordRejected:
                continue
            if isinstance(body, (NameBody, PresenceBody)) and body.username in self.watched:
                by_user.setdefault(body.username, []).append(record)
        out: list[Send] = []
        for username in sorted(by_user):
            if username not in self.pinned:
                # a watch is served by one replica, whose word alone never decides who
                # owns a name: a lookup (agreed by several) pins the key first
                out.extend(self._look_up_buddy(username, now))
                continue
            presence, reason = self._verified_presence(username, by_user[username], now)
            if presence is not None:
                self._buddy_seen(username, presence)
            elif reason == PIN_MISMATCH and self._first_check(username):
                # one replica says the name has another key now: ask the replicas together
                # (a lookup), and warn (KeyChanged) only if they agree; once per name
                out.extend(self._look_up_buddy(username, now))
        return out

    def _first_check(self, username: str) -> bool:
        """Whether to ask the replicas about `username`'s other key (once per name)."""
        if username in self._key_checked or len(self._key_checked) >= MAX_WATCHED:
            return False
        self._key_checked.add(username)
        return True

    def _look_up_buddy(self, username: str, now: float) -> list[Send]:
        if any(p.username == username and p.buddy for p in self._lookups.values()):
            return []
        req, sends = self.lookup(username, now)
        pending = self._lookups.get(req)
        if pending is not None:
            pending.buddy = True
        return sends

    def _buddy_seen(self, username: str, presence: Record) -> None:
        """A verified presence of a watched user: remember it, tell if it changed."""
        if username not in self.watched:
            return
        last = self.buddies.get(username)
        if last is not None and (last.seq >= presence.seq or last.body == presence.body):
            if last.seq < presence.seq:
                self.buddies[username] = presence  # a refresh: same content, newer
            return
        self.buddies[username] = presence
        self._events.append(PresenceChanged(username, _presence_body(presence).status, presence))

    def _send_lookup(self, req: int, pending: PendingLookup, now: float) -> list[Send]:
        # alternate between primary and backup on retries
        target = self.primary
        if pending.sent_to is not None and pending.sent_to == self.primary and self.backup:
            target = self.backup
        if target is None:
            pending.sent_to = None  # queued until attached; the deadline still runs
            pending.try_deadline = pending.deadline
            return []
        pending.sent_to = target
        pending.try_deadline = now + self.config.lookup_try_timeout_s
        out: list[Send] = [(target, Lookup(req, pending.username))]
        other = self.backup if target == self.primary else self.primary
        pending.second, pending.first = None, None
        if other is not None and pending.username not in self.pinned:
            pending.second = other
            out.append((other, Lookup(req, pending.username)))
        return out

    def _verified_presence(
        self, username: str, records: list[Record], now: float, report_change: bool = False
    ) -> tuple[Record | None, str]:
        """The presence record of `username` if it verifies against the bound key."""
        names: list[Record] = []
        presences: list[Record] = []
        for record in records:
            try:
                body = check_record(record, now, self.verifier)
            except RecordRejected:
                continue
            if not isinstance(body, (NameBody, PresenceBody)) or body.username != username:
                continue
            (names if record.kind is RecordKind.NAME else presences).append(record)
        if not names:
            return None, ReasonCode.NOT_FOUND
        owners = {r.owner for r in names}
        owner = self.pinned.get(username)
        if owner is None:
            if len(owners) != 1:  # our supernode settles the owner; two owners: refuse
                return None, ReasonCode.CONFLICT
            owner = next(iter(owners))
        if owner not in owners:
            if report_change:  # only what the replicas agreed on, never one watch answer
                for seen in sorted(owners):
                    if (username, seen) not in self._key_warned and len(self._key_warned) < 1000:
                        self._key_warned.add((username, seen))
                        self._events.append(KeyChanged(username, owner, seen))
            return None, PIN_MISMATCH
        if username not in self.pinned and username != self.username:
            self.pinned[username] = owner
            self._events.append(KeyPinned(username, owner))
        mine = [r for r in presences if r.owner == owner]
        if not mine:
            return None, "offline"
        return max(mine, key=lambda r: r.seq), ""


def _presence_body(record: Record) -> PresenceBody:
    body = decode_body(record)
    assert isinstance(body, PresenceBody)
    return body
