"""QUIC links carried over TCP (runtime/tcp_carrier.py), on loopback with real sockets.

Supernodes listen on UDP and TCP; clients reach them over TCP when told only TCP
addresses, fall back to TCP by themselves when UDP gets no answer, and the TCP port shrugs
off junk. Every test is bounded by `TEST_BUDGET_S` and stops all of its runtimes. The
framing is also fed by Hypothesis, split anywhere and as junk, through a fake transport.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerphone.endpoints import (
    Address,
    EndpointError,
    endpoint_or_none,
    format_endpoint,
    parse_address,
    parse_endpoint,
)
from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.client import ClientConfig
from peerphone.overlay.events import Attached, Published
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Record
from peerphone.runtime.links import MAX_DATAGRAM_BYTES, UDP_ANSWER_TIMEOUT_S
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.runtime.tcp_carrier import (
    MAGIC,
    UDP_FAILURE_MEMORY_S,
    FallbackPolicy,
    TcpCarrier,
    dialled,
    is_tcp,
    socket_address,
)
from tests.support.loopback_net import (
    ELIGIBLE,
    LOOKUP_TIMEOUT_S,
    LOOPBACK,
    LOOPBACK_SUPERNODE,
    found,
    member_record,
    next_event,
    until,
)
from tests.support.loopback_net import run_bounded as run_network

TEST_BUDGET_S = 6.0  # per test; the fallback tests wait UDP_ANSWER_TIMEOUT_S once or twice
PREAMBLE_TIMEOUT_S = 0.3  # in the junk test: silent connections are closed this soon
# the fallback test's tier also dials itself over dead UDP first: stores must outlast that
SLOW_STORE_SUPERNODE = SupernodeConfig(fetch_timeout_s=0.3, store_timeout_s=2.5)

T = TypeVar("T")


class TcpNet:
    """Node runtimes on 127.0.0.1, supernodes on UDP and TCP, made from one seed."""

    def __init__(self, seed: int, supernode_config: SupernodeConfig = LOOPBACK_SUPERNODE) -> None:
        self.rng = random.Random(seed)
        self.supernode_config = supernode_config
        self.runtimes: list[NodeRuntime] = []
        self.sockets: list[socket.socket] = []

    def _core(self, name: str) -> NodeCore:
        return NodeCore(
            KeyPair.from_rng(self.rng),
            KeyPair.from_rng(self.rng),
            name,
            random.Random(self.rng.random()),
            SignatureVerifier(),
            capacity=ELIGIBLE,
            supernode_config=self.supernode_config,
        )

    async def supernodes(
        self, count: int, advertise: Callable[[NodeRuntime], list[str]] | None = None
    ) -> list[NodeRuntime]:
        """A bootstrapped tier listening on UDP and TCP; `advertise` replaces the
        endpoints its member records carry (default: both)."""
        tier = []
        for i in range(count):
            core = self._core(f"sn{i}")
            runtime = NodeRuntime(core, core.node_keys, LOOPBACK, 0, [], tcp_listen=(LOOPBACK, 0))
            self.runtimes.append(runtime)
            await runtime.start()
            if advertise is not None:
                core.set_addresses(advertise(runtime))
            tier.append(runtime)
        for runtime in tier:
            runtime.core.become_supernode(runtime.now(), "test", seed=True)
        records = [member_record(runtime) for runtime in tier]
        for runtime in tier:
            runtime.core.seed_tier(records, runtime.now())
            runtime.drive([])
        return tier

    async def client(
        self,
        name: str,
        bootstrap: Iterable[Address] = (),
        tcp_bootstrap: Iterable[Address] = (),
        host_cache: Iterable[Record] = (),
    ) -> NodeRuntime:
        core = self._core(name)
        runtime = NodeRuntime(
            core,
            core.node_keys,
            LOOPBACK,
            0,
            list(bootstrap),
            host_cache=host_cache,
            tcp_bootstrap=tcp_bootstrap,
        )
        self.runtimes.append(runtime)
        await runtime.start()
        runtime.login()
        return runtime

    def dead_udp(self) -> Address:
        """A bound UDP socket that is never read: everything sent there is lost."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sockets.append(sock)
        sock.bind((LOOPBACK, 0))
        host, port = sock.getsockname()
        return host, port

    async def close(self) -> None:
        for runtime in self.runtimes:
            await runtime.stop()
        for sock in self.sockets:
            sock.close()


def run_bounded(test: Callable[[TcpNet], Awaitable[T]], net: TcpNet) -> T:
    return run_network(test, net, TEST_BUDGET_S)


def tcp_address(runtime: NodeRuntime) -> Address:
    assert runtime.tcp_address is not None
    return runtime.tcp_address


def attached_over_tcp(client: NodeRuntime, tier: list[NodeRuntime]) -> NodeRuntime:
    """The client's primary, checked to be linked to it over TCP at both ends."""
    primary = next(sn for sn in tier if sn.core.id == client.core.client.primary)
    assert client.links.links[primary.core.id].addr == dialled(tcp_address(primary))
    assert primary.links.links[client.core.id].addr[0].startswith("tcp-in:")
    return primary


def assert_clean(runtimes: list[NodeRuntime]) -> None:
    for runtime in runtimes:
        assert runtime.stats["internal_errors"] == 0
        assert runtime.stats["auth_failed"] == 0
        assert runtime.stats["drop_undecodable"] == 0


def test_client_with_only_tcp_bootstrap_attaches_publishes_and_looks_up() -> None:
    async def scenario(net: TcpNet) -> None:
        tier = await net.supernodes(3)
        for sn in tier:  # the member record advertises both endpoints
            assert sn.core.addresses == [
                format_endpoint(("udp", sn.address or ("", 0))),
                format_endpoint(("tcp", tcp_address(sn))),
            ]
        alice = await net.client("alice", tcp_bootstrap=[tcp_address(sn) for sn in tier])
        bob = await net.client("bob", host_cache=[member_record(sn) for sn in tier])
        published = await next_event(alice, Published)
        assert published.stored == 3
        await next_event(bob, Published)
        attached_over_tcp(alice, tier)
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        assert set(alice.bootstrap_ids.values()) == {dialled(tcp_address(sn)) for sn in tier}
        # TCP was told, not fallen back to
        assert alice.stats["udp_fallbacks"] == alice.stats["bootstrap_tcp_fallback"] == 0
        assert not any(is_tcp(link.addr) for link in bob.links.links.values())
        assert_clean(net.runtimes)

    run_bounded(scenario, TcpNet(seed=11))


def test_dead_udp_bootstrap_falls_back_to_tcp_without_a_flag() -> None:
    async def scenario(net: TcpNet) -> None:
        tier = await net.supernodes(2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        alice = await net.client(
            "alice", bootstrap=[net.dead_udp()], tcp_bootstrap=[tcp_address(tier[0])]
        )
        await next_event(alice, Published)
        took = loop.time() - started
        attached_over_tcp(alice, tier)
        assert alice.stats["bootstrap_tcp_fallback"] == 1
        assert UDP_ANSWER_TIMEOUT_S <= took < UDP_ANSWER_TIMEOUT_S + 3.0  # margin: loaded CI
        # a UDP bootstrap that answers: TCP is never dialled
        bob = await net.client(
            "bob", bootstrap=[tier[1].address or ("", 0)], tcp_bootstrap=[tcp_address(tier[1])]
        )
        await next_event(bob, Published)
        await asyncio.sleep(UDP_ANSWER_TIMEOUT_S)  # past the moment TCP would be dialled
        assert bob.stats["tcp_dialled"] == bob.stats["bootstrap_tcp_fallback"] == 0
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        assert_clean(net.runtimes)

    run_bounded(scenario, TcpNet(seed=12))


def test_dead_udp_endpoint_in_member_records_falls_back_to_tcp_keeping_the_attach() -> None:
    """The records advertise a UDP endpoint that drops everything and a live TCP one: the
    client's first dial moves to TCP after UDP_ANSWER_TIMEOUT_S with its Attach, and its
    next dial (the backup) goes over TCP at once: UDP is known not to get through."""

    async def scenario(net: TcpNet) -> None:
        def dead_udp_live_tcp(runtime: NodeRuntime) -> list[str]:
            return [
                format_endpoint(("udp", net.dead_udp())),
                format_endpoint(("tcp", tcp_address(runtime))),
            ]

        tier = await net.supernodes(2, advertise=dead_udp_live_tcp)
        loop = asyncio.get_running_loop()
        started = loop.time()
        alice = await net.client("alice", host_cache=[member_record(sn) for sn in tier])
        await next_event(alice, Attached)
        took = loop.time() - started
        both = await next_event(alice, Attached, lambda e: e.backup is not None)
        attached_over_tcp(alice, tier)
        assert both.backup is not None
        assert is_tcp(alice.links.links[both.backup].addr)
        assert UDP_ANSWER_TIMEOUT_S <= took < ClientConfig().attach_timeout_s  # no retry
        assert alice.stats["udp_fallbacks"] == 1  # the primary; the backup: TCP first
        assert alice.stats["dial_tcp_first"] >= 1
        assert alice.stats["drop_dial_failed"] == 0  # the Attach was kept, not dropped
        published = await next_event(alice, Published)
        assert published.stored == 2  # the tier reached each other over TCP too
        assert_clean(net.runtimes)

    run_bounded(scenario, TcpNet(seed=13, supernode_config=SLOW_STORE_SUPERNODE))


def test_tier_advertising_only_tcp_works() -> None:
    async def scenario(net: TcpNet) -> None:
        def tcp_only(runtime: NodeRuntime) -> list[str]:
            return [format_endpoint(("tcp", tcp_address(runtime)))]

        tier = await net.supernodes(3, advertise=tcp_only)
        records = [member_record(sn) for sn in tier]
        alice = await net.client("alice", host_cache=records)
        bob = await net.client("bob", host_cache=records)
        for runtime in (alice, bob):
            published = await next_event(runtime, Published)
            assert published.stored == 3  # supernode to supernode stores: over TCP
        attached_over_tcp(alice, tier)
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        for sn in tier:
            assert all(is_tcp(link.addr) for link in sn.links.links.values())
            assert sn.stats["datagrams_in"] > 0 and sn.stats["tcp_frames_in"] > 0
            assert sn.stats["retry_sent"] == 0  # no Retry over TCP: it proved the address
        assert sum(sn.stats["tcp_dialled"] for sn in tier) >= 2  # among the tier
        assert alice.stats["udp_fallbacks"] == 0
        assert_clean(net.runtimes)

    run_bounded(scenario, TcpNet(seed=14))


async def connect(addr: Address, data: bytes) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    await writer.drain()
    return writer


def test_junk_on_the_tcp_port_is_counted_and_the_node_keeps_serving() -> None:
    async def scenario(net: TcpNet) -> None:
        tier = await net.supernodes(3)
        target = tier[0]
        alice = await net.client("alice", tcp_bootstrap=[tcp_address(target)])
        bob = await net.client("bob", host_cache=[member_record(sn) for sn in tier])
        await next_event(alice, Published)
        await next_event(bob, Published)
        target.links.tcp.preamble_timeout_s = PREAMBLE_TIMEOUT_S
        stats = target.stats
        rng = random.Random(5)
        addr = tcp_address(target)
        junk = [bytes([rng.randrange(0xFF)]) + rng.randbytes(rng.randint(0, 3000))]
        junk += [rng.randbytes(rng.randint(1, 200)).replace(b"\xff", b"\xfe") for _ in range(9)]
        junk += [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00\x01\x00\x00" + bytes(16)]
        junk += [MAGIC[:-1] + b"X", MAGIC[:3] + b"\x00"]
        writers = [await connect(addr, data) for data in junk]
        oversized = (MAX_DATAGRAM_BYTES + 1).to_bytes(2, "big")
        writers.append(await connect(addr, MAGIC + oversized + bytes(100)))
        writers.append(await connect(addr, MAGIC + b"\xff\xff"))
        # magic, then frames of junk the QUIC layer drops (and counts), one byte at a time
        frames = b"".join(len(d).to_bytes(2, "big") + d for d in [rng.randbytes(50)] * 5)
        quiet = await connect(addr, MAGIC)
        for i in range(len(frames)):
            quiet.write(frames[i : i + 1])
            await quiet.drain()
        writers += [quiet, await connect(addr, b""), await connect(addr, MAGIC[:4])]
        try:
            await until(lambda: stats["tcp_drop_bad_magic"] == len(junk))
            await until(lambda: stats["tcp_drop_oversized_frame"] == 2)
            await until(lambda: stats["tcp_drop_preamble_timeout"] == 2)  # silent, half magic
            assert stats["tcp_frames_in"] >= 5  # the junk frames reached the QUIC layer...
            assert stats["drop_bad_header"] + stats["drop_unknown_cid"] >= 5  # ...and died
            assert len(target.links.tcp._accepted) == 2  # alice's and `quiet`'s
            # beyond max_connections: closed on arrival
            target.links.tcp.max_connections = 2
            writers.append(await connect(addr, MAGIC))
            await until(lambda: stats["tcp_drop_too_many"] == 1)
            target.links.tcp.max_connections = 4096
        finally:
            for writer in writers:
                writer.close()
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        assert target.links.links[alice.core.id].addr[0].startswith("tcp-in:")
        assert_clean(net.runtimes)

    run_bounded(scenario, TcpNet(seed=15))


def test_lost_tcp_connection_is_redialled_and_the_quic_link_carries_on() -> None:
    """QUIC is keyed by connection id: when the server drops the client's TCP connection,
    the client's next datagram dials a new one and the same QUIC link migrates to it."""

    async def scenario(net: TcpNet) -> None:
        tier = await net.supernodes(1)
        sn = tier[0]
        alice = await net.client("alice", tcp_bootstrap=[tcp_address(sn)])
        bob = await net.client("bob", host_cache=[member_record(sn)])
        await next_event(alice, Published)
        await next_event(bob, Published)
        link, sn_link = alice.links.links[sn.core.id], sn.links.links[alice.core.id]
        (accepted,) = sn.links.tcp._accepted
        assert accepted.transport is not None
        accepted.transport.abort()
        await until(lambda: not sn.links.tcp._accepted and not alice.links.tcp._dialled)
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)  # redials, migrates
        assert alice.links.links[sn.core.id] is link and sn.links.links[alice.core.id] is sn_link
        assert sn.stats["tcp_accepted"] == 2  # the same QUIC links, on a new connection
        assert alice.stats["tcp_dialled"] == 2
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        assert_clean(net.runtimes)

    run_bounded(scenario, TcpNet(seed=16))


def test_connections_that_are_not_ours_go_to_the_other_handler() -> None:
    """A STUN-looking first byte is handed over with the bytes read so far; the handler
    takes the transport and sees everything that follows."""

    class Echo(asyncio.Protocol):
        def __init__(self, transport: asyncio.Transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    def take_over(first_bytes: bytes, transport: asyncio.Transport) -> None:
        echo = Echo(transport)
        transport.set_protocol(echo)
        echo.data_received(first_bytes)

    async def scenario(net: TcpNet) -> None:
        delivered: list[tuple[bytes, Address]] = []
        stats: Counter[str] = Counter()
        carrier = TcpCarrier(
            lambda data, addr: delivered.append((data, addr)),
            stats,
            max_datagram_bytes=MAX_DATAGRAM_BYTES,
            max_connections=8,
            idle_timeout_s=5.0,
            on_other=take_over,
        )
        addr = await carrier.listen(LOOPBACK, 0)
        try:
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"\x00\x01")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"rest")
            assert await asyncio.wait_for(reader.readexactly(6), 2.0) == b"\x00\x01rest"
            writer.close()
            # ours: MAGIC, then frames split anywhere are delivered whole and in order
            datagrams = [net.rng.randbytes(n) for n in (1, 0, 1200, 77)]
            stream = MAGIC + b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)
            writer = await connect(addr, b"")
            for i in range(0, len(stream), 7):
                writer.write(stream[i : i + 7])
                await writer.drain()
            await until(lambda: len(delivered) == len(datagrams))
            assert [data for data, _ in delivered] == datagrams
            (source,) = {source for _, source in delivered}
            assert source[0] == "tcp-in:" + LOOPBACK
            assert socket_address(source) == writer.get_extra_info("sockname")
            writer.close()
            assert stats["tcp_handed_over"] == 1 and stats["tcp_drop_bad_magic"] == 0
        finally:
            carrier.close()
            await carrier.wait_closed()

    run_bounded(scenario, TcpNet(seed=17))


def test_dial_to_a_closed_tcp_port_fails_fast() -> None:
    async def scenario(net: TcpNet) -> None:
        unused = socket.socket()
        unused.bind((LOOPBACK, 0))
        closed = unused.getsockname()[:2]
        unused.close()  # nothing listens there now
        lost: list[Address] = []
        stats: Counter[str] = Counter()
        carrier = TcpCarrier(
            lambda data, addr: None,
            stats,
            max_datagram_bytes=MAX_DATAGRAM_BYTES,
            max_connections=8,
            idle_timeout_s=5.0,
            on_unreachable=lost.append,
        )
        try:
            for _ in range(3):  # queued while connecting: one dial
                carrier.send(b"x" * 100, dialled(closed))
            await until(lambda: lost == [dialled(closed)])
            assert stats["tcp_dialled"] == stats["tcp_dial_failed"] == 1
            carrier.send(b"x", ("tcp-in:" + LOOPBACK, 9))  # an accepted one that is gone
            await until(lambda: len(lost) == 2)
            assert stats["tcp_drop_unroutable"] == 1
        finally:
            carrier.close()
            await carrier.wait_closed()

    run_bounded(scenario, TcpNet(seed=18))


def test_fallback_policy_remembers_udp_failures() -> None:
    policy = FallbackPolicy()
    a, b = b"a" * 32, b"b" * 32
    assert policy.udp_works(a, 0.0) and policy.udp_works(b, 0.0)
    policy.unanswered(a, 0.0)
    assert not policy.udp_works(a, 1.0) and policy.udp_works(b, 1.0)  # only that peer
    policy.reached_over_tcp(a, 2.0, udp_links_up=True)
    assert policy.udp_works(b, 3.0)  # UDP works elsewhere: a's problem, not ours
    policy.reached_over_tcp(a, 2.0, udp_links_up=False)
    assert not policy.udp_works(b, 3.0)  # a firewall: everybody over TCP...
    assert policy.udp_works(b, 2.0 + UDP_FAILURE_MEMORY_S)  # ...until we try UDP again
    policy.reached_over_tcp(a, 4.0, udp_links_up=False)
    policy.udp_link_up()  # or until a UDP link comes up
    assert policy.udp_works(b, 5.0)
    assert policy.udp_works(a, 1.0 + UDP_FAILURE_MEMORY_S)  # forgotten in time


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("127.0.0.1:443", ("udp", ("127.0.0.1", 443))),
        ("udp://10.0.0.1:5", ("udp", ("10.0.0.1", 5))),
        ("tcp://192.0.2.7:443", ("tcp", ("192.0.2.7", 443))),
        ("tcp://[2001:db8::1]:443", ("tcp", ("2001:db8::1", 443))),
        ("[::1]:9", ("udp", ("::1", 9))),
        ("http://1.2.3.4:80", None),
        ("tcp://example.com:443", None),
        ("tcp://1.2.3.4", None),
        ("tcp://1.2.3.4:0", None),
        ("tcp://1.2.3.4:65536", None),
        ("tcp://", None),
        ("", None),
        ("::1:9", None),  # IPv6 without brackets
        ("[10.0.0.1]:9", None),  # IPv4 in brackets
    ],
)
def test_endpoints_parse_and_format(
    text: str, endpoint: tuple[str, tuple[str, int]] | None
) -> None:
    assert endpoint_or_none(text) == endpoint
    if endpoint is None:
        with pytest.raises(EndpointError, match=re.escape(repr(text))):
            parse_endpoint(text)
        return
    assert parse_endpoint(text) == endpoint
    assert parse_endpoint(format_endpoint(endpoint)) == endpoint
    if "//" in text:
        with pytest.raises(EndpointError):
            parse_address(text)
    else:
        assert parse_address(text) == endpoint[1]


def test_port_zero_only_where_asked() -> None:
    with pytest.raises(EndpointError, match="port number"):
        parse_address("10.0.0.1:0")
    assert parse_address("10.0.0.1:0", any_port=True) == ("10.0.0.1", 0)
    assert parse_endpoint("[::]:0", "tcp", any_port=True) == ("tcp", ("::", 0))


class FakeTransport:
    """Just enough of an asyncio transport to feed an accepted connection by hand."""

    def __init__(self) -> None:
        self.closed = False
        self.protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40_000) if name == "peername" else default

    def abort(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


def feed(chunks: list[bytes]) -> tuple[list[bytes], Counter[str], bool]:
    """Feed `chunks` to one accepted connection: what it delivered and counted, and
    whether it closed the connection."""
    delivered: list[bytes] = []
    stats: Counter[str] = Counter()

    async def main() -> bool:
        carrier = TcpCarrier(
            lambda data, addr: delivered.append(data),
            stats,
            max_datagram_bytes=MAX_DATAGRAM_BYTES,
            max_connections=8,
            idle_timeout_s=5.0,
        )
        transport = FakeTransport()
        protocol = carrier.accepted_protocol()
        protocol.connection_made(cast(asyncio.Transport, transport))
        for chunk in chunks:
            protocol.data_received(chunk)
        closed = transport.closed
        carrier.close()
        return closed

    return delivered, stats, asyncio.run(main())


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.binary(max_size=MAX_DATAGRAM_BYTES), max_size=8),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_frames_split_anywhere_arrive_whole(datagrams: list[bytes], cuts: list[int]) -> None:
    stream = MAGIC + b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)
    delivered, stats, closed = feed(split(stream, cuts))
    assert delivered == datagrams
    assert not closed and stats["tcp_accepted"] == 1
    assert not [key for key in stats if key.startswith("tcp_drop_")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=10), st.booleans())
def test_junk_never_escapes_the_carrier(junk: bytes, cuts: list[int], magic: bool) -> None:
    """Whatever arrives, the carrier delivers frames, waits, or closes and counts."""
    delivered, stats, closed = feed(split((MAGIC if magic else b"") + junk, cuts))
    drops = {key for key in stats if key.startswith("tcp_drop_")}
    assert drops <= {"tcp_drop_bad_magic", "tcp_drop_oversized_frame"}
    assert closed == bool(drops)
    assert all(len(datagram) <= MAX_DATAGRAM_BYTES for datagram in delivered)
    if not magic and junk[:1] != MAGIC[:1]:
        assert not delivered and (closed or not junk)
