"""What a simulation run measures, and the report it produces.

Measurements that can fail: every lookup the workload starts is either judged (`attempted`:
its target stayed in the same session; it succeeded if it returned a record of that session
that does not say offline) or lost with a reason (`lost`: the asker crashed or logged out,
the target left, or it was still on its way at the end), so `issued` = `attempted` + the
sum of `lost`. `findable` says how long each login took until the user's presence was
stored (its first `Published`), and how many users were logged in but not findable at
once. `presence.expected` counts (status change, online watcher) pairs; each is judged
`PRESENCE_DEADLINE_S` later as `delivered` or `missing` (or `unjudged` if either side left
or the run ended first). After a scripted event, `harm` holds the victims, the lookups that
failed, the worst 10 s window, the windows without any lookup (unknown, not healthy) and
the logins, all from the event to `HARM_WINDOW_S` after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from peerphone.sim.config import SimConfig
from peerphone.sim.invariants import InvariantChecker
from peerphone.sim.network import Network
from peerphone.stats import percentile

HARM_WINDOW_S = 660.0  # an event's reach: victims go down within 60 s, back within 600 s


SETTLE_S = 300.0  # healthy this long after an event: recovered (a later dip is its own)


@dataclass(slots=True)
class Metrics:
    """Counters and samples gathered while the simulation runs."""

    lookup_started: list[float] = field(default_factory=list)  # start time of each lookup
    lookup_ok: list[bool] = field(default_factory=list)
    lookup_latency_s: list[float] = field(default_factory=list)  # successful ones
    lookup_hops: list[int] = field(default_factory=list)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    lookup_failures: list[tuple[float, str]] = field(default_factory=list)  # (started, reason)
    lookups_issued: int = 0  # every lookup started: judged (above) or lost (below)
    lookups_lost: dict[str, int] = field(default_factory=dict)  # reason -> not judged
    unfindable_lookups: int = 0  # judged lookups of a user logged in but not yet published
    unfindable_lookups_ok: int = 0
    attacked_lookups: int = 0  # judged lookups of a name a hostile supernode forges
    attacked_failures: dict[str, int] = field(default_factory=dict)
    findable: list[tuple[float, float]] = field(default_factory=list)  # (login, s to publish)
    ended_unfindable: list[tuple[float, float]] = field(default_factory=list)  # (login, end)
    propagation_s: list[float] = field(default_factory=list)
    presence_expected: int = 0  # (watcher, status change) pairs judged or to be judged
    presence_delivered: int = 0
    presence_missing: int = 0
    presence_unjudged: int = 0  # watcher or user left before the deadline
    promotions: int = 0
    demotions: int = 0
    max_clients_seen: int = 0
    victims: int = 0  # nodes a scripted disaster took down
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, supernodes, online)

    def record_lookup(
        self, started: float, ok: bool, latency: float, hops: int, reason: str
    ) -> None:
        self.lookup_started.append(started)
        self.lookup_ok.append(ok)
        if ok:
            self.lookup_latency_s.append(latency)
            self.lookup_hops.append(hops)
        else:
            self.failure_reasons[reason] = self.failure_reasons.get(reason, 0) + 1
            self.lookup_failures.append((started, reason))

    def lose_lookup(self, reason: str) -> None:
        self.lookups_lost[reason] = self.lookups_lost.get(reason, 0) + 1

    def windows(self, start: float, end: float, window_s: float = 10.0) -> list[tuple[int, int]]:
        """(succeeded, judged) lookups in each sliding window ending at a whole second t,
        start <= t <= end; the window ending at t holds lookups started in [t - window_s, t)."""
        bins_ok: dict[int, int] = {}
        bins_all: dict[int, int] = {}
        for started, ok in zip(self.lookup_started, self.lookup_ok, strict=True):
            b = int(started)
            bins_all[b] = bins_all.get(b, 0) + 1
            if ok:
                bins_ok[b] = bins_ok.get(b, 0) + 1
        first = math.ceil(start)
        width = int(window_s)
        total_ok = sum(bins_ok.get(s, 0) for s in range(first - width, first))
        total_all = sum(bins_all.get(s, 0) for s in range(first - width, first))
        result: list[tuple[int, int]] = []
        for t in range(first, int(end) + 1):
            result.append((total_ok, total_all))
            # slide the window one second forward: add [t, t+1), drop [t - w, t - w + 1)
            total_ok += bins_ok.get(t, 0) - bins_ok.get(t - width, 0)
            total_all += bins_all.get(t, 0) - bins_all.get(t - width, 0)
        return result

    def recovery_s(
        self,
        event_at: float,
        end: float,
        window_s: float = 10.0,
        target: float = 0.99,
        settle_s: float = SETTLE_S,
    ) -> float | None:
        """Seconds from `event_at` until windowed lookup success is back at `target` and
        stays there for `settle_s` (or to the end of the run).

        For each whole second t from the event to `end`, the window holds lookups started in
        [t - window_s, t). A window is healthy if it holds a lookup and at least `target` of
        its lookups succeeded; one with no lookup proves nothing, so it counts as not
        healthy. The answer is the end of the last window not healthy, minus event_at (0 if
        every window was healthy); None if the run ended with such a window (not recovered,
        or not known to be). A window not healthy after `settle_s` of healthy ones is a
        later dip, not the event's (a window holds ~150 lookups at 10 000 users: two failed
        lookups anywhere in an hour make one); `later_dips` counts them.
        """
        first = math.ceil(event_at)
        stop = int(end)
        last_bad: int | None = None
        for t, (ok, judged) in enumerate(self.windows(event_at, end, window_s), start=first):
            if not judged or ok / judged < target:
                if t - (last_bad if last_bad is not None else event_at) > settle_s:
                    break  # settled before this: a later dip
                last_bad = t
        if last_bad is None:
            return 0.0
        if last_bad >= stop - 1:
            return None
        return float(last_bad) - event_at

    def later_dips(
        self, event_at: float, recovery_s: float | None, end: float, window_s: float = 10.0
    ) -> int:
        """Windows below 99 % after the recovery (see `recovery_s`): dips of their own."""
        if recovery_s is None:
            return 0
        start = event_at + recovery_s + 1
        windows = self.windows(start, end, window_s)
        return sum(1 for ok, judged in windows if not judged or ok / judged < 0.99)


def _ms(values: list[float], quantiles: tuple[str, ...]) -> dict[str, float]:
    """Percentiles of `values` (seconds) in milliseconds, keyed "p50" and so on."""
    return {q: round(percentile(values, float(q[1:])) * 1000, 1) for q in quantiles}


def most_at_once(intervals: list[tuple[float, float]], lo: float, hi: float) -> int:
    """The most of the half-open `intervals` [start, end) that overlap at one instant in
    [lo, hi)."""
    edges: list[tuple[float, int]] = []
    for start, end in intervals:
        start, end = max(start, lo), min(end, hi)
        if start < end:
            edges.append((start, 1))
            edges.append((end, -1))
    edges.sort()  # at equal times an end (-1) comes before a start (+1)
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def _findable(m: Metrics, unfindable_at_end: list[float], lo: float, hi: float) -> dict[str, Any]:
    """Logins in [lo, hi) and how long until each was findable (its presence stored)."""
    delays = [d for login, d in m.findable if lo <= login < hi]
    ended = [(login, end) for login, end in m.ended_unfindable if lo <= login < hi]
    still = [login for login in unfindable_at_end if lo <= login < hi]
    spans = [(login, login + d) for login, d in m.findable]
    spans += m.ended_unfindable
    spans += [(login, math.inf) for login in unfindable_at_end]
    return {
        "logins": len(delays) + len(ended) + len(still),
        "findable": len(delays),
        "login_to_findable_ms": _ms(delays, ("p50", "p95", "p99", "p100")),
        "ended_unfindable": len(ended),
        "unfindable_at_end": len(still),
        "unfindable_max": most_at_once(spans, lo, hi),
    }


def _harm(
    m: Metrics, event_at: float, end: float, unfindable_at_end: list[float]
) -> dict[str, Any]:
    """What a scripted event did, from the event to HARM_WINDOW_S after it."""
    until = min(end, event_at + HARM_WINDOW_S)
    judged = [
        ok for t, ok in zip(m.lookup_started, m.lookup_ok, strict=True) if event_at <= t < until
    ]
    failures: dict[str, int] = {}
    for t, reason in m.lookup_failures:
        if event_at <= t < until:
            failures[reason] = failures.get(reason, 0) + 1
    windows = m.windows(event_at, until)
    rates = [ok / n for ok, n in windows if n]
    return {
        "until_s": until,
        "victims": m.victims,
        "lookups": len(judged),
        "lookups_failed": len(judged) - sum(judged),
        "failures": dict(sorted(failures.items())),
        "worst_window_success_rate": round(min(rates), 6) if rates else None,
        "windows_without_lookups": len(windows) - len(rates),
        "logins": _findable(m, unfindable_at_end, event_at, until),
    }


def report(
    config: SimConfig,
    metrics: Metrics,
    *,
    online: int,
    supernodes: int,
    tier_loads: list[int],
    unfindable_at_end: list[float],
    lookups_unfinished: int,
    presence_unjudged: int,
    calls: dict[str, Any],
    network: Network,
    checker: InvariantChecker,
    events: int,
    wall_s: float,
    adversary: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report of a finished run (see the README for the fields).

    `online` counts the users online at the end, `supernodes` the tier, `tier_loads` each
    supernode's primary clients; `unfindable_at_end` holds the login times of users still
    logged in but not findable, `lookups_unfinished` the lookups still on their way and
    `presence_unjudged` the status changes whose deadline is after the end. `events` is the
    engine's event count and `adversary` the hostile supernodes' section (None: none).
    """
    cfg = config
    m = metrics
    loads = sorted(tier_loads)
    count = supernodes
    attempted = len(m.lookup_ok)
    succeeded = sum(m.lookup_ok)
    after_ramp = [(s, o) for t, s, o in m.samples if t >= cfg.ramp_s and o]
    result: dict[str, Any] = {
        "seed": cfg.seed,
        "users": cfg.users,
        "scenario": cfg.scenario,
        "duration_s": cfg.duration_s,
        "online": online,
        "supernodes": {
            "count": count,
            "fraction": round(count / max(online, 1), 5),
            "fraction_max": round(max((s / o for s, o in after_ramp), default=0.0), 5),
            "clients_per_supernode": {
                "p50": percentile([float(x) for x in loads], 50),
                "max": max(loads, default=0),
                "max_seen": m.max_clients_seen,
                "admission_limit": cfg.supernode.max_clients,
            },
            "promotions": m.promotions,
            "demotions": m.demotions,
            "all_eligible": True,  # an ineligible promotion raises InvariantViolation
        },
        "lookups": {
            "attempted": attempted,
            "succeeded": succeeded,
            "success_rate": round(succeeded / attempted, 6) if attempted else 0.0,
            "latency_ms": _ms(m.lookup_latency_s, ("p50", "p95", "p99")),
            "hops": {
                "p50": percentile([float(h) for h in m.lookup_hops], 50),
                "p99": percentile([float(h) for h in m.lookup_hops], 99),
                "max": max(m.lookup_hops, default=0),
            },
            "failures": dict(sorted(m.failure_reasons.items())),
            # every lookup started: `attempted` (judged) plus `lost` (never judged)
            "issued": m.lookups_issued,
            "lost": dict(sorted({**m.lookups_lost, "unfinished": lookups_unfinished}.items())),
            "of_unfindable": {  # targets logged in but not yet published at the start
                "attempted": m.unfindable_lookups,
                "succeeded": m.unfindable_lookups_ok,
            },
        },
        "findable": _findable(m, unfindable_at_end, 0.0, math.inf),
        "presence": {
            "propagations": len(m.propagation_s),
            "propagation_ms": _ms(m.propagation_s, ("p50", "p95")),
            # status changes x online watchers: heard within PRESENCE_DEADLINE_S or not
            "expected": m.presence_expected,
            "delivered": m.presence_delivered,
            "missing": m.presence_missing,
            "unjudged": m.presence_unjudged + presence_unjudged,
        },
        "calls": calls,
        "network": {"messages": network.sent, "lost": network.lost},
        "invariants": {
            "records_checked": checker.accepts,
            "signatures_reverified": checker.checked_signatures,
        },
        "sim": {"virtual_s": cfg.duration_s, "wall_s": round(wall_s, 2), "events": events},
    }
    if adversary is not None:
        result["adversary"] = adversary
    if cfg.scenario != "steady":
        event_at = cfg.disaster_time()
        result["event_at_s"] = event_at
        result["recovery_s"] = m.recovery_s(event_at, cfg.duration_s)
        result["later_dips"] = m.later_dips(event_at, result["recovery_s"], cfg.duration_s)
        result["harm"] = _harm(m, event_at, cfg.duration_s, unfindable_at_end)
    return result
