"""A flood of relayed calls through a supernode's relay, from a stock node's credentials.

    python -m tests.support.attackers.relay_flood calls REPORT [options] -- node ...

Runs a stock `peerphone node` (the options after ``--``), patched like
`turn_attacker node`: once attached, it asks its supernode for relay credentials (a real
`TurnRequest` over the overlay) and opens a new relayed "call" every `--interval` seconds,
up to `--calls`, until `--duration` is over. A call is what two firewalled users of one
supernode make: two allocations (two sockets of ours, as two users' would be), each
permitted to the other's relayed address with a channel bound, and voice-sized ChannelData
both ways (`--payload` bytes every `--ptime-ms`, like 28 kbit/s Opus in 40 ms packets), so
the relay hands every packet over inside and sends it to the other client. Refused
allocations are counted by error code and the flood goes on trying. REPORT (JSON, rewritten
every second) says per call when it started, packets sent and received each way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any

from tests.support.attackers.turn_attacker import (
    CHANNEL,
    Attack,
    TurnClient,
    TurnError,
    node_main,
    turn_udp_server,
)

REPORT_EVERY_S = 1.0


class Call:
    """Two allocations relaying to each other, and what each end sent and received."""

    def __init__(self, a: TurnClient, b: TurnClient, started: float) -> None:
        self.ends = (a, b)
        self.started = started
        self.sent = [0, 0]

    def send(self, payload: bytes) -> None:
        for i, end in enumerate(self.ends):
            end.send_channel(CHANNEL, payload)
            self.sent[i] += 1

    def view(self, since: float) -> dict[str, Any]:
        received = [len(end.protocol.data) for end in self.ends]
        return {
            "started_s": round(self.started - since, 2),
            "sent": self.sent,
            "received": received,
        }


class FloodAttack(Attack):
    """The `calls` mode (see the module docstring)."""

    async def run(self, service: Any) -> None:
        try:
            await self.flood(service)
        finally:
            self.report.data["done"] = True
            self.report.save()

    async def open_call(self, grant: Any) -> Call:
        server = turn_udp_server(grant.urls)
        ends = []
        for _ in range(2):
            end = TurnClient(server, grant.username, grant.password)
            await end.open(self.args.bind)
            self.clients.append(end)
            await end.allocate()
            ends.append(end)
        a, b = ends
        assert a.relayed is not None and b.relayed is not None
        for one, other in ((a, b), (b, a)):
            assert other.relayed is not None
            code = await one.permit(other.relayed) or await one.bind(other.relayed, CHANNEL)
            if code:
                raise TurnError(code)
        return Call(a, b, time.monotonic())

    async def flood(self, service: Any) -> None:
        args = self.args
        data = self.report.data
        refused: Counter[str] = Counter()
        calls: list[Call] = []
        grant = await self.next_grant(service)
        started = time.monotonic()
        data.update(started_at=time.time(), refused=refused, calls=[])
        payload = bytes(args.payload)
        next_call = next_packet = next_report = started
        while time.monotonic() < started + args.duration:
            now = time.monotonic()
            if now >= next_call and len(calls) < args.calls:
                next_call = now + args.interval
                try:
                    calls.append(await self.open_call(grant))
                except TurnError as exc:
                    refused[str(exc.code)] += 1
            while next_packet <= time.monotonic():
                next_packet += args.ptime_ms / 1000
                for call in calls:
                    call.send(payload)
            if time.monotonic() >= next_report:
                next_report += REPORT_EVERY_S
                data["calls"] = [call.view(started) for call in calls]
                self.report.save()
            await asyncio.sleep(max(0.0, next_packet - time.monotonic()))
        data["calls"] = [call.view(started) for call in calls]


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=2, help="calls at most (2 allocations each)")
    parser.add_argument("--payload", type=int, default=140, help="bytes per packet")
    parser.add_argument("--ptime-ms", type=float, default=40.0, help="between packets")


if __name__ == "__main__":
    sys.exit(node_main(sys.argv[1:], FloodAttack, ("calls",), options))
