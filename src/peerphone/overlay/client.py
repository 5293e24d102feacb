"""The ordinary node's side of the overlay: attachment, presence, lookups and watches.

A client keeps a host cache of supernode member records, attaches to a primary and a
backup, publishes its signed name and presence records through the primary and refreshes
them, and asks the primary for lookups. Refusals (admission control) come with hints of
other supernodes; failures back off exponentially with jitter.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from peerphone.errors import LocalProtocolError, RecordRejected
from peerphone.identity import KeyPair, NodeId, SignatureVerifier, node_id_of
from peerphone.overlay.events import (
    Attached,
    AttachLost,
    Event,
    KeyPinned,
    LookupDone,
    PresenceChanged,
    Published,
    PublishRefused,
    TurnGranted,
)
from peerphone.records import (
    Capacity,
    MemberBody,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    Status,
    check_record,
    decode_body,
    make_record,
    valid_username,
)
from peerphone.wire import (
    Attach,
    AttachAccept,
    AttachRedirect,
    Detach,
    Lookup,
    LookupResult,
    Message,
    PresenceUpdate,
    Publish,
    PublishAck,
    ReasonCode,
    Redirect,
    TurnGrant,
    TurnRequest,
    Watch,
)

Send = tuple[NodeId, Message]

MAX_HOST_CACHE = 200  # supernode member records remembered (persisted by the runtime)
MAX_PENDING_LOOKUPS = 64
MAX_WATCHED = 1000  # buddies per user
_INF = float("inf")
PIN_MISMATCH = "name bound to a different key than the pinned one"  # a lookup's refusal
REFUSAL_MEMORY_S = 60.0  # a supernode that refused us is not asked again for this long


class ClientState(enum.Enum):
    OFFLINE = "offline"
    ATTACHING = "attaching"
    ONLINE = "online"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timers and limits of attachment and publishing."""

    refresh_interval_s: float = 600.0  # soft state: a presence lives 3 refreshes
    presence_ttl_s: float = 1800.0
    name_ttl_s: float = 30 * 86_400.0
    attach_timeout_s: float = 2.0
    publish_timeout_s: float = 2.0
    publish_retries: int = 3  # then the primary is treated as lost
    lookup_try_timeout_s: float = 2.0
    lookup_deadline_s: float = 6.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    immediate_redirects: int = 3  # hinted retries before backing off


@dataclass(slots=True)
class _PendingLookup:
    username: str
    started: float
    deadline: float
    try_deadline: float
    sent_to: NodeId | None
    buddy: bool = False  # started by a presence update of a watched, unpinned user
    # an unpinned name is asked of both our supernodes: one hostile supernode alone must
    # not decide whom we trust; `second` is the other one asked, `first` the first answer
    second: NodeId | None = None
    first: LookupResult | None = None


class ClientCore:
    """Attachment, presence publishing, lookups and buddy watches of one user (sans-I/O)."""

    def __init__(
        self,
        node_keys: KeyPair,
        user_keys: KeyPair,
        username: str,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: ClientConfig | None = None,
        device: str = "default",
    ) -> None:
        if not valid_username(username):
            raise LocalProtocolError(f"invalid username {username!r}")
        self.node_keys = node_keys
        self.user_keys = user_keys
        self.username = username
        self.device = device
        self.rng = rng
        self.verifier = verifier
        self.config = config or ClientConfig()
        self.state = ClientState.OFFLINE
        self.status = Status.ONLINE
        self.capacity = Capacity()
        self.started_at = 0.0
        self.host_cache: dict[NodeId, Record] = {}
        self.refused: dict[NodeId, float] = {}
        self.primary: NodeId | None = None
        self.backup: NodeId | None = None
        self.addresses: list[str] = []
        self.pinned: dict[str, bytes] = {}  # username -> user key (trust on first use)
        self.watched: set[str] = set()
        self.buddies: dict[str, Record] = {}  # last verified presence of each watched user
        self._events: list[Event] = []  # drained by pop_events
        self._req = 0
        self._attach: tuple[int, NodeId, bool, float] | None = (
            None  # req, target, primary, deadline
        )
        self._failures = 0
        self._redirects = 0
        self._next_attempt: float | None = None
        self._name_record: Record | None = None
        self.name_refused = False  # the directory said our name belongs to another key
        self._turn_req = -1  # the TurnRequest awaiting its grant
        self._presence: Record | None = None
        self._seq = 0
        self._next_refresh: float | None = None
        self._publish: tuple[int, float, int] | None = None  # req, deadline, tries
        self._lookups: dict[int, _PendingLookup] = {}
        self._hint: list[NodeId] = []  # supernodes a redirect suggested, tried first
        # supernodes known only by their authenticated NodeId (a bootstrap address
        # answered); their member records arrive with the AttachAccept
        self.bootstrap_ids: list[NodeId] = []

    # -- application API --------------------------------------------------------------------

    def learn_supernodes(self, records: list[Record], now: float) -> None:
        """Add member records (bootstrap list, hints, persisted host cache) to the host cache."""
        for record in records:
            if record.kind is not RecordKind.MEMBER:
                continue
            try:
                body = check_record(record, now, self.verifier)
            except RecordRejected:
                continue
            if not isinstance(body, MemberBody):
                continue
            node = node_id_of(record.owner)
            known = self.host_cache.get(node)
            if known is None and len(self.host_cache) >= MAX_HOST_CACHE:
                oldest = next(iter(self.host_cache))
                del self.host_cache[oldest]
            if known is None or record.seq >= known.seq:
                self.host_cache[node] = record

    def learn_bootstrap(self, node_ids: list[NodeId], now: float) -> list[Send]:
        """Supernodes whose addresses answered with these (authenticated) NodeIds."""
        for node in node_ids:
            if node not in self.bootstrap_ids and len(self.bootstrap_ids) < MAX_HOST_CACHE:
                self.bootstrap_ids.append(node)
        waiting = self.state is ClientState.ATTACHING and self._attach is None
        if waiting and not self.host_cache:
            self._next_attempt = now  # nothing else to try: go now rather than after back-off
        return self.handle_timer(now)

    def login(self, now: float, status: Status = Status.ONLINE) -> list[Send]:
        if self.state is not ClientState.OFFLINE:
            raise LocalProtocolError("already logged in")
        self.state = ClientState.ATTACHING
        self.status = status
        self.started_at = now
        self._failures = 0
        self._redirects = 0
        self._next_attempt = now
        return self.handle_timer(now)

    def logout(self, now: float) -> list[Send]:
        """Publish OFFLINE through the primary, then detach from both supernodes."""
        out: list[Send] = []
        if self.primary is not None:
            self.status = Status.OFFLINE
            out.extend(self._publish_presence(now))
        for sn in (self.primary, self.backup):
            if sn is not None:
                out.append((sn, Detach("logout")))
        self._reset()
        self.state = ClientState.OFFLINE
        return out

    def set_status(self, status: Status, now: float) -> list[Send]:
        self.status = status
        return self._publish_presence(now) if self.primary is not None else []

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
        pending = _PendingLookup(username, now, now + cfg.lookup_deadline_s, 0.0, None)
        self._lookups[req] = pending
        return req, self._send_lookup(req, pending, now)

    def watch(self, usernames: list[str], now: float, add: bool = True) -> list[Send]:
        names = [n for n in usernames if valid_username(n)]
        if add:
            room = MAX_WATCHED - len(self.watched)
            names = [n for n in names if n not in self.watched][:room]
            self.watched.update(names)
        else:
            self.watched.difference_update(names)
            for name in names:
                self.buddies.pop(name, None)
        if self.primary is None or not names:
            return []
        return [(self.primary, Watch(self._next_req(), names, add))]

    def has_events(self) -> bool:
        return bool(self._events)

    def pop_events(self, only: Callable[[Event], bool] | None = None) -> list[Event]:
        """Drain the events; with `only`, just those it selects (the rest stay, in order)."""
        if only is None:
            events, self._events = self._events, []
            return events
        taken = [e for e in self._events if only(e)]
        if taken:
            self._events = [e for e in self._events if not only(e)]
        return taken

    # -- inputs -----------------------------------------------------------------------------

    def handle_attach_accept(self, msg: AttachAccept, src: NodeId, now: float) -> list[Send]:
        attach = self._attach
        if attach is None or attach[0] != msg.req or attach[1] != src:
            return []
        self._attach = None
        if node_id_of(msg.member.owner) != src:
            # it must accept us with its own member record, or we cannot tell who it is
            self.refused[src] = now + REFUSAL_MEMORY_S
            self._back_off(now)
            return self.handle_timer(now)
        self.learn_supernodes([msg.member, *msg.others], now)
        out: list[Send] = []
        if attach[2]:
            self.primary = src
            self.state = ClientState.ONLINE
            self._failures = 0
            self._redirects = 0
            out.extend(self._after_new_primary(now))
        else:
            self.backup = src
            self._events.append(Attached(self.primary or src, src))
        return out

    def handle_attach_redirect(self, msg: AttachRedirect, src: NodeId, now: float) -> list[Send]:
        attach = self._attach
        if attach is None or attach[0] != msg.req or attach[1] != src:
            return []
        self._attach = None
        self.refused[src] = now + REFUSAL_MEMORY_S
        self.learn_supernodes(list(msg.others), now)
        self._redirects += 1
        if self._redirects <= self.config.immediate_redirects:
            self._next_attempt = now
        else:
            self._back_off(now)
        return self.handle_timer(now)

    def handle_publish_ack(self, msg: PublishAck, src: NodeId, now: float) -> list[Send]:
        if self._publish is None or self._publish[0] != msg.req or src != self.primary:
            return []
        if msg.stored == 0:
            if msg.reason == ReasonCode.NOT_PRIMARY:  # the supernode forgot us (e.g. restarted)
                return self.connection_lost(src, now)
            if msg.reason == ReasonCode.NAME_TAKEN:  # final: retrying cannot help, the user acts
                self._publish = None
                self.name_refused = True
                self._events.append(PublishRefused(msg.reason))
            return []  # otherwise the retry timer resends
        self._publish = None
        if self._presence is not None:
            self._events.append(Published(self._presence.seq, msg.stored))
        return []

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

    def _finish_lookup(self, msg: LookupResult, pending: _PendingLookup, now: float) -> None:
        presence, reason = self._verified_presence(pending.username, msg.records, now)
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
            presence, _ = self._verified_presence(username, by_user[username], now)
            if presence is not None:
                self._buddy_seen(username, presence)
        return out

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

    def request_turn(self, now: float) -> list[Send]:
        """Ask our primary for relay credentials (a TurnGranted event answers)."""
        if self.primary is None:
            self._events.append(TurnGranted([], "", "", now, "not attached"))
            return []
        self._turn_req = self._next_req()
        return [(self.primary, TurnRequest(self._turn_req))]

    def handle_turn_grant(self, msg: TurnGrant, src: NodeId, now: float) -> list[Send]:
        if msg.req != self._turn_req or src != self.primary:
            return []
        self._turn_req = -1
        grant = TurnGranted(
            list(msg.urls), msg.username, msg.password, msg.expires_ms / 1000, msg.reason
        )
        self._events.append(grant)
        return []

    def handle_redirect(self, msg: Redirect, src: NodeId, now: float) -> list[Send]:
        self.learn_supernodes(list(msg.others), now)
        if src not in (self.primary, self.backup):
            return []
        hinted = [node_id_of(r.owner) for r in msg.others]
        for node in hinted:
            self.refused.pop(node, None)
        return self.connection_lost(src, now, prefer=hinted)

    def connection_lost(
        self, peer: NodeId, now: float, prefer: list[NodeId] | None = None
    ) -> list[Send]:
        """The link to `peer` is gone (idle timeout, reset, redirect); `prefer` says where
        to go next (a redirect's hints), else the backup is asked to become primary."""
        if peer == self.backup:
            self.backup = None
            if self._attach is None and self._next_attempt is None:
                self._next_attempt = now + self.rng.uniform(0.0, self.config.backoff_base_s)
            if prefer:
                self._hint = prefer
            return self.handle_timer(now)
        if peer != self.primary:
            if self._attach is not None and self._attach[1] == peer:
                self._attach = None
                self._back_off(now)
            return []
        self.primary = None
        self._publish = None
        self.state = ClientState.ATTACHING
        self._events.append(AttachLost(peer, self.backup is not None))
        if self.backup is not None:
            # ask the backup to take us as primary (admission control applies again)
            backup, self.backup = self.backup, None
            self._attach = None
            self._hint = prefer or [backup]
            self._next_attempt = now
            return self.handle_timer(now)
        if prefer:
            self._hint = prefer
        self._next_attempt = now + self.rng.uniform(0.0, self.config.backoff_base_s)
        return self.handle_timer(now)

    # -- time -------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        # called after every input, so written for speed rather than brevity
        inf = _INF
        t = self._next_refresh if self._next_refresh is not None else inf
        if self._attach is not None:
            t = min(t, self._attach[3])  # the next attempt waits for this one to end
        elif self._next_attempt is not None:
            t = min(t, self._next_attempt)
        if self._publish is not None:
            t = min(t, self._publish[1])
        if self._lookups:
            for pending in self._lookups.values():
                due = pending.try_deadline if pending.sent_to is not None else pending.deadline
                t = min(t, due, pending.deadline)
        return None if t == inf else t

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        if self.state is ClientState.OFFLINE:
            return out
        if self._attach is not None and now >= self._attach[3]:
            self.refused[self._attach[1]] = now + REFUSAL_MEMORY_S
            self._attach = None
            self._back_off(now)
        if self._attach is None and self._next_attempt is not None and now >= self._next_attempt:
            self._next_attempt = None
            out.extend(self._try_attach(now))
        if self._publish is not None and now >= self._publish[1]:
            tries = self._publish[2]
            self._publish = None
            if tries >= self.config.publish_retries and self.primary is not None:
                out.extend(self.connection_lost(self.primary, now))
            else:
                out.extend(self._publish_presence(now, tries + 1, bump=False))
        if self._next_refresh is not None and now >= self._next_refresh:
            self._next_refresh = None  # re-armed by the publish (or by the next attach)
            if not self.name_refused:
                out.extend(self._publish_presence(now))
        for req in [r for r, p in self._lookups.items() if now >= p.deadline]:
            p = self._lookups.pop(req)
            self._events.append(
                LookupDone(req, p.username, None, None, 0, p.started, now, "timeout")
            )
        for req, p in sorted(self._lookups.items()):
            if p.first is not None and now >= p.try_deadline:
                del self._lookups[req]  # the other supernode is silent: one answer it is
                self._finish_lookup(p.first, p, now)
            elif p.sent_to is None or now >= p.try_deadline:
                out.extend(self._send_lookup(req, p, now))
        return out

    # -- internals --------------------------------------------------------------------------

    def _next_req(self) -> int:
        self._req += 1
        return self._req

    def _next_seq(self, now: float) -> int:
        """Sequence numbers follow the clock (milliseconds), so a restarted node that lost
        its counter still outranks the records of its previous run."""
        self._seq = max(self._seq + 1, int(now * 1000))
        return self._seq

    def _reset(self) -> None:
        self.primary = self.backup = None
        self._attach = None
        self._publish = None
        self._next_refresh = None
        self._next_attempt = None
        for req, p in sorted(self._lookups.items()):
            self._events.append(
                LookupDone(req, p.username, None, None, 0, p.started, p.started, "logged out")
            )
        self._lookups.clear()

    def _back_off(self, now: float) -> None:
        self._failures += 1
        cfg = self.config
        delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** min(self._failures - 1, 16))
        self._next_attempt = now + delay * self.rng.uniform(0.5, 1.0)

    def _candidates(self, now: float) -> list[NodeId]:
        taken = {self.primary, self.backup}
        hint = [n for n in self._hint if n in self.host_cache and n not in taken]
        rest = [
            n
            for n in self.host_cache
            if n not in taken and self.refused.get(n, 0.0) <= now and n not in hint
        ]
        self.rng.shuffle(rest)
        known = [
            n
            for n in self.bootstrap_ids
            if n not in taken and n not in self.host_cache and self.refused.get(n, 0.0) <= now
        ]
        return hint + rest + known

    def _try_attach(self, now: float) -> list[Send]:
        want_primary = self.primary is None
        if not want_primary and self.backup is not None:
            return []
        candidates = self._candidates(now)
        self._hint = []
        if not candidates:
            # every known supernode refused recently: ask the one that refused longest ago
            taken = {self.primary, self.backup}
            candidates = sorted(
                (n for n in [*self.host_cache, *self.bootstrap_ids] if n not in taken),
                key=lambda n: (self.refused.get(n, 0.0), n),
            )
        if not candidates:
            self._back_off(now)
            return []
        target = candidates[0]
        req = self._next_req()
        self._attach = (req, target, want_primary, now + self.config.attach_timeout_s)
        capacity = Capacity(
            self.capacity.reachable,
            self.capacity.uptime_s + int(now - self.started_at),
            self.capacity.up_kbps,
            self.capacity.down_kbps,
            self.capacity.cpu_score,
        )
        return [(target, Attach(req, capacity, want_primary))]

    def _after_new_primary(self, now: float) -> list[Send]:
        assert self.primary is not None
        self._events.append(Attached(self.primary, self.backup))
        out = self._publish_presence(now)
        if self.watched:
            out.append((self.primary, Watch(self._next_req(), sorted(self.watched), True)))
        for req, p in sorted(self._lookups.items()):
            if p.sent_to != self.primary:
                out.extend(self._send_lookup(req, p, now))
        if self.backup is None and self._attach is None:
            self._next_attempt = now
            out.extend(self.handle_timer(now))
        return out

    def _publish_presence(self, now: float, tries: int = 1, bump: bool = True) -> list[Send]:
        if self.primary is None:
            return []
        cfg = self.config
        name = self._name_record
        if name is None or name.expires() - now < cfg.name_ttl_s / 2:
            name = make_record(
                RecordKind.NAME,
                self.user_keys,
                self._next_seq(now),
                int((now + cfg.name_ttl_s) * 1000),
                NameBody(self.username),
            )
            self._name_record = name
        if bump or self._presence is None:
            seq = self._next_seq(now)
            supernodes = [sn for sn in (self.primary, self.backup) if sn is not None]
            body = PresenceBody(
                self.username,
                self.device,
                self.status,
                [bytes(s) for s in supernodes],
                list(self.addresses),
                ["voice"],
                bytes(self.node_keys.node_id),
            )
            self._presence = make_record(
                RecordKind.PRESENCE,
                self.user_keys,
                seq,
                int((now + cfg.presence_ttl_s) * 1000),
                body,
            )
            self._next_refresh = now + cfg.refresh_interval_s
        req = self._next_req()
        self._publish = (req, now + cfg.publish_timeout_s, tries)
        return [(self.primary, Publish(req, [name, self._presence]))]

    def _send_lookup(self, req: int, pending: _PendingLookup, now: float) -> list[Send]:
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
        self, username: str, records: list[Record], now: float
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
