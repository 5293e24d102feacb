"""A supernode's core: serving clients, the directory replica, lookups, watches, election.

Composes `Membership` (who the other supernodes are) and `RecordStore` (the records this
node holds as a replica). Clients attach under admission control; their publishes are
replicated to the `replication` successors of the user's key; lookups ask two replicas and
return the freshest valid record; presence watches are subscriptions at the replicas.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from peerphone.errors import RecordRejected
from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay import election
from peerphone.overlay.directory import RecordStore, Verdict
from peerphone.overlay.election import ElectionConfig
from peerphone.overlay.independence import member_group
from peerphone.overlay.lookups import LookupCoordinator
from peerphone.overlay.membership import Membership, MembershipConfig
from peerphone.overlay.ring import in_arc, keys_in_arc
from peerphone.overlay.signals import SignalRouter
from peerphone.records import (
    Capacity,
    MemberBody,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    check_record,
    user_key,
)
from peerphone.wire import (
    MAX_HINTS,
    RECORDS_PER_BATCH,
    Attach,
    AttachAccept,
    AttachRedirect,
    Detach,
    Fetch,
    FetchResult,
    Lookup,
    LookupResult,
    Message,
    Notify,
    PresenceUpdate,
    Promote,
    Publish,
    PublishAck,
    ReasonCode,
    Redirect,
    Signal,
    SignalAck,
    SignalRelay,
    SignalRelayAck,
    Store,
    StoreAck,
    Subscribe,
    TurnGrant,
    TurnRequest,
    Watch,
)

Send = tuple[NodeId, Message]
# (client, now) -> TURN URLs, username, password, expiry (s): short-lived relay credentials
TurnIssuer = Callable[[NodeId, float], tuple[list[str], str, str, float]]

MAX_WATCHES_PER_CLIENT = 1000
MAX_EARLY_STORE_SENDERS = 64  # unknown supernodes whose hand-over we hold back
MAX_EARLY_STORE_RECORDS = 20_000  # records held back in all (~10 MB at most)
EARLY_STORE_TTL_S = 30.0  # the sender's member record arrives within seconds, or never
MAX_CACHED_GROUPS = 200_000  # address groups of members (one per member; MAX_MEMBERS)

# Replicas a watching supernode subscribes at. One is enough: ring changes move the
# subscription at once and it is renewed every resubscribe_interval_s anyway.
WATCH_FANOUT = 1


@dataclass(frozen=True, slots=True)
class SupernodeConfig:
    """Limits and timers of the supernode role."""

    replication: int = 4
    max_clients: int = 600  # admission limit on primary clients
    max_backups: int = 1200  # clients using us as their backup
    fetch_timeout_s: float = 0.8
    lookup_rounds: int = 2
    store_timeout_s: float = 1.5
    expire_interval_s: float = 60.0
    resubscribe_interval_s: float = 300.0
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)


@dataclass(slots=True)
class ClientEntry:
    """A client attached to this supernode."""

    node: NodeId
    primary: bool
    capacity: Capacity
    since: float
    key: bytes | None = None
    records: list[Record] = field(default_factory=list)
    watches: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _PendingStore:
    client: NodeId
    client_req: int
    outstanding: set[NodeId]
    accepted: int
    deadline: float
    reason: str = ""  # why a replica refused (e.g. the name is taken), for the client
    key: bytes = b""  # the user key published
    records: list[Record] = field(default_factory=list)
    taken: int = 0  # replicas that said the name belongs to another key


class SupernodeCore:
    """The supernode role of one node (sans-I/O)."""

    def __init__(
        self,
        keys: KeyPair,
        body: MemberBody,
        now: float,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: SupernodeConfig | None = None,
        seed: bool = False,
    ) -> None:
        self.config = config or SupernodeConfig()
        self.me = keys.node_id
        self.rng = rng
        self.verifier = verifier
        self.seed = seed  # bootstrap supernodes never demote themselves
        self.started = now
        self.membership = Membership(keys, body, now, rng, verifier, self.config.membership)
        self.store = RecordStore(verifier)
        self.clients: dict[NodeId, ClientEntry] = {}
        self.primary_count = 0
        self.backup_count = 0
        self.retired = False
        self.retire_reason = ""
        self.watching: dict[bytes, set[NodeId]] = {}  # key -> our clients watching it
        self._last_notified: dict[bytes, int] = {}
        self._last_group: dict[bytes, list[Record]] = {}  # what watchers last got, per key
        self.lookups = LookupCoordinator(
            self.me,
            verifier,
            self.store.get,
            self.config.fetch_timeout_s,
            self.config.lookup_rounds,
            self._group_of,
        )
        self.signals = SignalRouter(self.me, self._client_of, self._is_member)
        # set by the runtime that runs a TURN relay beside this supernode
        self.turn_issuer: TurnIssuer | None = None
        self._stores: dict[int, _PendingStore] = {}
        self._groups: dict[NodeId, tuple[int, bytes]] = {}  # member -> (incarnation, group)
        # hand-overs from supernodes not (yet) known as members: sender -> (until, records)
        self._early_stores: dict[NodeId, tuple[float, list[Record]]] = {}
        self._req = 0
        self._next_expire = now + self.config.expire_interval_s
        self._next_resubscribe = now + self.config.resubscribe_interval_s
        self._next_election = now + rng.uniform(0.0, self.config.election.interval_s)
        self._last_promotion = -1e18
        self._promoted: dict[NodeId, float] = {}
        self.stats: dict[str, int] = {
            "redirected": 0,
            "promoted": 0,
            "rejected_records": 0,
            "stores_from_unknown": 0,
        }

    @property
    def record(self) -> Record:
        return self.membership.record

    # -- clients ----------------------------------------------------------------------------

    def handle_attach(self, msg: Attach, src: NodeId, now: float) -> list[Send]:
        if self.retired:
            return [(src, AttachRedirect(msg.req, "leaving", self._hints(src)))]
        entry = self.clients.get(src)
        if entry is None or entry.primary != msg.primary:
            full = (
                self.primary_count >= self.config.max_clients
                if msg.primary
                else self.backup_count >= self.config.max_backups
            )
            if full:
                self.stats["redirected"] += 1
                return [(src, AttachRedirect(msg.req, "full", self._hints(src)))]
            if entry is not None:
                self._drop_client(src)
            entry = ClientEntry(src, msg.primary, msg.capacity, now)
            self.clients[src] = entry
            if msg.primary:
                self.primary_count += 1
            else:
                self.backup_count += 1
            self.membership.load = self.primary_count
        entry.capacity = msg.capacity
        return [(src, AttachAccept(msg.req, self.record, self._hints(src)))]

    def handle_detach(self, msg: Detach, src: NodeId, now: float) -> list[Send]:
        self._drop_client(src)
        return []

    def client_lost(self, node: NodeId, now: float) -> list[Send]:
        self._drop_client(node)
        return []

    def _drop_client(self, node: NodeId) -> None:
        entry = self.clients.pop(node, None)
        if entry is None:
            return
        if entry.primary:
            self.primary_count -= 1
        else:
            self.backup_count -= 1
        self.membership.load = self.primary_count
        for key in entry.watches:
            watchers = self.watching.get(key)
            if watchers is not None:
                watchers.discard(node)
                if not watchers:
                    del self.watching[key]  # the subscription at the replicas lapses

    def _hints(self, exclude: NodeId) -> list[Record]:
        members = self.membership.members
        nodes = [n for n in members if n != exclude]
        if len(nodes) > MAX_HINTS:
            nodes = [nodes[i] for i in sorted(self.rng.sample(range(len(nodes)), MAX_HINTS))]
        return [members[n].record for n in nodes]

    def handle_publish(self, msg: Publish, src: NodeId, now: float) -> list[Send]:
        entry = self.clients.get(src)
        if entry is None or not entry.primary:
            return [(src, PublishAck(msg.req, 0, ReasonCode.NOT_PRIMARY))]
        key: bytes | None = None
        for record in msg.records:
            try:
                body = check_record(record, now, self.verifier)
            except RecordRejected as exc:
                return [(src, PublishAck(msg.req, 0, exc.reason))]
            if not isinstance(body, (NameBody, PresenceBody)):
                return [(src, PublishAck(msg.req, 0, "not a directory record"))]
            if isinstance(body, PresenceBody) and body.node != src:
                # someone else's presence replayed through this link: it would say
                # "reach me here" about a node that is not the one publishing
                return [(src, PublishAck(msg.req, 0, ReasonCode.PRESENCE_OF_ANOTHER_NODE))]
            k = user_key(body.username)
            if key is not None and k != key:
                return [(src, PublishAck(msg.req, 0, "records of different users"))]
            key = k
        if key is None:
            return [(src, PublishAck(msg.req, 0, "nothing to publish"))]
        records = _merge(entry.records if entry.key == key else [], msg.records)
        req = self._next_req()
        out, accepted, outstanding, reason = self._replicate(key, records, now, req)
        pending = _PendingStore(
            src, msg.req, outstanding, accepted, now + self.config.store_timeout_s, reason
        )
        pending.key, pending.records = key, records
        pending.taken = 1 if reason == ReasonCode.NAME_TAKEN else 0
        if not outstanding:
            return [*out, self._publish_done(pending)]
        self._stores[req] = pending
        return out

    def _publish_done(self, pending: _PendingStore) -> Send:
        """Answer the client; remember its records only if the directory took them (they
        are re-replicated if the replicas vanish, so a refused name must never be)."""
        entry = self.clients.get(pending.client)
        if entry is not None and pending.accepted > pending.taken:
            entry.key, entry.records = pending.key, pending.records
        reason = "" if pending.accepted else pending.reason
        return (pending.client, PublishAck(pending.client_req, pending.accepted, reason))

    def _replicate(
        self, key: bytes, records: list[Record], now: float, req: int
    ) -> tuple[list[Send], int, set[NodeId], str]:
        """Send records to the key's replicas (acked under `req`); store locally if we are one.

        Returns the messages, local acceptances, replicas still to answer, and why we refused.
        """
        out: list[Send] = []
        accepted = 0
        reason = ""
        outstanding: set[NodeId] = set()
        for replica in self.membership.ring.replicas(key, self.config.replication):
            if replica == self.me:
                refused = self._accept_all(records, now, out)
                accepted += 1 if refused is None else 0
                reason = refused or reason
            else:
                outstanding.add(replica)
                out.append((replica, Store(req, list(records))))
        return out, accepted, outstanding, reason

    def _accept_all(self, records: Iterable[Record], now: float, out: list[Send]) -> str | None:
        """Accept records as a replica, notifying subscribers.

        Returns None if the last record was kept, else the first reason for a refusal.
        """
        first_refusal: str | None = None
        kept = False
        for record in records:
            try:
                verdict, key, changed = self.store.accept(record, now)
            except RecordRejected as exc:
                self.stats["rejected_records"] += 1
                reason = f"rejected: {exc.reason}"
                self.stats[reason] = self.stats.get(reason, 0) + 1
                first_refusal = first_refusal or exc.reason
                kept = False
                continue
            kept = True
            if verdict is Verdict.STORED and changed:
                self._notify_subscribers(key, now, out)
        return None if kept else (first_refusal or "nothing to store")

    def _notify_subscribers(self, key: bytes, now: float, out: list[Send]) -> None:
        entry = self.store.entries.get(key)
        if entry is None or not entry.subscribers:
            return
        records = entry.records()
        for sub in sorted(entry.subscribers):
            if sub == self.me:
                out.extend(self._deliver_notification(records, now))
            else:
                out.append((NodeId(sub), Notify(records)))

    # -- lookups ----------------------------------------------------------------------------

    def handle_lookup(self, msg: Lookup, src: NodeId, now: float) -> list[Send]:
        if src not in self.clients:
            return [(src, LookupResult(msg.req, [], 0, ReasonCode.NOT_ATTACHED))]
        replicas = self.membership.ring.replicas(user_key(msg.username), self.config.replication)
        return self.lookups.start(src, msg.req, msg.username, replicas, now)

    def handle_fetch(self, msg: Fetch, src: NodeId, now: float) -> list[Send]:
        responsible = self.me in self.membership.ring.replicas(msg.key, self.config.replication)
        return [(src, FetchResult(msg.req, self.store.get(msg.key), responsible))]

    def handle_fetch_result(self, msg: FetchResult, src: NodeId, now: float) -> list[Send]:
        return self.lookups.handle_result(msg, src, now)

    # -- replica side -----------------------------------------------------------------------

    def handle_store(self, msg: Store, src: NodeId, now: float) -> list[Send]:
        if src not in self.membership.members:
            # only fellow supernodes replicate to us; a hand-over can overtake the member
            # record of its sender, so it waits (bounded) until the sender is known
            self.stats["stores_from_unknown"] += 1
            if not msg.req:
                self._hold_early_store(src, msg.records, now)
            return []
        out: list[Send] = []
        accepted = 0
        reason = ""
        for record in msg.records:
            refused = self._accept_all((record,), now, out)
            if refused is None:
                accepted += 1
            else:
                reason = reason or refused
        if msg.req:
            out.append((src, StoreAck(msg.req, accepted, reason)))
        return out

    def _hold_early_store(self, src: NodeId, records: list[Record], now: float) -> None:
        held = self._early_stores.get(src)
        if held is None:
            if len(self._early_stores) >= MAX_EARLY_STORE_SENDERS:
                return
            held = self._early_stores[src] = (now + EARLY_STORE_TTL_S, [])
        room = MAX_EARLY_STORE_RECORDS - sum(len(h[1]) for h in self._early_stores.values())
        held[1].extend(records[: max(0, room)])

    def handle_store_ack(self, msg: StoreAck, src: NodeId, now: float) -> list[Send]:
        pending = self._stores.get(msg.req)
        if pending is None or src not in pending.outstanding:
            return []
        pending.outstanding.discard(src)
        if msg.accepted:
            pending.accepted += 1
        else:
            pending.reason = pending.reason or msg.reason
            pending.taken += 1 if msg.reason == ReasonCode.NAME_TAKEN else 0
        if pending.outstanding:
            return []
        del self._stores[msg.req]
        return [self._publish_done(pending)]

    # -- watches ----------------------------------------------------------------------------

    def handle_watch(self, msg: Watch, src: NodeId, now: float) -> list[Send]:
        entry = self.clients.get(src)
        if entry is None:
            return []
        new_keys: list[bytes] = []
        out: list[Send] = []
        for name in msg.usernames:
            key = user_key(name)
            if msg.add:
                if len(entry.watches) >= MAX_WATCHES_PER_CLIENT:
                    break
                entry.watches.add(key)
                watchers = self.watching.setdefault(key, set())
                if not watchers:
                    new_keys.append(key)
                elif key in self._last_group:  # already subscribed: a late watcher gets
                    out.append((src, PresenceUpdate(self._last_group[key])))  # the current one
                watchers.add(src)
            else:
                entry.watches.discard(key)
                current = self.watching.get(key)
                if current is not None:
                    current.discard(src)
                    if not current:
                        del self.watching[key]
        out.extend(self._subscribe(new_keys, now))
        return out

    def _subscribe(self, keys: Iterable[bytes], now: float) -> list[Send]:
        batches: dict[NodeId, list[bytes]] = {}
        out: list[Send] = []
        for key in keys:
            replicas = self.membership.ring.replicas(key, self.config.replication)
            for replica in replicas[:WATCH_FANOUT]:
                if replica == self.me:
                    self.store.subscribe(key, self.me, now)
                    out.extend(self._deliver_notification(self.store.get(key), now))
                else:
                    batches.setdefault(replica, []).append(key)
        for replica in sorted(batches):
            keys_for = batches[replica]
            for i in range(0, len(keys_for), 256):
                out.append((replica, Subscribe(keys_for[i : i + 256], True)))
        return out

    def handle_subscribe(self, msg: Subscribe, src: NodeId, now: float) -> list[Send]:
        if src not in self.membership.members:
            return []
        current: list[Record] = []
        for key in msg.keys:
            if msg.add:
                self.store.subscribe(key, src, now)
                current.extend(self.store.get(key))
            else:
                self.store.unsubscribe(key, src)
        out: list[Send] = []
        for i in range(0, len(current), RECORDS_PER_BATCH):
            out.append((src, Notify(current[i : i + RECORDS_PER_BATCH])))
        return out

    def handle_notify(self, msg: Notify, src: NodeId, now: float) -> list[Send]:
        return self._deliver_notification(msg.records, now)

    def _deliver_notification(self, records: list[Record], now: float) -> list[Send]:
        by_key: dict[bytes, list[Record]] = {}
        for record in records:
            try:
                body = check_record(record, now, self.verifier)
            except RecordRejected:
                continue
            if isinstance(body, (NameBody, PresenceBody)):
                by_key.setdefault(user_key(body.username), []).append(record)
        out: list[Send] = []
        for key in sorted(by_key):
            group = by_key[key]
            presences = [r.seq for r in group if r.kind is RecordKind.PRESENCE]
            if not presences or max(presences) <= self._last_notified.get(key, -1):
                continue
            self._last_notified[key] = max(presences)
            self._last_group[key] = group
            for client in sorted(self.watching.get(key, ())):
                out.append((client, PresenceUpdate(group)))
        return out

    # -- relay credentials ------------------------------------------------------------------

    def handle_turn_request(self, msg: TurnRequest, src: NodeId, now: float) -> list[Send]:
        if src not in self.clients:
            return [(src, TurnGrant(msg.req, [], "", "", 0, ReasonCode.NOT_ATTACHED))]
        if self.turn_issuer is None:
            return [(src, TurnGrant(msg.req, [], "", "", 0, "no relay on this supernode"))]
        urls, username, password, expires = self.turn_issuer(src, now)
        return [(src, TurnGrant(msg.req, urls, username, password, int(expires * 1000), ""))]

    # -- call signaling ---------------------------------------------------------------------

    def handle_signal(self, msg: Signal, src: NodeId, now: float) -> list[Send]:
        if src not in self.clients:
            return [(src, SignalAck(msg.req, False, ReasonCode.NOT_ATTACHED))]
        return self.signals.handle_signal(msg, src, now)

    def handle_signal_relay(self, msg: SignalRelay, src: NodeId, now: float) -> list[Send]:
        return self.signals.handle_relay(msg, src, now)

    def handle_signal_relay_ack(self, msg: SignalRelayAck, src: NodeId, now: float) -> list[Send]:
        return self.signals.handle_relay_ack(msg, src, now)

    def _client_of(self, node: NodeId) -> NodeId | None:
        """`node` if it is attached to us (its link authenticated as that node id)."""
        return node if node in self.clients else None

    def _group_of(self, node: NodeId) -> bytes | None:
        """The address range whose vote `node` casts (see overlay.independence); None for a
        supernode no longer a member (removed since it was asked): its vote does not count."""
        member = self.membership.members.get(node)
        record = self.record if node == self.me else member.record if member else None
        if record is None:
            return None
        cached = self._groups.get(node)
        if cached is not None and record is not None and cached[0] == record.seq:
            return cached[1]
        group = member_group(node, record)
        if len(self._groups) >= MAX_CACHED_GROUPS:
            self._groups.clear()
        self._groups[node] = (record.seq, group)
        return group

    def _is_member(self, node: NodeId) -> bool:
        return node == self.me or node in self.membership.members

    # -- membership and hand-over ---------------------------------------------------------

    def handle_membership(self, msg: Message, src: NodeId, now: float) -> list[Send]:
        return self.membership.receive(msg, src, now)

    def after_input(self, now: float) -> list[Send]:
        """Hand records over for every ring change the last input caused."""
        changes = self.membership.changes
        if not changes:
            return []
        self.membership.changes = []
        early: list[Send] = []
        for node, _, joined in changes:
            held = self._early_stores.pop(node, None)
            if joined and held is not None and held[0] >= now:
                early.extend(self.handle_store(Store(0, held[1]), node, now))
        batches: dict[NodeId, list[Record]] = {}
        resubscribe: list[bytes] = []
        out: list[Send] = []
        for node, position, joined in changes:
            if node == self.me:  # our range's ranks shifted: we moved on the ring
                self._moved_away(position, joined, batches)
                continue
            self._hand_over(node, position, joined, batches, resubscribe, now, out)
            if joined and node in self._promoted:
                out.extend(self._shed_to(node, now))
        out.extend(_store_batches(batches))
        out.extend(self._subscribe(sorted(set(resubscribe)), now))
        return early + out

    def _moved_away(
        self, position: bytes, joined: bool, batches: dict[NodeId, list[Record]]
    ) -> None:
        """Our own move: the replicas of what we held at the old place get it (the holders
        of the new place push to us, as to any joiner)."""
        if joined:
            return
        r = self.config.replication
        ring = self.membership.ring
        for key in keys_in_arc(self.store.sorted_keys, ring.affected_arc(position, r)):
            new = ring.replicas(key, r)
            if self.me not in new and new:
                batches.setdefault(new[-1], []).extend(self.store.get(key))
                self.store.drop(key)

    def _hand_over(
        self,
        node: NodeId,
        position: bytes,
        joined: bool,
        batches: dict[NodeId, list[Record]],
        resubscribe: list[bytes],
        now: float,
        out: list[Send],
    ) -> None:
        r = self.config.replication
        ring = self.membership.ring
        arc = ring.affected_arc(position, r)
        for key in keys_in_arc(self.store.sorted_keys, arc):
            new = ring.replicas(key, r)
            records = self.store.get(key)
            if not records:
                continue
            if joined:
                if node in new:
                    # every holder pushes (duplicates are cheap): a single designated pusher
                    # may not hold what the others hold, and the joiner would miss it
                    batches.setdefault(node, []).extend(records)
                if self.me not in new:
                    self.store.drop(key)
            elif len(new) == r and new[0] == self.me and new[-1] != self.me:
                batches.setdefault(new[-1], []).extend(records)
        # watches of our clients follow the keys' replicas (a dropped replica forgets them)
        resubscribe.extend(k for k in self.watching if in_arc(k, arc))
        if joined:
            return
        # a replica vanished: make sure our own clients' records survive even if every
        # old replica is gone
        for entry in self.clients.values():
            if entry.primary and entry.key is not None and in_arc(entry.key, arc):
                for replica in ring.replicas(entry.key, r):
                    if replica == self.me:
                        self._accept_all(entry.records, now, out)
                    else:
                        batches.setdefault(replica, []).extend(entry.records)

    # -- election ---------------------------------------------------------------------------

    def _elect(self, now: float) -> list[Send]:
        cfg = self.config.election
        decision = election.decide(
            self.membership.average_load(),
            self.primary_count,
            len(self.membership.ring),
            now - self.started,
            now - self._last_promotion,
            cfg,
            self.rng,
        )
        if decision is election.Decision.PROMOTE:
            return self._promote(now)
        if decision is election.Decision.DEMOTE and not self.seed:
            return self.leave(now, "demoted: the tier has more capacity than it needs")
        return []

    def _promote(self, now: float) -> list[Send]:
        cfg = self.config.election
        members = self.membership.members
        best: tuple[float, bytes] | None = None
        for entry in self.clients.values():
            if not entry.primary or entry.node in members or entry.node in self._promoted:
                continue
            cap = entry.capacity
            uptime = cap.uptime_s + int(now - entry.since)
            declared = Capacity(cap.reachable, uptime, cap.up_kbps, cap.down_kbps, cap.cpu_score)
            if not election.eligible(declared, cfg):
                continue
            candidate = (election.score(declared), bytes(entry.node))
            if best is None or candidate > best:
                best = candidate
        if best is None:
            return []
        node = NodeId(best[1])
        self._promoted[node] = now
        self._last_promotion = now
        self.stats["promoted"] += 1
        return [(node, Promote([self.record], len(self.membership.ring)))]

    def _shed_to(self, node: NodeId, now: float) -> list[Send]:
        """Move part of our load to a supernode we promoted, once it has joined."""
        del self._promoted[node]
        excess = self.primary_count - self.config.election.target
        count = int(max(0.0, excess) / 2)
        if count <= 0:
            return []
        hint = [self.membership.members[node].record]
        movers = sorted(n for n, e in self.clients.items() if e.primary and n != node)
        self.rng.shuffle(movers)
        out: list[Send] = []
        for mover in movers[:count]:
            self._drop_client(mover)
            out.append((mover, Redirect("load shedding", hint)))
        return out

    def leave(self, now: float, reason: str) -> list[Send]:
        """Leave the tier: tell members, hand every record over, move every client."""
        if self.retired:
            return []
        self.retired = True
        self.retire_reason = reason
        out = self.membership.leave(now)
        ring = self.membership.ring
        ring.remove(self.me)
        batches: dict[NodeId, list[Record]] = {}
        for key in self.store.sorted_keys:
            new = ring.replicas(key, self.config.replication)
            if new:
                batches.setdefault(new[-1], []).extend(self.store.get(key))
        out.extend(_store_batches(batches))
        for node in sorted(self.clients):
            out.append((node, Redirect(reason, self._hints(node))))
        self.clients.clear()
        self.primary_count = self.backup_count = 0
        return out

    # -- time -------------------------------------------------------------------------------

    def next_timer(self) -> float:
        t = min(
            self.membership.next_timer(),
            self._next_expire,
            self._next_resubscribe,
            self._next_election,
        )
        if len(self.lookups):
            lookup_due = self.lookups.next_timer()
            if lookup_due is not None:
                t = min(t, lookup_due)
        if self._stores:
            t = min(t, min(store.deadline for store in self._stores.values()))
        if len(self.signals):
            signal_due = self.signals.next_timer()
            if signal_due is not None:
                t = min(t, signal_due)
        return t

    def handle_timer(self, now: float) -> list[Send]:
        if self.retired:
            return []
        out = self.membership.handle_timer(now)
        out.extend(self.lookups.handle_timer(now))
        out.extend(self.signals.handle_timer(now))
        for req in sorted(r for r, p in self._stores.items() if p.deadline <= now):
            store = self._stores.pop(req)
            store.reason = store.reason or "timeout"
            out.append(self._publish_done(store))
        if now >= self._next_expire:
            self._next_expire = now + self.config.expire_interval_s
            self.store.expire(now)
            for node in [n for n, h in self._early_stores.items() if h[0] < now]:
                del self._early_stores[node]
            stale = [k for k in self._last_notified if k not in self.watching]
            for key in stale:
                del self._last_notified[key]
                self._last_group.pop(key, None)
            for node in [n for n, t in self._promoted.items() if now - t > 120.0]:
                del self._promoted[node]
        if now >= self._next_resubscribe:
            self._next_resubscribe = now + self.config.resubscribe_interval_s
            out.extend(self._subscribe(sorted(self.watching), now))
        if now >= self._next_election:
            self._next_election = now + self.config.election.interval_s
            out.extend(self._elect(now))
        return out

    def _next_req(self) -> int:
        self._req += 1
        return self._req


def _merge(current: list[Record], new: list[Record]) -> list[Record]:
    """Keep the newest record of each kind."""
    by_kind = {r.kind: r for r in current}
    for record in new:
        old = by_kind.get(record.kind)
        if old is None or record.seq >= old.seq:
            by_kind[record.kind] = record
    return [by_kind[k] for k in sorted(by_kind)]


def _store_batches(batches: dict[NodeId, list[Record]]) -> list[Send]:
    """Unacknowledged Store messages (hand-over), each small enough for the wire."""
    out: list[Send] = []
    for dest in sorted(batches):
        records = batches[dest]
        for i in range(0, len(records), RECORDS_PER_BATCH):
            out.append((dest, Store(0, records[i : i + RECORDS_PER_BATCH])))
    return out
