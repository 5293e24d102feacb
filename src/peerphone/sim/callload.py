"""Calls in the simulator: online users call each other through the real signaling cores.

A call is placed from one online, published user to another; the callee's node answers
after a short ring, the caller hangs up after an exponential talk time. Media is not
simulated (the SDP is a placeholder); what is measured is signaling: how many calls to an
online user are answered, the set-up time (placing to `CallAnswered`, which includes the
callee lookup, the caller-key check at the callee and the ring), and why calls failed.

Each call's parties are "in a call" from placing (or ringing) to its end: an owner who
shares only when idle stops serving meanwhile. An answered call between a symmetric NAT
and anything but a public host needs a relay: a flow of `RELAY_FLOW_BPS` on the first
supernode of the two parties (primaries first, then backups) whose relay cap has room and
that has not stepped up to refusing relays; `relay` counts what happened.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peerphone.errors import LocalProtocolError
from peerphone.overlay.events import CallAnswered, CallEnded, CallIncoming, CallRinging, Event
from peerphone.sim.capacity import Machine, needs_relay
from peerphone.sim.engine import Engine
from peerphone.sim.population import Population, User
from peerphone.sim.sharing import Duty
from peerphone.stats import percentile

SIM_SDP = "v=0\r\ns=simulated\r\n"
RING_S = (1.0, 4.0)  # the callee answers after this long (uniform)
TALK_MEAN_S = 120.0
# a relayed call leaves the relay as two streams of 28 kbit/s Opus in 40 ms packets, each
# with 44 bytes of IP, UDP, RTP and TURN channel headers per packet: 2 x 36.8 kbit/s
RELAY_FLOW_BPS = 2 * (28_000 + 25 * 44 * 8) / 8


@dataclass(slots=True)
class CallMetrics:
    attempted: int = 0
    answered: int = 0
    setup_s: list[float] = field(default_factory=list)  # placed -> answered (incl. the ring)
    ringing_s: list[float] = field(default_factory=list)  # placed -> ringing: signaling only
    failures: dict[str, int] = field(default_factory=dict)
    relay: dict[str, int] = field(default_factory=lambda: {"needed": 0, "relayed": 0, "refused": 0})

    def report(self) -> dict[str, Any]:
        return {
            "relay": dict(self.relay),
            "attempted": self.attempted,
            "answered": self.answered,
            "success_rate": round(self.answered / self.attempted, 6) if self.attempted else 0.0,
            "setup_ms": _ms(self.setup_s),
            "ringing_ms": _ms(self.ringing_s),
            "failures": dict(sorted(self.failures.items())),
        }


def _ms(values: list[float]) -> dict[str, float]:
    return {q: round(percentile(values, float(q[1:])) * 1000, 1) for q in ("p50", "p95", "p99")}


class CallLoad:
    """Places, answers and hangs up calls between a population's users; counts what happened."""

    def __init__(
        self, engine: Engine, population: Population, rng: random.Random, interval_s: float
    ) -> None:
        self.engine = engine
        self.population = population
        self.rng = rng
        self.interval_s = interval_s  # mean time between calls placed by one online user
        self.metrics = CallMetrics()
        # (caller index, call id) -> (callee index, callee session, placed at)
        self._placed: dict[tuple[int, bytes], tuple[int, int, float]] = {}
        self.machines: list[Machine] = []  # the users' machines (set by the world)
        self.relays_for: Callable[[User, User], list[Duty]] = lambda a, b: []
        self._calls_of: dict[int, list[bytes]] = {}  # user index -> its calls in progress
        self._relayed: dict[bytes, tuple[Duty, int]] = {}  # call id -> its relay flow
        self._flows = itertools.count(1)

    def start(self, at: float) -> None:
        if self.interval_s > 0:
            self.engine.schedule(at, self._tick)

    def _tick(self) -> None:
        engine = self.engine
        now = engine.now
        users = self.population.users
        online = self.population.online
        if len(online) >= 2:
            caller = users[online.choice(self.rng)]
            callee = users[online.choice(self.rng)]
            if caller is not callee and callee.published_seq is not None:
                call_id, out = caller.node.core.call(callee.name, SIM_SDP, now)
                self._placed[(caller.index, call_id)] = (callee.index, callee.session, now)
                self._enter(caller, call_id)
                engine.send(caller.node, out)
        rate = max(len(online), 1) / self.interval_s
        engine.schedule(now + self.rng.expovariate(rate), self._tick)

    def on_event(self, user: User, event: Event) -> bool:
        """Handle a call event of `user`'s node; False if it is not one."""
        if isinstance(event, CallIncoming):
            self._enter(user, event.call_id)
            self.engine.schedule(
                self.engine.now + self.rng.uniform(*RING_S),
                self._act,
                user,
                user.session,
                lambda now: user.node.core.accept_call(event.call_id, SIM_SDP, now),
            )
        elif isinstance(event, CallRinging):
            placed = self._placed.get((user.index, event.call_id))
            if placed is not None:
                self.metrics.ringing_s.append(self.engine.now - placed[2])
        elif isinstance(event, CallAnswered):
            placed = self._placed.pop((user.index, event.call_id), None)
            if placed is not None:
                self._relay(user, self.population.users[placed[0]], event.call_id)
                self.metrics.attempted += 1
                self.metrics.answered += 1
                self.metrics.setup_s.append(self.engine.now - placed[2])
                self.engine.schedule(
                    self.engine.now + self.rng.expovariate(1 / TALK_MEAN_S),
                    self._act,
                    user,
                    user.session,
                    lambda now: user.node.core.hangup(event.call_id, now),
                )
        elif isinstance(event, CallEnded):
            self._leave(user, event.call_id)
            placed = self._placed.pop((user.index, event.call_id), None)
            if placed is not None:
                callee = self.population.users[placed[0]]
                if callee.online and callee.session == placed[1] and user.online:
                    self.metrics.attempted += 1  # a call to a user who stayed online failed
                    reason = event.reason
                    self.metrics.failures[reason] = self.metrics.failures.get(reason, 0) + 1
        else:
            return False
        return True

    def _act(self, user: User, session: int, action: Callable[[float], list[Any]]) -> None:
        """Do `action` on the user's node if it is still the same session."""
        if not user.online or user.session != session:
            return
        try:
            out = action(self.engine.now)
        except LocalProtocolError:
            return  # the call ended meanwhile (cancelled, timed out)
        self.engine.send(user.node, out)

    # -- in a call, and relays -------------------------------------------------------------

    def _enter(self, user: User, call_id: bytes) -> None:
        calls = self._calls_of.setdefault(user.index, [])
        if call_id not in calls and user.index < len(self.machines):
            calls.append(call_id)
            self._in_calls_changed(user, len(calls))

    def _leave(self, user: User, call_id: bytes) -> None:
        calls = self._calls_of.get(user.index)
        if calls is not None and call_id in calls:
            calls.remove(call_id)
            self._in_calls_changed(user, len(calls))
        self._end_relay(call_id)

    def _in_calls_changed(self, user: User, count: int) -> None:
        machine = self.machines[user.index]
        machine.in_calls = count
        user.node.core.may_serve = machine.may_serve(self.engine.now)

    def session_ended(self, user: User, now: float) -> None:
        """The user's node stopped: its calls ended with it (their relays too)."""
        for call_id in self._calls_of.pop(user.index, []):
            self._end_relay(call_id)
        if user.index < len(self.machines):
            self.machines[user.index].in_calls = 0

    def _relay(self, caller: User, callee: User, call_id: bytes) -> None:
        """An answered call that hole punching cannot connect gets a relay flow."""
        if caller.index >= len(self.machines) or callee.index >= len(self.machines):
            return
        if not needs_relay(self.machines[caller.index], self.machines[callee.index]):
            return
        relay = self.metrics.relay
        relay["needed"] += 1
        now = self.engine.now
        flow = next(self._flows)
        for duty in self.relays_for(caller, callee):
            if duty.allocate(flow, RELAY_FLOW_BPS, now):
                self._relayed[call_id] = (duty, flow)
                relay["relayed"] += 1
                return
        relay["refused"] += 1

    def _end_relay(self, call_id: bytes) -> None:
        carried = self._relayed.pop(call_id, None)
        if carried is not None:
            duty, flow = carried
            duty.relay.close(flow, self.engine.now)
