"""One-hop supernode membership with SWIM-style failure detection.

Every supernode knows every other one. Each probe interval a member pings the next member
of a shuffled round-robin; a missing ack within `probe_timeout_s` triggers indirect probes
through `indirect_probes` others; a member not heard of by the end of the interval becomes
SUSPECT, and DEAD after `suspicion_timeout_s` unless it refutes by re-signing its member
record with a higher incarnation (= record sequence). Updates ride on probes (piggy-backed),
each repeated `gossip_multiplier * ceil(log2(n + 1))` times.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peerphone.errors import RecordRejected
from peerphone.identity import KeyPair, NodeId, SignatureVerifier, node_id_of
from peerphone.overlay.independence import host_group, record_group
from peerphone.overlay.ring import Ring, position_of
from peerphone.records import MemberBody, Record, RecordKind, check_record, make_record
from peerphone.wire import (
    MAX_GOSSIP_PER_MESSAGE,
    Ack,
    Gossip,
    IndirectAck,
    Join,
    MembershipPage,
    MemberState,
    Message,
    Ping,
    PingReq,
    Send,
)

Change = tuple[NodeId, bytes, bool]  # (node, ring position, joined) for the directory

MEMBERSHIP_PAGE_SIZE = 256  # member records per MembershipPage
MAX_MEMBERS = 200_000  # one-hop table bound: 100 k supernodes x ~200 B = 20 MB
TOMBSTONE_TTL_S = 3600.0  # how long a dead member's incarnation is remembered
MAX_TOMBSTONES = 10_000
REJOIN_EVERY_PROBES = 5  # every 5th probe interval, ping one dead member: heals partitions
LEAVE_FANOUT = 8  # members told directly when this supernode leaves
MAX_ASKED = 64  # supernodes whose membership pages we are waiting for
JOIN_ANSWER_S = 30.0  # how long pages are taken from a supernode we asked
MAX_DIAL_BACKS = 16  # joiners waiting for our dial-back at once
DIAL_BACK_S = 15.0  # a dial-back not reported by then counts as failed


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing and fan-out of failure detection and dissemination."""

    probe_interval_s: float = 2.0
    probe_timeout_s: float = 0.8  # wait for a direct ack before asking others
    indirect_probes: int = 3
    suspicion_timeout_s: float = 6.0
    gossip_multiplier: int = 3
    member_ttl_s: float = 86_400.0  # expiry of our own signed member record
    # supernodes (ourselves included) in one public /24 (/48): an attacker's supernodes
    # usually share a network, votes on a name count one per range (overlay.independence),
    # and a range has this many ring positions (overlay.ring.position_of)
    max_members_per_range: int = 4
    # admit a joiner only once we reached it at its record's first address, on a connection
    # of our own (the runtime dials; the simulator and unit tests have no sockets)
    dial_back: bool = False


@dataclass(slots=True)
class Member:
    """What this supernode believes about another one."""

    record: Record
    node: NodeId
    incarnation: int
    state: MemberState
    suspect_until: float = 0.0
    load: int = 0


@dataclass(slots=True)
class _Probe:
    target: NodeId
    seq: int
    indirect_at: float
    give_up_at: float
    acked: bool = False
    indirect_sent: bool = False


class Membership:
    """The SWIM state machine of one supernode (sans-I/O)."""

    def __init__(
        self,
        keys: KeyPair,
        body: MemberBody,
        now: float,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: MembershipConfig | None = None,
    ) -> None:
        self.keys = keys
        self.me: NodeId = keys.node_id
        self.config = config or MembershipConfig()
        self.rng = rng
        self.verifier = verifier
        self.body = body
        self.incarnation = 0
        self.record = self._sign(now)
        self.members: dict[NodeId, Member] = {}
        self.tombstones: dict[NodeId, tuple[int, float]] = {}  # node -> (incarnation, until)
        self.ring = Ring()
        self.changes: list[Change] = []  # ring moves, for the directory's hand-over
        self.load = 0  # our own attached clients, set by the supernode core
        self._gossip: deque[list[object]] = deque()  # [Gossip, remaining sends]
        self._order: list[NodeId] = []
        self._next_probe = now + rng.uniform(0.0, self.config.probe_interval_s)
        self._probe: _Probe | None = None
        self._seq = 0
        self._relays: dict[int, tuple[NodeId, int, NodeId, float]] = {}
        self.left = False
        self._suspects: dict[NodeId, float] = {}  # suspect -> deadline (kept small)
        self._probes_started = 0
        self._asked: dict[NodeId, float] = {}  # supernode -> until when its pages are taken
        self._range_of: dict[NodeId, bytes] = {}  # supernode -> its public range (if any)
        self._in_range: dict[bytes, set[NodeId]] = {}  # public range -> supernodes in it
        self.refused: dict[str, int] = {}  # member records refused, by reason
        self._count_range(self.me, record_group(self.record))
        self._place(self.me)
        self.changes.clear()
        # the IP a peer's link comes from, where the runtime tells (NodeCore.link_up); the
        # simulator has no addresses on its links: None
        self.peer_host: Callable[[NodeId], str | None] = _unknown_host
        self._admitting: dict[NodeId, tuple[Record, float]] = {}  # joiner -> (record, until)
        self.dial_backs: list[tuple[NodeId, str]] = []  # (joiner, address) for the runtime

    # -- own record -----------------------------------------------------------------------

    def _sign(self, now: float) -> Record:
        expires_ms = int((now + self.config.member_ttl_s) * 1000)
        return make_record(RecordKind.MEMBER, self.keys, self.incarnation, expires_ms, self.body)

    def _refute(self, incarnation: int, now: float) -> None:
        self.incarnation = max(self.incarnation, incarnation) + 1
        self.record = self._sign(now)
        self._enqueue(Gossip(MemberState.ALIVE, self.me, self.incarnation, self.record))

    # -- gossip ---------------------------------------------------------------------------

    def _enqueue(self, item: Gossip) -> None:
        repeats = self.config.gossip_multiplier * math.ceil(math.log2(len(self.members) + 2))
        self._gossip.append([item, repeats])

    def _take_gossip(self) -> list[Gossip]:
        out: list[Gossip] = []
        seen: set[bytes] = set()
        for _ in range(min(len(self._gossip), MAX_GOSSIP_PER_MESSAGE)):
            slot = self._gossip.popleft()
            item = slot[0]
            assert isinstance(item, Gossip)
            if item.node in seen:
                continue  # an older update about the same node: the newer one wins
            seen.add(item.node)
            out.append(item)
            slot[1] = int(slot[1]) - 1  # type: ignore[call-overload]
            if int(slot[1]) > 0:  # type: ignore[call-overload]
                self._gossip.append(slot)
        return out

    def apply_gossip(self, items: list[Gossip], now: float, src: NodeId | None = None) -> None:
        """Apply updates; from `src` that is not a member, only what it says about itself
        (its own record or departure) or about us (we refute a death notice: a healed
        partition): an outsider neither adds others nor kills members."""
        seen_from: str | None = None
        if src is not None and src not in self.members:
            items = [item for item in items if item.node in (src, self.me)]
            seen_from = self.peer_host(src)  # introducing itself: the same check as a Join
            if self.config.dial_back:  # and the same dial-back
                for item in items:
                    if item.node == src and item.record is not None:
                        self._admit(item.record, src, now)
                items = [item for item in items if item.node == self.me]
        for item in items:
            if item.node == self.me:
                if item.state in (MemberState.SUSPECT, MemberState.DEAD) and (
                    item.incarnation >= self.incarnation
                ):
                    self._refute(item.incarnation, now)
                continue
            if item.state is MemberState.ALIVE:
                if item.record is not None:
                    self.add_record(item.record, now, seen_from)
                continue
            member = self.members.get(NodeId(item.node))
            if member is None or item.incarnation < member.incarnation:
                continue
            if item.state is MemberState.SUSPECT:
                if member.state is MemberState.ALIVE or item.incarnation > member.incarnation:
                    member.incarnation = item.incarnation
                    self._suspect(member, now)
            else:
                self._remove(member.node, item.incarnation, item.state, now)

    def add_record(self, record: Record, now: float, seen_from: str | None = None) -> bool:
        """Learn a (self-signed) member record; True if it changed what we know.

        `seen_from`: the IP the record's owner itself sent it from (a Join). Its public
        range must be the one the record claims, so a supernode cannot vote for a range it
        does not sit in; and a range holds at most `max_members_per_range` members."""
        try:
            body = check_record(record, now, self.verifier)
        except RecordRejected:
            return False
        if record.kind is not RecordKind.MEMBER or not isinstance(body, MemberBody):
            return False
        node = node_id_of(record.owner)
        if node == self.me:
            return False
        tomb = self.tombstones.get(node)
        if tomb is not None and record.seq <= tomb[0]:
            return False
        member = self.members.get(node)
        if member is not None and record.seq <= member.incarnation:
            return False
        if member is None and len(self.members) >= MAX_MEMBERS:
            return False
        group = record_group(record)
        seen = seen_from if seen_from is not None else self.peer_host(node)
        if seen is not None and group != host_group(seen):
            return self._refuse("address not the one its link comes from")
        moves = group is not None and group != self._range_of.get(node)
        if moves and len(self._in_range.get(group or b"", ())) >= self.config.max_members_per_range:
            return self._refuse("address range full")
        self.tombstones.pop(node, None)
        if member is None:
            self.members[node] = Member(record, node, record.seq, MemberState.ALIVE)
        if member is None or group != self._range_of.get(node):
            self._count_range(node, group)
            self._place(node)
        if member is not None:
            member.record = record
            member.incarnation = record.seq
            member.state = MemberState.ALIVE
            self._suspects.pop(node, None)
        self._enqueue(Gossip(MemberState.ALIVE, node, record.seq, record))
        return True

    def _refuse(self, reason: str) -> bool:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return False

    def check_link(self, node: NodeId, host: str, now: float) -> None:
        """A link to `node` comes from (or was dialled to) `host`. A member whose link is
        not in the public range its record claims is removed: its record would otherwise
        choose its ring position and count its vote for a range it does not sit in."""
        member = self.members.get(node)
        if member is None or record_group(member.record) == host_group(host):
            return
        self._refuse("address not the one its link comes from")
        self._remove(node, member.incarnation, MemberState.DEAD, now)

    def _count_range(self, node: NodeId, group: bytes | None) -> None:
        """Move `node` to `group` in the per-range sets (None: out of them); re-place the
        range it left."""
        old = self._range_of.pop(node, None)
        if old is not None:
            left = self._in_range[old]
            left.discard(node)
            if not left:
                del self._in_range[old]
            else:
                self._place_range(old)
        if group is not None:
            self._range_of[node] = group
            self._in_range.setdefault(group, set()).add(node)

    def _place(self, node: NodeId) -> None:
        """Put `node` (and the rest of its range, whose ranks may shift) on the ring."""
        group = self._range_of.get(node)
        if group is None:
            self._move(node, position_of(node, None, 0))
        else:
            self._place_range(group)

    def _place_range(self, group: bytes) -> None:
        ranked = sorted(self._in_range.get(group, ()))
        moves = [(n, position_of(n, group, rank)) for rank, n in enumerate(ranked)]
        moves = [(n, p) for n, p in moves if self.ring.position(n) != p]
        for node, _ in moves:  # off first: ranks swap places within the range
            old = self.ring.position(node)
            if old is not None:
                self.ring.remove(node)
                self.changes.append((node, old, False))
        for node, position in moves:
            self._move(node, position)

    def _move(self, node: NodeId, position: bytes) -> None:
        old = self.ring.position(node)
        if old == position:
            return
        if not self.ring.add(node, position):
            self._refuse("ring position taken")  # a hash collision: never in practice
            return
        if old is not None:
            self.changes.append((node, old, False))
        self.changes.append((node, position, True))

    def position(self, node: NodeId) -> bytes | None:
        """Where `node` sits on our ring (None: not a member we know)."""
        return self.ring.position(node)

    def _remove(self, node: NodeId, incarnation: int, state: MemberState, now: float) -> None:
        member = self.members.pop(node, None)
        if member is None:
            return
        self._suspects.pop(node, None)
        if len(self.tombstones) >= MAX_TOMBSTONES:
            del self.tombstones[next(iter(self.tombstones))]
        self.tombstones[node] = (incarnation, now + TOMBSTONE_TTL_S)
        position = self.ring.position(node)
        if self.ring.remove(node) and position is not None:
            self.changes.append((node, position, False))
        self._count_range(node, None)
        self._enqueue(Gossip(state, node, incarnation, None))

    # -- messages -------------------------------------------------------------------------

    def receive(self, msg: Message, src: NodeId, now: float) -> list[Send]:
        """Dispatch a membership message (Ping, Ack, PingReq, IndirectAck, Join, page)."""
        handler = _HANDLERS.get(type(msg))
        return handler(self, msg, src, now) if handler is not None else []

    def handle_ping(self, msg: Ping, src: NodeId, now: float) -> list[Send]:
        self._heard(src, msg.load)
        self.apply_gossip(msg.gossip, now, src)
        gossip = self._take_gossip()
        tomb = self.tombstones.get(src)
        if tomb is not None and len(gossip) < MAX_GOSSIP_PER_MESSAGE:
            # a member we declared dead is talking to us: tell it, so that it refutes
            gossip.append(Gossip(MemberState.DEAD, src, tomb[0], None))
        return [(src, Ack(msg.seq, self.load, gossip))]

    def handle_ack(self, msg: Ack, src: NodeId, now: float) -> list[Send]:
        self._heard(src, msg.load)
        self.apply_gossip(msg.gossip, now, src)
        tomb = self.tombstones.get(src)
        if tomb is not None:  # (see handle_ping) it answered our rejoin ping: tell it too
            return [(src, Ping(0, self.load, [Gossip(MemberState.DEAD, src, tomb[0], None)]))]
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            requester, their_seq, target, _ = relay
            if target == src:
                return [(requester, IndirectAck(their_seq, target))]
            return []
        probe = self._probe
        if probe is not None and probe.seq == msg.seq and probe.target == src:
            probe.acked = True
        return []

    def handle_ping_req(self, msg: PingReq, src: NodeId, now: float) -> list[Send]:
        self.apply_gossip(msg.gossip, now, src)
        target = NodeId(msg.target)
        if target not in self.members:
            return []
        self._seq += 1
        self._relays[self._seq] = (src, msg.seq, target, now + self.config.probe_interval_s)
        return [(target, Ping(self._seq, self.load, self._take_gossip()))]

    def handle_indirect_ack(self, msg: IndirectAck, src: NodeId, now: float) -> list[Send]:
        probe = self._probe
        if probe is not None and probe.seq == msg.seq and probe.target == msg.target:
            probe.acked = True
        return []

    def handle_join(self, msg: Join, src: NodeId, now: float) -> list[Send]:
        """Pages of the membership, only for a supernode that signed its own member record
        (first page, admitted from the range its link comes from) or that we already count
        as a member (later pages)."""
        if msg.offset == 0 and node_id_of(msg.record.owner) == src:
            if self.config.dial_back and src not in self.members:
                self._admit(msg.record, src, now)
                return []  # the pages follow the dial-back (dial_back_done)
            self.add_record(msg.record, now, self.peer_host(src))
        if src not in self.members:
            return []
        return [(src, self.page(msg.offset))]

    def _admit(self, record: Record, src: NodeId, now: float) -> None:
        """Ask the runtime to dial `src` back at its record's first address; the record is
        admitted (add_record) only if it answers there as itself."""
        if src in self._admitting:
            return
        try:
            body = check_record(record, now, self.verifier)
        except RecordRejected:
            return
        if not isinstance(body, MemberBody) or not body.addresses:
            return
        if record_group(record) != host_group(self.peer_host(src) or ""):
            self._refuse("address not the one its link comes from")  # never dial elsewhere
            return
        self._expire_admissions(now)
        if len(self._admitting) >= MAX_DIAL_BACKS:
            self._refuse("too many joiners at once")
            return
        self._admitting[src] = (record, now + DIAL_BACK_S)
        self.dial_backs.append((src, body.addresses[0]))

    def dial_back_done(self, node: NodeId, reached: bool, now: float) -> list[Send]:
        """The runtime's dial-back to a joiner: admit it (and send the first page) or not."""
        self._expire_admissions(now)
        pending = self._admitting.pop(node, None)
        if pending is None:
            return []
        if not reached:
            self._refuse("not reachable at its address")
            return []
        if not self.add_record(pending[0], now, self.peer_host(node)) and node not in self.members:
            return []
        return [(node, self.page(0))]

    def _expire_admissions(self, now: float) -> None:
        for node in [n for n, (_, until) in self._admitting.items() if until < now]:
            del self._admitting[node]
            self._refuse("dial-back timed out")

    def ask(self, node: NodeId, now: float) -> Send:
        """A Join asking `node` for the membership; only asked supernodes' pages count."""
        if node not in self._asked and len(self._asked) >= MAX_ASKED:
            del self._asked[min(self._asked, key=lambda n: (self._asked[n], n))]
        self._asked[node] = now + JOIN_ANSWER_S
        return (node, Join(self.record, 0))

    def handle_page(self, msg: MembershipPage, src: NodeId, now: float) -> list[Send]:
        if src not in self.members and self._asked.get(src, -1.0) < now:
            return []  # nobody asked it: an outsider cannot hand us members
        for record in msg.members:
            self.add_record(record, now)
        nxt = msg.offset + len(msg.members)
        if msg.members and nxt < msg.total:
            return [(src, Join(self.record, nxt))]
        return []

    def page(self, offset: int) -> MembershipPage:
        """Member records (ours first) from `offset`, for a joining supernode."""
        ordered = [self.record] + [self.members[n].record for n in sorted(self.members)]
        return MembershipPage(ordered[offset : offset + MEMBERSHIP_PAGE_SIZE], offset, len(ordered))

    def _heard(self, node: NodeId, load: int) -> None:
        # Hearing from a suspect does not clear it: only a higher incarnation does (SWIM).
        member = self.members.get(node)
        if member is not None:
            member.load = load

    def _suspect(self, member: Member, now: float) -> None:
        member.state = MemberState.SUSPECT
        member.suspect_until = now + self.config.suspicion_timeout_s
        self._suspects[member.node] = member.suspect_until
        self._enqueue(Gossip(MemberState.SUSPECT, member.node, member.incarnation, None))

    # -- time -----------------------------------------------------------------------------

    def next_timer(self) -> float:
        t = self._next_probe
        probe = self._probe
        if probe is not None and not probe.acked:
            t = min(t, probe.give_up_at if probe.indirect_sent else probe.indirect_at)
        if self._suspects:
            t = min(t, min(self._suspects.values()))
        return t

    def handle_timer(self, now: float) -> list[Send]:
        if self.left:
            return []
        out: list[Send] = []
        probe = self._probe
        if probe is not None and not probe.acked:
            if not probe.indirect_sent and now >= probe.indirect_at:
                probe.indirect_sent = True
                helpers = [
                    n for n in self._sample(self.config.indirect_probes + 1) if n != probe.target
                ]
                for helper in helpers[: self.config.indirect_probes]:
                    out.append((helper, PingReq(probe.seq, probe.target, self._take_gossip())))
            if now >= probe.give_up_at:
                member = self.members.get(probe.target)
                if member is not None and member.state is MemberState.ALIVE:
                    self._suspect(member, now)
                self._probe = None
        for node in [n for n, until in self._suspects.items() if until <= now]:
            member = self.members[node]
            self._remove(node, member.incarnation, MemberState.DEAD, now)
        if now >= self._next_probe:
            self._next_probe = now + self.config.probe_interval_s
            out.extend(self._start_probe(now))
            self._expire(now)
            self._probes_started += 1
            if self.tombstones and self._probes_started % REJOIN_EVERY_PROBES == 0:
                out.extend(self._rejoin_ping())
        return out

    def _rejoin_ping(self) -> list[Send]:
        """Ping one member we think dead. If it is alive (a healed partition, a false
        suspicion) each side tells the other it was declared dead, both refute with a
        higher incarnation, and the refutations spread through the usual gossip."""
        dead = sorted(self.tombstones)
        node = dead[int(self.rng.random() * len(dead))]
        note = [Gossip(MemberState.DEAD, node, self.tombstones[node][0], None)]
        return [(node, Ping(0, self.load, note))]

    def _start_probe(self, now: float) -> list[Send]:
        target = self._next_target()
        if target is None:
            self._probe = None
            return []
        self._seq += 1
        cfg = self.config
        self._probe = _Probe(
            target, self._seq, now + cfg.probe_timeout_s, now + cfg.probe_interval_s * 0.95
        )
        return [(target, Ping(self._seq, self.load, self._take_gossip()))]

    def _next_target(self) -> NodeId | None:
        while self._order:
            node = self._order.pop()
            if node in self.members:
                return node
        if not self.members:
            return None
        self._order = sorted(self.members)
        self.rng.shuffle(self._order)
        return self._order.pop()

    def _sample(self, k: int) -> list[NodeId]:
        nodes = list(self.members)
        if len(nodes) <= k:
            return sorted(nodes)
        return [nodes[i] for i in sorted(self.rng.sample(range(len(nodes)), k))]

    def _expire(self, now: float) -> None:
        for seq in [s for s, relay in self._relays.items() if relay[3] < now]:
            del self._relays[seq]
        for node in [n for n, (_, until) in self.tombstones.items() if until < now]:
            del self.tombstones[node]
        if self.record.expires() - now < self.config.member_ttl_s / 2:
            self._refute(self.incarnation, now)

    def leave(self, now: float) -> list[Send]:
        """Announce a graceful departure to a few members, who spread it."""
        self.left = True
        note = [Gossip(MemberState.LEFT, self.me, self.incarnation, None)]
        return [(n, Ping(0, 0, note)) for n in self._sample(LEAVE_FANOUT)]

    def average_load(self) -> float:
        """Mean attached clients per supernode, over what probes told us plus our own."""
        loads = [m.load for m in self.members.values()]
        loads.append(self.load)
        return sum(loads) / len(loads)


def _unknown_host(node: NodeId) -> str | None:
    return None


_HANDLERS: dict[type, Callable[[Membership, Any, NodeId, float], list[Send]]] = {
    Ping: Membership.handle_ping,
    Ack: Membership.handle_ack,
    PingReq: Membership.handle_ping_req,
    IndirectAck: Membership.handle_indirect_ack,
    Join: Membership.handle_join,
    MembershipPage: Membership.handle_page,
}
