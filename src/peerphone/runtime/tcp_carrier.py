"""QUIC datagrams over TCP, for hosts whose firewall lets nothing but outbound TCP out.

The QUIC links stay exactly as they are (one `LinkManager`, connections keyed by
connection id); only the carrier of their datagrams changes. On a TCP connection each
datagram is framed as in RFC 4571: a 2-byte big-endian length, then the datagram. The
dialler first writes `MAGIC`, so that the listener can tell our connections from others
(STUN/TURN over TCP will share the port: anything else goes to an `on_other` hook).

The `LinkManager` sees every TCP connection as an address no UDP socket can report, a
*pseudo-address*: ``("tcp:<ip>", listener port)`` for a connection we dial, and
``("tcp-in:<ip>", remote port)`` for one we accepted (two prefixes, so an accepted
connection can never be mistaken for a listener of the same host). aioquic only compares
and echoes the addresses it is given (``connect``, ``receive_datagram``, path
validation, ``datagrams_to_send``); the exceptions are Retry tokens, which pack the IP
(no Retry on TCP: the TCP handshake already proved the address), and the server's
preferred address, which we never send (and aioquic ignores for a non-IP address).

Garbage never escapes: a bad preamble, a frame above the datagram limit, silence, or too
many connections closes that TCP connection and is counted in `stats` (``tcp_*`` keys).
Bounds: at most `max_connections` accepted and as many dialled connections, a read buffer
of one frame plus what one read returned, a write buffer of `MAX_WRITE_BUFFER_BYTES`
(datagrams above are dropped: QUIC retransmits, as after a loss) and
`MAX_PENDING_DATAGRAMS` queued while a dial connects.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import cast

from peerphone.endpoints import Address
from peerphone.errors import LocalProtocolError

log = logging.getLogger(__name__)

OtherHandler = Callable[[bytes, asyncio.Transport], None]

# First byte 0xFF: not STUN/TURN (0x00/0x01), not TLS (0x16), not ASCII (HTTP methods).
MAGIC = b"\xffPPQUIC1"
FRAME_HEADER_BYTES = 2  # RFC 4571 framing
DIALLED = "tcp:"  # host prefix of the pseudo-address of a connection we dial
ACCEPTED = "tcp-in:"  # ... of a connection we accepted
PREAMBLE_TIMEOUT_S = 5.0  # an accepted connection must send MAGIC within this (or junk)
CONNECT_TIMEOUT_S = 5.0  # a dial not connected by then fails (the QUIC handshake timeout)
MAX_PENDING_DATAGRAMS = 16  # queued while a dial connects (a handshake flight is 1-4)
MAX_WRITE_BUFFER_BYTES = 256 * 1024  # unsent bytes per connection; datagrams above dropped
MAX_FALLBACK_MEMORY = 10_000  # peers whose UDP dial went unanswered, remembered at once
UDP_FAILURE_MEMORY_S = 600.0  # how long such a peer is dialled over TCP first


def dialled(addr: Address) -> Address:
    """The pseudo-address of a TCP connection to the listener at `addr` (host, port)."""
    return DIALLED + addr[0], addr[1]


def is_tcp(addr: Address) -> bool:
    """Whether `addr` is a pseudo-address (a UDP address is an IP literal: never "t")."""
    return addr[0].startswith("tcp")


def socket_address(addr: Address) -> Address:
    """The (ip, port) of the far end of the TCP connection behind a pseudo-address."""
    host, port = addr
    return host.removeprefix(DIALLED).removeprefix(ACCEPTED), port


class FallbackPolicy:
    """Which carrier to dial a peer over (sans-I/O): UDP, unless UDP is known not to work.

    UDP is known not to work towards a peer whose UDP dial went unanswered (nothing came
    back, or the handshake timed out) in the last `UDP_FAILURE_MEMORY_S`; and towards
    everybody for as long, once such a peer was then reached over TCP while no UDP link
    was up (a firewall that lets only TCP out) — until a UDP link comes up. Expiry makes
    a node that moved to another network try UDP again.
    """

    def __init__(self) -> None:
        self.udp_blocked_until = 0.0
        self._failed_until: dict[bytes, float] = {}  # peer -> until when TCP goes first

    def udp_works(self, peer: bytes, now: float) -> bool:
        if self.udp_blocked_until > now:
            return False
        until = self._failed_until.get(peer)
        if until is not None and until <= now:
            del self._failed_until[peer]
            until = None
        return until is None

    def unanswered(self, peer: bytes, now: float) -> None:
        """A UDP dial to `peer` heard nothing back, or its handshake timed out."""
        if peer not in self._failed_until and len(self._failed_until) >= MAX_FALLBACK_MEMORY:
            del self._failed_until[next(iter(self._failed_until))]
        self._failed_until[peer] = now + UDP_FAILURE_MEMORY_S

    def reached_over_tcp(self, peer: bytes, now: float, udp_links_up: bool) -> None:
        """A link to `peer` over TCP came up; `udp_links_up`: whether any UDP link is up."""
        if not udp_links_up and self._failed_until.get(peer, 0.0) > now:
            self.udp_blocked_until = now + UDP_FAILURE_MEMORY_S

    def udp_link_up(self) -> None:
        self.udp_blocked_until = 0.0


def refuse_other(first_bytes: bytes, transport: asyncio.Transport) -> None:
    """The default `on_other`: a connection that is not ours is closed."""
    transport.abort()


class _Connection(asyncio.Protocol):
    """One TCP connection: preamble, framing, idle timer, bounded writes."""

    def __init__(self, carrier: TcpCarrier, addr: Address | None) -> None:
        self.carrier = carrier
        self.addr = addr  # pseudo-address; an accepted one is known at connection_made
        self.outbound = addr is not None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # frames written once a dial connects
        self.rx = bytearray()
        self.ready = self.outbound  # the preamble is behind us
        self.gone = False  # closed, or handed to `on_other`
        self.last_rx = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an asyncio.Transport subclass on uvloop
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_rx = self.carrier.loop.time()
        if self.outbound:
            transport.write(MAGIC + b"".join(self.pending))
            self.pending = []
        else:
            peer = transport.get_extra_info("peername")
            if peer is None:  # reset before we got to it
                transport.abort()
                return
            self.addr = (ACCEPTED + peer[0], peer[1])
            if not self.carrier._admit(self):
                return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        self.last_rx = self.carrier.loop.time()
        rx = self.rx
        rx += data
        if not self.ready and not self._preamble():
            return
        pos, end_of_data = 0, len(rx)
        limit = self.carrier.max_datagram_bytes
        while end_of_data - pos >= FRAME_HEADER_BYTES and not self.gone:
            size = int.from_bytes(rx[pos : pos + FRAME_HEADER_BYTES], "big")
            if size > limit:
                return self.close("oversized_frame")
            end = pos + FRAME_HEADER_BYTES + size
            if end > end_of_data:
                break
            self.carrier._deliver(bytes(rx[pos + FRAME_HEADER_BYTES : end]), self)
            pos = end
        del rx[:pos]

    def _preamble(self) -> bool:
        """Check the bytes so far against MAGIC: True once all of it arrived (and is cut)."""
        rx = self.rx
        seen = min(len(rx), len(MAGIC))
        if rx[:seen] != MAGIC[:seen]:  # not ours, as soon as one byte differs
            self.gone = True
            self.carrier._hand_over(self, bytes(rx))
            return False
        if seen < len(MAGIC):
            return False
        del rx[: len(MAGIC)]
        self.ready = True
        self.carrier._ready(self)
        return True

    def send(self, datagram: bytes) -> None:
        frame = len(datagram).to_bytes(FRAME_HEADER_BYTES, "big") + datagram
        transport = self.transport
        if transport is None:  # still connecting
            if len(self.pending) >= MAX_PENDING_DATAGRAMS:
                return self.carrier._drop("queue_full")
            self.pending.append(frame)
        elif self.gone or transport.is_closing():
            self.carrier._drop("closed")
        elif transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            self.carrier._drop("write_buffer_full")
        else:
            transport.write(frame)
            self.carrier.stats["tcp_frames_out"] += 1

    def close(self, reason: str | None = None) -> None:
        """Close at once (abort: nothing more is owed to junk); count `reason` if given."""
        if reason is not None:
            self.carrier._drop(reason)
        self.gone = True
        if self.transport is not None:
            self.transport.abort()
        self.carrier._forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.carrier._forget(self)

    def _span(self) -> float:
        return self.carrier.idle_timeout_s if self.ready else self.carrier.preamble_timeout_s

    def _arm(self) -> None:
        self.timer = self.carrier.loop.call_at(self.last_rx + self._span(), self._check_idle)

    def _check_idle(self) -> None:
        self.timer = None
        if self.gone:
            return
        if self.carrier.loop.time() < self.last_rx + self._span():
            return self._arm()  # heard from since, or the preamble arrived: longer span
        if not self.ready:
            return self.close("preamble_timeout")
        self.carrier.stats["tcp_idle_closed"] += 1
        self.close()


class TcpCarrier:
    """One node's TCP listener and dials, routing pseudo-addresses to TCP connections.

    Datagrams read go to `deliver(datagram, pseudo_address)` (the `LinkManager`); `send`
    writes one to the connection behind a pseudo-address, dialling it if it is a listener
    we are not connected to. `on_unreachable(addr)` hears of a dial that failed or of a
    send to an accepted connection that is gone, so that handshakes over it end at once.
    """

    def __init__(
        self,
        deliver: Callable[[bytes, Address], None],
        stats: Counter[str],
        *,
        max_datagram_bytes: int,
        max_connections: int,
        idle_timeout_s: float,
        on_unreachable: Callable[[Address], None] = lambda addr: None,
        on_other: OtherHandler = refuse_other,
    ) -> None:
        if not 0 < max_datagram_bytes < 1 << (8 * FRAME_HEADER_BYTES):
            raise LocalProtocolError("datagrams must fit the 2-byte frame length")
        self.deliver = deliver
        self.stats = stats
        self.max_datagram_bytes = max_datagram_bytes
        self.max_connections = max_connections  # accepted ones; as many dialled ones
        self.idle_timeout_s = idle_timeout_s  # a connection silent this long is closed
        self.preamble_timeout_s = PREAMBLE_TIMEOUT_S
        self.on_unreachable = on_unreachable
        # takes an accepted connection whose first bytes are not MAGIC: it must take the
        # transport over (`transport.set_protocol`, then feed it `first_bytes`) or close
        # it; from then on the connection is its own (and no longer counted here)
        self.on_other = on_other
        self.address: Address | None = None  # where we listen, once listening
        self.loop = asyncio.get_running_loop()
        self._accepted: set[_Connection] = set()  # before and after their preamble
        self._dialled: set[_Connection] = set()  # connecting or connected
        self._routes: dict[Address, _Connection] = {}  # pseudo-address -> connection
        self._dials: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing = False

    async def listen(self, host: str, port: int) -> Address:
        """Accept TCP connections at (`host`, `port`); returns the bound address."""
        server = await self.loop.create_server(self.accepted_protocol, host, port)
        self._server = server
        sockname = server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        return self.address

    def accepted_protocol(self) -> asyncio.Protocol:
        """The protocol of an accepted connection (preamble first), for `listen` or for
        another listener that hands us a connection."""
        return _Connection(self, None)

    def send(self, datagram: bytes, addr: Address) -> None:
        """Write `datagram` to the connection behind the pseudo-address `addr`."""
        if self._closing:
            return
        if len(datagram) > self.max_datagram_bytes:
            return self._drop("oversized_out")
        connection = self._routes.get(addr)
        if connection is None:
            if not addr[0].startswith(DIALLED):  # an accepted connection that is gone
                self._drop("unroutable")
                self.loop.call_soon(self._unreachable, addr)
                return
            connection = self._dial(addr)
            if connection is None:
                return
        connection.send(datagram)

    def close(self) -> None:
        """Stop listening, close every connection (after writing what is buffered)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in self._dials:
            task.cancel()
        for connection in [*self._accepted, *self._routes.values()]:
            connection.gone = True
            if connection.timer is not None:
                connection.timer.cancel()
            if connection.transport is not None:
                connection.transport.close()
        self._accepted.clear()
        self._dialled.clear()
        self._routes.clear()

    async def wait_closed(self) -> None:
        """Wait for cancelled dials to finish (call after `close`)."""
        if self._dials:
            await asyncio.gather(*self._dials, return_exceptions=True)

    def _dial(self, addr: Address) -> _Connection | None:
        if len(self._dialled) >= self.max_connections:
            self._drop("too_many_dials")
            return None
        connection = _Connection(self, addr)
        self._routes[addr] = connection
        self._dialled.add(connection)
        task = self.loop.create_task(self._connect(connection, addr))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)
        self.stats["tcp_dialled"] += 1
        return connection

    async def _connect(self, connection: _Connection, addr: Address) -> None:
        host, port = socket_address(addr)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.loop.create_connection(lambda: connection, host, port)
        except (OSError, TimeoutError) as exc:
            self.stats["tcp_dial_failed"] += 1
            log.debug("TCP dial to %s:%d failed: %r", host, port, exc)
            connection.gone = True
            self._forget(connection)
            self._unreachable(addr)

    def _admit(self, connection: _Connection) -> bool:
        if self._closing or len(self._accepted) >= self.max_connections:
            connection.close("too_many")
            return False
        self._accepted.add(connection)
        self.stats["tcp_accepted"] += 1
        return True

    def _ready(self, connection: _Connection) -> None:
        assert connection.addr is not None
        self._routes[connection.addr] = connection

    def _deliver(self, datagram: bytes, connection: _Connection) -> None:
        assert connection.addr is not None
        self.stats["tcp_frames_in"] += 1
        self.deliver(datagram, connection.addr)

    def _hand_over(self, connection: _Connection, first_bytes: bytes) -> None:
        self._forget(connection)
        transport = connection.transport
        assert transport is not None
        if self.on_other is refuse_other:
            self._drop("bad_magic")
        else:
            self.stats["tcp_handed_over"] += 1
        try:
            self.on_other(first_bytes, transport)
        except Exception:  # the other protocol's bug must not take the carrier down
            self.stats["internal_errors"] += 1
            log.exception("on_other handler failed")
            transport.abort()

    def _forget(self, connection: _Connection) -> None:
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        self._accepted.discard(connection)
        self._dialled.discard(connection)
        if connection.addr is not None and self._routes.get(connection.addr) is connection:
            del self._routes[connection.addr]

    def _unreachable(self, addr: Address) -> None:
        if not self._closing:
            self.on_unreachable(addr)

    def _drop(self, reason: str) -> None:
        self.stats["tcp_drop_" + reason] += 1
