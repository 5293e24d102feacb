"""One supernode process under load: RSS, CPU per client at the keep-alive rate, lookups.

    .venv/bin/python -m benchmarks.bench_supernode                    # 2000 clients (2-3 min)
    .venv/bin/python -m benchmarks.bench_supernode --clients 200 --idle 5 --lookup-seconds 5
    .venv/bin/python -m benchmarks.bench_supernode --json result.json

The supernode is a child process (a seeded `NodeRuntime`, alone in its ring, admitting as
many clients as asked); this process is the load generator: one `NodeRuntime`, UDP socket
and QUIC link per client, all on 127.0.0.1. CPU and memory of the supernode are read from
/proc. The load generator shares the machine, so its CPU is reported too: a generator at
100 % of a core means the lookup rate is a floor of what the supernode can do.

References measured in the same run (shared machines are noisy, so ratios are what count):
a bare aioquic request/response echo between two processes (aioquic's own asyncio server
and client protocols, Retry on, no overlay), with as many connections and requests in
flight and as many bytes per request and reply as the lookups: lookups/s, latency and
CPU per request are set against it; and the supernode idling with no client, for CPU and
memory. Other processes on the machine are reported too ("others"), from /proc/stat.

Also ``serve`` and ``echo-serve``: the two child processes (see `benchmarks._bench_procs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks._bench_procs import (
    CLOCK_TICKS_PER_S,
    REPLY_BYTES,
    REQUEST_BYTES,
    Child,
    cpu_seconds,
    machine_busy_seconds,
    memory_kib,
    serve_echo,
    serve_supernode,
)
from benchmarks._loadgen import (
    FDS_PER_PROCESS,
    Fleet,
    RequestResult,
    echo_clients,
    echo_requests,
    percentile,
    raise_fd_limit,
)
from peerphone.records import decode_record
from peerphone.runtime.node_runtime import DEFAULT_IDLE_TIMEOUT_S, KEEPALIVE_FRACTION, run

SATURATED_PCT = 90.0  # a process using this much of a core is taken as the bottleneck
MIN_TICKS_FOR_RATIO = 10  # fewer CPU clock ticks in a reference window: too coarse to divide
ADMISSION_MARGIN = 16  # admission limit above the clients asked: a retried login still fits


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run; the defaults are the full benchmark of the issue."""

    clients: int = 2000
    idle_s: float = 30.0  # CPU windows with 0 and with every client attached
    lookup_s: float = 20.0  # how long lookups (and echoes) run, when `lookups` is 0
    lookups: int = 0  # a fixed number of lookups (and echoes) instead
    in_flight: int = 64  # lookups (and echo requests) outstanding at any time
    attach_in_flight: int = 50  # clients logging in at once
    attach_deadline_s: float = 60.0  # per client, from its login to its publish
    settle_s: float = 3.0  # pause after start-up and after attaching, before measuring
    seed: int = 1


class Usage:
    """CPU of the supernode (or echo server), of this process and of everything else on
    the machine, and wall time, since construction."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall = time.perf_counter()
        self.child = cpu_seconds(pid)
        self.own = cpu_seconds(os.getpid())
        self.machine = machine_busy_seconds()

    def since(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        child = cpu_seconds(self.pid) - self.child
        own = cpu_seconds(os.getpid()) - self.own
        others = max(0.0, machine_busy_seconds() - self.machine - child - own)
        return {
            "wall_s": round(wall, 3),
            "supernode_cpu_s": round(child, 3),
            "generator_cpu_s": round(own, 3),
            "supernode_cpu_pct": round(100 * child / wall, 1),
            "generator_cpu_pct": round(100 * own / wall, 1),
            "others_cpu_pct": round(100 * others / wall, 1),  # other tenants of the machine
        }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _per(total: float, count: int, scale: float = 1e6) -> float:
    """`total` per item of `count`, times `scale` (default: seconds to microseconds)."""
    return round(total / count * scale, 1) if count else 0.0


def _requests(result: RequestResult) -> dict[str, Any]:
    failures = dict(sorted(result.failures.items()))
    if result.unanswered:
        failures["unanswered"] = result.unanswered
    return {
        "requests": result.answered + result.unanswered,
        "succeeded": result.succeeded,
        "failed": result.failed,
        "failures": failures,
        "wall_s": round(result.wall_s, 3),
        "per_s": round(result.answered / result.wall_s, 1) if result.wall_s else 0.0,
        "p50_ms": _ms(percentile(result.latencies_s, 50)),
        "p99_ms": _ms(percentile(result.latencies_s, 99)),
    }


async def _idle_window(supernode: Child, seconds: float) -> dict[str, Any]:
    """Supernode CPU and datagrams over `seconds` in which the generator does nothing."""
    before = (await supernode.stats())["runtime"]
    usage = Usage(supernode.pid)
    await asyncio.sleep(seconds)
    window = usage.since()
    after = (await supernode.stats())["runtime"]
    for key in ("datagrams_in", "datagrams_out"):
        window[f"{key}_per_s"] = round((after.get(key, 0) - before.get(key, 0)) / seconds, 1)
    return window


async def _echo_reference(options: BenchOptions) -> dict[str, Any]:
    echo = await Child.start("echo-serve", "--port", "0")
    try:
        async with echo_clients(echo.port, options.in_flight) as clients:
            usage = Usage(echo.pid)
            result = await echo_requests(clients, options.lookups, options.lookup_s)
            cpu = usage.since()
    finally:
        await echo.close()
    return {
        "connections": options.in_flight,
        "request_bytes": REQUEST_BYTES,
        "reply_bytes": REPLY_BYTES,
        **_requests(result),
        "server_cpu_pct": cpu["supernode_cpu_pct"],
        "client_cpu_pct": cpu["generator_cpu_pct"],
        "others_cpu_pct": cpu["others_cpu_pct"],
        "server_us_per_request": _per(cpu["supernode_cpu_s"], result.answered),
        "client_us_per_request": _per(cpu["generator_cpu_s"], result.answered),
    }


async def measure(options: BenchOptions) -> dict[str, Any]:
    """Run the whole benchmark; the result is what `report` prints and `--json` writes."""
    fd_limit = raise_fd_limit(options.clients + FDS_PER_PROCESS)
    result: dict[str, Any] = {
        "options": asdict(options),
        "machine": {
            "cpus": os.cpu_count(),
            "fd_limit": list(fd_limit),
            "load_average_at_start": round(os.getloadavg()[0], 2),
        },
    }
    max_clients = options.clients + ADMISSION_MARGIN
    supernode = await Child.start(
        "serve", "--port", "0", "--max-clients", str(max_clients), "--seed", str(options.seed)
    )
    fleet: Fleet | None = None
    try:
        await asyncio.sleep(options.settle_s)
        memory_idle = supernode.memory_kib()
        result["idle_0"] = await _idle_window(supernode, options.idle_s)

        record = decode_record(bytes.fromhex(supernode.ready["record"]))
        fleet = Fleet(options.clients, record, options.seed)
        usage = Usage(supernode.pid)
        attach = await fleet.log_in(options.attach_in_flight, options.attach_deadline_s)
        attach_cpu = usage.since()
        await asyncio.sleep(options.settle_s)
        attached_stats = await supernode.stats()
        memory_clients = supernode.memory_kib()
        result["idle_n"] = await _idle_window(supernode, options.idle_s)

        # the reference right before the lookups: the machine's other load changes by the
        # minute. The supernode idles meanwhile (its keep-alives: a few % of a core).
        result["echo"] = await _echo_reference(options)
        usage = Usage(supernode.pid)
        lookups = await fleet.lookups(
            options.in_flight, options.lookups, options.lookup_s, options.seed
        )
        lookup_cpu = usage.since()
        result["supernode_stats"] = await supernode.stats()
        memory_end = supernode.memory_kib()
    finally:
        if fleet is not None:
            await fleet.stop()
        await supernode.close()

    published = len(fleet.published)
    clients = int(attached_stats["clients"])
    result["attach"] = {
        "asked": options.clients,
        "admission_limit": max_clients,
        "attached": len(attach.attached_s),
        "published": published,
        "failed": options.clients - published,
        "failures": dict(sorted(attach.failures.items())),
        "lost_and_retried": attach.lost,
        "supernode_clients": clients,
        "supernode_links": attached_stats["links"],
        "in_flight": options.attach_in_flight,
        "wall_s": round(attach.wall_s, 2),
        "per_s": round(published / attach.wall_s, 1) if attach.wall_s else 0.0,
        "attached_p50_ms": _ms(percentile(attach.attached_s, 50)),
        "attached_p99_ms": _ms(percentile(attach.attached_s, 99)),
        "published_p50_ms": _ms(percentile(attach.published_s, 50)),
        "published_p99_ms": _ms(percentile(attach.published_s, 99)),
        "supernode_ms_cpu_per_login": _per(attach_cpu["supernode_cpu_s"], published, 1e3),
        **_pct(attach_cpu),
    }
    result["memory"] = {
        "idle_rss_kib": memory_idle["rss_kib"],
        "clients_rss_kib": memory_clients["rss_kib"],
        "per_client_kib": round(
            (memory_clients["rss_kib"] - memory_idle["rss_kib"]) / max(clients, 1), 1
        ),
        "peak_rss_kib": memory_end["hwm_kib"],
        "end_rss_kib": memory_end["rss_kib"],
        "generator_rss_kib": memory_kib(os.getpid())["rss_kib"],
    }
    result["keepalive"] = _keepalive(result["idle_0"], result["idle_n"], clients, options.idle_s)
    # the keep-alives go on while the lookups run: their CPU (as measured idle) is not
    # the lookups'
    keepalive_cpu_s = result["idle_n"]["supernode_cpu_s"] / options.idle_s * lookups.wall_s
    result["lookups"] = {
        **_requests(lookups),
        **_pct(lookup_cpu),
        "supernode_us_per_lookup": _per(lookup_cpu["supernode_cpu_s"], lookups.answered),
        "supernode_net_us_per_lookup": _per(
            max(0.0, lookup_cpu["supernode_cpu_s"] - keepalive_cpu_s), lookups.answered
        ),
        "generator_us_per_lookup": _per(lookup_cpu["generator_cpu_s"], lookups.answered),
    }
    result["ratios"] = _ratios(result)
    fleet_stats = fleet.stats()
    result["generator_stats"] = {
        key: fleet_stats[key]
        for key in sorted(fleet_stats)
        if key.startswith(("drop_", "handshake", "dial", "internal", "socket"))
    }
    result["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    return result


def _pct(usage: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in usage.items() if k.endswith("_pct")}


def _keepalive(
    idle_0: dict[str, Any], idle_n: dict[str, Any], clients: int, window_s: float
) -> dict[str, Any]:
    """CPU per attached client while only keep-alives flow, gross and net of idling."""
    per_client = idle_n["supernode_cpu_s"] / max(clients, 1) / window_s
    net = (idle_n["supernode_cpu_s"] - idle_0["supernode_cpu_s"]) / max(clients, 1) / window_s
    datagrams = idle_n["datagrams_in_per_s"] + idle_n["datagrams_out_per_s"]
    return {
        "clients": clients,
        "ping_interval_s": DEFAULT_IDLE_TIMEOUT_S * KEEPALIVE_FRACTION,
        "us_per_client_per_s": round(per_client * 1e6, 2),
        "pct_core_per_1000_clients": round(per_client * 1000 * 100, 3),
        "net_us_per_client_per_s": round(net * 1e6, 2),
        "net_pct_core_per_1000_clients": round(net * 1000 * 100, 3),
        "us_per_datagram": round(idle_n["supernode_cpu_s"] / window_s / datagrams * 1e6, 1)
        if datagrams
        else 0.0,
    }


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None when the reference b is zero (e.g. no clock tick in an idle window)."""
    return round(a / b, 3) if b else None


def _ratios(result: dict[str, Any]) -> dict[str, float | None]:
    echo, lookups = result["echo"], result["lookups"]
    return {
        "lookups_per_s_vs_echo": _ratio(lookups["per_s"], echo["per_s"]),
        "lookup_p50_vs_echo_p50": _ratio(lookups["p50_ms"], echo["p50_ms"]),
        "lookup_p99_vs_echo_p99": _ratio(lookups["p99_ms"], echo["p99_ms"]),
        "supernode_net_cpu_per_lookup_vs_echo_server": _ratio(
            lookups["supernode_net_us_per_lookup"], echo["server_us_per_request"]
        ),
        "idle_cpu_clients_vs_none": _ratio(
            result["idle_n"]["supernode_cpu_s"], _ticks_or_zero(result["idle_0"]["supernode_cpu_s"])
        ),
        "rss_clients_vs_idle": _ratio(
            result["memory"]["clients_rss_kib"], result["memory"]["idle_rss_kib"]
        ),
    }


def _ticks_or_zero(cpu_s: float) -> float:
    """`cpu_s`, or 0 if it is too few clock ticks to serve as a reference."""
    return cpu_s if cpu_s * CLOCK_TICKS_PER_S >= MIN_TICKS_FOR_RATIO else 0.0


def _bottleneck(phase: dict[str, Any], cpus: int, ours: str, theirs: str) -> str:
    """Which process, if any, limited a phase (`ours`: the generator's name)."""
    mine, server, others = (
        phase["generator_cpu_pct"],
        phase["supernode_cpu_pct"],
        phase["others_cpu_pct"],
    )
    total = round(mine + server + others, 1)
    if mine >= SATURATED_PCT and mine >= server:
        return f"{ours} ({mine} % of a core): the rate is a floor of what {theirs} can do"
    if server >= SATURATED_PCT:
        return f"{theirs} ({server} % of a core)"
    if total >= cpus * SATURATED_PCT:
        return f"the machine: {total} % of {cpus} cores busy, {others} % by other processes"
    return "none of the processes used a whole core (latency-bound)"


def report(result: dict[str, Any]) -> list[str]:
    """The human-readable summary of a `measure` result."""
    opts, machine, echo, attach = (
        result["options"],
        result["machine"],
        result["echo"],
        result["attach"],
    )
    mem, idle_0, idle_n = result["memory"], result["idle_0"], result["idle_n"]
    keep, lookups, ratios = result["keepalive"], result["lookups"], result["ratios"]
    cpus = int(machine["cpus"] or 1)
    mib = 1024
    return [
        f"supernode benchmark: {opts['clients']} clients asked; the supernode process and "
        f"this load generator share {cpus} CPUs (load average {machine['load_average_at_start']}"
        f" at start, {machine['load_average_at_end']} at end)",
        f"reference, bare aioquic echo: {echo['per_s']:,.0f} req/s over {echo['connections']} "
        f"connections ({echo['request_bytes']} B -> {echo['reply_bytes']} B, one in flight "
        f"each), p50 {echo['p50_ms']} ms, p99 {echo['p99_ms']} ms, {echo['failed']} failed; "
        f"CPU server {echo['server_cpu_pct']} % / client {echo['client_cpu_pct']} % / other "
        f"processes {echo['others_cpu_pct']} % of a core; server {echo['server_us_per_request']}"
        f" us CPU per request",
        f"  bottleneck: {_bottleneck(_cpu(echo), cpus, 'the echo client', 'the echo server')}",
        f"attach: {attach['published']}/{attach['asked']} attached and published "
        f"({attach['failed']} failed{_why(attach['failures'])}, "
        f"{attach['lost_and_retried']} lost and retried); the supernode counts "
        f"{attach['supernode_clients']} clients on {attach['supernode_links']} links",
        f"  {attach['wall_s']} s with {attach['in_flight']} logging in at once = "
        f"{attach['per_s']}/s; login->attached p50 {attach['attached_p50_ms']} ms, p99 "
        f"{attach['attached_p99_ms']} ms; login->published p50 {attach['published_p50_ms']} "
        f"ms, p99 {attach['published_p99_ms']} ms; supernode {attach['supernode_ms_cpu_per_login']}"
        f" ms CPU per login (QUIC handshake included); CPU supernode "
        f"{attach['supernode_cpu_pct']} % / generator {attach['generator_cpu_pct']} % / others "
        f"{attach['others_cpu_pct']} %",
        f"memory (supernode RSS): idle {mem['idle_rss_kib'] / mib:.1f} MiB, with "
        f"{keep['clients']} clients {mem['clients_rss_kib'] / mib:.1f} MiB = "
        f"{mem['per_client_kib']} KiB per client; peak {mem['peak_rss_kib'] / mib:.1f} MiB "
        f"(load generator: {mem['generator_rss_kib'] / mib:.1f} MiB)",
        f"idle CPU over {opts['idle_s']} s: 0 clients {idle_0['supernode_cpu_pct']} % of a "
        f"core ({idle_0['supernode_cpu_s']} s); {keep['clients']} clients "
        f"{idle_n['supernode_cpu_pct']} % "
        f"({idle_n['datagrams_in_per_s']} datagrams/s in, {idle_n['datagrams_out_per_s']} out; "
        f"a keep-alive PING every {keep['ping_interval_s']} s per client; other processes "
        f"{idle_n['others_cpu_pct']} %)",
        f"  per client: {keep['us_per_client_per_s']} us CPU per s = "
        f"{keep['pct_core_per_1000_clients']} % of a core per 1000 clients (net of the "
        f"0-client idle: {keep['net_us_per_client_per_s']} us/s = "
        f"{keep['net_pct_core_per_1000_clients']} % per 1000); {keep['us_per_datagram']} us "
        f"per datagram",
        f"lookups: {lookups['succeeded']:,} found of {lookups['requests']:,} "
        f"({lookups['failed']} failed{_why(lookups['failures'])}) in {lookups['wall_s']} s "
        f"= {lookups['per_s']:,.0f}/s with {opts['in_flight']} in flight; p50 "
        f"{lookups['p50_ms']} ms, p99 {lookups['p99_ms']} ms",
        f"  CPU supernode {lookups['supernode_cpu_pct']} % / generator "
        f"{lookups['generator_cpu_pct']} % / others {lookups['others_cpu_pct']} %; supernode "
        f"{lookups['supernode_us_per_lookup']} us CPU per lookup, "
        f"{lookups['supernode_net_us_per_lookup']} us net of the keep-alives (generator "
        f"{lookups['generator_us_per_lookup']} us)",
        f"  bottleneck: {_bottleneck(lookups, cpus, 'the load generator', 'the supernode')}",
        f"ratios: lookups/s = {ratios['lookups_per_s_vs_echo']}x echo req/s; supernode CPU "
        f"per lookup (net) = {ratios['supernode_net_cpu_per_lookup_vs_echo_server']}x echo "
        f"server CPU per request; lookup p50 = {ratios['lookup_p50_vs_echo_p50']}x echo p50, p99 = "
        f"{ratios['lookup_p99_vs_echo_p99']}x echo p99; idle CPU with clients = "
        f"{_times(ratios['idle_cpu_clients_vs_none'])} with none; RSS with "
        f"clients = {ratios['rss_clients_vs_idle']}x idle RSS",
    ]


def _why(failures: dict[str, int]) -> str:
    return f": {failures}" if failures else ""


def _times(ratio: float | None) -> str:
    if ratio is not None:
        return f"{ratio}x"
    return f"n/a (fewer than {MIN_TICKS_FOR_RATIO} clock ticks of CPU when idle)"


def _cpu(echo: dict[str, Any]) -> dict[str, Any]:
    """The echo's CPU shares under the names `_bottleneck` reads."""
    return {
        "generator_cpu_pct": echo["client_cpu_pct"],
        "supernode_cpu_pct": echo["server_cpu_pct"],
        "others_cpu_pct": echo["others_cpu_pct"],
    }


def _bench_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_supernode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = BenchOptions()
    parser.add_argument("--clients", type=int, default=default.clients)
    parser.add_argument("--idle", type=float, default=default.idle_s, help="CPU window, s")
    parser.add_argument("--lookup-seconds", type=float, default=default.lookup_s)
    parser.add_argument(
        "--lookups", type=int, default=default.lookups, help="a fixed count instead of seconds"
    )
    parser.add_argument("--in-flight", type=int, default=default.in_flight)
    parser.add_argument("--attach-in-flight", type=int, default=default.attach_in_flight)
    parser.add_argument("--attach-deadline", type=float, default=default.attach_deadline_s)
    parser.add_argument("--settle", type=float, default=default.settle_s)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--json", type=Path, help="also write the full result here")
    args = parser.parse_args(argv)
    options = BenchOptions(
        clients=args.clients,
        idle_s=args.idle,
        lookup_s=args.lookup_seconds,
        lookups=args.lookups,
        in_flight=args.in_flight,
        attach_in_flight=args.attach_in_flight,
        attach_deadline_s=args.attach_deadline,
        settle_s=args.settle,
        seed=args.seed,
    )
    result = run(measure(options))
    for line in report(result):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    if command in ("serve", "echo-serve"):
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks.bench_supernode {command}")
        parser.add_argument("--port", type=int, default=0)
        parser.add_argument("--max-clients", type=int, default=BenchOptions().clients)
        parser.add_argument("--seed", type=int, default=1)
        args = parser.parse_args(argv[1:])
        if command == "serve":
            run(serve_supernode(args.port, args.max_clients, args.seed))
        else:
            run(serve_echo(args.port))
        return
    _bench_main(argv)


if __name__ == "__main__":
    main()
