"""Calls' audio: CPU per call and bitrate on the wire, ours against aiortc's default; set-up.

    .venv/bin/python -m benchmarks.bench_media                   # ~1 min, needs root
    .venv/bin/python -m benchmarks.bench_media --seconds 5 --calls 50 --json result.json

Each configuration is one call between two `tests.support.media_probe` processes, each alone
in a network namespace of the NAT lab (tests/support/netlab.py), both sending the reference
signal (a voice-band tone gliding to a random pitch every 80 ms) for `--seconds`:

* wire: UDP traffic per direction counted by nftables in the sender's namespace, as whole
  IPv4 packets and as UDP payload (minus 28 bytes of headers a packet): SRTP, SRTCP, ICE
  consent checks; taken after a 1 s warm-up.
* CPU: the probe's own CPU time over the same window (encode, decode, SRTP, asyncio), as %
  of one core, for one end of the call; the mean of both ends.

The baseline, measured in the same run, is aiortc's own Opus encoder (96 kbit/s stereo,
``--aiortc-encoder``). Set-up: `--calls` calls in a row between one pair of probes
(``restart``), each from the start of ``create_offer`` to connected and DTLS-verified, as
each side's MediaSession measures it (``setup_ms``), plus the wall time this process saw
from asking for the offer to both ends connected (two JSON round trips more).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from tests.support.lab_probe import IPV4_UDP_HEADER_BYTES, LabProbe
from tests.support.media_probe import ProbeClient
from tests.support.netlab import NetLab, available

from peerphone.stats import percentile

WARM_UP_S = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    """One way of sending voice."""

    name: str
    args: tuple[str, ...]
    target_kbps: float


CONFIGS = (
    Config("ours 24k (default)", ("--bitrate", "24000"), 24),
    Config("ours 28k", ("--bitrate", "28000"), 28),
    Config("ours 32k", ("--bitrate", "32000"), 32),
    Config("ours 40k", ("--bitrate", "40000"), 40),
    Config("aiortc default (96k stereo)", ("--aiortc-encoder",), 96),
)


@dataclass(frozen=True, slots=True)
class CallResult:
    """Per direction averages over both directions of one call."""

    name: str
    target_kbps: float
    wire_ip_kbps: float
    wire_udp_payload_kbps: float
    rtp_payload_kbps: float
    packets_per_s: float
    cpu_pct_per_end: float


def _sent(probe: LabProbe) -> tuple[int, int]:
    """(packets, IP bytes) of UDP the probe's namespace sent so far."""
    count = probe.wire()
    return count.packets_sent, count.ip_bytes_sent


def start_pair(
    lab: NetLab, work: Path, tag: str, args: tuple[str, ...], seconds: float
) -> tuple[LabProbe, LabProbe]:
    hosts = lab.public_host(f"{tag}a"), lab.public_host(f"{tag}b")
    signal = ("--signal-seconds", str(seconds + 2 * WARM_UP_S + 2))
    probes = [
        LabProbe(lab, host, ["--signal", str(seed), *signal, *args], work / f"{tag}{seed}.log")
        for host, seed in zip(hosts, (1, 2), strict=True)
    ]
    for probe in probes:
        probe.ready()
    return probes[0], probes[1]


def connect(caller: ProbeClient, callee: ProbeClient) -> None:
    offer = caller.must("offer")["sdp"]
    answer = callee.must("accept", sdp=offer)["sdp"]
    caller.must("answer", sdp=answer)
    caller.must("wait", timeout_s=10)
    callee.must("wait", timeout_s=10)


def measure_call(lab: NetLab, work: Path, tag: str, config: Config, seconds: float) -> CallResult:
    caller, callee = start_pair(lab, work, tag, config.args, seconds)
    try:
        connect(caller, callee)
        time.sleep(WARM_UP_S)
        ends = (caller, callee)
        before = [(_sent(p), p.must("cpu"), p.stats()) for p in ends]
        time.sleep(seconds)
        after = [(_sent(p), p.must("cpu"), p.stats()) for p in ends]
    finally:
        caller.close()
        callee.close()
    ip, payload, rtp, pps, cpu = [], [], [], [], []
    for (sent0, cpu0, stats0), (sent1, cpu1, stats1) in zip(before, after, strict=True):
        wall = cpu1["wall_s"] - cpu0["wall_s"]
        packets, ip_bytes = sent1[0] - sent0[0], sent1[1] - sent0[1]
        ip.append(ip_bytes * 8 / wall / 1000)
        payload.append((ip_bytes - IPV4_UDP_HEADER_BYTES * packets) * 8 / wall / 1000)
        rtp_bytes = stats1["rtp_payload_bytes_sent"] - stats0["rtp_payload_bytes_sent"]
        rtp.append(rtp_bytes * 8 / wall / 1000)
        pps.append(packets / wall)
        cpu.append((cpu1["cpu_s"] - cpu0["cpu_s"]) / wall * 100)
    return CallResult(
        config.name,
        config.target_kbps,
        round(statistics.mean(ip), 1),
        round(statistics.mean(payload), 1),
        round(statistics.mean(rtp), 1),
        round(statistics.mean(pps), 1),
        round(statistics.mean(cpu), 2),
    )


def measure_setup(lab: NetLab, work: Path, calls: int) -> dict[str, Any]:
    caller, callee = start_pair(lab, work, "s", (), 0.0)
    caller_ms: list[float] = []
    callee_ms: list[float] = []
    observed_ms: list[float] = []
    try:
        for i in range(calls):
            if i:
                caller.must("restart")
                callee.must("restart")
            start = time.monotonic()
            connect(caller, callee)
            observed_ms.append((time.monotonic() - start) * 1000)
            caller_ms.append(caller.stats()["setup_ms"])
            callee_ms.append(callee.stats()["setup_ms"])
    finally:
        caller.close()
        callee.close()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(statistics.median(values), 1),
            "p90": round(percentile(values, 90), 1),
            "max": round(max(values), 1),
        }

    return {
        "calls": calls,
        "caller_setup_ms": summary(caller_ms),
        "callee_setup_ms": summary(callee_ms),
        "observed_offer_to_both_connected_ms": summary(observed_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per call")
    parser.add_argument("--calls", type=int, default=20, help="calls for the set-up time")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    ok, reason = available()
    if not ok:
        print(f"bench_media needs the network lab: {reason}", file=sys.stderr)
        return 2

    results: list[CallResult] = []
    with TemporaryDirectory() as tmp, NetLab() as lab:
        work = Path(tmp)
        for i, config in enumerate(CONFIGS):
            results.append(measure_call(lab, work, f"c{i}", config, args.seconds))
            print(results[-1], flush=True)
        setup = measure_setup(lab, work, args.calls)

    baseline = results[-1]
    print(
        f"\n{'configuration':<30}{'Opus':>6}{'wire IP':>9}{'UDP pay':>9}{'RTP pay':>9}"
        f"{'pkt/s':>7}{'CPU %':>7}{'wire ×':>8}{'CPU ×':>7}"
    )
    rows = []
    for r in results:
        wire_ratio = r.wire_udp_payload_kbps / baseline.wire_udp_payload_kbps
        cpu_ratio = r.cpu_pct_per_end / baseline.cpu_pct_per_end
        rows.append(
            asdict(r)
            | {"wire_vs_aiortc": round(wire_ratio, 3), "cpu_vs_aiortc": round(cpu_ratio, 3)}
        )
        print(
            f"{r.name:<30}{r.target_kbps:>6.0f}{r.wire_ip_kbps:>9.1f}{r.wire_udp_payload_kbps:>9.1f}"
            f"{r.rtp_payload_kbps:>9.1f}{r.packets_per_s:>7.1f}{r.cpu_pct_per_end:>7.2f}"
            f"{wire_ratio:>8.2f}{cpu_ratio:>7.2f}"
        )
    print("(kbit/s per direction; CPU % of one core per call end)")
    print(f"\nset-up over {setup['calls']} calls: {json.dumps(setup)}")
    if args.json:
        args.json.write_text(json.dumps({"calls": rows, "setup": setup}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
