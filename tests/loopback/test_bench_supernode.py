"""The supernode benchmark end to end, in quick mode: two child processes, real QUIC on
127.0.0.1. It checks that the benchmark measures something, not how fast the machine is."""

from __future__ import annotations

import os

from benchmarks.bench_supernode import BenchOptions, measure, report

from peerphone.runtime.node_runtime import run

QUICK = BenchOptions(
    clients=20,
    idle_s=0.5,
    lookups=100,  # a fixed count: every one must succeed, however slow the machine
    in_flight=8,
    attach_in_flight=10,
    settle_s=0.2,
    seed=7,
)


def test_quick_benchmark_attaches_every_client_and_finds_every_user() -> None:
    result = run(measure(QUICK))  # its children are stopped (or killed) in `measure`

    attach = result["attach"]
    assert attach["published"] == attach["attached"] == QUICK.clients
    assert attach["failed"] == 0 and attach["failures"] == {}
    assert attach["supernode_clients"] == attach["supernode_links"] == QUICK.clients

    lookups = result["lookups"]
    assert lookups["requests"] == lookups["succeeded"] == QUICK.lookups
    assert lookups["failed"] == 0
    echo = result["echo"]
    assert echo["requests"] == echo["succeeded"] == QUICK.lookups

    positive = [
        echo["per_s"],
        echo["p50_ms"],
        echo["p99_ms"],
        lookups["per_s"],
        lookups["p50_ms"],
        lookups["p99_ms"],
        attach["attached_p50_ms"],
        attach["published_p99_ms"],
        attach["per_s"],
        result["memory"]["idle_rss_kib"],
        result["memory"]["clients_rss_kib"],
        result["memory"]["generator_rss_kib"],
        result["ratios"]["lookups_per_s_vs_echo"],
        result["ratios"]["rss_clients_vs_idle"],
    ]
    assert all(value > 0 for value in positive), positive
    # CPU over windows this short may round to zero clock ticks; what can be checked is
    # that each figure is a share of the machine's CPUs, not a unit slip (ticks, seconds)
    cpus = 100.0 * (os.cpu_count() or 1)
    assert 0 <= lookups["supernode_cpu_pct"] <= cpus, lookups
    assert 0 <= lookups["generator_cpu_pct"] <= cpus, lookups
    assert 0 <= result["keepalive"]["us_per_client_per_s"] < 1_000_000, result["keepalive"]

    stats = result["supernode_stats"]
    assert stats["runtime"].get("internal_errors", 0) == 0
    assert stats["core_errors"] == 0
    assert result["generator_stats"].get("internal_errors", 0) == 0
    assert len(report(result)) > 5
    # both children (echo server, supernode) were stopped and reaped
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as children:
        assert children.read().split() == []
