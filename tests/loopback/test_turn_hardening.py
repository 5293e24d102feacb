"""The relay's hardening (issue 8): the node itself is never a peer, quotas bind to the
user the credential was issued to and to the client's address range, credentials are
re-issued rather than minted per ask, and TURN-over-TCP connections without an
allocation are closed within seconds, a bounded number per source address."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aioice import stun as aiostun
from aioice.turn import create_turn_endpoint

from peerphone.errors import LocalProtocolError
from peerphone.nat import server as server_module
from peerphone.nat.addrfilter import AddressFilter
from peerphone.nat.credentials import (
    CredentialIssuer,
    issue_credentials,
    username_user,
)
from peerphone.nat.events import UDP, Client, ToClient, ToPeer
from peerphone.nat.limits import TurnLimits, address_prefix
from peerphone.nat.own import (
    OWN_HOST,
    OWN_PORT,
    OWN_RELAYED_PORT,
    OwnAddresses,
    local_interface_addresses,
)
from tests.support.turn_client import NOW, SECRET, TID, TurnClient, channel_data, make_server
from tests.support.turn_service import HOST, Sink, start_service
from tests.support.turn_service import SECRET as SERVICE_SECRET

Method = aiostun.Method
Class = aiostun.Class
LAB = "10.99.0.0/24"
SELF = "10.99.0.10"  # the node's own address (allowed range, like the NAT lab's)
PEER = ("10.99.0.20", 5000)


def send_indication(peer: tuple[str, int], data: bytes) -> bytes:
    message = aiostun.Message(
        Method.SEND, Class.INDICATION, TID, {"XOR-PEER-ADDRESS": peer, "DATA": data}
    )
    return bytes(message)


# -- the node itself is never a peer ------------------------------------------------------------


def test_the_nodes_own_ports_addresses_and_relayed_ports_are_refused() -> None:
    server = make_server(address_filter=AddressFilter([LAB]))
    server.own.add_socket((SELF, 3478))  # TURN
    server.own.add_socket((SELF, 4433))  # QUIC
    alice = TurnClient(server)
    a = alice.allocate(relayed=(SELF, 50000))
    for peer, reason in [
        ((SELF, 3478), OWN_PORT),
        ((SELF, 4433), OWN_PORT),
        ((SELF, 50000), OWN_RELAYED_PORT),  # its own relayed port
        ((SELF, 50002), OWN_HOST),  # any other service on our address
        ((SELF, 7), OWN_HOST),
    ]:
        assert alice.permit(peer).error_code == 403, peer
        assert alice.bind(0x4000, peer).error_code == 403, peer
        assert server.stats[f"refused_peer_own_{reason}"] >= 2
    alloc = server.allocation(a)
    assert alloc is not None and alloc.permissions == {} and alloc.channels == {}
    assert alice.permit(PEER).message_class == Class.RESPONSE  # others in the range: fine


def test_between_two_allocations_data_is_handed_over_inside_the_relay() -> None:
    server = make_server(address_filter=AddressFilter([LAB]))
    server.own.add_socket((SELF, 3478))
    alice = TurnClient(server)
    a = alice.allocate(relayed=(SELF, 50000))
    bob_client = Client(UDP, ("198.51.100.8", 1))
    bob = TurnClient(server, bob_client, who="bob")
    bob.allocate(relayed=(SELF, 50002))
    # two clients of this relay, both relayed (two firewalled users): a permission for
    # the other's relayed address is granted ...
    assert alice.permit((SELF, 50002)).message_class == Class.RESPONSE
    assert bob.bind(0x4001, (SELF, 50000)).message_class == Class.RESPONSE
    # ... and the data never leaves through a socket: bob's client gets it directly
    assert alice.send(send_indication((SELF, 50002), b"hi bob")) == [
        ToClient(bob_client, b"\x40\x01\x00\x06hi bob")
    ]
    assert server.stats["relayed_between_allocations"] == 1
    # the permission alice holds is for our IP: it opens nothing else there
    assert alice.send(send_indication((SELF, 3478), b"binding")) == []
    assert alice.send(send_indication((SELF, 7), b"service")) == []
    assert server.stats["drop_to_own_port"] == server.stats["drop_to_own_host"] == 1
    # bob's client only hears alice through the relay if bob permitted her address
    alloc = server.allocation(a)
    assert alloc is not None and alloc.bytes_to_peers == 6
    assert server.receive_from_peer(a, b"inside", (SELF, 50002), NOW) == []
    assert server.stats["drop_from_own_relayed_port"] == 1


def test_an_explicitly_allowed_own_address_opens_other_ports_never_ours() -> None:
    server = make_server(address_filter=AddressFilter([LAB, f"{SELF}/32"]))
    server.own.add_socket((SELF, 3478))
    alice = TurnClient(server)
    a = alice.allocate(relayed=(SELF, 50000))
    assert alice.permit((SELF, 7)).message_class == Class.RESPONSE  # permission: per IP
    assert alice.permit((SELF, 3478)).error_code == 403
    assert alice.permit((SELF, 50000)).error_code == 403
    # so the data path checks every packet: Send to our TURN port goes nowhere
    assert alice.send(send_indication((SELF, 7), b"ok")) == [ToPeer(a, (SELF, 7), b"ok")]
    assert alice.send(send_indication((SELF, 3478), b"binding")) == []
    assert alice.send(send_indication((SELF, 50000), b"loop")) == []
    assert server.stats["drop_to_own_port"] == server.stats["drop_to_own_relayed_port"] == 1
    # and nothing from our own ports reaches the client either
    assert server.receive_from_peer(a, b"from inside", (SELF, 3478), NOW) == []
    assert server.stats["drop_from_own_port"] == 1
    assert server.receive_from_peer(a, b"echo", (SELF, 7), NOW) != []


def test_a_channel_to_a_port_that_becomes_a_relayed_port_no_longer_leaves() -> None:
    server = make_server(address_filter=AddressFilter([LAB, f"{SELF}/32"]))
    alice = TurnClient(server)
    a = alice.allocate(relayed=(SELF, 50000))
    assert alice.bind(0x4000, (SELF, 50002)).message_class == Class.RESPONSE
    assert alice.send(channel_data(0x4000, b"x")) == [ToPeer(a, (SELF, 50002), b"x")]
    TurnClient(server, Client(UDP, ("198.51.100.8", 1)), who="bob").allocate(relayed=(SELF, 50002))
    # now bob's: handed over inside, and bob permitted nobody
    assert alice.send(channel_data(0x4000, b"x")) == []
    assert server.stats["relayed_between_allocations"] == 1
    assert server.stats["drop_peer_no_permission"] == 1


def test_relayed_ports_are_forgotten_with_their_allocation() -> None:
    server = make_server(address_filter=AddressFilter([LAB, f"{SELF}/32"]))
    alice = TurnClient(server)
    alice.allocate(relayed=(SELF, 50000))
    assert server.own.relayed_ports == Counter({50000: 1})
    alice.request(Method.REFRESH, {"LIFETIME": 0})
    assert server.own.relayed_ports == Counter()


def test_a_wildcard_listener_is_ours_on_every_interface_address() -> None:
    server = make_server(address_filter=AddressFilter([LAB]))
    server.own.add_socket(("0.0.0.0", 3478))  # the old set held only this
    server.own.set_interfaces(["127.0.0.1", SELF, "fe80::1%eth0"])
    alice = TurnClient(server)
    alice.allocate()
    assert alice.permit((SELF, 3478)).error_code == 403
    assert server.stats["refused_peer_own_port"] == 1
    server.own.set_interfaces(["127.0.0.1"])  # the address went away: a peer again
    assert alice.permit(("10.99.0.10", 3478)).message_class == Class.RESPONSE


def test_an_ipv6_encoding_of_our_ipv4_address_is_ours() -> None:
    own = OwnAddresses(AddressFilter([LAB]))
    own.add_host(SELF)
    own.add_host("2001:db8::10")
    assert own.refusal(("2002:a63:a::1", 9)) == OWN_HOST  # 6to4 of 10.99.0.10
    assert own.refusal(("::ffff:10.99.0.10", 9)) == OWN_HOST
    assert own.refusal(("2001:db8:0::10", 9)) == OWN_HOST  # another spelling
    assert own.refusal(("2002:a63:b::1", 9)) is None


# -- quotas per user and per address range ------------------------------------------------------


def test_quota_binds_to_the_user_not_the_username() -> None:
    server = make_server()
    # a fresh credential per ask (another expiry, so another username): the same user
    clients = [
        TurnClient(server, Client(UDP, ("198.51.100.7", i)), who="node1", ttl=600 + i)
        for i in range(5)
    ]
    for client in clients[:4]:
        client.allocate()
    last = clients[4].request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})[0]
    assert last.error_code == 486
    assert server.stats["refused_allocation_quota"] == 1
    assert len({c.creds.username for c in clients}) == 5
    TurnClient(server, Client(UDP, ("198.51.100.7", 9)), who="node2").allocate()


def test_one_address_range_gets_a_bounded_share_of_the_table() -> None:
    server = make_server(limits=TurnLimits(max_allocations_per_prefix=3))
    for i in range(3):
        TurnClient(server, Client(UDP, (f"198.51.100.{i}", 1)), who=f"n{i}").allocate()
    late = TurnClient(server, Client(UDP, ("198.51.100.200", 1)), who="n9")
    assert late.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})[0].error_code == 486
    assert server.stats["refused_allocation_prefix_quota"] == 1
    TurnClient(server, Client(UDP, ("198.51.101.1", 1)), who="other").allocate()


@pytest.mark.parametrize(
    ("ip", "prefix"),
    [
        ("198.51.100.7", "198.51.100.0/24"),
        ("::ffff:198.51.100.7", "198.51.100.0/24"),
        ("2001:db8:1:2::5", "2001:db8:1::/48"),
        ("not an ip", "not an ip"),
    ],
)
def test_address_prefix(ip: str, prefix: str) -> None:
    assert address_prefix(ip) == prefix


def test_username_user() -> None:
    assert username_user("1700000600:abcd") == "abcd"
    assert username_user("nocolon") == ""


# -- credentials: re-issued, not minted per ask ------------------------------------------------


def test_credentials_are_reissued_within_the_interval() -> None:
    stats: Counter[str] = Counter()
    issuer = CredentialIssuer(SECRET, 600, min_fresh_interval_s=60, stats=stats)
    first = issuer.issue("node1", NOW)
    assert issuer.issue("node1", NOW + 59.9) == first
    assert issuer.issue("node2", NOW + 1) != first
    fresh = issuer.issue("node1", NOW + 60)
    assert fresh != first and fresh.expires_at == int(NOW + 660)
    assert stats == Counter(credentials_issued=3, credentials_reissued=1)


def test_credential_memory_is_bounded() -> None:
    issuer = CredentialIssuer(SECRET, 600, min_fresh_interval_s=60, max_remembered=2)
    a = issuer.issue("a", NOW)
    issuer.issue("b", NOW + 1)
    issuer.issue("c", NOW + 2)  # all recent: the oldest ("a") is forgotten
    assert issuer.issue("a", NOW + 3) != a
    assert issuer.stats["credentials_forgotten_early"] >= 1
    assert len(issuer._issued) <= 2


def test_credential_issuer_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        CredentialIssuer(SECRET, 60, min_fresh_interval_s=60)
    with pytest.raises(LocalProtocolError):
        CredentialIssuer(SECRET, 600, max_remembered=0)


# -- the adapter: interfaces, TCP timeouts and per-address caps ---------------------------------


def test_interface_addresses_are_read() -> None:
    assert "127.0.0.1" in local_interface_addresses()


def test_tcp_connection_without_an_allocation_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "TCP_ALLOCATE_TIMEOUT_S", 0.3)

    async def run() -> None:
        service = await start_service()
        assert "127.0.0.1" in service.core.own.hosts  # the interfaces, read at start
        await service.listen_udp(HOST, 0)
        server = await service.listen_tcp(HOST, 0)
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*server)
        writer.write(b"\x00")  # one byte, then silence
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 < time.monotonic() - started < 2
        assert service.stats["tcp_closed_without_allocation"] == 1
        writer.close()
        # a client that allocates keeps its connection past the deadline
        creds = issue_credentials(SERVICE_SECRET, "bob", 600, time.time())
        relay, _ = await create_turn_endpoint(
            Sink, server, creds.username, creds.password, transport="tcp"
        )
        await asyncio.sleep(0.6)
        assert len(service.snapshot().allocations) == 1
        assert service.stats["tcp_closed_without_allocation"] == 1
        relay.close()
        service.close()
        await service.wait_closed()

    asyncio.run(run())


def test_tcp_connections_per_source_address_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "MAX_TCP_CONNECTIONS_PER_ADDRESS", 3)

    async def run() -> None:
        service = await start_service()
        server = await service.listen_tcp(HOST, 0)
        streams = [await asyncio.open_connection(*server) for _ in range(5)]
        closed = 0
        for reader, _ in streams:
            try:
                if await asyncio.wait_for(reader.read(), 0.3) == b"":
                    closed += 1
            except TimeoutError:
                pass
            except ConnectionError:
                closed += 1
        assert closed == 2
        assert service.stats["tcp_refused_per_address"] == 2
        other = await asyncio.open_connection(*server, local_addr=("127.0.0.2", 0))
        await asyncio.sleep(0.1)
        assert len(service._connections) == 4
        for _, writer in [*streams, other]:
            writer.close()
        service.close()
        await service.wait_closed()

    asyncio.run(run())
