"""QUIC links between nodes over one UDP socket, keyed by the NodeId each link proved.

A node accepts inbound QUIC connections and dials outbound ones from the same socket, so
a supernode's listening address is also the source of everything it sends. aioquic is
sans-I/O: `LinkManager` routes each datagram by destination connection id to its
`QuicConnection` (as aioquic's ``asyncio/server.py`` does), handles the events, and
transmits what every touched connection has to send before returning.

Overlay messages travel as frames on one stream per direction of a link (`link.py`).

Garbage never escapes `datagram_received`: it is dropped and counted in `stats`; a frame
that does not decode is counted and skipped, and its link stays up.

Datagrams may also travel over TCP (`tcp_carrier`): an address whose host starts with
"tcp" is a TCP connection's pseudo-address, and `_sendto` hands those to the carrier. A
dial by NodeId goes over UDP unless the `FallbackPolicy` knows UDP does not work; if a
UDP dial hears nothing back within `UDP_ANSWER_TIMEOUT_S` and the peer has a TCP
endpoint (`resolve_tcp`), the dial moves to TCP and keeps its queued messages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import cast

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-exported, untyped
from aioquic.quic import events
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicHeader, QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler

from peerphone.endpoints import Address
from peerphone.errors import DecodeError
from peerphone.identity import KeyPair, NodeId, short
from peerphone.runtime import quic_identity
from peerphone.runtime.link import (
    Link,
    LinkInfo,
    LinkStats,
    count_wire,
    encode_frame,
    keeps_current,
    take_frames,
)
from peerphone.runtime.link_limits import MAX_LINKS, LinkLimits, LinkLimitsConfig
from peerphone.runtime.tcp_carrier import FallbackPolicy, TcpCarrier, is_tcp, socket_address
from peerphone.timers import CoreTimer
from peerphone.wire import MAX_MESSAGE_BYTES, Message, Send, decode_message, encode_message

log = logging.getLogger(__name__)

# aioquic never sends datagrams above its max_datagram_size (1200 by default; checked in
# LinkManager.__init__); anything larger is not QUIC from a peerphone node.
MAX_DATAGRAM_BYTES = 1500
INITIAL_MIN_BYTES = 1200  # RFC 9000 §14.1: a client Initial fills at least this much
MAX_QUEUED_PER_PEER = 256  # messages waiting for a link to come up, per peer
MAX_ADDRESS_BOOK = 100_000  # NodeId -> address entries learned from inbound links
HANDSHAKE_TIMEOUT_S = 5.0  # a link not authenticated by then is closed (in or out)
# a UDP dial that heard nothing at all by then (3 Initials sent, at aioquic's PTOs of
# 0.3 s and 0.6 s) moves to the peer's TCP endpoint: well within the client's 2 s attach
UDP_ANSWER_TIMEOUT_S = 1.0
TCP_IDLE_FACTOR = 2  # a TCP connection silent for this many QUIC idle timeouts is closed
HANDSHAKE_SAMPLES = 64  # recent handshake durations kept for status and benchmarks
UNATTACHED_SWEEP_FRACTION = 1 / 4  # of the unattached idle time: how often it is checked


class LinkManager(asyncio.DatagramProtocol):
    """All QUIC links of one node on one UDP socket; a table of authenticated links by NodeId.

    `send_many` puts each message on the link to its destination, dialling it (address
    from `resolve`, else the address book; see `FallbackPolicy` for `resolve_tcp`) and
    queueing until the link is authenticated.
    Authenticated messages go to `on_message(peer, msg)`; the end of a link (close, idle
    timeout, failed dial) goes to `on_link_lost(peer)`.
    Inbound links are bounded per source (`link_limits`); when full, the idlest inbound
    link whose peer is not `protected` goes; only `in_tier` peers may use the reserve.
    """

    def __init__(
        self,
        keys: KeyPair,
        on_message: Callable[[NodeId, Message], None],
        on_link_lost: Callable[[NodeId], None],
        stats: Counter[str],
        resolve: Callable[[NodeId], Address | None] = lambda node: None,
        resolve_tcp: Callable[[NodeId], Address | None] = lambda node: None,
        on_link_up: Callable[[NodeId, Link], None] = lambda node, link: None,
        idle_timeout_s: float = 15.0,
        retry: bool = True,
        limits: LinkLimitsConfig | None = None,
        protected: Callable[[NodeId], bool] = lambda node: False,
        in_tier: Callable[[NodeId], bool] = lambda node: False,
    ) -> None:
        self.me = keys.node_id
        self.protected = protected  # its inbound links are never closed for the limits
        self.in_tier = in_tier  # ... and may use the room kept for the tier
        self.limits: LinkLimits[Link] = LinkLimits(limits or LinkLimitsConfig())
        self.on_message = on_message
        self.on_link_lost = on_link_lost
        self.on_link_up = on_link_up
        self.resolve = resolve
        self.resolve_tcp = resolve_tcp  # a peer's TCP endpoint (pseudo-address), if any
        self.stats = stats
        self.links: dict[NodeId, Link] = {}  # authenticated, one per peer
        self.addresses: dict[NodeId, Address] = {}  # learned from inbound links and dials
        self.handshake_s: deque[float] = deque(maxlen=HANDSHAKE_SAMPLES)
        configure = quic_identity.make_configuration
        self._client_config = configure(keys, True, idle_timeout_s=idle_timeout_s)
        self._server_config = configure(keys, False, idle_timeout_s=idle_timeout_s)
        assert self._client_config.max_datagram_size <= MAX_DATAGRAM_BYTES
        # Retry makes a client prove its address before any state exists for it (no state
        # and no reply larger than the request for spoofed traffic), at one round trip.
        self._retry = QuicRetryTokenHandler() if retry else None
        self._by_cid: dict[bytes, Link] = {}
        self._all: set[Link] = set()
        self._dialing: dict[NodeId, Link] = {}
        self._queued: dict[NodeId, list[bytes]] = {}
        self._dirty: set[Link] = set()
        self._ping_uid = 0
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self.fallback = FallbackPolicy()
        self.tcp = TcpCarrier(
            self.datagram_received,
            stats,
            max_datagram_bytes=MAX_DATAGRAM_BYTES,
            max_connections=MAX_LINKS,
            idle_timeout_s=TCP_IDLE_FACTOR * idle_timeout_s,
            on_unreachable=self._tcp_unreachable,
        )
        sweep_s = self.limits.config.unattached_idle_s * UNATTACHED_SWEEP_FRACTION
        self._sweep = self._loop.call_later(sweep_s, self._close_unattached, sweep_s)

    # -- socket ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not a DatagramTransport subclass on every loop (CPython 3.11's selector loop)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        self.stats["socket_errors"] += 1

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self._datagram(data, (addr[0], addr[1]))
        except Exception:  # a bug, never garbage: garbage is dropped below, and counted
            self.stats["internal_errors"] += 1
            log.exception("datagram from %s crashed the handler", addr)

    def _datagram(self, data: bytes, addr: Address) -> None:
        count_wire(self.stats, "in", data, addr)
        if self._closing:
            return
        if len(data) > MAX_DATAGRAM_BYTES:
            return self._drop("oversized")
        try:
            header = pull_quic_header(Buffer(data=data), self._server_config.connection_id_length)
        except ValueError:
            return self._drop("bad_header")
        link = self._by_cid.get(header.destination_cid)
        if link is not None:
            link.heard = True
        else:
            refusal = self._refusal(header, data)
            link = None if refusal else self._accept(header, addr)
            if link is None:
                return self._drop(refusal) if refusal else None
        link.connection.receive_datagram(data, addr, now=self._loop.time())
        self._service(link)

    def _refusal(self, header: QuicHeader, data: bytes) -> str | None:
        """Why a datagram for no connection we know cannot open one (None: it can)."""
        if header.packet_type is not QuicPacketType.INITIAL:
            return "unknown_cid"
        if header.version is None or header.version not in self._server_config.supported_versions:
            return "bad_version"  # no version negotiation: all peers speak QUIC v1
        if len(data) < INITIAL_MIN_BYTES:
            return "short_initial"
        return None  # the link limits decide once the address is proven (_accept)

    def _accept(self, header: QuicHeader, addr: Address) -> Link | None:
        """A new inbound connection, once the client proved its address (Retry), else None."""
        version = header.version
        assert version is not None
        now = self._loop.time()
        original_cid, retry_cid = header.destination_cid, None
        if self._retry is not None and not is_tcp(addr):  # TCP proved the address already
            if not header.token:
                source_cid = os.urandom(self._server_config.connection_id_length)
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid,
                    now=now,
                )
                self._sendto(
                    encode_quic_retry(
                        version, source_cid, header.source_cid, header.destination_cid, token
                    ),
                    addr,
                )
                self.stats["retry_sent"] += 1
                return None
            try:
                original_cid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                self._drop("bad_token")  # silently: no reply to what may be spoofed
                return None
            retry_cid = header.destination_cid
        admission = self.limits.admit(socket_address(addr)[0], self._evictable)
        if not admission.admitted:
            self._drop(admission.refused)
            return None
        for victim in admission.evict:
            self._evict(victim, "link limit")
        connection = QuicConnection(
            configuration=self._server_config,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        quic_identity.request_client_certificate(connection)
        link = self._new_link(connection, addr, outbound=False, expected=None)
        self._register(link, header.destination_cid)
        return link

    # -- sending --------------------------------------------------------------------------

    def send_many(self, sends: Iterable[Send]) -> None:
        """Send each message over the link to its destination, then transmit."""
        for dest, msg in sends:
            if not self._closing:
                self._send(dest, msg)
        self._flush()

    def _send(self, dest: NodeId, msg: Message) -> None:
        try:
            payload = encode_message(msg)
        except ValueError:  # a core built a message over the wire limit: our bug
            self.stats["unencodable"] += 1
            log.error("cannot encode %s for %s", type(msg).__name__, short(dest))
            return
        frame = encode_frame(payload)
        link = self.links.get(dest)
        if link is not None:
            self._write(link, frame)
            return
        queue = self._queued.setdefault(dest, [])
        if len(queue) >= MAX_QUEUED_PER_PEER:
            return self._drop("queue_full")
        queue.append(frame)
        if dest not in self._dialing:
            self._dial(dest)

    def flush(self, *links: Link) -> None:
        """Transmit what became sendable, also on `links` whose connections were used directly."""
        self._dirty.update(link for link in links if link in self._all)
        self._flush()

    def keep_alive(self, peers: Iterable[NodeId]) -> None:
        """PING these peers' links so that neither idle timeouts nor NAT mappings end them."""
        for peer in peers:
            link = self.links.get(peer)
            if link is not None:
                self._ping_uid += 1
                link.connection.send_ping(self._ping_uid)
                self._dirty.add(link)
        self._flush()

    def dial_address(self, addr: Address) -> None:
        """Open a link to whoever listens at `addr` (bootstrap); `on_link_up` names it."""
        if self._closing or not self._room():
            return
        if not any(link.outbound and link.addr == addr for link in self._all):
            self._connect(addr, expected=None).bootstrap = True
            self._flush()

    def probe(self, addr: Address, expected: NodeId, nonce: bytes = b"") -> asyncio.Future[bool]:
        """Dial `addr` on a connection of its own and tell whether `expected` answers there
        (a dial-back) and echoes `nonce` on it; the connection is closed once known."""
        result: asyncio.Future[bool] = self._loop.create_future()
        if self._closing or not self._room():
            result.set_result(False)
            return result
        self._connect(addr, expected=expected).arm_probe(result, nonce)
        self.stats["dial_backs"] += 1
        self._flush()
        return result

    def _dial(self, dest: NodeId) -> None:
        addr = self.resolve(dest) or self.addresses.get(dest)
        tcp = None if addr is None or is_tcp(addr) else self.resolve_tcp(dest)
        if tcp is not None and not self.fallback.udp_works(dest, self._loop.time()):
            addr, tcp = tcp, None
            self.stats["dial_tcp_first"] += 1
        if addr is None or not self._room():
            self.stats["drop_no_address" if addr is None else "drop_too_many_links"] += len(
                self._queued.pop(dest, [])
            )
            self._loop.call_soon(self._lost_unless_linked, dest)
            return
        # a bootstrap dial to that address, still handshaking, becomes this dial (one
        # connection instead of two; which of two links each end uses: see keeps_current)
        for link in self._all:
            if link.bootstrap and link.addr == addr and link.expected is None and not link.peer:
                link.expected = dest
                break
        else:
            link = self._connect(addr, expected=dest)
        self._dialing[dest] = link
        if tcp is not None and not link.heard:
            at = link.started + UDP_ANSWER_TIMEOUT_S
            link.fallback = self._loop.call_at(at, self._udp_unanswered, link, dest, tcp)

    def _udp_unanswered(self, link: Link, dest: NodeId, tcp: Address) -> None:
        """No answer over UDP: dial `dest` over TCP instead, its queue kept."""
        link.fallback = None
        if link.heard or self._dialing.get(dest) is not link:
            return
        self.fallback.unanswered(dest, self._loop.time())
        self.stats["udp_fallbacks"] += 1
        self._forget(link)  # silently: nothing reached it, nothing to tell
        self._dialing[dest] = self._connect(tcp, expected=dest)
        self._flush()

    def _tcp_unreachable(self, addr: Address) -> None:
        """The TCP connection behind `addr` failed: end the handshakes over it now."""
        stuck = [link for link in self._all if link.addr == addr and link.peer is None]
        for link in sorted(stuck, key=lambda link: link.started):
            self.stats["handshakes_unreachable"] += 1
            self._terminated(link)

    def _connect(self, addr: Address, expected: NodeId | None) -> Link:
        connection = QuicConnection(configuration=self._client_config)
        connection.connect(addr, now=self._loop.time())
        link = self._new_link(connection, addr, outbound=True, expected=expected)
        self._dirty.add(link)
        return link

    def _write(self, link: Link, frame: bytes) -> None:
        if link.tx_stream is None:
            link.tx_stream = link.connection.get_next_available_stream_id(is_unidirectional=True)
        link.connection.send_stream_data(link.tx_stream, frame)
        self.stats["messages_out"] += 1
        self._dirty.add(link)

    def _sendto(self, data: bytes, addr: NetworkAddress) -> None:
        if is_tcp(addr):
            self.tcp.send(data, (addr[0], addr[1]))
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)
        else:
            return
        count_wire(self.stats, "out", data, addr)

    def _flush(self) -> None:
        now = self._loop.time()
        while self._dirty:
            link = self._dirty.pop()
            for data, addr in link.connection.datagrams_to_send(now=now):
                self._sendto(data, addr)
            self._arm(link)

    # -- link life ------------------------------------------------------------------------

    def _new_link(
        self, connection: QuicConnection, addr: Address, outbound: bool, expected: NodeId | None
    ) -> Link:
        link = Link(connection, addr, outbound, expected, self._loop.time())
        link.timer = CoreTimer(self._loop, lambda: self._on_timer(link))
        link.deadline = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout, link)
        self._all.add(link)
        self.limits.opened(link, socket_address(addr)[0], not outbound, link.started)
        self._register(link, connection.host_cid)
        return link

    def _drop(self, reason: str) -> None:
        self.stats["drop_" + reason] += 1

    def _register(self, link: Link, cid: bytes) -> None:
        self._by_cid[cid] = link
        link.cids.add(cid)

    def _handshake_timeout(self, link: Link) -> None:
        self.stats["handshake_timeouts"] += 1
        if link.outbound and link.expected is not None and not is_tcp(link.addr) and not link.probe:
            self.fallback.unanswered(link.expected, self._loop.time())  # TCP first next time
        link.connection.close(reason_phrase="handshake timeout")
        self._service(link)

    def _service(self, link: Link) -> None:
        """Handle the events of `link`, then transmit everything that became sendable."""
        self._dirty.add(link)
        connection = link.connection
        while (event := connection.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                self._stream_data(link, event)
            elif isinstance(event, events.HandshakeCompleted):
                self._handshake_completed(link)
            elif isinstance(event, events.ConnectionIdIssued):
                self._register(link, event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                link.cids.discard(event.connection_id)
                self._by_cid.pop(event.connection_id, None)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(link)
        self._flush()

    def _handshake_completed(self, link: Link) -> None:
        peer = quic_identity.authenticate(link.connection, link.expected)
        if link.probe is not None:
            frame = link.probe_authenticated(peer)
            if frame is not None:
                self._write(link, frame)  # the echo settles it (_read_frames), or the timeout
            return
        if peer is None or peer == self.me:
            self.stats["auth_failed"] += 1
            if peer == self.me:
                link.connection.close(reason_phrase="connected to myself")
            return
        now = self._loop.time()
        self.limits.up(link, self.in_tier(peer), now)
        victims = () if link.outbound else self.limits.settle(link, self._evictable)
        if link in victims:  # not in the tier, and the room outside it is taken
            self.stats["drop_tier_reserve"] += 1
            link.connection.close(reason_phrase="link limit")
            return
        for victim in victims:
            self._evict(victim, "link limit")
        if link.deadline is not None:
            link.deadline.cancel()  # the handshake timeout
        link.peer, link.up_since = peer, now
        if not is_tcp(link.addr):
            self.fallback.udp_link_up()
        elif link.outbound:
            udp_up = any(not is_tcp(other.addr) for other in self.links.values())
            self.fallback.reached_over_tcp(peer, link.up_since, udp_up)
        self.handshake_s.append(link.up_since - link.started)
        if link.outbound or peer not in self.addresses:
            if len(self.addresses) >= MAX_ADDRESS_BOOK and peer not in self.addresses:
                del self.addresses[next(iter(self.addresses))]
            self.addresses[peer] = link.addr
        if self._dialing.get(peer) is link:
            del self._dialing[peer]
        current = self.links.get(peer)
        if current is not None and keeps_current(self.me, current, link):
            return
        self.links[peer] = link
        for frame in self._queued.pop(peer, []):
            self._write(link, frame)
        self.on_link_up(peer, link)

    def _stream_data(self, link: Link, event: events.StreamDataReceived) -> None:
        if link.peer is None and not link.awaits_echo():
            return self._drop("unauthenticated")
        # only the peer's own unidirectional stream carries frames
        peer_opened = (event.stream_id & 1) == (1 if link.outbound else 0)
        if link.rx_stream is None and peer_opened and event.stream_id & 2:
            link.rx_stream = event.stream_id
        if event.stream_id != link.rx_stream:
            return self._drop("stray_stream")
        link.rx += event.data
        self._read_frames(link, link.peer or link.expected or self.me)

    def _read_frames(self, link: Link, peer: NodeId) -> None:
        for payload in take_frames(link, MAX_MESSAGE_BYTES):
            if payload is None:  # oversized: skipped, never buffered
                self._drop("oversized_frame")
                continue
            try:
                msg = decode_message(payload)
            except DecodeError:
                self.stats["drop_undecodable"] += 1
                continue
            self.stats["messages_in"] += 1
            if link.probe is not None:  # a dial-back's only answer: the echo of its nonce
                return link.settle_probe(link.echoes_nonce(msg))
            self.on_message(peer, msg)
            if self.protected(peer):  # attached, in the tier...: not idle for the limits
                self.limits.active(link, self._loop.time())

    def _terminated(self, link: Link) -> None:
        self._forget(link)
        if link.probe is not None:
            if not link.probe.done():
                link.probe.set_result(False)
            return
        lost = link.peer if link.peer is not None else link.expected
        if link.expected is not None and self._dialing.get(link.expected) is link:
            del self._dialing[link.expected]
            self.stats["dial_failed"] += 1
            self.stats["drop_dial_failed"] += len(self._queued.pop(link.expected, []))
        if link.peer is not None and self.links.get(link.peer) is link:
            del self.links[link.peer]
            others = [other for other in self._all if other.peer == link.peer]
            if others:  # a duplicate link is still up: carry on over the newest
                self.links[link.peer] = max(others, key=lambda other: other.up_since)
                return
        elif link.peer is not None or link.expected is None:
            return  # a duplicate, or an inbound/bootstrap link that never authenticated
        if lost is not None:
            self._lost_unless_linked(lost)

    def _lost_unless_linked(self, peer: NodeId) -> None:
        if peer not in self.links and peer not in self._dialing and not self._closing:
            self.on_link_lost(peer)

    def _forget(self, link: Link) -> None:
        self._all.discard(link)
        self.limits.closed(link)
        self._dirty.discard(link)
        for cid in link.cids:
            if self._by_cid.get(cid) is link:
                del self._by_cid[cid]
        for handle in (link.deadline, link.fallback):
            if handle is not None:
                handle.cancel()
        link.deadline = link.fallback = None
        if link.timer is not None:
            link.timer.stop()

    # -- link limits ----------------------------------------------------------------------

    def _evictable(self, link: Link) -> bool:
        """Whether the link limits may close `link` (inbound, peer known, not protected)."""
        return not link.outbound and link.peer is not None and not self.protected(link.peer)

    def _room(self) -> bool:
        """Whether one more link fits, after closing an evictable one if the table is full."""
        if len(self._all) < self.limits.config.max_links:
            return True
        victim = self.limits.idlest(self._evictable)
        if victim is not None:
            self._evict(victim, "link limit")
        return victim is not None

    def _evict(self, link: Link, reason: str) -> None:
        """Close `link` now: CONNECTION_CLOSE to the peer, then forget it at once."""
        self.stats["links_evicted"] += 1
        link.connection.close(reason_phrase=reason)
        for data, addr in link.connection.datagrams_to_send(now=self._loop.time()):
            self._sendto(data, addr)
        self._terminated(link)

    def _close_unattached(self, interval_s: float) -> None:
        """Close links whose peers stayed unattached (see `UNATTACHED_IDLE_S`)."""
        self._sweep = self._loop.call_later(interval_s, self._close_unattached, interval_s)
        for link in self.limits.expired(self._loop.time(), self._evictable):
            self.stats["links_unattached_closed"] += 1
            self._evict(link, "not attached")

    def _arm(self, link: Link) -> None:
        if link in self._all and link.timer is not None:
            link.timer.arm(link.connection.get_timer())

    def _on_timer(self, link: Link) -> None:
        assert link.timer is not None
        try:
            link.connection.handle_timer(now=link.timer.due(self._loop.time()))
            self._service(link)
        except Exception:  # a bug (the core's, when a lost link is reported): count it
            self.stats["internal_errors"] += 1
            log.exception("timer of the link to %s crashed", link.addr)

    # -- what others may see ---------------------------------------------------------------

    def link_to(self, peer: NodeId) -> LinkInfo | None:
        """The authenticated link to `peer`, if there is one."""
        link = self.links.get(peer)
        return None if link is None else link.info()

    def link_stats(self) -> LinkStats:
        """How many links are up, open, and up over TCP."""
        over_tcp = sum(1 for link in self.links.values() if is_tcp(link.addr))
        return LinkStats(up=len(self.links), open=len(self.limits), over_tcp=over_tcp)

    def close(self, notify: bool = True) -> None:
        """Close every link, then the socket. With `notify` the peers see CONNECTION_CLOSE
        at once; without, they find out by idle timeout, as after a crash."""
        for link in list(self._all) if notify else ():
            link.connection.close(reason_phrase="node stopping")
            self._dirty.add(link)
        self._flush()
        self._closing = True
        self._sweep.cancel()
        for link in list(self._all):
            self._forget(link)
        self.links.clear()
        if self._transport is not None:
            self._transport.close()
        self.tcp.close()
