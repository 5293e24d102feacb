"""A stand-alone STUN/TURN relay: the TURN core on its asyncio adapter, nothing else.

    python -m peerphone.nat.cli --host 127.0.0.1 --port 0 --secret S --credentials-for me

Prints one line, ``listening udp=HOST:PORT [tcp=HOST:PORT] [username=… password=…]``,
serves until SIGTERM or SIGINT, then prints the final `SharingSnapshot` on stderr. For
tests, benchmarks and interop runs against other TURN clients; a node runs the same relay
inside the daemon (daemon/relay.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
from collections.abc import Callable, Sequence

from peerphone.nat.addrfilter import AddressFilter
from peerphone.nat.credentials import issue_credentials
from peerphone.nat.limits import TurnLimits
from peerphone.nat.server import CLOCK, DEFAULT_PORT, TurnService
from peerphone.nat.turn import TurnServer


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m peerphone.nat.cli", description="A stand-alone STUN/TURN relay."
    )
    parser.add_argument("--host", required=True, help="address to listen and relay on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="UDP (and TCP) port")
    parser.add_argument("--tcp", action="store_true", help="also serve TURN over TCP")
    parser.add_argument("--secret", required=True, help="shared secret of the credentials")
    parser.add_argument("--relay-allow", action="append", default=[], metavar="CIDR")
    parser.add_argument("--bandwidth", type=float, default=12.5e6, help="cap, bytes/s")
    parser.add_argument("--max-allocations-per-user", type=int, default=None)
    parser.add_argument("--credentials-for", default=None, help="print credentials for WHO")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--debug", action="store_true", help="log every error response")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    now = CLOCK()
    limits = TurnLimits()
    if args.max_allocations_per_user:
        limits = TurnLimits(max_allocations_per_user=args.max_allocations_per_user)
    core = TurnServer(
        args.secret.encode(),
        bandwidth_bytes_per_s=args.bandwidth,
        now=now,
        rng=random.SystemRandom(),
        address_filter=AddressFilter(args.relay_allow),
        limits=limits,
    )
    service = TurnService(core, args.host)
    udp = await service.listen_udp(args.host, args.port)
    line = f"listening udp={udp[0]}:{udp[1]}"
    if args.tcp:
        tcp = await service.listen_tcp(args.host, args.port)
        line += f" tcp={tcp[0]}:{tcp[1]}"
    if args.credentials_for:
        creds = issue_credentials(args.secret.encode(), args.credentials_for, 3600, now)
        line += f" username={creds.username} password={creds.password}"
    print(line, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        service.close()
        print(f"snapshot {service.snapshot()}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    runner: Callable[..., object] = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
