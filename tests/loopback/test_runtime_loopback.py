"""Nodes on real UDP sockets and QUIC links over loopback (127.0.0.1, ports chosen by the OS).

Three seeded supernodes and two clients: attach, publish and find each other; survive the
loss of a primary supernode; shrug off garbage datagrams and garbage frames. Every test is
bounded by `TEST_BUDGET_S` and stops all of its runtimes, whatever happens.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from aioquic.quic.connection import QuicConnection

from peerphone.endpoints import Address
from peerphone.identity import KeyPair, NodeId
from peerphone.overlay.events import Attached, Published
from peerphone.runtime.links import MAX_DATAGRAM_BYTES, LinkManager
from peerphone.runtime.quic_identity import make_configuration
from peerphone.wire import MAX_MESSAGE_BYTES, Lookup, Message, Ping, Send
from tests.support.loopback_net import (
    LOOKUP_TIMEOUT_S,
    LOOPBACK,
    TEST_BUDGET_S,
    Loopback,
    found,
    next_event,
    run_bounded,
    until,
)

MAX_UDP_PAYLOAD = 65_507  # the largest datagram IPv4 can carry
LIVE_CID_GARBAGE = 20
# idle timeout in the failover test: a crash is noticed this late; links to the primary
# and backup must survive it (keep-alive pings at a third of it)
CRASH_IDLE_TIMEOUT_S = 1.5


def test_two_clients_attach_publish_and_find_each_other() -> None:
    async def scenario(net: Loopback) -> None:
        tier = await net.supernodes(3)
        alice = await net.client("alice", tier)
        bob = await net.client("bob", tier)
        for runtime in (alice, bob):
            published = await next_event(runtime, Published)
            assert published.stored == 3  # every supernode is a replica of a 3-ring
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        missing = await alice.lookup("carol", LOOKUP_TIMEOUT_S)
        assert missing.presence is None and missing.reason == "not found"
        # the bootstrap addresses were dialled and told who listens there
        await until(lambda: len(alice.bootstrap_ids) == 3)
        assert {alice.bootstrap_ids[sn.core.id] for sn in tier} == {sn.address for sn in tier}
        # what the daemon sees of the links: the link to each supernode, and the counts
        for sn in tier:
            info = alice.link_to(sn.core.id)
            assert info is not None and info.peer == sn.core.id
            assert (info.address, info.transport) == (sn.address, "udp")
        assert alice.link_to(bob.core.id) is None  # clients talk through their supernodes
        stats = alice.link_stats()
        assert stats.up == len(alice.links.links) >= 3 and stats.over_tcp == 0
        assert stats.open >= stats.up
        for runtime in net.runtimes:
            assert runtime.stats["internal_errors"] == 0
            assert runtime.stats["auth_failed"] == 0
            assert runtime.stats["drop_undecodable"] == 0

    run_bounded(scenario, Loopback(seed=1))


def test_client_bootstraps_from_addresses_alone() -> None:
    async def scenario(net: Loopback) -> None:
        tier = await net.supernodes(3)
        alice = await net.client("alice", tier, with_records=False)
        bob = await net.client("bob", tier)
        published = await next_event(alice, Published)
        assert published.stored == 3
        assert alice.core.client.primary in {sn.core.id for sn in tier}
        assert len(alice.core.client.host_cache) == 3  # records came with the accept
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)

    run_bounded(scenario, Loopback(seed=2))


@pytest.mark.parametrize("notify", [True, False], ids=["stopped", "crashed"])
def test_client_fails_over_to_its_backup_when_its_primary_stops(notify: bool) -> None:
    """Stopped: the primary closes its links, the client hears it at once. Crashed: its
    socket just closes; the client's link to it ends by idle timeout (kept short here)."""

    async def scenario(net: Loopback) -> None:
        tier = await net.supernodes(3)
        alice = await net.client("alice", tier)
        bob = await net.client("bob", tier)
        both = await next_event(alice, Attached, lambda e: e.backup is not None)
        await next_event(alice, Published)
        await next_event(bob, Published)
        primary = next(sn for sn in tier if sn.core.id == both.primary)
        await primary.stop(notify)
        moved = await next_event(alice, Attached, lambda e: e.primary != both.primary)
        assert moved.primary == both.backup
        await next_event(alice, Published)  # stored on the two replicas still alive
        body = found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        assert body.supernodes[0] == moved.primary  # the presence published after failover
        assert primary.core.id not in alice.links.links

    net = Loopback(seed=2, idle_timeout_s=CRASH_IDLE_TIMEOUT_S)
    run_bounded(scenario, net, TEST_BUDGET_S * (1 if notify else 1.5))


class Endpoint:
    """A bare `LinkManager` on loopback that records what it receives."""

    def __init__(self, keys: KeyPair, book: dict[NodeId, Address]) -> None:
        self.id = keys.node_id
        self.inbox: list[Ping] = []
        self.lost: list[NodeId] = []
        self.links = LinkManager(keys, self._receive, self.lost.append, Counter(), book.get)
        self.book = book

    def _receive(self, peer: NodeId, msg: Message) -> None:
        assert isinstance(msg, Ping)
        self.inbox.append(msg)

    async def start(self) -> Endpoint:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self.links, local_addr=(LOOPBACK, 0)
        )
        host, port = transport.get_extra_info("sockname")[:2]
        self.book[self.id] = (host, port)
        return self

    def ping(self, peer: Endpoint, seqs: range) -> None:
        self.links.send_many([(peer.id, Ping(seq, 0, [])) for seq in seqs])


def test_links_dialled_by_both_ends_at_once_and_after_a_restart_lose_nothing() -> None:
    async def scenario(net: Loopback) -> None:
        book: dict[NodeId, Address] = {}
        a_keys, b_keys = KeyPair.from_rng(net.rng), KeyPair.from_rng(net.rng)
        a = await Endpoint(a_keys, book).start()
        b = await Endpoint(b_keys, book).start()
        restarted: Endpoint | None = None
        try:
            a.ping(b, range(50))  # both dial at once: two connections
            b.ping(a, range(50))
            await until(lambda: len(a.inbox) == len(b.inbox) == 50)
            assert [m.seq for m in b.inbox] == list(range(50))  # in order, none lost
            assert a.links.stats["retry_sent"] == b.links.stats["retry_sent"] == 1  # 2 links
            # both ends send on the link opened by the smaller NodeId
            assert a.links.links[b.id].outbound == (a.id < b.id)
            assert b.links.links[a.id].outbound == (b.id < a.id)
            # b crashes and comes back on another port: a's old link to it is stale, the
            # new one (b dialled again) wins at once
            b.links.close(notify=False)
            restarted = await Endpoint(b_keys, book).start()
            restarted.ping(a, range(100, 101))
            await until(lambda: len(a.inbox) == 51)
            a.ping(restarted, range(200, 201))
            await until(lambda: len(restarted.inbox) == 1)
            assert a.lost == [] and a.links.stats["internal_errors"] == 0
        finally:
            for endpoint in (a, b, restarted):
                if endpoint is not None:
                    endpoint.links.close()

    run_bounded(scenario, Loopback(seed=4))


def dropped(stats: Counter[str]) -> int:
    """Datagrams the links refused (counted), including those answered by a Retry."""
    return stats["retry_sent"] + sum(n for key, n in stats.items() if key.startswith("drop_"))


def initial_packet(server: tuple[str, int], token: bytes = b"") -> bytes:
    """A genuine first client Initial towards `server` (1200 bytes), with this token."""
    configuration = make_configuration(KeyPair.generate(), True)
    configuration.token = token
    connection = QuicConnection(configuration=configuration)
    connection.connect(server, now=0.0)
    return connection.datagrams_to_send(now=0.0)[0][0]


def test_garbage_datagrams_and_frames_are_dropped_and_counted() -> None:
    async def scenario(net: Loopback) -> None:
        tier = await net.supernodes(3)
        target = tier[0]
        assert target.address is not None
        alice = await net.client("alice", tier[:1])  # only target known: it is her primary
        bob = await net.client("bob", tier)
        await next_event(alice, Published)
        await next_event(bob, Published)
        assert alice.core.client.primary == target.core.id
        links_before = set(target.links.links)
        rng = random.Random(3)
        initial = initial_packet(target.address)
        alice_link = target.links.links[alice.core.id]
        live_cid = next(iter(alice_link.cids))

        garbage = [rng.randbytes(rng.randint(0, 1400)) for _ in range(200)]
        garbage += [initial[: rng.randint(1, len(initial) - 1)] for _ in range(50)]  # truncated
        garbage += [  # 1-RTT packets to a live connection: aioquic drops them, uncounted
            bytes([0x40]) + live_cid + rng.randbytes(100) for _ in range(LIVE_CID_GARBAGE)
        ]
        garbage += [initial]  # valid Initial without a token: a Retry, but no state
        garbage += [initial_packet(target.address, token=rng.randbytes(40))]  # forged token
        oversized = [bytes(MAX_UDP_PAYLOAD), rng.randbytes(MAX_UDP_PAYLOAD)]
        stats = target.stats
        base = dropped(stats)  # the handshakes of the clients and the tier got Retries
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=target.address
        )
        try:
            for datagram in garbage:
                transport.sendto(datagram)
                await asyncio.sleep(0)  # let the target read: a full socket buffer drops
            for datagram in oversized:  # one at a time: each fills a third of the buffer
                transport.sendto(datagram)
                await until(lambda: dropped(stats) - base == len(garbage) - LIVE_CID_GARBAGE + 1)
                garbage.append(datagram)
        finally:
            transport.close()
        # above the 64 KiB an IPv4 socket can carry: fed to the protocol directly
        target.links.datagram_received(bytes(70_000), ("127.0.0.1", 9))

        assert dropped(stats) - base == len(garbage) - LIVE_CID_GARBAGE + 1  # every one
        assert stats["drop_oversized"] == 3
        assert stats["retry_sent"] >= 1 and stats["drop_bad_token"] == 1
        assert stats["drop_short_initial"] >= 1
        assert stats["drop_bad_header"] + stats["drop_unknown_cid"] >= 150
        assert stats["internal_errors"] == 0
        assert set(target.links.links) == links_before  # garbage opened no link
        assert MAX_DATAGRAM_BYTES < MAX_UDP_PAYLOAD

        # garbage frames from an authenticated peer: counted, and the link stays up
        link = alice.links.links[target.core.id]
        assert link.tx_stream is not None
        junk = [rng.randbytes(rng.randint(1, 300)) for _ in range(30)]
        for payload in junk:
            link.connection.send_stream_data(link.tx_stream, len(payload).to_bytes(4, "big"))
            link.connection.send_stream_data(link.tx_stream, payload)
        huge = MAX_MESSAGE_BYTES + 1
        link.connection.send_stream_data(link.tx_stream, huge.to_bytes(4, "big") + bytes(huge))
        alice.links.flush(link)
        await until(lambda: stats["drop_oversized_frame"] == 1)
        assert stats["drop_undecodable"] >= 25  # a few random payloads may decode
        assert target.links.links[alice.core.id] is alice_link

        # the target still serves lookups, for its own client and for others
        found(await alice.lookup("bob", LOOKUP_TIMEOUT_S), bob)
        found(await bob.lookup("alice", LOOKUP_TIMEOUT_S), alice)
        assert stats["internal_errors"] == 0

    run_bounded(scenario, Loopback(seed=3))


def test_a_handler_that_crashes_on_one_peer_does_not_take_the_node_down() -> None:
    async def scenario(net: Loopback) -> None:
        tier = await net.supernodes(1)
        alice = await net.client("alice", tier)
        mallory = await net.client("mallory", tier)
        await next_event(alice, Published)
        await next_event(mallory, Published)
        sn = tier[0]
        receive = sn.core.receive

        def fragile(msg: Message, src: NodeId, now: float) -> list[Send]:
            if src == mallory.core.id and isinstance(msg, Lookup):
                raise RuntimeError("a bug triggered by one peer's message")
            return receive(msg, src, now)

        sn.core.receive = fragile  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):  # the supernode never answers that peer's lookup
            await mallory.lookup("alice", 1.0)
        assert sn.stats["internal_errors"] >= 1
        found(await alice.lookup("mallory", LOOKUP_TIMEOUT_S), mallory)  # still serving

    run_bounded(scenario, Loopback(seed=5))
