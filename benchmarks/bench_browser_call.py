"""Browser calls against node (aiortc) calls: set-up time and bytes on the wire, one run.

    .venv/bin/python -m benchmarks.bench_browser_call                 # ~1 min
    .venv/bin/python -m benchmarks.bench_browser_call --calls 10 --seconds 5 --json out.json

One loopback network (two supernodes, four clients): alice and bob each have a softphone
page open in Debian's Chromium (a fake microphone playing a tone); carol calls dave node to
node (aiortc, dave auto-answers with a tone). For each pair, `--calls` calls in a row:

* set-up, browser: from the click on "Call" (bob's page clicks "Answer" as soon as it
  rings, as a waiting person would) until alice's page has received its first audio
  packet (`inbound-rtp.packetsReceived > 0`), polled every 10 ms from here.
* set-up, node: from `POST /v1/calls` until the call's media is connected
  (`media_state`), polled every 10 ms; the callee answers by itself.
* wire, per direction, over `--seconds` of the last call: browser, from the page's
  selected ICE candidate pair (`bytesSent`/`packetsSent`, UDP payload: SRTP, SRTCP, STUN);
  node, from the call's view (bytes sent/received by aiortc's transport). Whole packets
  add 28 bytes of IPv4 + UDP headers a packet, 48 of IPv6 + UDP (the worst case, and what
  Chromium picks on loopback here): exact for the browser (its packet counts, and the
  family of its path), estimated for the node at 50 packets/s (20 ms frames).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.browser import (
    IPV4_UDP_HEADER_BYTES,
    IPV6_UDP_HEADER_BYTES,
    PAIR_STATS_JS,
    launch_args,
    login_url,
    write_tone,
)
from tests.support.node_procs import Node, NodeProcs, wait_for

from peerphone.stats import percentile

NODE_PACKETS_PER_S = 25  # our Opus: 40 ms packets (decision 0017)
POLL_S = 0.01
STEP_TIMEOUT_MS = 20_000


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def start(procs: NodeProcs, name: str, *args: str, boot: list[Node]) -> Node:
    argv = list(args)
    for other in boot:
        argv += ["--bootstrap", other.udp_address()]
    node = procs.start(name, *argv)
    wait_for(f"{name} online", node.online)
    return node


def kbps(byte_count: float, seconds: float) -> float:
    return round(byte_count * 8 / 1000 / seconds, 2)


def browser_calls(pages: dict[str, Any], calls: int, seconds: float) -> dict[str, Any]:
    alice, bob = pages["alice"], pages["bob"]
    setups: list[float] = []
    wire: dict[str, Any] = {}
    for i in range(calls):
        alice.wait_for_selector(f'{tid("contact-bob")}[data-presence="online"]')
        started = time.monotonic()
        alice.click(tid("call-bob"))
        bob.wait_for_selector(f"{tid('incoming-call')}:visible", timeout=STEP_TIMEOUT_MS)
        bob.click(tid("answer"))
        deadline = started + STEP_TIMEOUT_MS / 1000
        while True:
            stats = alice.evaluate(PAIR_STATS_JS)
            if stats and stats["inbound"] > 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("no audio reached alice's page")
            time.sleep(POLL_S)
        setups.append((time.monotonic() - started) * 1000)
        if i == calls - 1:
            time.sleep(1.0)  # warm-up: the encoder settles, DTLS and first RTCP are past
            before = alice.evaluate(PAIR_STATS_JS)
            time.sleep(seconds)
            after = alice.evaluate(PAIR_STATS_JS)
            wire = wire_rates(before, after, seconds)
        alice.click(tid("hangup"))
        for page in (alice, bob):
            page.wait_for_selector(f'{tid("call-state")}:text-is("ended")')
    return {"setup_ms": summary(setups), "wire_kbps": wire}


def wire_rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    remote = after["remote"] or ""
    out: dict[str, Any] = {"path_remote_address": remote, "path_ipv6": ":" in remote}
    for direction, key in (("sent", "Sent"), ("received", "Received")):
        payload = after[f"bytes{key}"] - before[f"bytes{key}"]
        packets = after[f"packets{key}"] - before[f"packets{key}"]
        out[direction] = {
            "udp_payload": kbps(payload, seconds),
            "ipv4_packets": kbps(payload + packets * IPV4_UDP_HEADER_BYTES, seconds),
            "ipv6_packets": kbps(payload + packets * IPV6_UDP_HEADER_BYTES, seconds),
            "packets_per_s": round(packets / seconds, 1),
        }
    return out


def node_calls(carol: Node, calls: int, seconds: float, tone: Path) -> dict[str, Any]:
    setups: list[float] = []
    wire: dict[str, Any] = {}
    for i in range(calls):
        started = time.monotonic()
        call = carol.control.request("POST", "/v1/calls", {"name": "dave", "play": str(tone)})
        path = f"/v1/calls/{call['call_id']}"
        while carol.control.request("GET", path).get("media_state") != "connected":
            if time.monotonic() - started > STEP_TIMEOUT_MS / 1000:
                raise RuntimeError("carol's call did not connect")
            time.sleep(POLL_S)
        setups.append((time.monotonic() - started) * 1000)
        if i == calls - 1:
            time.sleep(1.0)
            before = carol.control.request("GET", path)
            time.sleep(seconds)
            after = carol.control.request("GET", path)
            wire = {}
            for direction in ("sent", "received"):
                payload = after[f"bytes_{direction}"] - before[f"bytes_{direction}"]
                packets = seconds * NODE_PACKETS_PER_S
                v4 = payload + packets * IPV4_UDP_HEADER_BYTES
                v6 = payload + packets * IPV6_UDP_HEADER_BYTES
                wire[direction] = {
                    "udp_payload": kbps(payload, seconds),
                    "ipv4_packets_estimated": kbps(v4, seconds),
                    "ipv6_packets_estimated": kbps(v6, seconds),
                }
        carol.control.request("POST", path + "/hangup", {})

        def ended(p: str = path) -> bool | None:
            return True if carol.control.request("GET", p)["state"] == "ended" else None

        wait_for("carol's call ended", ended)
    return {"setup_ms": summary(setups), "wire_kbps": wire}


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "p50": round(percentile(values, 50), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "all": [round(v, 1) for v in values],
    }


def run(calls: int, seconds: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    procs = NodeProcs(root)
    try:
        sn = "--role", "supernode", "--tcp-listen", "127.0.0.1:0", "--turn-port", "0"
        sn1 = start(procs, "sn1", *sn, boot=[])
        sn2 = start(procs, "sn2", *sn, boot=[sn1])
        alice = start(procs, "alice", "--role", "client", boot=[sn1, sn2])
        bob = start(procs, "bob", "--role", "client", boot=[sn2, sn1])
        carol = start(procs, "carol", "--role", "client", boot=[sn1, sn2])
        tone = write_tone(root / "dave.wav", 800.0, seconds=10.0)
        dave = start(
            procs,
            "dave",
            "--role",
            "client",
            "--auto-answer",
            "--answer-play",
            str(tone),
            boot=[sn2, sn1],
        )
        del dave
        alice.control.request("POST", "/v1/contacts", {"name": "bob"})
        result: dict[str, Any] = {"calls": calls, "seconds": seconds}
        result["node"] = node_calls(carol, calls, seconds, write_tone(root / "c.wav", 500.0))
        with sync_playwright() as pw:
            pages: dict[str, Any] = {}
            for name, node, hz in (("alice", alice, 500.0), ("bob", bob, 800.0)):
                browser = pw.chromium.launch(**launch_args(write_tone(root / f"{name}.wav", hz)))
                page = browser.new_context(permissions=["microphone"]).new_page()
                page.goto(login_url(node))
                page.wait_for_selector(f'{tid("me")}:text-is("{name}")')
                pages[name] = page
            result["browser"] = browser_calls(pages, calls, seconds)
        return result
    finally:
        procs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="wire measurement window")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = run(args.calls, args.seconds)
    for kind in ("browser", "node"):
        r = result[kind]
        wire = r["wire_kbps"]
        print(
            f"{kind:8} set-up p50 {r['setup_ms']['p50']:7.1f} ms "
            f"(min {r['setup_ms']['min']}, max {r['setup_ms']['max']}, {args.calls} calls); "
            f"sent {wire['sent']}, received {wire['received']} kbit/s"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
