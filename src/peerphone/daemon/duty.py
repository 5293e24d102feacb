"""Supernode duty within the owner's consent: the caps of `[share]` and the shedding ladder.

Pure: no clock, no socket. `DutyLadder.update(measures, now)` takes what the node measured
in the last second (bytes sent per category, today's and this month's totals, the process's
CPU from getrusage, clients served, whether the owner is in a call or the machine busy, the
local minute of the day) and answers with the ladder's step changes; the daemon
(`sharing.py` samples, `service.py` acts) applies the step.

Each cap is a *pressure* that asks the ladder to climb up to some step:

=================================  =====================================================
cap reached                        the ladder climbs up to
=================================  =====================================================
clients (`max_clients`)            stop admitting clients
relay (`up_kbps`)                  refuse new relay allocations (the relay's own token
                                   bucket drops whatever is above the cap meanwhile)
directory and signaling            hand over and step down
(`directory_kbps`, a token bucket)
CPU (`cpu_percent`, measured)      hand over and step down
bytes today / this month           hand over and step down
`only_when_idle`: owner in a call  hand over and step down
or the machine busy
quiet hours                        hand over and step down
=================================  =====================================================

The ladder climbs in its stated order, one step at a time, at most one step every
`CLIMB_INTERVAL_S` (long enough for the last step's effect to show in the measured rates):
stop admitting clients -> redirect the newest clients to other supernodes -> refuse new
relay allocations -> hand over and step down. It comes down one step after `CALM_S`
without a pressure that asks for the step it is on. Stepping down is final for the role:
the node declines promotion for `REJOIN_HOLD_S` (rates and CPU), or as long as the cause
lasts (volume until the day or month turns, idleness, quiet hours). No step cuts a call in
progress: relay allocations already granted keep running to their per-allocation quota and
lifetime, also after a step-down (the relay drains, refusing new ones). Every step change
is logged, counted and shown by `peerphone sharing`.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

CLIMB_INTERVAL_S = 5.0  # between two steps up (the sharing rates average 5 s)
CALM_S = 30.0  # without pressure for the current step, before one step down
REJOIN_HOLD_S = 600.0  # after stepping down for a rate or CPU cap: no promotion meanwhile
DIRECTORY_BURST_S = 10.0  # the directory bucket holds this many seconds of its cap
RELAY_BUSY_SHARE = 0.8  # relay sending at this share of its cap: refuse new allocations
REDIRECT_SHARE = 0.1  # of the clients, the newest, moved at the redirect step ...
MIN_REDIRECT = 1  # ... at least this many (when there are any)
MAX_STEP_CHANGES = 20  # kept and shown, newest first
MINUTES_PER_DAY = 24 * 60


class Step(enum.IntEnum):
    """The shedding ladder, in its order."""

    SERVING = 0
    NO_NEW_CLIENTS = 1  # attaches are refused with hints to other supernodes
    REDIRECT = 2  # the newest clients are moved to other supernodes
    NO_NEW_RELAY = 3  # new relay allocations are refused (granted ones keep running)
    STEP_DOWN = 4  # records and clients handed over; the node is a client

    @property
    def label(self) -> str:
        return STEP_LABELS[self]


STEP_LABELS = {
    Step.SERVING: "serving",
    Step.NO_NEW_CLIENTS: "stop admitting clients",
    Step.REDIRECT: "redirect newest clients",
    Step.NO_NEW_RELAY: "refuse new relay allocations",
    Step.STEP_DOWN: "hand over and step down",
}


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily span of local time (minutes after midnight); it may wrap past midnight."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.start < MINUTES_PER_DAY and 0 <= self.end < MINUTES_PER_DAY):
            raise ValueError("quiet hours: minutes of the day, 0-1439")
        if self.start == self.end:
            raise ValueError("quiet hours: start and end are the same minute")

    def covers(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02}:{self.start % 60:02}-{self.end // 60:02}:{self.end % 60:02}"


def parse_quiet_hours(text: str) -> QuietHours | None:
    """`"23:00-07:00"` (local time, may wrap midnight); "" is none; `ValueError` says why."""
    if not text:
        return None
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"{text!r}: expected HH:MM-HH:MM")
    minutes = []
    for part in parts:
        hours, sep, mins = part.strip().partition(":")
        if not (sep and hours.isdigit() and mins.isdigit() and len(mins) == 2):
            raise ValueError(f"{text!r}: expected HH:MM-HH:MM")
        if int(hours) > 23 or int(mins) > 59:
            raise ValueError(f"{text!r}: {part.strip()} is not a time of day")
        minutes.append(int(hours) * 60 + int(mins))
    if minutes[0] == minutes[1]:
        raise ValueError(f'{text!r}: an empty span (use "" for no quiet hours)')
    return QuietHours(minutes[0], minutes[1])


@dataclass(frozen=True, slots=True)
class Caps:
    """The owner's consent, in the units the ladder measures (0: that cap is off, except
    `max_clients`, where 0 means never a supernode, and the relay, where it means none)."""

    max_clients: int
    relay_bytes_per_s: float  # what the relay sends, whole IP packets
    directory_bytes_per_s: float  # what the overlay sends while a supernode
    day_bytes: int  # both categories, both ways, per UTC day
    month_bytes: int  # ... per UTC month
    cpu_percent: float  # of one core, the node process
    only_when_idle: bool = False
    quiet_hours: QuietHours | None = None

    def __post_init__(self) -> None:
        if self.max_clients < 0 or self.relay_bytes_per_s < 0 or self.day_bytes < 0:
            raise ValueError("caps must not be negative")
        if self.directory_bytes_per_s <= 0 or not 0 < self.cpu_percent <= 100:
            raise ValueError("the directory and CPU caps must be positive")
        if self.month_bytes < 0:
            raise ValueError("caps must not be negative")


@dataclass(frozen=True, slots=True)
class Measures:
    """What the node measured over the last sample (see the module docstring)."""

    directory_up_bytes: int  # sent by the overlay since the last sample, while a supernode
    relay_up_bytes_per_s: float  # the relay's sending rate, over the last few seconds
    day_bytes: int  # shared today, both categories, both ways
    month_bytes: int
    cpu_percent: float | None  # of one core over the last few seconds (None: not known yet)
    clients: int  # primary clients served
    owner_in_call: bool
    machine_busy: bool
    minute_of_day: int  # local time, for quiet hours


@dataclass(frozen=True, slots=True)
class StepChange:
    """The ladder moved from `old` to `new` at `at` (the caller's clock), and why."""

    at: float
    old: Step
    new: Step
    reason: str

    def view(self) -> dict[str, Any]:
        return {"at": self.at, "from": self.old.label, "to": self.new.label, "reason": self.reason}


class Budget:
    """A token bucket that is spent by what was measured (it cannot refuse a packet that
    already left) and says whether the spending runs over its rate: empty means over."""

    def __init__(self, rate_bytes_per_s: float, burst_s: float, now: float) -> None:
        self.rate = rate_bytes_per_s
        self.capacity = rate_bytes_per_s * burst_s
        self.tokens = self.capacity
        self.updated = now

    def spend(self, size: int, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        self.tokens -= size

    @property
    def empty(self) -> bool:
        return self.tokens <= 0


# (the step a reached cap asks for, why), checked in this order
Pressure = tuple[Step, str]


def pressures(caps: Caps, m: Measures, directory_over: bool) -> list[Pressure]:
    """Every cap reached now, with the step it asks for."""
    out: list[Pressure] = []
    if caps.max_clients and m.clients >= caps.max_clients:
        out.append((Step.NO_NEW_CLIENTS, f"clients: {m.clients} of at most {caps.max_clients}"))
    relay_cap = caps.relay_bytes_per_s
    if relay_cap and m.relay_up_bytes_per_s >= RELAY_BUSY_SHARE * relay_cap:
        out.append(
            (
                Step.NO_NEW_RELAY,
                f"relay: sending {_kbps(m.relay_up_bytes_per_s)} of its cap "
                f"{_kbps(relay_cap)} (busy from {RELAY_BUSY_SHARE:.0%})",
            )
        )
    if directory_over:
        out.append(
            (
                Step.STEP_DOWN,
                f"directory and signaling: over its cap {_kbps(caps.directory_bytes_per_s)}",
            )
        )
    if m.cpu_percent is not None and m.cpu_percent >= caps.cpu_percent:
        out.append(
            (Step.STEP_DOWN, f"CPU: {m.cpu_percent:.0f} % of a core, cap {caps.cpu_percent:g} %")
        )
    volumes = (
        ("today", m.day_bytes, caps.day_bytes),
        ("this month", m.month_bytes, caps.month_bytes),
    )
    for what, used, cap in volumes:
        if cap and used >= cap:
            out.append((Step.STEP_DOWN, f"volume {what}: {_mb(used)} of {_mb(cap)}"))
    if caps.only_when_idle and m.owner_in_call:
        out.append((Step.STEP_DOWN, "only when idle: the owner is in a call"))
    if caps.only_when_idle and m.machine_busy:
        out.append((Step.STEP_DOWN, "only when idle: the machine is busy"))
    if caps.quiet_hours is not None and caps.quiet_hours.covers(m.minute_of_day):
        out.append((Step.STEP_DOWN, f"quiet hours {caps.quiet_hours}"))
    return out


# causes that last while they are measured (not a rate that settles once we stop serving)
LASTING = ("volume", "only when idle", "quiet hours")


class DutyLadder:
    """The shedding ladder of one node (see the module docstring)."""

    def __init__(self, caps: Caps, now: float) -> None:
        self.caps = caps
        self.step = Step.SERVING
        self.reason = ""
        self.directory = Budget(caps.directory_bytes_per_s, DIRECTORY_BURST_S, now)
        self.pressures: list[Pressure] = []
        self.changes: deque[StepChange] = deque(maxlen=MAX_STEP_CHANGES)  # newest first
        self.counts: Counter[str] = Counter()  # times each step was taken, by label
        self._last_climb = -1e18
        self._calm_since: float | None = None
        self._hold_until = -1e18  # no promotion before this (after a step-down)
        self._lasting = ""  # a lasting cause of the last step-down, "" when none

    def update(self, m: Measures, now: float, serving: bool) -> list[StepChange]:
        """Fold one sample in; returns the step changes (at most one). `serving`: whether
        the node is a supernode now (a client spends no directory budget and has no
        ladder to climb, but its lasting causes still keep it from serving)."""
        self.directory.spend(m.directory_up_bytes if serving else 0, now)
        self.pressures = pressures(self.caps, m, self.directory.empty)
        lasting = [why for step, why in self.pressures if why.startswith(LASTING)]
        self._lasting = lasting[0] if lasting else ""
        if not serving:
            return self._as_client(now)
        wanted = max((step for step, _ in self.pressures), default=Step.SERVING)
        if wanted > self.step:
            self._calm_since = None
            if now - self._last_climb < CLIMB_INTERVAL_S:
                return []
            self._last_climb = now
            why = next(why for step, why in self.pressures if step == wanted)
            return [self._move(Step(self.step + 1), why, now)]
        if wanted == self.step:
            self._calm_since = None
            return []
        if self._calm_since is None:
            self._calm_since = now
            return []
        if now - self._calm_since < CALM_S:
            return []
        self._calm_since = now
        return [self._move(Step(self.step - 1), "calm: no cap reached for this step", now)]

    def _as_client(self, now: float) -> list[StepChange]:
        """A client starts from the bottom of the ladder once it may serve again: at once
        (it left the tier for another reason), or after a step-down's hold and cause."""
        if self.step is Step.SERVING:
            return []
        if self.step is Step.STEP_DOWN and (now < self._hold_until or self._lasting):
            return []
        reason = "not a supernode" if self.step < Step.STEP_DOWN else "may serve again"
        return [self._move(Step.SERVING, reason, now)]

    def _move(self, new: Step, reason: str, now: float) -> StepChange:
        change = StepChange(now, self.step, new, reason)
        self.step, self.reason = new, reason
        self.changes.appendleft(change)
        if new > change.old:
            self.counts[new.label] += 1
        if new is Step.STEP_DOWN:
            self._hold_until = now + REJOIN_HOLD_S
        return change

    def may_serve(self, now: float) -> str:
        """Why the node must decline the supernode role now ("" if it may serve)."""
        if not self.caps.max_clients:
            return "max_clients = 0: never a supernode"
        if self._lasting:
            return self._lasting
        if self.step is Step.STEP_DOWN and now < self._hold_until:
            return (
                f"stepped down ({self.reason}); may serve again in {self._hold_until - now:.0f} s"
            )
        return ""

    def view(self, now: float) -> dict[str, Any]:
        """The ladder for `peerphone sharing`."""
        return {
            "step": self.step.label,
            "level": int(self.step),
            "order": [s.label for s in Step][1:],
            "reason": self.reason,
            "reached": [{"asks_for": s.label, "why": why} for s, why in self.pressures],
            "taken": {s.label: self.counts[s.label] for s in list(Step)[1:]},
            "changes": [c.view() for c in self.changes],
            "declines_promotion": self.may_serve(now) or None,
        }


def _kbps(bytes_per_s: float) -> str:
    return f"{bytes_per_s * 8 / 1000:.0f} kbit/s"


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
