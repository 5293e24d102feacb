"""Presence watches at a supernode: its clients' watches, subscriptions at the replicas,
and the notifications that flow back (the subscription lives at one replica per key)."""

from __future__ import annotations

from collections.abc import Iterable

from peerphone.errors import RecordRejected
from peerphone.identity import NodeId
from peerphone.overlay.supernode_base import (
    MAX_WATCHES_PER_CLIENT,
    WATCH_FANOUT,
    SupernodeState,
)
from peerphone.records import (
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    check_record,
    user_key,
)
from peerphone.wire import (
    RECORDS_PER_BATCH,
    Notify,
    PresenceUpdate,
    Send,
    Subscribe,
    Watch,
)


class PresenceWatches(SupernodeState):
    """The watch part of the supernode role."""

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
