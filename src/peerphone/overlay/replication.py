"""The directory's replication at a supernode: publishes replicated to a key's replicas,
the replica side of Store, and hand-over when the ring changes."""

from __future__ import annotations

from collections.abc import Iterable

from peerphone.errors import RecordRejected
from peerphone.identity import NodeId
from peerphone.overlay.directory import Verdict
from peerphone.overlay.ring import in_arc, keys_in_arc
from peerphone.overlay.supernode_base import (
    EARLY_STORE_TTL_S,
    MAX_EARLY_STORE_RECORDS,
    MAX_EARLY_STORE_SENDERS,
    PendingStore,
)
from peerphone.overlay.watches import PresenceWatches
from peerphone.records import (
    NameBody,
    PresenceBody,
    Record,
    check_record,
    user_key,
)
from peerphone.wire import (
    RECORDS_PER_BATCH,
    Publish,
    PublishAck,
    ReasonCode,
    Send,
    Store,
    StoreAck,
)


class Replication(PresenceWatches):
    """The replication part of the supernode role."""

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
        pending = PendingStore(
            src, msg.req, outstanding, accepted, now + self.config.store_timeout_s, reason
        )
        pending.key, pending.records = key, records
        pending.taken = 1 if reason == ReasonCode.NAME_TAKEN else 0
        if not outstanding:
            return [*out, self._publish_done(pending)]
        self._stores[req] = pending
        return out

    def _publish_done(self, pending: PendingStore) -> Send:
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
