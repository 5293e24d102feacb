"""What a simulation run measures, and the report it produces."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from peerphone.sim.config import SimConfig
from peerphone.sim.invariants import InvariantChecker
from peerphone.sim.network import Network
from peerphone.stats import percentile


@dataclass(slots=True)
class Metrics:
    """Counters and samples gathered while the simulation runs."""

    lookup_started: list[float] = field(default_factory=list)  # start time of each lookup
    lookup_ok: list[bool] = field(default_factory=list)
    lookup_latency_s: list[float] = field(default_factory=list)  # successful ones
    lookup_hops: list[int] = field(default_factory=list)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    propagation_s: list[float] = field(default_factory=list)
    promotions: int = 0
    demotions: int = 0
    max_clients_seen: int = 0
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

    def recovery_s(
        self, event_at: float, end: float, window_s: float = 10.0, target: float = 0.99
    ) -> float | None:
        """Seconds from `event_at` until windowed lookup success is back at `target` for good.

        For each whole second t after the event, the window holds lookups started in
        [t - window_s, t). The answer is the end of the last window below target, minus
        event_at (0 if none was); None if the run ended still below target.
        """
        bins_ok: dict[int, int] = {}
        bins_all: dict[int, int] = {}
        for started, ok in zip(self.lookup_started, self.lookup_ok, strict=True):
            b = int(started)
            bins_all[b] = bins_all.get(b, 0) + 1
            if ok:
                bins_ok[b] = bins_ok.get(b, 0) + 1
        last_bad: int | None = None
        start = math.ceil(event_at)
        stop = int(end)
        total_ok = sum(bins_ok.get(s, 0) for s in range(start - int(window_s), start))
        total_all = sum(bins_all.get(s, 0) for s in range(start - int(window_s), start))
        for t in range(start, stop + 1):
            if total_all and total_ok / total_all < target:
                last_bad = t
            # slide the window one second forward: add [t, t+1), drop [t - w, t - w + 1)
            total_ok += bins_ok.get(t, 0) - bins_ok.get(t - int(window_s), 0)
            total_all += bins_all.get(t, 0) - bins_all.get(t - int(window_s), 0)
        if last_bad is None:
            return 0.0
        if last_bad >= stop - 1:
            return None
        return float(last_bad) - event_at


def _ms(values: list[float], quantiles: tuple[str, ...]) -> dict[str, float]:
    """Percentiles of `values` (seconds) in milliseconds, keyed "p50" and so on."""
    return {q: round(percentile(values, float(q[1:])) * 1000, 1) for q in quantiles}


def report(
    config: SimConfig,
    metrics: Metrics,
    *,
    online: int,
    supernodes: int,
    tier_loads: list[int],
    calls: dict[str, Any],
    network: Network,
    checker: InvariantChecker,
    events: int,
    wall_s: float,
    adversary: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report of a finished run (see the README for the fields).

    `online` counts the users online at the end, `supernodes` the tier, `tier_loads` each
    supernode's primary clients; `events` is the engine's event count and `adversary` the
    hostile supernodes' section (None: no adversary in this run).
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
        },
        "presence": {
            "propagations": len(m.propagation_s),
            "propagation_ms": _ms(m.propagation_s, ("p50", "p95")),
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
    return result
