"""The asyncio adapter of the TURN core: it owns the sockets and flushes after every call.

* one UDP socket for STUN/TURN over UDP (`listen_udp`, default port 3478);
* one relayed UDP socket per allocation, bound to `relay_host` port 0 when the core asks;
* STUN/TURN over TCP, framed on the stream (`framing.StreamFramer`; ChannelData padded),
  either on a listener of its own (`listen_tcp`) or on connections the overlay's
  `TcpCarrier` hands over: pass `service.on_other` as the carrier's ``on_other``. Both
  kinds are bounded alike: per source address and range, and a connection that has no
  allocation `TCP_ALLOCATE_TIMEOUT_S` after we got it is closed, whatever it sent.

The core learns the node's own addresses from here (`OwnAddresses`): every socket we
listen on, the relay and advertised hosts, and the host's interface addresses, read
again every `OWN_ADDRESSES_REFRESH_S`.

Nothing read from the network escapes: the core turns garbage into counted drops, and a
TCP stream that cannot be framed is closed (counted in `stats`, ``tcp_*`` keys).
Every datagram and stream byte the sockets move, in or out, is counted in `wire`
(`limits.WireCount`: what `peerphone sharing` reports as the relay's traffic).
A stand-alone relay on this adapter: ``python -m peerphone.nat.cli --help`` (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

from peerphone.endpoints import Address
from peerphone.errors import DecodeError
from peerphone.nat.events import (
    TCP,
    UDP,
    Client,
    CloseRelay,
    OpenRelay,
    Output,
    SharingSnapshot,
    ToClient,
    ToPeer,
)
from peerphone.nat.framing import StreamFramer
from peerphone.nat.limits import WireCount, address_prefix
from peerphone.nat.own import local_interface_addresses
from peerphone.nat.turn import TurnServer
from peerphone.timers import CoreTimer

log = logging.getLogger(__name__)

DEFAULT_PORT = 3478
MAX_TCP_CONNECTIONS = 1000  # TURN-over-TCP clients at once; more are closed at once
# ... from one source address, and from one /24 (/48): a client needs one per relayed call,
# a NATed office some dozens; one holder of one address cannot take them all
MAX_TCP_CONNECTIONS_PER_ADDRESS = 16
MAX_TCP_CONNECTIONS_PER_PREFIX = 128
# a connection must have an allocation (an authenticated Allocate) this long after we got
# it, or it is closed: silence, one byte, a message that never completes all cost the
# attacker a reconnect every few seconds (a client's 401 round trip and Allocate: ~ms)
TCP_ALLOCATE_TIMEOUT_S = 10.0
TCP_IDLE_TIMEOUT_S = 120.0  # a TCP client silent this long is closed (refreshes: < 600 s)
OWN_ADDRESSES_REFRESH_S = 60.0  # the interface addresses are read again this often
MAX_TCP_WRITE_BUFFER_BYTES = 256 * 1024  # unsent bytes per connection; above, dropped
MAX_CACHED_CLIENTS = 10_000  # `Client` keys kept per UDP address (cleared when full)
MAX_EVEN_PORT_TRIES = 32  # binds to port 0 until the kernel picks an even port (EVEN-PORT)
SOCKET_BUFFER_BYTES = 1 << 20  # SO_RCVBUF/SO_SNDBUF asked for on UDP sockets
CLOCK: Callable[[], float] = time.time  # the core runs on unix time (credential expiry)


def _tune(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


class _ListenProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: TurnService) -> None:
        self.service = service
        self.clients: dict[tuple[str, int], Client] = {}  # made once per address: hot path

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        client = self.clients.get(addr)
        if client is None:
            if len(self.clients) >= MAX_CACHED_CLIENTS:
                self.clients.clear()
            client = self.clients[addr] = Client(UDP, (addr[0], addr[1]))
        service = self.service
        service.wire.udp_received(len(data))
        service._flush(service.core.receive(data, client, CLOCK()))

    def error_received(self, exc: Exception) -> None:  # ICMP errors: nothing to do
        self.service.stats["udp_error_received"] += 1


class _RelayProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: TurnService, allocation: int) -> None:
        self.service = service
        self.allocation = allocation

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        service = self.service
        service.wire.udp_received(len(data))
        outputs = service.core.receive_from_peer(self.allocation, data, (addr[0], addr[1]), CLOCK())
        service._flush(outputs)

    def error_received(self, exc: Exception) -> None:
        self.service.stats["relay_error_received"] += 1


class _TcpConnection(asyncio.Protocol):
    """One TURN-over-TCP client connection."""

    def __init__(self, service: TurnService) -> None:
        self.service = service
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.prefix = ""  # the source's /24 (/48), counted while we hold the connection
        self.allocated = False  # an authenticated Allocate succeeded on it
        self.last_rx = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        service = self.service
        refused = service._tcp_refusal(peer)
        if refused is not None:
            service.stats["tcp_refused_" + refused] += 1
            transport.abort()
            return
        self.client = Client(TCP, (peer[0], peer[1]), next(service._connection_ids))
        self.prefix = address_prefix(peer[0])
        service._connections[self.client.connection] = self
        service._tcp_per_address[peer[0]] += 1
        service._tcp_per_prefix[self.prefix] += 1
        service.stats["tcp_accepted"] += 1
        self.last_rx = service.loop.time()
        self.timer = service.loop.call_later(TCP_ALLOCATE_TIMEOUT_S, self._check_idle)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        self.last_rx = self.service.loop.time()
        self.service.wire.tcp_in += len(data)
        try:
            frames = self.framer.feed(data)
        except DecodeError:
            self.service.stats["tcp_unframeable"] += 1
            self.abort()
            return
        service = self.service
        for frame in frames:
            service._flush(service.core.receive(frame, client, CLOCK()))
        if not self.allocated and frames and service.core.has_allocation(client):
            self.allocated = True  # from now on only silence closes it

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.service.stats["tcp_drop_closed"] += 1
        elif transport.get_write_buffer_size() > MAX_TCP_WRITE_BUFFER_BYTES:
            self.service.stats["tcp_drop_write_buffer_full"] += 1
        else:
            transport.write(data)
            self.service.wire.tcp_out += len(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        client, self.client = self.client, None
        if client is not None:
            service = self.service
            service._connections.pop(client.connection, None)
            _decrement(service._tcp_per_address, client.address[0])
            _decrement(service._tcp_per_prefix, self.prefix)
            service._flush(service.core.client_gone(client, CLOCK()))

    def _check_idle(self) -> None:
        self.timer = None
        if self.client is None:
            return
        if not self.allocated:
            self.service.stats["tcp_closed_without_allocation"] += 1
            self.abort()
            return
        idle_until = self.last_rx + TCP_IDLE_TIMEOUT_S
        if self.service.loop.time() < idle_until:
            self.timer = self.service.loop.call_at(idle_until, self._check_idle)
            return
        self.service.stats["tcp_idle_closed"] += 1
        self.abort()


class TurnService:
    """Runs a `TurnServer` core on asyncio sockets (see the module docstring)."""

    def __init__(
        self,
        core: TurnServer,
        relay_host: str,
        advertised_host: str | None = None,
        wire: WireCount | None = None,
    ) -> None:
        self.core = core
        self.relay_host = relay_host  # relayed sockets bind here
        # what XOR-RELAYED-ADDRESS says instead, behind a 1:1 NAT (a cloud VM's public
        # IP; coturn's --external-ip); the port is the same on both sides
        self.advertised_host = advertised_host or relay_host
        self.stats = core.stats  # one set of counters for `status`
        self.wire = wire or WireCount()  # what the sockets moved (the owner's may outlive us)
        self.loop = asyncio.get_running_loop()
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._relays: dict[int, asyncio.DatagramTransport] = {}
        self._opening: dict[int, socket.socket] = {}  # bound, endpoint being created
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: dict[int, _TcpConnection] = {}
        self._tcp_per_address: Counter[str] = Counter()
        self._tcp_per_prefix: Counter[str] = Counter()
        self._connection_ids = itertools.count(1)
        # the core runs on unix time (CLOCK), the loop on its own monotonic clock
        self._timer = CoreTimer(
            self.loop, self._on_timer, lambda at: at - CLOCK() + self.loop.time()
        )
        self._closed = False
        core.own.add_host(relay_host)
        core.own.add_host(self.advertised_host)
        self._refresh: asyncio.TimerHandle | None = None
        self.refresh_own_addresses()

    def refresh_own_addresses(self) -> None:
        """Read the interface addresses again (they are the node's own: never peers)."""
        try:
            self.core.own.set_interfaces(local_interface_addresses())
        except OSError as exc:  # keep the last ones
            log.warning("cannot read the interface addresses: %r", exc)
        if not self._closed:
            self._refresh = self.loop.call_later(
                OWN_ADDRESSES_REFRESH_S, self.refresh_own_addresses
            )

    def _tcp_refusal(self, peer: tuple[str, int] | None) -> str | None:
        """Why a new TCP connection from `peer` is refused (a counter's suffix), or None."""
        if peer is None:
            return "no_peer"
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            return "full"
        if self._tcp_per_address[peer[0]] >= MAX_TCP_CONNECTIONS_PER_ADDRESS:
            return "per_address"
        if self._tcp_per_prefix[address_prefix(peer[0])] >= MAX_TCP_CONNECTIONS_PER_PREFIX:
            return "per_prefix"
        return None

    # -- listening ------------------------------------------------------------------------

    async def listen_udp(self, host: str, port: int = DEFAULT_PORT) -> Address:
        """Serve STUN/TURN over UDP at (`host`, `port`); returns the bound address."""
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: _ListenProtocol(self), local_addr=(host, port)
        )
        self._udp = transport
        sock = transport.get_extra_info("socket")
        _tune(sock)
        bound = sock.getsockname()
        self.core.own.add_socket((bound[0], bound[1]))
        self._schedule()
        return bound[0], bound[1]

    async def listen_tcp(self, host: str, port: int = DEFAULT_PORT) -> Address:
        """Serve STUN/TURN over TCP at (`host`, `port`) on a listener of our own."""
        server = await self.loop.create_server(self.tcp_protocol, host, port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        self.core.own.add_socket((bound[0], bound[1]))
        self._schedule()
        return bound[0], bound[1]

    def tcp_protocol(self) -> asyncio.Protocol:
        """A protocol for one accepted TURN-over-TCP connection (for any listener)."""
        return _TcpConnection(self)

    def on_other(self, first_bytes: bytes, transport: asyncio.Transport) -> None:
        """`TcpCarrier`'s hook: take over an accepted connection that is not the
        overlay's, with the bytes it sent so far."""
        protocol = _TcpConnection(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if protocol.client is not None and first_bytes:
            protocol.data_received(first_bytes)

    # -- output ---------------------------------------------------------------------------

    def _flush(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, ToPeer):
                relay = self._relays.get(output.allocation)
                if relay is None:
                    self.stats["drop_relay_socket_not_ready"] += 1
                else:
                    relay.sendto(output.data, output.peer)
                    self.wire.udp_sent(len(output.data))
            elif isinstance(output, ToClient):
                client = output.client
                if client.transport == UDP:
                    if self._udp is not None:
                        self._udp.sendto(output.data, client.address)
                        self.wire.udp_sent(len(output.data))
                else:
                    connection = self._connections.get(client.connection)
                    if connection is None:
                        self.stats["tcp_drop_closed"] += 1
                    else:
                        connection.write(output.data)
            elif isinstance(output, OpenRelay):
                self._open_relay(output)
                # only a new allocation may bring the core's next timer earlier than the
                # one armed (the housekeeping, at most 30 s away): no re-arm per packet
                self._schedule()
            elif isinstance(output, CloseRelay):
                self._close_relay(output.allocation)

    def _open_relay(self, want: OpenRelay) -> None:
        family = socket.AF_INET6 if want.family == 6 else socket.AF_INET
        sock: socket.socket | None = None
        try:
            for _ in range(MAX_EVEN_PORT_TRIES if want.even_port else 1):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.bind((self.relay_host, 0))
                except OSError:
                    sock.close()
                    raise
                if not want.even_port or sock.getsockname()[1] % 2 == 0:
                    break
                sock.close()
                sock = None
        except OSError as exc:
            log.warning("cannot open a relayed socket on %s: %r", self.relay_host, exc)
            sock = None
        if sock is None:
            self._flush(self.core.relay_failed(want.allocation, CLOCK()))
            return
        _tune(sock)
        bound = sock.getsockname()
        self._opening[want.allocation] = sock
        task = self.loop.create_task(self._attach_relay(want.allocation, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        relayed = (self.advertised_host, bound[1])
        self._flush(self.core.relay_opened(want.allocation, relayed, CLOCK()))

    async def _attach_relay(self, allocation: int, sock: socket.socket) -> None:
        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _RelayProtocol(self, allocation), sock=sock
            )
        except OSError as exc:  # pragma: no cover - the socket is already bound
            log.warning("relayed socket for allocation %d failed: %r", allocation, exc)
            self._opening.pop(allocation, None)
            sock.close()
            return
        if self._opening.pop(allocation, None) is None or self._closed:
            transport.close()  # the allocation ended while we attached it
            return
        self._relays[allocation] = transport

    def _close_relay(self, allocation: int) -> None:
        relay = self._relays.pop(allocation, None)
        if relay is not None:
            relay.close()
        sock = self._opening.pop(allocation, None)
        if sock is not None:
            sock.close()

    # -- timers ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        self._timer.arm(self.core.next_timer())

    def _on_timer(self) -> None:
        self._flush(self.core.handle_timer(self._timer.due(CLOCK())))
        self._schedule()

    # -- status and shutdown --------------------------------------------------------------

    def snapshot(self) -> SharingSnapshot:
        """What this node shares right now (allocations, rate vs cap, drops)."""
        return self.core.snapshot(CLOCK())

    def close(self) -> None:
        """Stop listening, close every relayed socket and client connection."""
        self._closed = True
        self._timer.stop()
        if self._refresh is not None:
            self._refresh.cancel()
        if self._udp is not None:
            self._udp.close()
        for server in self._servers:
            server.close()
        for relay in self._relays.values():
            relay.close()
        for sock in self._opening.values():
            sock.close()
        for connection in list(self._connections.values()):
            connection.abort()
        self._relays.clear()
        self._opening.clear()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
