"""One peerphone node: the client role always, the supernode role when elected.

`NodeCore` is what a runtime (or the simulator) drives: `receive`, `handle_timer`,
`connection_lost`, and the application calls (`login`, `lookup`, `watch` ...). Each returns
the messages to send; `next_timer()` says when to call `handle_timer` next.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from peerphone.errors import LocalProtocolError
from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.calls import CallCore
from peerphone.overlay.client import ClientConfig, ClientCore
from peerphone.overlay.directory import AcceptObserver
from peerphone.overlay.events import DialBack, Event, LookupDone, RoleChanged
from peerphone.overlay.snapshots import CallSnapshot, NodeSnapshot, call_snapshot, node_snapshot
from peerphone.overlay.supernode import SupernodeConfig, SupernodeCore, TurnIssuer
from peerphone.records import Capacity, MemberBody, Record, Status
from peerphone.wire import (
    Ack,
    Attach,
    AttachAccept,
    AttachRedirect,
    Detach,
    Fetch,
    FetchResult,
    IndirectAck,
    Join,
    Lookup,
    LookupResult,
    MembershipPage,
    Message,
    Notify,
    Ping,
    PingReq,
    PresenceUpdate,
    Promote,
    Publish,
    PublishAck,
    ReachCheck,
    ReachEcho,
    ReachProbe,
    ReachResult,
    ReasonCode,
    Redirect,
    Send,
    Signal,
    SignalAck,
    SignalDeliver,
    SignalRelay,
    SignalRelayAck,
    Store,
    StoreAck,
    Subscribe,
    TurnGrant,
    TurnRequest,
    Watch,
)

MAX_PEER_HOSTS = 8192  # link source IPs remembered (the runtime has fewer links)
MAX_JOIN_TARGETS = 3  # members asked for the membership at once (each sends all of it)
ClientHandler = Callable[[ClientCore, Message, NodeId, float], list[Send]]
SupernodeHandler = Callable[[SupernodeCore, Message, NodeId, float], list[Send]]

# Which role handles which message: the whole dispatch in one place.
CLIENT_HANDLERS: dict[type, ClientHandler] = {
    AttachAccept: ClientCore.handle_attach_accept,  # type: ignore[dict-item]
    AttachRedirect: ClientCore.handle_attach_redirect,  # type: ignore[dict-item]
    PublishAck: ClientCore.handle_publish_ack,  # type: ignore[dict-item]
    LookupResult: ClientCore.handle_lookup_result,  # type: ignore[dict-item]
    PresenceUpdate: ClientCore.handle_presence_update,  # type: ignore[dict-item]
    Redirect: ClientCore.handle_redirect,  # type: ignore[dict-item]
    TurnGrant: ClientCore.handle_turn_grant,  # type: ignore[dict-item]
}
SUPERNODE_HANDLERS: dict[type, SupernodeHandler] = {
    Attach: SupernodeCore.handle_attach,  # type: ignore[dict-item]
    Detach: SupernodeCore.handle_detach,  # type: ignore[dict-item]
    Publish: SupernodeCore.handle_publish,  # type: ignore[dict-item]
    Lookup: SupernodeCore.handle_lookup,  # type: ignore[dict-item]
    Watch: SupernodeCore.handle_watch,  # type: ignore[dict-item]
    Store: SupernodeCore.handle_store,  # type: ignore[dict-item]
    StoreAck: SupernodeCore.handle_store_ack,  # type: ignore[dict-item]
    Fetch: SupernodeCore.handle_fetch,  # type: ignore[dict-item]
    FetchResult: SupernodeCore.handle_fetch_result,  # type: ignore[dict-item]
    Subscribe: SupernodeCore.handle_subscribe,  # type: ignore[dict-item]
    Notify: SupernodeCore.handle_notify,  # type: ignore[dict-item]
    Signal: SupernodeCore.handle_signal,  # type: ignore[dict-item]
    TurnRequest: SupernodeCore.handle_turn_request,  # type: ignore[dict-item]
    SignalRelay: SupernodeCore.handle_signal_relay,  # type: ignore[dict-item]
    SignalRelayAck: SupernodeCore.handle_signal_relay_ack,  # type: ignore[dict-item]
    Ping: SupernodeCore.handle_membership,
    Ack: SupernodeCore.handle_membership,
    PingReq: SupernodeCore.handle_membership,
    IndirectAck: SupernodeCore.handle_membership,
    Join: SupernodeCore.handle_membership,
    MembershipPage: SupernodeCore.handle_membership,
    ReachCheck: SupernodeCore.handle_reach_check,  # type: ignore[dict-item]
    ReachResult: SupernodeCore.handle_reach_result,  # type: ignore[dict-item]
}


class NodeCore:
    """A user's node: attachment and lookups, plus the supernode role while elected."""

    def __init__(
        self,
        node_keys: KeyPair,
        user_keys: KeyPair,
        username: str,
        rng: random.Random,
        verifier: SignatureVerifier,
        capacity: Capacity | None = None,
        addresses: list[str] | None = None,
        client_config: ClientConfig | None = None,
        supernode_config: SupernodeConfig | None = None,
        may_serve: bool = True,
    ) -> None:
        self.node_keys = node_keys
        self.id: NodeId = node_keys.node_id
        self.rng = rng
        self.verifier = verifier
        self.addresses = list(addresses or [])
        self.supernode_config = supernode_config or SupernodeConfig()
        self.may_serve = may_serve  # policy: False means never a supernode
        self.client = ClientCore(node_keys, user_keys, username, rng, verifier, client_config)
        self.client.capacity = capacity or Capacity()
        self.client.addresses = list(self.addresses)
        self.calls = CallCore(self.client, rng)
        self.supernode: SupernodeCore | None = None
        self._events: list[Event] = []  # drained by pop_events
        self.errors = 0  # messages dropped as unexpected for our role
        self.peer_hosts: dict[NodeId, str] = {}  # IP each link comes from (runtime's word)
        self.peer_ports: dict[NodeId, int] = {}  # ... and its UDP port (not over TCP)
        # why we would not serve now even if the tier asked (owner in a call, machine busy):
        # set by the daemon from what it measures; "" when we would
        self.serve_veto = ""
        self._turn_issuer: TurnIssuer | None = None  # the supernode role's relay credentials
        self._store_observer: AcceptObserver | None = None  # records a replica accepts

    # -- roles ------------------------------------------------------------------------------

    def become_supernode(
        self, now: float, reason: str, seed: bool = False, role: SupernodeCore | None = None
    ) -> SupernodeCore:
        """Take the supernode role (`role`: a ready-made one, e.g. the simulator's hostile
        supernode; else a new SupernodeCore). Never when the node may not serve."""
        if not self.may_serve:
            raise LocalProtocolError("this node may not serve (role client or managed mode)")
        if role is None:
            body = MemberBody(
                self.addresses, self.client.capacity, self.supernode_config.max_clients
            )
            role = SupernodeCore(
                self.node_keys, body, now, self.rng, self.verifier, self.supernode_config, seed
            )
        self.supernode = role
        role.membership.peer_host = self.peer_hosts.get
        role.observed = self._observed
        role.turn_issuer = self._turn_issuer
        role.store.observer = self._store_observer
        self._events.append(RoleChanged(True, reason))
        return self.supernode

    def _observed(self, node: NodeId) -> tuple[str, int | None] | None:
        host = self.peer_hosts.get(node)
        return None if host is None else (host, self.peer_ports.get(node))

    def _handle_promote(self, msg: Promote, src: NodeId, now: float) -> list[Send]:
        if self.supernode is not None or not self.may_serve or self.serve_veto:
            return []
        sn = self.become_supernode(now, "promoted: the tier needed capacity")
        for record in msg.members:
            sn.membership.add_record(record, now)
        sn.membership.changes.clear()  # nothing to hand over yet: we hold no records
        return [sn.membership.ask(src, now)]

    def _check_retired(self, now: float) -> None:
        sn = self.supernode
        if sn is not None and sn.retired:
            self._events.append(RoleChanged(False, sn.retire_reason))
            self.supernode = None

    # -- inputs -----------------------------------------------------------------------------

    def receive(self, msg: Message, src: NodeId, now: float) -> list[Send]:
        if isinstance(msg, ReachProbe):  # a supernode dialled us back: we are here
            return [(src, ReachEcho(msg.nonce))]
        handler = CLIENT_HANDLERS.get(type(msg))
        if handler is not None:
            return self._call_lookups(handler(self.client, msg, src, now), now)
        if isinstance(msg, (SignalDeliver, SignalAck)):
            if src not in (self.client.primary, self.client.backup):
                self.errors += 1  # signaling only comes through our own supernodes
                return []
            if isinstance(msg, SignalAck):
                return self._call_lookups(self.calls.handle_ack(msg, now), now)
            return self._call_lookups(self.calls.handle_deliver(msg, now), now)
        if isinstance(msg, Promote):
            return self._handle_promote(msg, src, now)
        sn = self.supernode
        sn_handler = SUPERNODE_HANDLERS.get(type(msg))
        if sn_handler is None or sn is None:
            self.errors += 1
            if isinstance(msg, Attach):  # we are not (or no longer) a supernode
                return [(src, AttachRedirect(msg.req, ReasonCode.NOT_A_SUPERNODE, []))]
            return []
        out = sn_handler(sn, msg, src, now)
        out.extend(sn.after_input(now))
        self._check_retired(now)
        self._drain_role(sn)
        return out

    def _drain_role(self, sn: SupernodeCore) -> None:
        """Move what the supernode role asks of the runtime (dials) into our events."""
        for node, address in sn.membership.dial_backs:
            self._events.append(DialBack(node, address))
        sn.membership.dial_backs.clear()
        self._events.extend(sn.reach_verifier.dials)
        sn.reach_verifier.dials.clear()
        self._events.extend(sn.events)
        sn.events.clear()

    def reach_dial_done(
        self, asker: NodeId, req: int, reached: bool, declined: bool, reason: str, now: float
    ) -> list[Send]:
        """The runtime dialled a candidate back for `asker` (see ReachDial)."""
        sn = self.supernode
        if sn is None:
            return []
        return sn.reach_verifier.dial_done(asker, req, reached, declined, reason)

    def dial_back_done(self, node: NodeId, reached: bool, now: float) -> list[Send]:
        """The runtime dialled `node` back (see DialBack): admit it to the tier or not."""
        sn = self.supernode
        if sn is None:
            return []
        out = sn.membership.dial_back_done(node, reached, now)
        out.extend(sn.after_input(now))
        return out

    def handle_timer(self, now: float) -> list[Send]:
        out = self.client.handle_timer(now)
        calls_due = self.calls.next_timer()
        if calls_due is not None and calls_due <= now:
            out.extend(self.calls.handle_timer(now))
        sn = self.supernode
        if sn is not None and sn.next_timer() <= now:
            out.extend(sn.handle_timer(now))
            out.extend(sn.after_input(now))
            self._drain_role(sn)
            self._check_retired(now)
        return self._call_lookups(out, now)

    def next_timer(self) -> float | None:
        t = self.client.next_timer()
        c = self.calls.next_timer()
        if c is not None:
            t = c if t is None else min(t, c)
        if self.supernode is not None:
            s = self.supernode.next_timer()
            t = s if t is None else min(t, s)
        return t

    def _call_lookups(self, out: list[Send], now: float) -> list[Send]:
        """Hand the lookups that calls started (callee or caller checks) to the call core."""
        if not self.calls.looking:  # the common case: no call is looking anybody up
            return out
        for event in self.client.pop_events(self.calls.waits_for):
            assert isinstance(event, LookupDone)
            out.extend(self.calls.on_lookup(event, now) or [])
        return out

    def link_up(
        self, peer: NodeId, host: str, now: float, udp_port: int | None = None
    ) -> list[Send]:
        """The runtime's link to `peer` comes from this IP (and UDP port; None over TCP): a
        supernode's must be in the public range its member record claims (checked at once
        for a member, and when it joins the tier); a candidate is dialled back there."""
        if peer not in self.peer_hosts and len(self.peer_hosts) >= MAX_PEER_HOSTS:
            oldest = next(iter(self.peer_hosts))
            del self.peer_hosts[oldest]
            self.peer_ports.pop(oldest, None)
        self.peer_hosts[peer] = host
        if udp_port is None:
            self.peer_ports.pop(peer, None)
        else:
            self.peer_ports[peer] = udp_port
        sn = self.supernode
        if sn is None:
            return []
        sn.membership.check_link(peer, host, now)
        return sn.after_input(now)

    def connection_lost(self, peer: NodeId, now: float) -> list[Send]:
        self.peer_hosts.pop(peer, None)
        self.peer_ports.pop(peer, None)
        out = self.client.connection_lost(peer, now)
        if self.supernode is not None:
            out.extend(self.supernode.client_lost(peer, now))
        return out

    # -- what the runtime may ask ------------------------------------------------------------

    def knows_supernode(self, peer: NodeId) -> bool:
        """Whether `peer` is a supernode we know of: a member of our tier, or in the host
        cache (where the client role learned supernodes to attach to)."""
        sn = self.supernode
        if sn is not None and peer in sn.membership.members:
            return True
        return peer in self.client.host_cache

    def protects(self, peer: NodeId) -> bool:
        """Whether a link to `peer` carries our own service: our primary or backup
        supernode, a client attached to our supernode role, or a known supernode."""
        client = self.client
        if peer == client.primary or peer == client.backup:
            return True
        sn = self.supernode
        return (sn is not None and peer in sn.clients) or self.knows_supernode(peer)

    def supernode_record(self, peer: NodeId) -> Record | None:
        """`peer`'s member record, from the host cache or our tier's membership."""
        record = self.client.host_cache.get(peer)
        sn = self.supernode
        if record is None and sn is not None:
            member = sn.membership.members.get(peer)
            record = member.record if member is not None else None
        return record

    # -- application API --------------------------------------------------------------------

    def learn_supernodes(self, records: list[Record], now: float) -> None:
        self.client.learn_supernodes(records, now)

    def restrict_supernodes(self, node_ids: list[NodeId]) -> None:
        """Managed mode: attach only to these supernodes (the organisation's), and never
        serve. Other supernodes are dropped from the host cache and never learned again
        (bootstrap answers, redirect hints, the others an AttachAccept names)."""
        self.may_serve = False
        self.client.restrict_supernodes(frozenset(node_ids))

    def learn_bootstrap(self, node_ids: list[NodeId], now: float) -> list[Send]:
        """Supernodes that answered at bootstrap addresses: attach there, and if we serve,
        join the tier through them."""
        out = self.join_tier(node_ids, now)
        out.extend(self.client.learn_bootstrap(node_ids, now))
        return out

    def join_tier(self, node_ids: list[NodeId], now: float) -> list[Send]:
        """As a supernode, ask these members for the membership (a Join; pages follow)."""
        sn = self.supernode
        if sn is None:
            return []
        known = sn.membership.members
        wanted = [n for n in node_ids if n != self.id and n not in known][:MAX_JOIN_TARGETS]
        return [sn.membership.ask(node, now) for node in wanted]

    def login(self, now: float) -> list[Send]:
        return self.client.login(now)

    def logout(self, now: float) -> list[Send]:
        """Log the user out, then, as a supernode, hand records and clients over.

        A supernode's own user is its own client: its OFFLINE presence is stored (and
        replicated) by our supernode role before that role leaves, so the hand-over
        carries it; sent the other way round it would reach a role already gone and the
        user would stay "online" until the record expired.
        """
        out: list[Send] = []
        for dest, msg in self.client.logout(now):
            if dest == self.id and self.supernode is not None:
                out.extend(self.receive(msg, self.id, now))
            else:
                out.append((dest, msg))
        if self.supernode is not None:
            out.extend(self.supernode.leave(now, "owner logged out"))
            self._check_retired(now)
        return out

    # -- shedding supernode duty (the owner's caps, daemon/duty.py) ---------------------------

    def set_admitting(self, admitting: bool) -> None:
        """As a supernode, take new clients or refuse them with hints to other supernodes."""
        if self.supernode is not None:
            self.supernode.admitting = admitting

    def redirect_newest(self, count: int, reason: str, now: float) -> list[Send]:
        """As a supernode, move the `count` most recently attached clients elsewhere."""
        return self.supernode.redirect_newest(count, reason) if self.supernode else []

    def step_down(self, now: float, reason: str) -> list[Send]:
        """Leave the supernode role: hand records and clients over (RoleChanged follows)."""
        if self.supernode is None:
            return []
        out = self.supernode.leave(now, reason)
        self._check_retired(now)
        return out

    def lookup(self, username: str, now: float) -> tuple[int, list[Send]]:
        req, sends = self.client.lookup(username, now)
        return req, self._call_lookups(sends, now)

    def watch(self, usernames: list[str], now: float) -> list[Send]:
        return self.client.watch(usernames, now)

    def set_status(self, status: Status, now: float) -> list[Send]:
        return self.client.set_status(status, now)

    def pop_events(self) -> list[Event]:
        """Drain what happened since the last call: the only way events come out."""
        events = self._events + self.client.pop_events() + self.calls.pop_events()
        self._events = []
        return events

    def has_events(self) -> bool:
        return bool(self._events or self.client.has_events() or self.calls.has_events())

    # -- what the application may see and set ----------------------------------------------

    @property
    def username(self) -> str:
        return self.client.username

    @property
    def is_supernode(self) -> bool:
        return self.supernode is not None

    def snapshot(self) -> NodeSnapshot:
        """The node as it is now, read-only (see overlay.snapshots)."""
        return node_snapshot(self.id, self.client, self.addresses, self.supernode)

    def attached(self) -> tuple[NodeId | None, NodeId | None]:
        """Our (primary, backup) supernodes."""
        return self.client.primary, self.client.backup

    def buddies(self) -> dict[str, Record]:
        """The last verified presence record of each watched user (a copy)."""
        return dict(self.client.buddies)

    def host_cache_records(self) -> list[Record]:
        """The member records of the supernodes we know of (to save across restarts)."""
        return list(self.client.host_cache.values())

    def set_addresses(self, addresses: list[str]) -> None:
        """Where others dial us (member and presence records), best first."""
        self.addresses = list(addresses)
        self.client.addresses = list(addresses)

    def set_device(self, device: str) -> None:
        """The device name our presence records carry."""
        self.client.device = device

    def pin(self, keys: dict[str, bytes]) -> None:
        """Trust these users' keys (contacts, or pins saved earlier) over any lookup."""
        self.client.pinned.update(keys)

    def set_capacity(self, capacity: Capacity) -> None:
        """What we offer the tier (sent with our next attach)."""
        self.client.capacity = capacity

    def set_store_observer(self, observer: AcceptObserver | None) -> None:
        """Called with every record the supernode role's replica store accepts, now and
        after any later promotion (the simulator's invariant checker)."""
        self._store_observer = observer
        if self.supernode is not None:
            self.supernode.store.observer = observer

    def seed_tier(self, records: list[Record], now: float) -> None:
        """As a supernode of a tier that has been running (a warm start, or a test's), know
        these member records from the start: nothing to hand over."""
        sn = self.supernode
        if sn is None:
            raise LocalProtocolError("seed_tier needs the supernode role")
        for record in records:
            sn.membership.add_record(record, now)
        sn.membership.changes.clear()

    @property
    def user_keys(self) -> KeyPair:
        return self.client.user_keys

    def member_record(self) -> Record | None:
        """Our own member record while we are a supernode."""
        return self.supernode.record if self.supernode is not None else None

    def pins(self) -> dict[str, bytes]:
        """The user keys we trust, by name (contacts and first-use pins; a copy)."""
        return dict(self.client.pinned)

    def set_turn_issuer(self, issuer: TurnIssuer | None) -> None:
        """Who issues relay credentials while we are a supernode (now and after promotion)."""
        self._turn_issuer = issuer
        if self.supernode is not None:
            self.supernode.turn_issuer = issuer

    def unwatch(self, usernames: list[str], now: float) -> list[Send]:
        return self.client.watch(usernames, now, add=False)

    def request_turn(self, now: float) -> list[Send]:
        """Ask our primary supernode for relay credentials (a TurnGranted event follows)."""
        return self.client.request_turn(now)

    def join_known_tier(self, now: float) -> list[Send]:
        """As a supernode, join the tier through the supernodes in our host cache."""
        return self.join_tier(list(self.client.host_cache), now)

    def call_snapshot(self, call_id: bytes) -> CallSnapshot | None:
        call = self.calls.calls.get(call_id)
        return call_snapshot(call) if call is not None else None

    # -- calls ------------------------------------------------------------------------------

    def call(
        self, username: str, sdp: str, now: float, referred_by: str = ""
    ) -> tuple[bytes, list[Send]]:
        """Call `username` with this SDP offer; returns the call id (events follow)."""
        call_id, sends = self.calls.place(username, sdp, now, referred_by)
        return call_id, self._call_lookups(sends, now)

    def accept_call(self, call_id: bytes, sdp: str, now: float) -> list[Send]:
        return self.calls.accept(call_id, sdp, now)

    def reject_call(self, call_id: bytes, reason: str, now: float) -> list[Send]:
        return self.calls.reject(call_id, reason, now)

    def hangup(self, call_id: bytes, now: float, reason: str = "hung up") -> list[Send]:
        return self.calls.hangup(call_id, now, reason)

    def hold(self, call_id: bytes, held: bool, now: float) -> list[Send]:
        return self.calls.hold(call_id, held, now)

    def transfer(self, call_id: bytes, target: str, now: float) -> list[Send]:
        return self.calls.transfer(call_id, target, now)
