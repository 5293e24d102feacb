"""Measured eligibility: candidates dialled back by two other supernodes before a promotion.

The cores alone (promoter and verifier sides, their bounds), then a tier on the fake network
whose "runtime" answers the dial-backs from a ground truth: a node behind a NAT is never
promoted, whatever it claims; a public one is; a node that reports more than it has is not
preferred for it.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from peerphone.identity import KeyPair, NodeId
from peerphone.overlay.election import ElectionConfig
from peerphone.overlay.events import PromotionChecked, ReachDial
from peerphone.overlay.node import NodeCore
from peerphone.overlay.reachability import (
    ADDRESS_WINDOW_S,
    CHECK_TIMEOUT_S,
    MAX_DIALS_IN_FLIGHT,
    MAX_DIALS_PER_IP,
    MAX_REQUESTS_PER_MEMBER,
    MAX_VERIFIERS_ASKED,
    MEMBER_WINDOW_S,
    RECHECK_AFTER_S,
    ReachChecks,
    ReachVerifier,
)
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Capacity
from peerphone.wire import Promote, ReachCheck, ReachEcho, ReachProbe, ReachResult, Send
from tests.support.fakenet import FakeNet

KEYS = [KeyPair.from_rng(random.Random(i)) for i in range(8)]
IDS = [k.node_id for k in KEYS]
ME, CANDIDATE, MEMBERS = IDS[0], IDS[1], IDS[2:]
UDP, TCP = "198.51.100.7:40001", "tcp://198.51.100.7:443"


def started(rng_seed: int = 1) -> tuple[ReachChecks, dict[NodeId, int]]:
    checks = ReachChecks(ME, random.Random(rng_seed))
    out = checks.start(CANDIDATE, UDP, TCP, [ME, CANDIDATE, *MEMBERS], 100.0)
    asked: dict[NodeId, int] = {}
    for dest, msg in out:
        assert isinstance(msg, ReachCheck)
        assert (msg.node, msg.udp, msg.tcp) == (bytes(CANDIDATE), UDP, TCP)
        asked[dest] = msg.req
    return checks, asked


def result(
    req: int, reached: bool, declined: bool = False, node: NodeId = CANDIDATE
) -> ReachResult:
    return ReachResult(req, bytes(node), reached, declined, "why")


# --- the promoter's side ----------------------------------------------------------------------


def test_a_check_asks_other_members_never_itself_nor_the_candidate() -> None:
    checks, asked = started()
    assert len(asked) == MAX_VERIFIERS_ASKED
    assert ME not in asked and CANDIDATE not in asked
    assert set(asked) <= set(MEMBERS)
    assert not checks.may_check(CANDIDATE, 101.0)  # being checked


def test_two_reaches_promote() -> None:
    checks, asked = started()
    first, second, *_ = sorted(asked)
    checks.handle_result(result(asked[first], True), first, 101.0)
    assert checks.verdicts == []  # one is not enough
    checks.handle_result(result(asked[second], True), second, 102.0)
    assert [(v.node, v.reachable) for v in checks.verdicts] == [(CANDIDATE, True)]


def test_one_failed_dial_fails_and_the_candidate_waits_before_a_new_check() -> None:
    checks, asked = started()
    first, second, *_ = sorted(asked)
    checks.handle_result(result(asked[first], True), first, 101.0)
    checks.handle_result(result(asked[second], False), second, 102.0)
    assert [(v.node, v.reachable) for v in checks.verdicts] == [(CANDIDATE, False)]
    assert "dial-back failed" in checks.verdicts[0].reason
    assert not checks.may_check(CANDIDATE, 102.0 + RECHECK_AFTER_S - 1)
    checks.handle_timer(102.0 + RECHECK_AFTER_S)
    assert checks.may_check(CANDIDATE, 102.0 + RECHECK_AFTER_S)


def test_declines_fail_only_when_two_reaches_became_impossible() -> None:
    checks, asked = started()
    order = sorted(asked)
    checks.handle_result(result(asked[order[0]], False, declined=True), order[0], 101.0)
    checks.handle_result(result(asked[order[1]], False, declined=True), order[1], 101.0)
    assert checks.verdicts == []  # two verifiers still to answer
    checks.handle_result(result(asked[order[2]], False, declined=True), order[2], 101.0)
    assert [v.reachable for v in checks.verdicts] == [False]
    assert "too few" in checks.verdicts[0].reason


def test_answers_from_others_or_about_others_are_ignored() -> None:
    checks, asked = started()
    first, second, *_ = sorted(asked)
    checks.handle_result(result(asked[first], True), second, 101.0)  # wrong sender
    checks.handle_result(result(asked[second], True, node=IDS[7]), second, 101.0)  # other node
    checks.handle_result(result(999, True), first, 101.0)  # unknown request
    checks.handle_result(result(asked[first], True), first, 101.0)
    checks.handle_result(result(asked[first], True), first, 101.0)  # a repeat counts once
    assert checks.verdicts == []


def test_a_check_times_out() -> None:
    checks, _ = started()
    assert checks.next_timer() == 100.0 + CHECK_TIMEOUT_S
    checks.handle_timer(100.0 + CHECK_TIMEOUT_S - 0.1)
    assert checks.verdicts == []
    checks.handle_timer(100.0 + CHECK_TIMEOUT_S)
    assert [(v.reachable, v.reason) for v in checks.verdicts] == [(False, "dial-back timed out")]
    assert checks.next_timer() is None


def test_without_two_other_members_nobody_is_promoted() -> None:
    checks = ReachChecks(ME, random.Random(1))
    assert checks.start(CANDIDATE, UDP, TCP, [ME, CANDIDATE, MEMBERS[0]], 0.0) == []
    assert [v.reachable for v in checks.verdicts] == [False]


# --- the verifier's side ----------------------------------------------------------------------


def check(req: int, udp: str = UDP, tcp: str = TCP, node: NodeId = CANDIDATE) -> ReachCheck:
    return ReachCheck(req, bytes(node), udp, tcp)


def test_a_member_gets_a_dial_and_then_the_answer() -> None:
    verifier = ReachVerifier(ME)
    assert verifier.handle_check(check(7), MEMBERS[0], True, 0.0) == []
    assert verifier.dials == [ReachDial(bytes(MEMBERS[0]), 7, bytes(CANDIDATE), UDP, TCP)]
    out = verifier.dial_done(MEMBERS[0], 7, True, False, "reached over UDP and TCP")
    assert out == [
        (MEMBERS[0], ReachResult(7, bytes(CANDIDATE), True, False, "reached over UDP and TCP"))
    ]
    assert verifier.dial_done(MEMBERS[0], 7, True, False, "again") == []  # answered once


def test_an_outsider_cannot_make_us_dial() -> None:
    verifier = ReachVerifier(ME)
    assert verifier.handle_check(check(7), IDS[7], False, 0.0) == []
    assert verifier.dials == []


def declined(out: list[Send]) -> str:
    assert len(out) == 1
    msg = out[0][1]
    assert isinstance(msg, ReachResult) and msg.declined and not msg.reached
    return msg.reason


def test_only_one_ip_and_real_endpoints_are_dialled() -> None:
    verifier = ReachVerifier(ME)
    assert "another IP" in declined(
        verifier.handle_check(check(1, tcp="tcp://192.0.2.9:443"), MEMBERS[0], True, 0.0)
    )
    for udp, tcp in (("nonsense", ""), ("tcp://198.51.100.7:1", ""), (UDP, "198.51.100.7:443")):
        assert "address" in declined(
            verifier.handle_check(check(2, udp, tcp), MEMBERS[0], True, 0.0)
        )
    assert "itself" in declined(verifier.handle_check(check(3, node=ME), MEMBERS[0], True, 0.0))
    assert verifier.dials == []


def test_a_member_may_ask_only_so_many_checks() -> None:
    verifier = ReachVerifier(ME)
    for req in range(MAX_REQUESTS_PER_MEMBER):
        udp = f"198.51.100.{req + 1}:4433"
        assert verifier.handle_check(check(req, udp, ""), MEMBERS[0], True, 0.0) == []
        verifier.dial_done(MEMBERS[0], req, False, False, "x")
    over = check(99, "198.51.100.99:4433", "")
    assert "too many" in declined(verifier.handle_check(over, MEMBERS[0], True, 1.0))
    assert verifier.handle_check(over, MEMBERS[0], True, MEMBER_WINDOW_S + 0.1) == []


def test_one_ip_is_dialled_only_so_often_whoever_asks() -> None:
    verifier = ReachVerifier(ME)
    for i in range(MAX_DIALS_PER_IP):
        assert verifier.handle_check(check(i), MEMBERS[i], True, 0.0) == []
        verifier.dial_done(MEMBERS[i], i, False, False, "x")
    assert "too often" in declined(verifier.handle_check(check(50), MEMBERS[5], True, 1.0))
    assert verifier.handle_check(check(51), MEMBERS[5], True, ADDRESS_WINDOW_S + 0.1) == []


def test_dials_at_once_are_bounded() -> None:
    verifier = ReachVerifier(ME)
    asked = 0
    for member in MEMBERS:
        for n in range(2):
            udp = f"203.0.113.{asked + 1}:4433"
            assert verifier.handle_check(check(n, udp, ""), member, True, 0.0) == []
            asked += 1
            if asked == MAX_DIALS_IN_FLIGHT:
                break
        if asked == MAX_DIALS_IN_FLIGHT:
            break
    assert len(verifier.dials) == MAX_DIALS_IN_FLIGHT
    assert (
        declined(verifier.handle_check(check(9, "203.0.113.200:1", ""), IDS[7], True, 0.0))
        == "busy"
    )


@given(st.text(max_size=64), st.text(max_size=64), st.binary(min_size=32, max_size=32))
def test_any_request_is_dialled_or_declined_never_raises(udp: str, tcp: str, node: bytes) -> None:
    verifier = ReachVerifier(ME)
    out = verifier.handle_check(ReachCheck(1, node, udp, tcp), MEMBERS[0], True, 0.0)
    assert len(out) + len(verifier.dials) == 1


# --- a tier on the fake network ---------------------------------------------------------------

ELECTION = ElectionConfig(
    high_water=1,
    low_water=0.5,
    min_supernodes=4,
    interval_s=2.0,
    promote_cooldown_s=12.0,  # a verifier answers a member 6 checks a minute
    min_uptime_s=0,
    min_up_kbps=0,
    min_cpu_score=0,
    verify_reachability=True,
    min_attached_s=5.0,
)
CONFIG = SupernodeConfig(max_clients=50, election=ELECTION)
HONEST = Capacity(False, 600, 1_000, 1_000, 100, 4433, 443)
LIAR = Capacity(True, 10**9, 10**9, 10**9, 10**9, 4433, 443)


class Tier:
    """A tier of four supernodes whose dial-backs a ground truth answers: `public` nodes are
    reached, others (behind a NAT) not; a supernode linked to the candidate declines."""

    def __init__(self, seed: int) -> None:
        self.net = FakeNet(seed=seed)
        self.tier = self.net.supernodes([f"sn{i}" for i in range(4)], CONFIG)
        self.public: set[NodeId] = set()
        self.ip: dict[NodeId, str] = {}
        self.dials = 0

    def user(self, name: str, capacity: Capacity, public: bool) -> NodeCore:
        user = self.net.node(name, capacity=capacity, supernode=CONFIG)
        self.ip[user.id] = f"198.51.100.{len(self.ip) + 1}"
        if public:
            self.public.add(user.id)
        assert self.tier[0].supernode is not None  # every primary there: it is the one to act
        user.learn_supernodes([self.tier[0].supernode.record], self.net.now)
        self.net.call(user, user.login(self.net.now))
        return user

    def run(self, until: float) -> None:
        while self.net.now < until:
            self.net.run_until(self.net.now + 0.5)
            for core in self.tier:
                self._links(core)
                self._answer(core)

    def _links(self, core: NodeCore) -> None:
        for node, ip in self.ip.items():
            sn = core.supernode
            if sn is not None and node in sn.clients and node not in core.peer_hosts:
                # the runtime reports the address each link comes from
                self.net.send(core.id, core.link_up(node, ip, self.net.now, 40_000))

    def _answer(self, core: NodeCore) -> None:
        events = self.net.events[core.id]
        for event in [e for e in events if isinstance(e, ReachDial)]:
            events.remove(event)
            node = NodeId(event.node)
            assert event.udp == f"{self.ip[node]}:40000"  # where its link comes from
            tcp_port = self.net.nodes[node].client.capacity.tcp_port
            assert event.tcp == (f"tcp://{self.ip[node]}:{tcp_port}" if tcp_port else "")
            linked = core.supernode is not None and node in core.supernode.clients
            self.dials += not linked
            reached = node in self.public and not linked
            out = core.reach_dial_done(
                NodeId(event.asker), event.req, reached, linked, "ground truth", self.net.now
            )
            self.net.send(core.id, out)

    def checked(self) -> list[PromotionChecked]:
        return [
            e for c in self.tier for e in self.net.events[c.id] if isinstance(e, PromotionChecked)
        ]


def test_only_the_public_node_is_promoted_the_one_behind_a_nat_never() -> None:
    tier = Tier(seed=11)
    natted = tier.user("natted", LIAR, public=False)  # claims everything, even reachability
    public = tier.user("public", HONEST, public=True)
    filler = [tier.user(f"f{i}", Capacity(), public=False) for i in range(3)]
    tier.run(120.0)
    assert public.supernode is not None
    assert natted.supernode is None
    assert not any(u.supernode for u in filler)
    promoted = {e.node for e in tier.checked() if e.promoted}
    refused = [e for e in tier.checked() if e.node == natted.id]
    assert promoted == {bytes(public.id)}
    assert refused and all(not e.promoted and "dial-back failed" in e.reason for e in refused)
    assert tier.dials >= 2  # the NAT'd node was really dialled, not skipped
    promote_to = {dst for _, _, dst, msg in tier.net.sent_log if isinstance(msg, Promote)}
    assert promote_to == {public.id}


def test_a_node_that_reports_more_than_it_has_is_not_preferred() -> None:
    tier = Tier(seed=12)
    honest = tier.user("honest", HONEST, public=True)
    tier.run(10.0)  # the honest node has been attached longer when the liar logs in
    liar = tier.user("liar", LIAR, public=True)
    filler = [tier.user(f"f{i}", Capacity(), public=False) for i in range(3)]
    tier.run(30.0)
    order = [e.node for e in tier.checked() if e.promoted]
    assert order and order[0] == bytes(honest.id), order
    assert not any(u.supernode for u in filler)
    del liar


def test_a_busy_node_does_not_take_the_promotion() -> None:
    tier = Tier(seed=13)
    public = tier.user("public", HONEST, public=True)
    public.serve_veto = "owner in a call"
    for i in range(4):
        tier.user(f"f{i}", Capacity(), public=False)
    tier.run(60.0)
    assert any(e.promoted for e in tier.checked())  # the tier asked
    assert public.supernode is None  # and it declined while busy


def test_the_promoters_own_user_is_never_its_candidate() -> None:
    """A supernode's own user is its client too (attached longest, no link): skipped, and
    the others are still checked (a regression: it hid every other candidate)."""
    tier = Tier(seed=14)
    promoter = tier.tier[0]
    assert promoter.supernode is not None
    promoter.learn_supernodes([promoter.supernode.record], 0.0)
    tier.net.call(promoter, promoter.login(0.0))
    tier.run(10.0)
    assert promoter.id in promoter.supernode.clients
    public = tier.user("public", HONEST, public=True)
    for i in range(3):
        tier.user(f"f{i}", Capacity(), public=False)
    tier.run(80.0)
    assert public.supernode is not None
    assert all(e.node != bytes(promoter.id) for e in tier.checked())


def test_every_node_echoes_a_dial_backs_nonce_and_nothing_else() -> None:
    net = FakeNet(seed=15)
    node = net.node("anyone")
    nonce = bytes(range(16))
    assert node.receive(ReachProbe(nonce), IDS[3], 0.0) == [(IDS[3], ReachEcho(nonce))]
    errors = node.errors
    assert node.receive(ReachEcho(nonce), IDS[3], 0.0) == []  # only a dial-back reads it
    assert node.errors == errors + 1
    # a client (no supernode role) is asked to verify: not a member's job, dropped
    assert node.receive(ReachCheck(1, bytes(IDS[4]), UDP, TCP), IDS[3], 0.0) == []
