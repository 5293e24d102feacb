"""Dial-backs on real sockets: a verifier reaches a candidate over UDP and the TCP carrier
on a connection of its own, and counts it only if the candidate answers as itself and
echoes the nonce on that connection (runtime/links.py `probe`, overlay/reachability.py).

A candidate patched to stay silent (it authenticates, but never echoes) is not reached; nor
is the right address with the wrong identity, nor an address where nothing listens. And
a whole check through the runtime: the verifier dials both transports and answers the
asking member.
"""

from __future__ import annotations

import asyncio
import os
import random

from peerphone.endpoints import Address
from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.nat.addrfilter import AddressFilter
from peerphone.overlay.events import ReachDial
from peerphone.overlay.node import NodeCore
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.runtime.tcp_carrier import dialled
from peerphone.wire import Message, ReachCheck, ReachProbe, ReachResult, Send
from tests.support.loopback_net import LOOPBACK, run_bounded

PROBE_LIMIT_S = 8.0  # a failed probe ends within the handshake timeout (5 s)
BUDGET_S = 12.0  # per test: the failing probes run at once, each ends within 5 s


class Silent(NodeCore):
    """A candidate that authenticates its links but never echoes a dial-back's nonce."""

    def receive(self, msg: Message, src: NodeId, now: float) -> list[Send]:
        return [] if isinstance(msg, ReachProbe) else super().receive(msg, src, now)


class Nodes:
    def __init__(self) -> None:
        self.rng = random.Random(7)
        self.runtimes: list[NodeRuntime] = []

    async def start(self, name: str, kind: type[NodeCore] = NodeCore) -> NodeRuntime:
        core = kind(
            KeyPair.from_rng(self.rng),
            KeyPair.from_rng(self.rng),
            name,
            random.Random(self.rng.random()),
            SignatureVerifier(),
        )
        runtime = NodeRuntime(core, core.node_keys, LOOPBACK, 0, [], tcp_listen=(LOOPBACK, 0))
        self.runtimes.append(runtime)
        await runtime.start()
        return runtime

    async def close(self) -> None:
        for runtime in self.runtimes:
            await runtime.stop()


def addresses(runtime: NodeRuntime) -> tuple[Address, Address]:
    assert runtime.address is not None and runtime.tcp_address is not None
    return runtime.address, dialled(runtime.tcp_address)


async def probe(verifier: NodeRuntime, addr: Address, expected: NodeId) -> tuple[bool, float]:
    started = asyncio.get_running_loop().time()
    reached = await asyncio.wait_for(
        verifier.links.probe(addr, expected, os.urandom(16)), PROBE_LIMIT_S
    )
    return reached, asyncio.get_running_loop().time() - started


def test_a_dial_back_needs_the_identity_and_the_echo_over_udp_and_tcp() -> None:
    async def scenario(nodes: Nodes) -> None:
        verifier = await nodes.start("verifier")
        honest = await nodes.start("honest")
        silent = await nodes.start("silent", Silent)
        for addr in addresses(honest):
            reached, took = await probe(verifier, addr, honest.core.id)
            assert reached, addr
            assert took < 2.0, took  # one handshake and one round trip on loopback
        failing = [(addr, silent.core.id) for addr in addresses(silent)]
        failing.append((addresses(honest)[0], silent.core.id))  # another node answers there
        results = await asyncio.gather(*(probe(verifier, a, node) for a, node in failing))
        # authenticated but no echo, or the wrong node: not reached, within the timeout
        assert [reached for reached, _ in results] == [False, False, False]
        assert verifier.links.link_to(honest.core.id) is None  # a dial-back is never a link
        assert verifier.stats["internal_errors"] == honest.stats["internal_errors"] == 0

    run_bounded(scenario, Nodes(), BUDGET_S)


def two_member_tier(
    verifier: NodeRuntime, asker: NodeRuntime, wanted: int
) -> tuple[list[ReachResult], asyncio.Event]:
    """`verifier` and `asker` as a tier of two; the ReachResults `asker` gets are collected,
    and the event is set once `wanted` of them came."""
    now = verifier.now()
    for runtime in (verifier, asker):
        runtime.core.become_supernode(now, "test", seed=True)
    assert verifier.core.supernode is not None and asker.core.supernode is not None
    verifier.core.seed_tier([asker.core.supernode.record], now)
    asker.core.seed_tier([verifier.core.supernode.record], now)
    answers: list[ReachResult] = []
    done = asyncio.Event()
    original = asker.core.receive

    def receive(msg: Message, src: NodeId, now: float) -> list[Send]:
        if isinstance(msg, ReachResult):
            answers.append(msg)
            if len(answers) >= wanted:
                done.set()
        return original(msg, src, now)

    asker.core.receive = receive  # type: ignore[method-assign]
    return answers, done


def test_a_check_asked_by_a_member_dials_both_transports_and_answers() -> None:
    async def scenario(nodes: Nodes) -> None:
        verifier = await nodes.start("verifier")
        asker = await nodes.start("asker")
        candidate = await nodes.start("candidate")
        closed = (LOOPBACK, 9)  # discard port: nothing listens on loopback
        answers, both = two_member_tier(verifier, asker, wanted=2)
        udp, tcp = candidate.address, candidate.tcp_address
        assert udp is not None and tcp is not None
        checks = [
            ReachCheck(
                1, bytes(candidate.core.id), f"{LOOPBACK}:{udp[1]}", f"tcp://{LOOPBACK}:{tcp[1]}"
            ),
            ReachCheck(2, bytes(candidate.core.id), f"{LOOPBACK}:{closed[1]}", ""),
        ]
        asker.drive([(verifier.core.id, check) for check in checks])
        await asyncio.wait_for(both.wait(), PROBE_LIMIT_S)  # the closed port: by the timeout
        by_req = {a.req: a for a in answers}
        assert by_req[1].reached and not by_req[1].declined, by_req[1]
        assert by_req[1].reason == "reached over UDP and TCP"
        assert not by_req[2].reached and not by_req[2].declined, by_req[2]
        assert not any(isinstance(e, ReachDial) for e in verifier.core.pop_events())

    run_bounded(scenario, Nodes(), BUDGET_S)


def test_a_verifier_never_dials_its_own_side_for_another_member() -> None:
    """The daemon's filter (the relay's): loopback, private and other special ranges are
    declined, not dialled, unless the owner allowed them (loopback never)."""

    async def scenario(nodes: Nodes) -> None:
        verifier = await nodes.start("verifier")
        asker = await nodes.start("asker")
        candidate = await nodes.start("candidate")
        verifier.may_dial = AddressFilter(["127.0.0.0/8"]).allows  # loopback: never anyway
        answers, answered = two_member_tier(verifier, asker, wanted=1)
        assert candidate.address is not None
        check = ReachCheck(1, bytes(candidate.core.id), f"{LOOPBACK}:{candidate.address[1]}", "")
        dials = verifier.links.stats["dial_backs"]
        asker.drive([(verifier.core.id, check)])
        await asyncio.wait_for(answered.wait(), PROBE_LIMIT_S)
        assert answers[0].declined and not answers[0].reached, answers[0]
        assert answers[0].reason == "not an address we dial"
        assert verifier.links.stats["dial_backs"] == dials  # nothing was sent toward it

    run_bounded(scenario, Nodes(), BUDGET_S)
