"""SWIM membership: probes, indirect probes, suspicion, refutation and joins, on virtual time."""

from __future__ import annotations

import random

import pytest

from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.independence import address_group
from peerphone.overlay.membership import Membership, MembershipConfig
from peerphone.overlay.ring import position_of
from peerphone.records import Capacity, MemberBody
from peerphone.wire import (
    Ack,
    Gossip,
    Join,
    MembershipPage,
    MemberState,
    Message,
    Ping,
    PingReq,
    Send,
)

CONFIG = MembershipConfig(
    probe_interval_s=2.0, probe_timeout_s=0.8, indirect_probes=3, suspicion_timeout_s=6.0
)
BODY = MemberBody(["192.0.2.1:4433"], Capacity(True, 3600, 10_000, 10_000, 100), 600)


def handle(m: Membership, msg: Message, src: NodeId, now: float) -> list[Send]:
    return m.receive(msg, src, now)


class Cluster:
    """Membership cores exchanging messages instantly (latency 0) on virtual time."""

    def __init__(self, n: int, seed: int = 7) -> None:
        self.verifier = SignatureVerifier()
        keys = random.Random(seed)
        self.members = [
            Membership(
                KeyPair.from_rng(keys), BODY, 0.0, random.Random(seed + i), self.verifier, CONFIG
            )
            for i in range(n)
        ]
        for m in self.members:
            for other in self.members:
                m.add_record(other.record, 0.0)
            m.changes.clear()
        self.down: set[NodeId] = set()
        self.by_id = {m.me: m for m in self.members}
        self.sent: list[tuple[float, NodeId, NodeId, Message]] = []

    def deliver(self, src: NodeId, sends: list[Send], now: float) -> None:
        queue = [(src, dst, msg) for dst, msg in sends]
        while queue:
            s, d, msg = queue.pop(0)
            self.sent.append((now, s, d, msg))
            if d in self.down:
                continue
            out = handle(self.by_id[d], msg, s, now)
            queue.extend((d, dst, m) for dst, m in out)

    def run_until(self, t: float) -> float:
        now = 0.0
        while True:
            live = [m for m in self.members if m.me not in self.down]
            m = min(live, key=lambda x: x.next_timer())
            now = m.next_timer()
            if now > t:
                return t
            self.deliver(m.me, m.handle_timer(now), now)


def test_first_probe_is_jittered_within_one_interval_and_then_periodic() -> None:
    c = Cluster(2)
    a = c.members[0]
    first = a.next_timer()
    assert 0.0 <= first < CONFIG.probe_interval_s
    sends = a.handle_timer(first)
    assert len(sends) == 1 and isinstance(sends[0][1], Ping)
    assert sends[0][0] == c.members[1].me
    # until the ack arrives the next wake-up is the direct-probe timeout
    assert a.next_timer() == pytest.approx(first + CONFIG.probe_timeout_s)
    c.deliver(a.me, sends, first)
    assert a.next_timer() == pytest.approx(first + CONFIG.probe_interval_s)


def test_dead_member_is_probed_indirectly_then_suspected_then_removed() -> None:
    c = Cluster(5)
    victim = c.members[4]
    c.down.add(victim.me)
    a = c.members[0]
    # find when a first probes the victim
    now = 0.0
    while True:
        now = a.next_timer()
        sends = a.handle_timer(now)
        pings = [d for d, m in sends if isinstance(m, Ping)]
        c.deliver(a.me, sends, now)
        if victim.me in pings:
            break
    t0 = now
    assert a.next_timer() == pytest.approx(t0 + 0.8)
    sends = a.handle_timer(t0 + 0.8)
    reqs = [(d, m) for d, m in sends if isinstance(m, PingReq)]
    assert len(reqs) == 3 and all(m.target == victim.me for _, m in reqs)
    assert victim.me not in [d for d, _ in reqs]
    c.deliver(a.me, sends, t0 + 0.8)
    assert a.next_timer() == pytest.approx(t0 + 2.0 * 0.95)
    a.handle_timer(t0 + 1.9)
    assert a.members[victim.me].state is MemberState.SUSPECT
    assert victim.me in a.ring
    c.deliver(a.me, a.handle_timer(t0 + 2.0), t0 + 2.0)
    assert a.next_timer() <= t0 + 1.9 + 6.0
    a.handle_timer(t0 + 1.9 + 6.0)
    assert victim.me not in a.members and victim.me not in a.ring
    assert any(n == victim.me and not joined for n, _, joined in a.changes)


def test_whole_cluster_learns_of_a_death_by_gossip() -> None:
    c = Cluster(8)
    victim = c.members[3]
    c.down.add(victim.me)
    c.run_until(40.0)
    for m in c.members:
        if m is not victim:
            assert victim.me not in m.ring, m.me.hex()[:8]


def test_suspected_member_refutes_with_higher_incarnation() -> None:
    c = Cluster(3)
    a, b = c.members[0], c.members[1]
    before = b.record.seq
    rumour = Gossip(MemberState.SUSPECT, b.me, b.incarnation, None)
    b.apply_gossip([rumour], 1.0)
    assert b.incarnation == before + 1 and b.record.seq == before + 1
    # the refutation travels with b's next message and clears the suspicion at a
    a.apply_gossip([rumour], 1.0)
    assert a.members[b.me].state is MemberState.SUSPECT
    ack = b.handle_ping(Ping(1, 0, []), a.me, 1.1)[0][1]
    assert isinstance(ack, Ack)
    a.handle_ack(ack, b.me, 1.1)
    assert a.members[b.me].state is MemberState.ALIVE
    assert a.members[b.me].incarnation == before + 1


def test_stale_gossip_cannot_kill_a_refuted_member() -> None:
    c = Cluster(3)
    a, b = c.members[0], c.members[1]
    b.apply_gossip([Gossip(MemberState.SUSPECT, b.me, 0, None)], 1.0)
    a.add_record(b.record, 1.0)
    a.apply_gossip([Gossip(MemberState.DEAD, b.me, 0, None)], 1.2)  # older incarnation
    assert b.me in a.members and b.me in a.ring


def test_join_sends_pages_and_new_member_learns_everyone() -> None:
    c = Cluster(4)
    keys = KeyPair.from_rng(random.Random(99))
    newcomer = Membership(keys, BODY, 5.0, random.Random(1), c.verifier, CONFIG)
    a = c.members[0]
    assert newcomer.ask(a.me, 5.0) == (a.me, Join(newcomer.record, 0))
    pages = a.handle_join(Join(newcomer.record, 0), newcomer.me, 5.0)
    assert newcomer.me in a.members
    assert any(n == newcomer.me and joined for n, _, joined in a.changes)
    assert len(pages) == 1 and isinstance(pages[0][1], MembershipPage)
    page = pages[0][1]
    assert page.total == 5
    assert newcomer.handle_page(page, a.me, 5.0) == []
    assert sorted(newcomer.ring.ids()) == sorted([m.me for m in c.members] + [newcomer.me])


def test_forged_member_record_is_ignored() -> None:
    c = Cluster(2)
    a = c.members[0]
    victim = c.members[1]
    forged = type(victim.record)(
        victim.record.kind,
        victim.record.owner,
        victim.record.seq + 5,
        victim.record.expires_ms,
        victim.record.body,
        bytes(64),
    )
    assert not a.add_record(forged, 1.0)
    assert a.members[victim.me].incarnation == victim.record.seq


def test_leave_tells_members_and_they_drop_it() -> None:
    c = Cluster(4)
    leaver = c.members[2]
    sends = leaver.leave(3.0)
    assert {d for d, _ in sends} == {m.me for m in c.members if m is not leaver}
    c.deliver(leaver.me, sends, 3.0)
    for m in c.members:
        if m is not leaver:
            assert leaver.me not in m.ring


def test_members_that_declared_each_other_dead_merge_again() -> None:
    """A healed partition: a rejoin ping makes both sides refute and re-add each other."""
    c = Cluster(2)
    a, b = c.members
    a.apply_gossip([Gossip(MemberState.DEAD, b.me, b.incarnation, None)], 1.0)
    b.apply_gossip([Gossip(MemberState.DEAD, a.me, a.incarnation, None)], 1.0)
    assert b.me not in a.ring and a.me not in b.ring
    c.run_until(60.0)  # rejoin pings go out every 5th probe interval
    assert b.me in a.ring and a.me in b.ring
    assert a.incarnation >= 1 and b.incarnation >= 1  # both refuted


def test_join_pages_only_for_the_record_owner_or_members() -> None:
    c = Cluster(3)
    a = c.members[0]
    outsider = KeyPair.from_rng(random.Random(1234))
    someone_else = c.members[1].record  # a valid record, but not the sender's own
    assert a.handle_join(Join(someone_else, 0), outsider.node_id, 1.0) == []
    assert a.handle_join(Join(someone_else, 1), outsider.node_id, 1.0) == []
    assert outsider.node_id not in a.members


def _member(seed: int, address: str) -> Membership:
    body = MemberBody([address], Capacity(True, 3600, 10_000, 10_000, 100), 600)
    return Membership(
        KeyPair.from_rng(random.Random(seed)), body, 1.0, random.Random(seed), SignatureVerifier()
    )


def test_an_outsider_cannot_add_members_kill_members_or_send_pages() -> None:
    c = Cluster(3)
    a, b = c.members[0], c.members[1]
    outsider, fake = _member(50, "44.7.7.5:4433"), _member(51, "45.8.8.9:4433")
    gossip = [
        Gossip(MemberState.ALIVE, fake.me, 0, fake.record),  # someone else's record
        Gossip(MemberState.DEAD, b.me, 99, None),  # a member declared dead
    ]
    a.handle_ping(Ping(1, 0, gossip), outsider.me, 1.0)
    assert fake.me not in a.members and a.members[b.me].state is MemberState.ALIVE
    # its own record it may introduce (as with a Join)
    a.handle_ping(
        Ping(2, 0, [Gossip(MemberState.ALIVE, outsider.me, 0, outsider.record)]), outsider.me, 1.0
    )
    assert outsider.me in a.members
    newcomer = _member(52, "44.7.7.7:4433")
    assert newcomer.handle_page(a.page(0), outsider.me, 1.0) == []  # never asked
    assert not newcomer.members


def test_a_joiner_is_admitted_only_from_the_range_it_claims_and_ranges_are_capped() -> None:
    a = _member(60, "192.0.2.1:4433")
    hosts: dict[bytes, str] = {}
    a.peer_host = hosts.get
    liar = _member(61, "44.9.9.5:4433")  # claims a public range it does not sit in
    hosts[liar.me] = "45.3.3.77"
    a.handle_join(Join(liar.record, 0), liar.me, 1.0)
    # nor may it introduce itself through gossip instead
    a.handle_ping(Ping(1, 0, [Gossip(MemberState.ALIVE, liar.me, 0, liar.record)]), liar.me, 1.0)
    assert liar.me not in a.members
    assert a.refused == {"address not the one its link comes from": 2}
    limit = a.config.max_members_per_range
    same_range = [_member(70 + i, f"44.1.2.{10 + i}:4433") for i in range(limit + 2)]
    for i, m in enumerate(same_range):
        hosts[m.me] = f"44.1.2.{10 + i}"
        a.handle_join(Join(m.record, 0), m.me, 1.0)
    admitted = [m for m in same_range if m.me in a.members]
    assert len(admitted) == limit
    assert a.refused["address range full"] == 2
    # private and loopback addresses count per node: an organisation's own tier, the lab
    lab = [_member(90 + i, f"10.99.0.{i + 2}:4433") for i in range(limit + 2)]
    for i, m in enumerate(lab):
        hosts[m.me] = f"10.99.0.{i + 2}"
        a.handle_join(Join(m.record, 0), m.me, 1.0)
    assert all(m.me in a.members for m in lab)


def test_a_public_supernode_cannot_choose_its_ring_position_by_grinding_keys() -> None:
    """Position = H(public range, rank in it), whatever the key: 200 fresh keys from one /24
    land on that range's few positions, never next to a name they aim at."""
    a = _member(100, "192.0.2.1:4433")
    group = address_group("44.5.6.7:4433")
    slots = {position_of(NodeId(bytes(32)), group, rank) for rank in range(4)}
    seen: set[bytes] = set()
    for i in range(200):
        grinder = _member(1000 + i, f"44.5.6.{i % 250 + 1}:4433")
        trial = _member(100, "192.0.2.1:4433")  # a fresh tier each try: rank 0
        trial.add_record(grinder.record, 1.0)
        position = trial.position(grinder.me)
        assert position is not None and position != bytes(grinder.me)
        seen.add(position)
    assert seen == {position_of(NodeId(bytes(32)), group, 0)} and seen <= slots
    # in one tier the range's members take ranks by node id, so at most 4 positions
    joiners = [_member(2000 + i, f"44.5.6.{i + 1}:4433") for i in range(4)]
    for j in joiners:
        a.add_record(j.record, 1.0)
    ranked = sorted(j.me for j in joiners)
    assert [a.position(n) for n in ranked] == [
        position_of(n, group, r) for r, n in enumerate(ranked)
    ]
    # without a public address (loopback, a lab) the position is the node id
    lab = _member(3000, "10.99.0.9:4433")
    a.add_record(lab.record, 1.0)
    assert a.position(lab.me) == bytes(lab.me)


def test_a_member_whose_link_comes_from_another_range_is_removed() -> None:
    """A record learned from gossip claims a /24 (and so a ring position and a vote) its
    owner does not sit in: the first link to it shows the real range, and out it goes; a
    newer incarnation is refused while that link stands."""
    c = Cluster(3)
    a, b = c.members[0], c.members[1]
    hosts: dict[bytes, str] = {}
    a.peer_host = hosts.get
    fake = _member(110, "44.8.8.8:4433")
    a.apply_gossip([Gossip(MemberState.ALIVE, fake.me, 0, fake.record)], 1.0, b.me)
    assert fake.me in a.members and fake.me in a.ring
    a.changes.clear()
    hosts[fake.me] = "45.1.1.1"  # where the link really comes from
    a.check_link(fake.me, "45.1.1.1", 2.0)
    assert fake.me not in a.members and fake.me not in a.ring
    assert any(n == fake.me and not joined for n, _, joined in a.changes)
    assert a.refused == {"address not the one its link comes from": 1}
    fake.incarnation = 5
    newer = fake._sign(3.0)
    a.apply_gossip([Gossip(MemberState.ALIVE, fake.me, 5, newer)], 3.0, b.me)
    assert fake.me not in a.members
    # an honest member's link from its own range changes nothing
    honest = _member(111, "44.9.9.9:4433")
    a.add_record(honest.record, 4.0)
    a.check_link(honest.me, "44.9.9.200", 4.0)
    assert honest.me in a.members


def _dialling(seed: int, address: str) -> Membership:
    body = MemberBody([address], Capacity(True, 3600, 10_000, 10_000, 100), 600)
    config = MembershipConfig(dial_back=True)
    keys = KeyPair.from_rng(random.Random(seed))
    return Membership(keys, body, 1.0, random.Random(seed), SignatureVerifier(), config)


def test_a_joiner_is_admitted_only_once_dialled_back_at_its_address() -> None:
    a = _dialling(120, "192.0.2.1:4433")
    hosts: dict[bytes, str] = {}
    a.peer_host = hosts.get
    good, hidden = _member(121, "44.2.2.2:4433"), _member(122, "44.3.3.3:4433")
    hosts[good.me], hosts[hidden.me] = "44.2.2.2", "44.3.3.3"
    assert a.handle_join(Join(good.record, 0), good.me, 1.0) == []  # no pages before
    assert a.dial_backs == [(good.me, "44.2.2.2:4433")] and good.me not in a.members
    pages = a.dial_back_done(good.me, True, 1.2)
    assert good.me in a.members and len(pages) == 1 and isinstance(pages[0][1], MembershipPage)
    # introducing itself in gossip is a join too: the same dial-back
    a.handle_ping(
        Ping(1, 0, [Gossip(MemberState.ALIVE, hidden.me, 0, hidden.record)]), hidden.me, 2.0
    )
    assert a.dial_backs[-1] == (hidden.me, "44.3.3.3:4433") and hidden.me not in a.members
    assert a.dial_back_done(hidden.me, False, 2.5) == []
    assert hidden.me not in a.members
    assert a.refused == {"not reachable at its address": 1}
    # a report nobody asked for admits nobody; a dial-back never reported times out
    assert a.dial_back_done(hidden.me, True, 2.6) == [] and hidden.me not in a.members
    late = _member(123, "44.4.4.4:4433")
    hosts[late.me] = "44.4.4.4"
    a.handle_join(Join(late.record, 0), late.me, 3.0)
    assert a.dial_back_done(late.me, True, 3.0 + 60.0) == [] and late.me not in a.members
    assert a.refused["dial-back timed out"] == 1
    # never dial an address outside the range the joiner's link comes from
    liar = _member(124, "44.5.5.5:4433")
    hosts[liar.me] = "45.9.9.9"
    a.handle_join(Join(liar.record, 0), liar.me, 70.0)
    assert all(node != liar.me for node, _ in a.dial_backs)
    assert a.refused["address not the one its link comes from"] == 1
