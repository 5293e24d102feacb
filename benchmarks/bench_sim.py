"""Simulator speed: events per wall second, and wall time / peak memory of a large run;
and issue 12's acceptance at its size (supernode duty: measured election, caps).

    .venv/bin/python -m benchmarks.bench_sim            # 100 000 users, 3600 s (~20 min)
    .venv/bin/python -m benchmarks.bench_sim --users 10000 --duration 600   # quick look
    .venv/bin/python -m benchmarks.bench_sim --sharing  # 10 000 users, 1 h, steady and
                                                        # flash-crowd (~4 min each)

The reference measured in the same run is the bare event-queue floor: the same number of
heap pushes and pops with no protocol work, so "ratio" says how many times slower than an
empty event loop the real overlay cores make each event.

`--sharing` runs `peerphone simulate --users 10000 --duration 3600 --seed 1` with
`--scenario steady` and `--scenario flash-crowd` and checks issue 12's acceptance: at most
1 % of online nodes are supernodes, all publicly reachable; no supernode over any cap by
more than 5 % in any 10 s window; lookups >= 99.9 %, also those started within 60 s after a
supernode left the tier. It prints the measured numbers and exits 1 if one is missed.
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
from typing import Any

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


def sharing_run(users: int, duration: float, scenario: str, seed: int) -> dict[str, Any]:
    """One run of issue 12's acceptance: its numbers, and which criteria it missed."""
    command = (
        f"peerphone simulate --users {users} --duration {duration:.0f} "
        f"--scenario {scenario} --seed {seed}"
    )
    report = simulate(SimConfig(users=users, duration_s=duration, scenario=scenario, seed=seed))
    sn, lookups, sharing = report["supernodes"], report["lookups"], report["sharing"]
    around = lookups["around_role_changes"]
    rows = sharing["supernodes"]
    numbers = {
        "command": command,
        "supernodes_fraction_max": sn["fraction_max"],
        "supernodes_at_end": sn["count"],
        "online_at_end": report["online"],
        "ever_supernodes": len(rows),
        "all_publicly_reachable": sn["all_publicly_reachable"],
        "elected_behind_nat": report["eligibility"]["elected_behind_nat"],
        "max_share_of_cap_10s": sharing["max_share"],
        "signaling_share_p50_p99_median": [
            sorted(r["signaling"]["p50"] for r in rows)[len(rows) // 2],
            sorted(r["signaling"]["p99"] for r in rows)[len(rows) // 2],
        ],
        "shedding_steps": sharing["steps"],
        "shedding_actions": sharing["actions"],
        "messages": sharing["messages"],
        "step_downs": sn["step_downs"],
        "promotions": sn["promotions"],
        "lookup_success": lookups["success_rate"],
        "lookups": lookups["attempted"],
        "lookup_success_around_role_changes": around["success_rate"],
        "lookups_around_role_changes": around["attempted"],
        "role_changes": around["role_changes"],
        "calls": report["calls"]["success_rate"],
        "relay": report["calls"]["relay"],
        "wall_s": report["sim"]["wall_s"],
    }
    if "flash_crowd" in report:
        numbers["flash_crowd"] = report["flash_crowd"]
        numbers["recovery_s"] = report["recovery_s"]
        numbers["harm"] = {k: report["harm"][k] for k in ("lookups", "lookups_failed")}
    missed = []
    if sn["fraction_max"] > 0.01:
        missed.append("supernodes > 1 % of online nodes")
    if not sn["all_publicly_reachable"]:
        missed.append("a supernode not publicly reachable")
    if not sharing["within_105"]:
        missed.append("a cap exceeded by more than 5 % in a 10 s window")
    if lookups["success_rate"] < 0.999:
        missed.append("lookup success < 99.9 %")
    if around["success_rate"] is not None and around["success_rate"] < 0.999:
        missed.append("lookup success around demotions and hand-overs < 99.9 %")
    numbers["missed"] = missed
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--skip-large", action="store_true", help="only the small measurement")
    parser.add_argument(
        "--sharing", action="store_true", help="issue 12's acceptance (10 000 users, 1 h)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.sharing:
        users = 10_000 if args.users == 100_000 else args.users
        failed = False
        for scenario in ("steady", "flash-crowd"):
            numbers = sharing_run(users, args.duration, scenario, args.seed)
            print(json.dumps(numbers, indent=2), flush=True)
            failed = failed or bool(numbers["missed"])
        sys.exit(1 if failed else 0)

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
