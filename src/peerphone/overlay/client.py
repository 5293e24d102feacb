"""The ordinary node's side of the overlay: attachment, presence, lookups and watches.

A client keeps a host cache of supernode member records, attaches to a primary and a
backup, publishes its signed name and presence records through the primary and refreshes
them, and asks the primary for lookups. Refusals (admission control) come with hints of
other supernodes; failures back off exponentially with jitter.

Built in layers: the state (client_base.py), lookups and buddy presence (client_lookups.py),
and here attachment, publishing, relay credentials and timers.
"""

from __future__ import annotations

import msgspec

from peerphone.errors import LocalProtocolError, RecordRejected
from peerphone.identity import NodeId, node_id_of
from peerphone.overlay.client_base import INF, REFUSAL_MEMORY_S, AttachTry, PublishTry
from peerphone.overlay.client_base import MAX_HOST_CACHE as MAX_HOST_CACHE
from peerphone.overlay.client_base import MAX_WATCHED as MAX_WATCHED
from peerphone.overlay.client_base import PIN_MISMATCH as PIN_MISMATCH
from peerphone.overlay.client_base import ClientConfig as ClientConfig
from peerphone.overlay.client_base import ClientState as ClientState
from peerphone.overlay.client_lookups import ClientLookups
from peerphone.overlay.events import (
    Attached,
    AttachLost,
    LookupDone,
    Published,
    PublishRefused,
    TurnGranted,
)
from peerphone.records import (
    MemberBody,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    Status,
    check_record,
    make_record,
    valid_username,
)
from peerphone.wire import (
    Attach,
    AttachAccept,
    AttachRedirect,
    Detach,
    Publish,
    PublishAck,
    ReasonCode,
    Redirect,
    TurnGrant,
    TurnRequest,
    Watch,
)
from peerphone.wire import Send as Send


class ClientCore(ClientLookups):
    """Attachment, presence publishing, lookups and buddy watches of one user (sans-I/O)."""

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
            if self.allowed is not None and node not in self.allowed:
                continue  # managed mode: not one of the organisation's supernodes
            known = self.host_cache.get(node)
            if known is None and len(self.host_cache) >= MAX_HOST_CACHE:
                oldest = next(iter(self.host_cache))
                del self.host_cache[oldest]
            if known is None or record.seq >= known.seq:
                self.host_cache[node] = record

    def learn_bootstrap(self, node_ids: list[NodeId], now: float) -> list[Send]:
        """Supernodes whose addresses answered with these (authenticated) NodeIds."""
        for node in node_ids:
            if self.allowed is not None and node not in self.allowed:
                continue  # managed mode: an address answered with another node id
            if node not in self.bootstrap_ids and len(self.bootstrap_ids) < MAX_HOST_CACHE:
                self.bootstrap_ids.append(node)
        waiting = self.state is ClientState.ATTACHING and self._attach is None
        if waiting and not self.host_cache:
            self._next_attempt = now  # nothing else to try: go now rather than after back-off
        return self.handle_timer(now)

    def restrict_supernodes(self, node_ids: frozenset[NodeId]) -> None:
        """Attach only to these supernodes from now on (managed mode): every other one is
        forgotten, and none is learned again (host cache, bootstrap answers, hints)."""
        self.allowed = node_ids
        self.host_cache = {n: r for n, r in self.host_cache.items() if n in node_ids}
        self.bootstrap_ids = [n for n in self.bootstrap_ids if n in node_ids]
        self._hint = [n for n in self._hint if n in node_ids]

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

    # -- inputs -----------------------------------------------------------------------------

    def handle_attach_accept(self, msg: AttachAccept, src: NodeId, now: float) -> list[Send]:
        attach = self._attach
        if attach is None or attach.req != msg.req or attach.target != src:
            return []
        self._attach = None
        if node_id_of(msg.member.owner) != src:
            # it must accept us with its own member record, or we cannot tell who it is
            self.refused[src] = now + REFUSAL_MEMORY_S
            self._back_off(now)
            return self.handle_timer(now)
        self.learn_supernodes([msg.member, *msg.others], now)
        out: list[Send] = []
        if attach.primary:
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
        if attach is None or attach.req != msg.req or attach.target != src:
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
        if self._publish is None or self._publish.req != msg.req or src != self.primary:
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
            if self._attach is not None and self._attach.target == peer:
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
        inf = INF
        t = self._next_refresh if self._next_refresh is not None else inf
        if self._attach is not None:
            t = min(t, self._attach.deadline)  # the next attempt waits for this one to end
        elif self._next_attempt is not None:
            t = min(t, self._next_attempt)
        if self._publish is not None:
            t = min(t, self._publish.deadline)
        if self._lookups:
            for pending in self._lookups.values():
                due = pending.try_deadline if pending.sent_to is not None else pending.deadline
                t = min(t, due, pending.deadline)
        return None if t == inf else t

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        if self.state is ClientState.OFFLINE:
            return out
        if self._attach is not None and now >= self._attach.deadline:
            self.refused[self._attach.target] = now + REFUSAL_MEMORY_S
            self._attach = None
            self._back_off(now)
        if self._attach is None and self._next_attempt is not None and now >= self._next_attempt:
            self._next_attempt = None
            out.extend(self._try_attach(now))
        if self._publish is not None and now >= self._publish.deadline:
            tries = self._publish.tries
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
        self._attach = AttachTry(req, target, want_primary, now + self.config.attach_timeout_s)
        uptime_s = self.capacity.uptime_s + int(now - self.started_at)
        capacity = msgspec.structs.replace(self.capacity, uptime_s=uptime_s)
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
        self._publish = PublishTry(req, now + cfg.publish_timeout_s, tries)
        return [(self.primary, Publish(req, [name, self._presence]))]
