"""One QUIC link to another node: its state, the framing of its stream, and what others
may see of it.

Overlay messages travel as frames (4-byte big-endian length, then the msgpack message)
on one unidirectional stream per direction of a link. Streams rather than QUIC DATAGRAM
frames because overlay messages must arrive (hand-overs, stores and membership pages are
not retried by the cores) and are too large for a datagram (a membership page is
~150 KiB, a datagram ~1.2 KiB). Unidirectional because a QUIC server may not send on a
client-initiated stream before the client has opened it: each side opens its own.
A frame longer than the largest message is skipped as it arrives, never buffered.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from aioquic.quic.connection import QuicConnection

from peerphone.endpoints import TCP, UDP, Address
from peerphone.identity import NodeId
from peerphone.runtime.tcp_carrier import is_tcp, socket_address
from peerphone.timers import CoreTimer
from peerphone.wire import Message, ReachEcho, ReachProbe, encode_message

FRAME_HEADER_BYTES = 4


@dataclass(eq=False, slots=True)
class Link:
    """One QUIC connection to or from another node; `peer` is set once it is authenticated."""

    connection: QuicConnection
    addr: Address  # a UDP address, or a TCP connection's pseudo-address (tcp_carrier)
    outbound: bool
    expected: NodeId | None  # the NodeId dialled (None: dialled by address, or inbound)
    started: float
    up_since: float = float("inf")  # when it was authenticated
    peer: NodeId | None = None
    tx_stream: int | None = None
    rx_stream: int | None = None
    rx: bytearray = field(default_factory=bytearray)
    skip: int = 0  # bytes of an oversized frame still to discard
    bootstrap: bool = False  # dialled by address only, to learn who listens there
    heard: bool = False  # a datagram arrived for it (the peer answers at this address)
    cids: set[bytes] = field(default_factory=set)
    timer: CoreTimer | None = None  # the QUIC connection's (`get_timer`)
    deadline: asyncio.TimerHandle | None = None
    fallback: asyncio.TimerHandle | None = None  # UDP_ANSWER_TIMEOUT_S, then TCP
    probe: asyncio.Future[bool] | None = None  # a dial-back: only whether `expected` answers
    nonce: bytes = b""  # ... and echoes this (ReachProbe -> ReachEcho) on this connection

    # -- a dial-back (LinkManager.probe): never a link, only its answer ---------------------

    def arm_probe(self, result: asyncio.Future[bool], nonce: bytes) -> None:
        self.probe, self.nonce = result, nonce

    def probe_authenticated(self, peer: NodeId | None) -> bytes | None:
        """The handshake of a dial-back completed with `peer`: the frame carrying the nonce
        to send, or None once settled (wrong peer, or no nonce to echo)."""
        if peer is not None and peer == self.expected and self.nonce:
            return encode_frame(encode_message(ReachProbe(self.nonce)))
        self.settle_probe(peer is not None and peer == self.expected)
        return None

    def awaits_echo(self) -> bool:
        """Whether it reads frames though it has no peer: a dial-back that sent its nonce."""
        return self.probe is not None and self.tx_stream is not None

    def echoes_nonce(self, msg: Message) -> bool:
        return isinstance(msg, ReachEcho) and bool(self.nonce) and msg.nonce == self.nonce

    def settle_probe(self, reached: bool) -> None:
        if self.probe is not None and not self.probe.done():
            self.probe.set_result(reached)
        self.connection.close(reason_phrase="dial-back done")

    def info(self) -> LinkInfo:
        """What the daemon may see of this (authenticated) link."""
        assert self.peer is not None
        return LinkInfo(
            peer=self.peer,
            address=socket_address(self.addr),
            transport=TCP if is_tcp(self.addr) else UDP,
            outbound=self.outbound,
            up_since=self.up_since,
        )


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One authenticated link, as status shows it."""

    peer: NodeId
    address: Address  # the far end's (ip, port), over TCP too
    transport: str  # UDP or TCP (the carrier)
    outbound: bool  # we dialled it
    up_since: float  # when it was authenticated (the loop's clock)


@dataclass(frozen=True, slots=True)
class LinkStats:
    """How many links a node has, as status shows it."""

    up: int  # authenticated, one per peer
    open: int  # handshaking or up, in or out (what the link limits count)
    over_tcp: int  # of `up`, carried over TCP


def keeps_current(me: NodeId, current: Link, new: Link) -> bool:
    """Whether to keep sending on `current` rather than on `new`, another link to its peer.

    Links dialled concurrently by both ends (the new one began before the current one
    was up): the one opened by the smaller NodeId, so both ends usually pick the same.
    Otherwise the new one: the peer dialled again, so it restarted or lost the old one.
    The loser is not closed (messages may be in flight on it): unused, it idles out.
    """
    opener_current = me if current.outbound else current.peer
    opener_new = me if new.outbound else new.peer
    assert opener_current is not None and opener_new is not None
    concurrent = new.started < current.up_since and opener_current != opener_new
    return concurrent and opener_current < opener_new


def count_wire(stats: Counter[str], direction: str, datagram: bytes, addr: Address) -> None:
    """Count one overlay datagram sent (`direction` "out") or received ("in"): in all
    (`datagrams_in`), and by transport, `udp_` or `tcp_` + `datagrams_in` and `bytes_in`.
    Bytes are the datagram's own: no IP/UDP header (`peerphone sharing` adds them), no TCP
    carrier framing."""
    kind = "tcp_" if is_tcp(addr) else "udp_"
    stats["datagrams_" + direction] += 1
    stats[kind + "datagrams_" + direction] += 1
    stats[kind + "bytes_" + direction] += len(datagram)


def encode_frame(payload: bytes) -> bytes:
    """`payload` as one frame of a link's stream."""
    return len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload


def take_frames(link: Link, max_payload_bytes: int) -> Iterator[bytes | None]:
    """The complete frames in `link.rx`, taken out in order: each payload, or None for a
    frame over `max_payload_bytes` (its bytes are discarded as they arrive)."""
    rx = link.rx
    while True:
        skipped = min(link.skip, len(rx))
        del rx[:skipped]
        link.skip -= skipped
        if link.skip or len(rx) < FRAME_HEADER_BYTES:
            return
        end = FRAME_HEADER_BYTES + int.from_bytes(rx[:FRAME_HEADER_BYTES], "big")
        if end - FRAME_HEADER_BYTES > max_payload_bytes:  # skip it, never buffer it
            link.skip = end
            yield None
            continue
        if len(rx) < end:
            return
        payload = bytes(rx[FRAME_HEADER_BYTES:end])
        del rx[:end]
        yield payload
