"""Attacker: fill a node's link table with QUIC links authenticated to throwaway node keys.

Run as ``python -m tests.support.attackers.link_flood --target HOST:PORT``. Every link is a real
peerphone link handshake (mutual TLS bound to a fresh Ed25519 node key, through the node's
Retry), made with the project's own `quic_identity`, each from its own UDP socket on
`--bind`, as many machines behind one address would. Completed links are kept alive with
PINGs (the node's idle timeout would end them) and never send an overlay message. It opens
`--window` handshakes at a time until `--max-attempts` or `--duration` s, prints one JSON
line of progress per second (and a last one with "done": true), and exits at SIGTERM or
after `--duration` s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection

from peerphone.identity import KeyPair
from peerphone.runtime.node_runtime import run
from peerphone.runtime.quic_identity import make_configuration

HANDSHAKE_TIMEOUT_S = 5.0  # a refused handshake (the node drops its Initial) gives up then
PING_INTERVAL_S = 3.0  # half the daemon's 6 s idle timeout: links survive a busy node
PING_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 30.0  # ours; the node's shorter one applies
REPORT_INTERVAL_S = 1.0
FDS_SPARE = 256


@dataclass(slots=True)
class Progress:
    """What the flood achieved so far (links as this side sees them)."""

    t: float = 0.0
    attempted: int = 0
    completed: int = 0  # handshakes completed: links the node authenticated
    refused: int = 0  # handshakes that never completed
    alive: int = 0  # completed links still up now
    max_alive: int = 0
    closed_by_node: int = 0  # completed links the node ended (evicted, idle, ...)
    done: bool = False


class Flood:
    """Opens and holds the links (see the module docstring)."""

    def __init__(self, target: tuple[str, int], bind: str, window: int) -> None:
        self.target = target
        self.bind = bind
        self.window = window
        self.progress = Progress()
        self.stopping = asyncio.Event()
        self._protocols: set[QuicConnectionProtocol] = set()
        self._holders: set[asyncio.Task[None]] = set()

    async def run(self, max_attempts: int, duration_s: float) -> None:
        start = time.monotonic()
        reporter = asyncio.create_task(self._report(start))
        deadline = start + duration_s
        openers = [
            asyncio.create_task(self._open(max_attempts, deadline)) for _ in range(self.window)
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), duration_s)
        self.stopping.set()  # the openers check it too (a cancel may be swallowed on 3.11)
        for task in openers:
            task.cancel()
        await asyncio.gather(*openers, return_exceptions=True)
        for protocol in list(self._protocols):
            protocol.close()
        reporter.cancel()
        self.progress.t = round(time.monotonic() - start, 2)
        self.progress.done = True
        self._print()

    async def _open(self, max_attempts: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while (
            self.progress.attempted < max_attempts
            and time.monotonic() < deadline
            and not self.stopping.is_set()
        ):
            self.progress.attempted += 1
            configuration = make_configuration(
                KeyPair.generate(), is_client=True, idle_timeout_s=IDLE_TIMEOUT_S
            )
            connection = QuicConnection(configuration=configuration)
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: QuicConnectionProtocol(connection),  # noqa: B023  # called at once
                local_addr=(self.bind, 0),
            )
            protocol.connect(self.target)
            try:
                await asyncio.wait_for(protocol.wait_connected(), HANDSHAKE_TIMEOUT_S)
            except (TimeoutError, ConnectionError):
                self.progress.refused += 1
                transport.close()
                continue
            self.progress.completed += 1
            holder = asyncio.create_task(self._hold(protocol, transport))
            self._holders.add(holder)
            holder.add_done_callback(self._holders.discard)

    async def _hold(
        self, protocol: QuicConnectionProtocol, transport: asyncio.BaseTransport
    ) -> None:
        """Keep one link up with PINGs until the node ends it (or we stop)."""
        progress = self.progress
        self._protocols.add(protocol)
        progress.alive += 1
        progress.max_alive = max(progress.max_alive, progress.alive)
        try:
            if await self._closed_by_node(protocol):
                progress.closed_by_node += 1
        finally:
            progress.alive -= 1
            self._protocols.discard(protocol)
            protocol.close()
            transport.close()

    async def _closed_by_node(self, protocol: QuicConnectionProtocol) -> bool:
        """Ping until the node closes the link (True) or we stop (False)."""
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(protocol.wait_closed(), PING_INTERVAL_S)
                return True
            except TimeoutError:
                pass
            try:
                await asyncio.wait_for(protocol.ping(), PING_TIMEOUT_S)
            except (TimeoutError, ConnectionError):
                return True
        return False

    async def _report(self, start: float) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self.progress.t = round(time.monotonic() - start, 2)
            self._print()

    def _print(self) -> None:
        print(json.dumps(asdict(self.progress)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--bind", default="127.0.0.1", help="our source address")
    parser.add_argument("--window", type=int, default=32, help="handshakes at once")
    parser.add_argument("--max-attempts", type=int, default=5_000)
    parser.add_argument("--duration", type=float, default=60.0, metavar="S")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    needed = args.max_attempts + FDS_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))

    async def flood() -> None:
        attack = Flood((host, int(port)), args.bind, args.window)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, attack.stopping.set)
        await attack.run(args.max_attempts, args.duration)

    run(flood())  # on uvloop, as the nodes
    return 0


if __name__ == "__main__":
    sys.exit(main())
