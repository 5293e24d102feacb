"""What a simulation run measures, and the report it produces."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list; 0.0 for an empty one."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


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
