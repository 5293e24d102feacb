"""What a supernode gives against what its owner consented to: the caps, the shedding
ladder, and the report's `sharing` section.

A `Duty` belongs to one machine for the whole run (its bytes per day persist across
restarts): the token bucket on its signaling + directory upload, the relayed calls it
carries, and the ladder a supernode climbs when a cap comes near, one step at a time and
each step counted, never silently:

  1 stop admitting clients    new attaches are redirected to other supernodes
  2 redirect new clients      the most recently admitted clients are moved, a tenth at a time
  3 refuse new relays         no new relay allocation (calls in progress keep theirs)
  4 hand over and step down   records and clients handed over; the node rests a while

The level follows the higher pressure: the interactive upload of the last 10 s over the
signaling cap (thresholds `RATE_LEVELS`) and the bytes of the day over the daily cap
(`DAY_LEVELS`); both are lowered by serving fewer clients (and the day's bytes by fewer
relays), and last by leaving. The relay cap is not on this ladder: a relayed call's flow
is admitted only while the sum stays within the cap (`RelayFlows.fits`, each refusal
counted), so the relayed rate never passes it, and no other step could lower it (turning
clients away or moving them leaves the calls in progress where they are; they are never
cut). Moving clients for it would only cost lookups: a client between two supernodes
cannot look anyone up.

The ladder climbs one step per `ESCALATE_S` (the last after `STEP_DOWN_AFTER_S` at step 3)
and comes down one step per `CALM_S` of lower pressure. An upload with a queue
(`CONGESTED_S`) takes step 1 at once.
"""

from __future__ import annotations

import math
from typing import Any

from peerphone.sim.capacity import DAY_S, Machine
from peerphone.sim.shaping import WINDOW_S, Bins, RelayFlows, Shaper
from peerphone.stats import percentile

STEPS = ("stop_admitting", "redirect_new", "refuse_relay", "step_down")
STOP_ADMITTING, REDIRECT_NEW, REFUSE_RELAY, STEP_DOWN = 1, 2, 3, 4
RATE_LEVELS = (0.6, 0.7, 0.8, 0.9)  # share of a rate cap at which each step is due
DAY_LEVELS = (0.8, 0.85, 0.9, 0.95)  # share of the daily cap
ESCALATE_S = 2.0
STEP_DOWN_AFTER_S = 30.0
CALM_S = 30.0
CONGESTED_S = 0.25  # answers waiting this long for tokens: stop admitting at once
REST_S = 600.0  # a node that stepped down for a rate cap is no candidate this long
CAP_REASON = "sharing cap reached: handed over and stepped down"
DAY_REASON = "daily byte cap reached: handed over and stepped down"
BUSY_REASON = "owner uses the machine (only when idle)"
CALL_REASON = "owner is in a call (only when idle)"
NOT_ADMITTED_REASON = "not admitted to the tier (dial-back)"
SHED_REASON = "sharing cap: load shed"


def _level(pressure: float, levels: tuple[float, ...]) -> int:
    return sum(1 for threshold in levels if pressure >= threshold)


class Duty:
    """One machine's supernode duty: caps, accounting and the shedding ladder."""

    def __init__(self, machine: Machine, name: str) -> None:
        caps = machine.caps
        self.machine = machine
        self.name = name
        self.shaper = Shaper(caps.signaling_kbps)
        self.relay = RelayFlows(caps.relay_kbps)
        self.level = 0
        self.level_since = 0.0
        self.calm_since: float | None = None
        self.by_day = False  # the daily cap drives the level
        self.steps = dict.fromkeys(STEPS, 0)  # entries into each step
        self.log: list[tuple[float, int]] = []  # (time, new level): every change
        self.actions = {
            "attaches_refused": 0,
            "clients_redirected": 0,
            "relays_refused_at_step": 0,
            "relays_refused_full": 0,
        }
        self.tenures: list[list[float]] = []  # [start, end) of each time as a supernode
        self.serving = False
        self.day = 0
        self.day_start_bytes = 0.0
        self.clients_max = 0
        self.relays_carried = 0
        self.admissions = 0  # tenures the tier admitted (dial-back passed, or at start)

    # -- tenure ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.serving = True
        self.shaper.active = True
        self.tenures.append([now, math.inf])
        self.level = 0
        self.level_since = now
        self.calm_since = None

    def stop(self, now: float) -> None:
        if self.serving:
            self.serving = False
            self.shaper.active = False
            self.tenures[-1][1] = now
            if self.level:
                self.level = 0
                self.log.append((now, 0))

    # -- pressure and the ladder -------------------------------------------------------------

    def day_share(self, now: float) -> float:
        self.relay.settle(now)
        total = self.shaper.sent_total + self.relay.sent_total
        day = int(now // DAY_S)
        if day != self.day:  # a new day: its budget starts afresh
            self.day = day
            self.day_start_bytes = total
        return (total - self.day_start_bytes) / self.machine.caps.bytes_per_day

    def target(self, now: float) -> int:
        rate = _level(self.shaper.pressure(now), RATE_LEVELS)
        day = _level(self.day_share(now), DAY_LEVELS)
        self.by_day = day > rate
        return max(rate, day)

    def check(self, now: float) -> int:
        """Move one step toward the level the pressure asks for; the level now."""
        target = self.target(now)
        level = self.level
        if target > level:
            self.calm_since = None
            wait = 0.0 if level == 0 else ESCALATE_S
            if level == REFUSE_RELAY and not self.by_day:
                wait = STEP_DOWN_AFTER_S  # shedding clients takes a while to lower the rate
            if now - self.level_since >= wait:
                self._move(level + 1, now)
                self.steps[STEPS[level]] += 1
        elif target < level:
            if self.calm_since is None:
                self.calm_since = now
            elif now - self.calm_since >= CALM_S:
                self._move(level - 1, now)
                self.calm_since = now
        else:
            self.calm_since = None
        return self.level

    def congested(self, now: float) -> bool:
        """The upload has a queue (answers wait for tokens): step 1 at once, not at the
        next weighing, so a crowd of attaches (a promoter handing clients over) stops
        at the door instead of filling the queue."""
        if self.shaper.backlog_s(now) <= CONGESTED_S:
            return False
        if self.level == 0:
            self._move(STOP_ADMITTING, now)
            self.steps[STEPS[0]] += 1
        return True

    def _move(self, level: int, now: float) -> None:
        self.level = level
        self.level_since = now
        self.log.append((now, level))

    def step_down_reason(self, now: float) -> str:
        """Why the ladder's last step is taken; the node rests before serving again."""
        m = self.machine
        if self.by_day:
            m.resting_until = (int(now // DAY_S) + 1) * DAY_S
            return DAY_REASON
        m.resting_until = now + REST_S
        return CAP_REASON

    def must_leave(self, now: float, admitted: bool, started: float) -> str:
        """A reason to step down at once that no cap gives: the owner's only_when_idle,
        or a promotion the tier never admitted ("" if none)."""
        m = self.machine
        if m.caps.only_when_idle:
            if m.busy_at(now):
                return BUSY_REASON
            if m.in_calls:
                return CALL_REASON
        if not admitted and now - started > 60.0:
            return NOT_ADMITTED_REASON
        return ""

    # -- relays ------------------------------------------------------------------------------

    def allocate(self, flow: int, bytes_per_s: float, now: float) -> bool:
        """A relay allocation for a call: refused at step 3 or beyond, or if it would not
        fit in the relay cap."""
        if self.level >= REFUSE_RELAY:
            self.actions["relays_refused_at_step"] += 1
            return False
        if not self.relay.fits(bytes_per_s):
            self.actions["relays_refused_full"] += 1
            return False
        self.relay.open(flow, bytes_per_s, now)
        self.relays_carried += 1
        return True

    # -- the report ------------------------------------------------------------------------------

    def report(self, end: float) -> dict[str, Any]:
        caps = self.machine.caps
        self.relay.settle(end)
        spans = [(math.ceil(a), int(min(b, end))) for a, b in self.tenures]
        served = sum(min(b, end) - a for a, b in self.tenures)
        return {
            "node": self.name,
            "public": self.machine.public,
            "served_s": round(served, 1),
            "tenures": len(self.tenures),
            "admitted": self.admissions,
            "caps": {
                "signaling_kbps": caps.signaling_kbps,
                "relay_kbps": caps.relay_kbps,
                "bytes_per_day": caps.bytes_per_day,
                "max_clients": caps.max_clients,
                "only_when_idle": caps.only_when_idle,
            },
            "signaling": _shares(self.shaper.bins, self.shaper.rate, spans),
            "relay": _shares(self.relay.bins, self.relay.cap, spans),
            "day": round(self.day_share(end), 5),
            "clients": {
                "max": self.clients_max,
                "share": round(self.clients_max / caps.max_clients, 5) if caps.max_clients else 0,
            },
            "sent_bytes": {
                "signaling": round(self.shaper.sent_total),
                "relay": round(self.relay.sent_total),
            },
            "steps": dict(self.steps),
            "actions": dict(self.actions),
            "relays_carried": self.relays_carried,
            "messages": {
                "waited": self.shaper.waited,
                "dropped": self.shaper.dropped,
                "bulk": self.shaper.bulk_sent,
            },
        }


def _shares(bins: Bins, rate: float, spans: list[tuple[int, int]]) -> dict[str, float]:
    """p50/p99 of the share of the cap used in the 10 s windows inside the node's tenures,
    and the max over every window anywhere (hand-overs after a tenure included)."""
    if rate <= 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    budget = rate * WINDOW_S
    inside = [s / budget for a, b in spans for s in bins.window_sums(a, b)]
    return {
        "p50": round(percentile(inside, 50), 5),
        "p99": round(percentile(inside, 99), 5),
        "max": round(bins.max_window() / budget, 5),
    }


def sharing_report(duties: list[Duty], end: float, step_downs: dict[str, int]) -> dict[str, Any]:
    """The `sharing` section: every supernode's figures, the worst of each, the totals."""
    rows = [d.report(end) for d in duties if d.tenures]
    worst = {
        "signaling": max((r["signaling"]["max"] for r in rows), default=0.0),
        "relay": max((r["relay"]["max"] for r in rows), default=0.0),
        "day": max((r["day"] for r in rows), default=0.0),
        "clients": max((r["clients"]["share"] for r in rows), default=0.0),
    }
    steps = {name: sum(r["steps"][name] for r in rows) for name in STEPS}
    actions: dict[str, int] = {}
    for r in rows:
        for key, n in r["actions"].items():
            actions[key] = actions.get(key, 0) + n
    return {
        "window_s": WINDOW_S,
        "max_share": worst,
        "within_105": all(v <= 1.05 for v in worst.values()),
        "steps": steps,
        "actions": actions,
        "step_downs": dict(sorted(step_downs.items())),
        "messages": {
            key: sum(r["messages"][key] for r in rows) for key in ("waited", "dropped", "bulk")
        },
        "supernodes": rows,
    }
