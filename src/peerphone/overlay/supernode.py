"""A supernode's core: serving clients, the directory replica, lookups, watches, election.

Built in layers: the state (supernode_base.py), presence watches (watches.py), replication
and hand-over (replication.py), and here clients, lookups, signaling, election and timers.

Composes `Membership` (who the other supernodes are) and `RecordStore` (the records this
node holds as a replica). Clients attach under admission control; their publishes are
replicated to the `replication` successors of the user's key; lookups ask two replicas and
return the freshest valid record; presence watches are subscriptions at the replicas.
"""

from __future__ import annotations

from peerphone.identity import NodeId
from peerphone.overlay import election
from peerphone.overlay.replication import Replication, _store_batches
from peerphone.overlay.supernode_base import ClientEntry as ClientEntry
from peerphone.overlay.supernode_base import SupernodeConfig as SupernodeConfig
from peerphone.overlay.supernode_base import TurnIssuer as TurnIssuer
from peerphone.records import (
    Capacity,
    Record,
    user_key,
)
from peerphone.wire import (
    MAX_HINTS,
    Attach,
    AttachAccept,
    AttachRedirect,
    Detach,
    Fetch,
    FetchResult,
    Lookup,
    LookupResult,
    Message,
    Promote,
    ReasonCode,
    Redirect,
    Signal,
    SignalAck,
    SignalRelay,
    SignalRelayAck,
    Store,
    TurnGrant,
    TurnRequest,
)
from peerphone.wire import Send as Send


class SupernodeCore(Replication):
    """The supernode role of one node (sans-I/O)."""

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

    # -- watches ----------------------------------------------------------------------------

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
