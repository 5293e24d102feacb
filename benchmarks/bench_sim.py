"""Simulator speed: events per wall second, and wall time / peak memory of a large run.

    .venv/bin/python -m benchmarks.bench_sim            # 100 000 users, 3600 s (~20 min)
    .venv/bin/python -m benchmarks.bench_sim --users 10000 --duration 600   # quick look

The reference measured in the same run is the bare event-queue floor: the same number of
heap pushes and pops with no protocol work, so "ratio" says how many times slower than an
empty event loop the real overlay cores make each event.
"""

from __future__ import annotations

import argparse
import heapq
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peerphone.sim.world import SimConfig, simulate


def heap_floor(events: int) -> float:
    """Events per second of an event loop that does nothing but push and pop."""
    queue: list[tuple[float, int, int]] = []
    t0 = time.perf_counter()
    for i in range(events):
        heapq.heappush(queue, (i * 0.37 % 1000.0, i, 0))
        if len(queue) > 50_000:
            heapq.heappop(queue)
    while queue:
        heapq.heappop(queue)
    return events / (time.perf_counter() - t0)


def events_per_second(users: int, duration: float) -> tuple[float, int, float]:
    t0 = time.perf_counter()
    report = simulate(SimConfig(users=users, duration_s=duration, seed=1))
    wall = time.perf_counter() - t0
    events = int(report["sim"]["events"])
    return events / wall, events, wall


def large_run(users: int, duration: float) -> dict[str, float]:
    """Run the CLI in a child process; measure its wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "peerphone.cli",
                "simulate",
                "--users",
                str(users),
                "--duration",
                str(duration),
                "--scenario",
                "steady",
                "--seed",
                "1",
                "--json",
                str(out),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t0
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        report = json.loads(out.read_text())
    return {
        "users": users,
        "duration_s": duration,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "events": report["sim"]["events"],
        "events_per_s": round(report["sim"]["events"] / wall),
        "lookup_success_rate": report["lookups"]["success_rate"],
        "supernodes": report["supernodes"]["count"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--skip-large", action="store_true", help="only the small measurement")
    args = parser.parse_args()

    rate, events, wall = events_per_second(2000, 900.0)
    floor = heap_floor(events)
    print(f"simulator: {rate:,.0f} events/s ({events:,} events in {wall:.1f} s, 2000 users)")
    print(f"reference: {floor:,.0f} events/s for a bare heap loop of the same size")
    print(f"ratio:     each simulated event costs {floor / rate:.1f}x a bare heap event")
    if args.skip_large:
        return
    result = large_run(args.users, args.duration)
    target_s, target_mib = 20 * 60, 8 * 1024
    print(json.dumps(result, indent=2))
    print(
        f"wall time {result['wall_s']} s vs target {target_s} s "
        f"({float(result['wall_s']) / target_s:.2f}x of budget); peak "
        f"{result['peak_rss_mib']} MiB vs {target_mib} MiB"
    )


if __name__ == "__main__":
    main()
