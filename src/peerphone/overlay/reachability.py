"""Reachability proven, never claimed: candidates are dialled back before a promotion.

The promoter (the candidate's primary supernode) sees the IP and UDP port the candidate's
link comes from. Before it sends `Promote`, it asks up to `MAX_VERIFIERS_ASKED` other
members (`ReachCheck`) to dial the candidate back at that address, and at its TCP port on
the same IP, from their own sockets. A verifier that already has a link to the candidate
declines (the candidate's NAT would let it in: that proves nothing), and so does one over
its limits. The candidate passes once `REQUIRED_REACHES` verifiers reached it as itself
(the QUIC handshake on the dial-back connection is signed with the candidate's node key over
the verifier's fresh random: the nonce it must echo); one verifier that dialled and failed
fails it. A node behind a NAT fails: the dial comes from a supernode it never contacted.

A verifier dials only what a member asks, only one IP per request, and under three bounds
(requests per member, dials per target IP, dials at once), so a hostile member cannot turn
the tier into a flood toward a third party (libp2p AutoNAT v2 dials only the requester's
observed IP for the same reason; here the requester is the member that saw the link).

Both sides are sans-I/O: `ReachChecks` (promoter) and `ReachVerifier` (verifier); the
runtime does the dials (`ReachDial` events, `ReachVerifier.dial_done`).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from peerphone.endpoints import TCP, UDP, endpoint_or_none
from peerphone.identity import NodeId
from peerphone.overlay.events import ReachDial
from peerphone.wire import ReachCheck, ReachResult, Send

REQUIRED_REACHES = 2  # verifiers that must each reach the candidate
MAX_VERIFIERS_ASKED = 4  # asked per candidate (some decline: linked to it, over a limit)
CHECK_TIMEOUT_S = 20.0  # a check not decided by then fails (dials time out after 5-10 s)
MAX_CHECKS = 4  # candidates one promoter checks at once
RECHECK_AFTER_S = 300.0  # a candidate that failed is not checked again before this
MAX_FAILED_REMEMBERED = 4096  # failed candidates remembered (oldest forgotten first)

MAX_DIALS_IN_FLIGHT = 8  # dial-backs one verifier runs at once
MEMBER_WINDOW_S = 60.0
MAX_REQUESTS_PER_MEMBER = 6  # checks one member may ask of us per MEMBER_WINDOW_S
ADDRESS_WINDOW_S = 600.0
MAX_DIALS_PER_IP = 4  # dial-backs toward one IP per ADDRESS_WINDOW_S, whoever asks
MAX_TRACKED = 4096  # members and IPs whose recent requests are remembered


@dataclass(frozen=True, slots=True)
class Verdict:
    """The end of one candidate's check: promote it or not, and why."""

    node: NodeId
    reachable: bool
    reason: str


@dataclass(slots=True)
class _Check:
    node: NodeId
    asked: dict[int, NodeId]  # req -> verifier still to answer
    deadline: float
    reached: set[NodeId] = field(default_factory=set)


class ReachChecks:
    """The promoter's side: which candidates are being dialled back, and the verdicts."""

    def __init__(self, me: NodeId, rng: random.Random) -> None:
        self.me = me
        self.rng = rng
        self._checks: dict[NodeId, _Check] = {}
        self._by_req: dict[int, NodeId] = {}
        self._failed: dict[NodeId, float] = {}  # candidate -> not checked again before
        self._req = 0
        self.verdicts: list[Verdict] = []  # drained by the supernode core

    def __len__(self) -> int:
        return len(self._checks)

    def may_check(self, node: NodeId, now: float) -> bool:
        """Whether `node` may be checked now (not being checked, not failed lately)."""
        return node not in self._checks and self._failed.get(node, -1.0) <= now

    def start(
        self, node: NodeId, udp: str, tcp: str, members: Iterable[NodeId], now: float
    ) -> list[Send]:
        """Ask verifiers among `members` to dial `node` back at `udp` (and `tcp`)."""
        if not self.may_check(node, now) or len(self._checks) >= MAX_CHECKS:
            return []
        pool = sorted(m for m in members if m not in (self.me, node))
        if len(pool) < REQUIRED_REACHES:
            self._fail(node, f"fewer than {REQUIRED_REACHES} supernodes to dial it back", now)
            return []
        chosen = self.rng.sample(pool, min(MAX_VERIFIERS_ASKED, len(pool)))
        check = _Check(node, {}, now + CHECK_TIMEOUT_S)
        out: list[Send] = []
        for verifier in sorted(chosen):
            self._req += 1
            check.asked[self._req] = verifier
            self._by_req[self._req] = node
            out.append((verifier, ReachCheck(self._req, bytes(node), udp, tcp)))
        self._checks[node] = check
        return out

    def handle_result(self, msg: ReachResult, src: NodeId, now: float) -> None:
        node = self._by_req.get(msg.req)
        check = self._checks.get(node) if node is not None else None
        if check is None or check.asked.get(msg.req) != src or bytes(check.node) != msg.node:
            return  # not ours, not from whom we asked, or about another node: ignored
        del check.asked[msg.req]
        del self._by_req[msg.req]
        if msg.reached and not msg.declined:
            check.reached.add(src)
            if len(check.reached) >= REQUIRED_REACHES:
                self._end(check, True, f"reached by {len(check.reached)} supernodes", now)
        elif not msg.declined:
            self._end(check, False, f"a dial-back failed: {msg.reason}", now)
        elif len(check.reached) + len(check.asked) < REQUIRED_REACHES:
            self._end(check, False, f"too few supernodes could dial it back ({msg.reason})", now)

    def next_timer(self) -> float | None:
        return min((c.deadline for c in self._checks.values()), default=None)

    def handle_timer(self, now: float) -> None:
        for check in [c for c in self._checks.values() if c.deadline <= now]:
            self._end(check, False, "dial-back timed out", now)
        for node in [n for n, until in self._failed.items() if until <= now]:
            del self._failed[node]

    def _end(self, check: _Check, reachable: bool, reason: str, now: float) -> None:
        del self._checks[check.node]
        for req in check.asked:
            self._by_req.pop(req, None)
        if reachable:
            self.verdicts.append(Verdict(check.node, True, reason))
        else:
            self._fail(check.node, reason, now)

    def _fail(self, node: NodeId, reason: str, now: float) -> None:
        if node not in self._failed and len(self._failed) >= MAX_FAILED_REMEMBERED:
            del self._failed[next(iter(self._failed))]
        self._failed[node] = now + RECHECK_AFTER_S
        self.verdicts.append(Verdict(node, False, reason))


class _Window:
    """Times of recent events per key, to bound how many a key gets per window."""

    def __init__(self, window_s: float, limit: int) -> None:
        self.window_s = window_s
        self.limit = limit
        self._times: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        times = self._times.get(key)
        if times is None:
            if len(self._times) >= MAX_TRACKED:
                self._purge(now)
                if len(self._times) >= MAX_TRACKED:
                    return False  # the table is full of recent keys: refuse, never grow
            times = self._times[key] = deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True

    def _purge(self, now: float) -> None:
        for key in [k for k, t in self._times.items() if not t or t[-1] <= now - self.window_s]:
            del self._times[key]


class ReachVerifier:
    """The verifier's side: which dial-backs members may have, and their answers."""

    def __init__(self, me: NodeId) -> None:
        self.me = me
        self._in_flight: dict[tuple[NodeId, int], NodeId] = {}  # (asker, req) -> candidate
        self._per_member = _Window(MEMBER_WINDOW_S, MAX_REQUESTS_PER_MEMBER)
        self._per_address = _Window(ADDRESS_WINDOW_S, MAX_DIALS_PER_IP)
        self.dials: list[ReachDial] = []  # for the runtime (drained by NodeCore)
        self.stats: dict[str, int] = {"asked": 0, "declined": 0, "ignored": 0}

    def handle_check(self, msg: ReachCheck, src: NodeId, is_member: bool, now: float) -> list[Send]:
        """A member's request: dial (a ReachDial for the runtime) or decline at once."""
        if not is_member or (src, msg.req) in self._in_flight:
            self.stats["ignored"] += 1  # only the tier asks; a repeat is not dialled twice
            return []
        self.stats["asked"] += 1
        reason = self._refusal(msg, src, now)
        if reason:
            self.stats["declined"] += 1
            return [(src, ReachResult(msg.req, msg.node, False, True, reason))]
        self._in_flight[(src, msg.req)] = NodeId(msg.node)
        self.dials.append(ReachDial(bytes(src), msg.req, msg.node, msg.udp, msg.tcp))
        return []

    def _refusal(self, msg: ReachCheck, src: NodeId, now: float) -> str:
        udp = endpoint_or_none(msg.udp)
        tcp = endpoint_or_none(msg.tcp) if msg.tcp else None
        if udp is None or udp[0] != UDP or (msg.tcp and (tcp is None or tcp[0] != TCP)):
            return "not a UDP (and TCP) address"
        if tcp is not None and tcp[1][0] != udp[1][0]:
            return "the TCP address is on another IP"  # one IP: where the link comes from
        if NodeId(msg.node) in (self.me, src):
            return "asked to dial itself"
        if len(self._in_flight) >= MAX_DIALS_IN_FLIGHT:
            return "busy"
        if not self._per_member.allow(bytes(src).hex(), now):
            return "too many checks asked"
        if not self._per_address.allow(udp[1][0], now):
            return "that IP was dialled back too often"
        return ""

    def dial_done(
        self, asker: NodeId, req: int, reached: bool, declined: bool, reason: str
    ) -> list[Send]:
        """The runtime's dial-back for (asker, req): the answer to send."""
        node = self._in_flight.pop((asker, req), None)
        if node is None:
            return []
        return [(asker, ReachResult(req, bytes(node), reached, declined, reason[:120]))]
