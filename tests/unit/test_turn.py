"""The sans-I/O STUN/TURN core: flows with exact bytes and timers, limits, refusals."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from typing import Any

import pytest
from aioice import stun as aiostun
from aioice.turn import make_integrity_key

from peerphone.errors import LocalProtocolError
from peerphone.nat import stun
from peerphone.nat.addrfilter import AddressFilter
from peerphone.nat.credentials import (
    MAX_CREDENTIAL_TTL_S,
    NONCE_WINDOW_S,
    REALM,
    issue_credentials,
    long_term_key,
    turn_password,
)
from peerphone.nat.events import (
    TCP,
    UDP,
    Client,
    CloseRelay,
    OpenRelay,
    ToClient,
    ToPeer,
)
from peerphone.nat.limits import OldestFirst, TurnLimits
from peerphone.nat.turn import (
    CHALLENGE_BYTES,
    MAX_UNAUTHENTICATED_EXCESS_BYTES,
    TurnServer,
)
from tests.support.turn_client import (
    CLIENT,
    NOW,
    PEER,
    RELAY,
    SECRET,
    TID,
    Class,
    Method,
    TurnClient,
    channel_data,
    make_server,
    one,
)

PEER2 = ("5.6.7.8", 6000)
BINDING_REQUEST = stun.encode(stun.BINDING, stun.REQUEST, TID, {})


# -- Binding --------------------------------------------------------------------------------


def test_binding_response_exact_bytes() -> None:
    server = make_server()
    request = struct.pack("!HHI12s", 0x0001, 0, stun.COOKIE, TID)
    reply = one(server.receive(request, CLIENT, NOW))
    port = 40000 ^ (stun.COOKIE >> 16)
    address = bytes([198, 51, 100, 7])
    xored = bytes(a ^ b for a, b in zip(address, stun.COOKIE_BYTES, strict=True))
    expected = (
        struct.pack("!HHI12s", 0x0101, 12, stun.COOKIE, TID)
        + struct.pack("!HHBBH", 0x0020, 8, 0, 1, port)
        + xored
    )
    assert reply == expected
    assert len(reply) == 32  # 1.6 x the 20-byte request


def test_binding_keeps_fingerprint_and_answers_ipv6() -> None:
    server = make_server()
    request = stun.encode(stun.BINDING, stun.REQUEST, TID, {})  # with FINGERPRINT: 28 bytes
    reply = one(server.receive(request, CLIENT, NOW))
    assert len(reply) == 40 and stun.decode(reply).fingerprint
    v6 = Client(UDP, ("2001:db8::1", 40000))
    bare = struct.pack("!HHI12s", 0x0001, 0, stun.COOKIE, TID)
    reply6 = one(server.receive(bare, v6, NOW))
    assert len(reply6) == 44 == len(bare) + MAX_UNAUTHENTICATED_EXCESS_BYTES
    assert aiostun.parse_message(reply6).attributes["XOR-MAPPED-ADDRESS"] == v6.address


def test_binding_with_unknown_required_attribute_gets_420() -> None:
    server = make_server()
    request = stun._append(
        struct.pack("!HHI12s", 0x0001, 0, stun.COOKIE, TID), 0x0003, b"\x00\x00\x00\x04"
    )  # CHANGE-REQUEST (RFC 5780): not supported
    reply = stun.decode(one(server.receive(request, CLIENT, NOW)))
    assert reply.cls == stun.ERROR and reply.attributes["ERROR-CODE"][0] == 420
    assert reply.size <= len(request) + MAX_UNAUTHENTICATED_EXCESS_BYTES


# -- authentication -------------------------------------------------------------------------


def test_challenge_is_minimal_and_no_bigger_than_uclients_request() -> None:
    server = make_server()
    # coturn's uclient: REQUESTED-TRANSPORT, LIFETIME, FINGERPRINT = 44 bytes
    request = stun.encode(
        stun.ALLOCATE, stun.REQUEST, TID, {"REQUESTED-TRANSPORT": 17 << 24, "LIFETIME": 777}
    )
    assert len(request) == 44
    reply = one(server.receive(request, CLIENT, NOW))
    assert len(reply) == CHALLENGE_BYTES == 44
    message = aiostun.parse_message(reply)
    assert message.message_class == Class.ERROR
    assert message.attributes["ERROR-CODE"] == (401, "")
    assert message.attributes["REALM"] == REALM
    assert len(message.attributes["NONCE"]) == 4
    assert set(message.attributes) == {"ERROR-CODE", "REALM", "NONCE"}
    assert server.stats["challenged"] == 1
    # aioice's first Allocate (REQUESTED-TRANSPORT, LIFETIME) is 36 bytes: 1.22x
    aioice_request = bytes(
        aiostun.Message(
            Method.ALLOCATE, Class.REQUEST, TID, {"LIFETIME": 600, "REQUESTED-TRANSPORT": 17 << 24}
        )
    )
    assert len(aioice_request) == 36
    assert len(one(server.receive(aioice_request, CLIENT, NOW))) == 44
    # the smallest valid Allocate (28 bytes) gets the worst ratio: 44/28 = 1.57x
    smallest = bytes(
        aiostun.Message(Method.ALLOCATE, Class.REQUEST, TID, {"REQUESTED-TRANSPORT": 17 << 24})
    )
    assert len(smallest) == 28 and len(one(server.receive(smallest, CLIENT, NOW))) == 44


def test_too_small_unauthenticated_request_is_dropped() -> None:
    server = make_server()
    bare_refresh = struct.pack("!HHI12s", 0x0004, 0, stun.COOKIE, TID)
    assert server.receive(bare_refresh, CLIENT, NOW) == []
    assert server.stats["drop_small_unauthenticated"] == 1


def test_allocate_flow_exact() -> None:
    server = make_server()
    alice = TurnClient(server)
    _, outputs = alice.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, tid=TID)
    assert outputs == [OpenRelay(1, 4, even_port=False)]
    reply = one(server.relay_opened(1, RELAY, NOW))
    response = aiostun.parse_message(reply)
    assert response.transaction_id == TID
    assert response.message_class == Class.RESPONSE
    assert response.attributes["XOR-RELAYED-ADDRESS"] == RELAY
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT.address
    assert response.attributes["LIFETIME"] == 600
    assert response.check_message_integrity(alice.key)
    assert "FINGERPRINT" in response.attributes
    # a retransmission gets the very same bytes; another transaction gets 437
    assert one(
        alice.send(alice.build(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, TID))
    ) == (reply)
    response, _ = alice.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
    assert response.error_code == 437
    assert server.next_timer() == NOW + 30  # housekeeping comes before the expiry


def test_retransmitted_allocate_while_the_socket_opens_is_not_answered_twice() -> None:
    server = make_server()
    alice = TurnClient(server)
    alice.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, tid=TID)
    again = alice.send(alice.build(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, TID))
    assert again == []


@pytest.mark.parametrize(
    ("requested", "granted"), [(None, 600), (0, 600), (100, 600), (1000, 1000), (7200, 3600)]
)
def test_allocation_lifetime_is_clamped(requested: int | None, granted: int) -> None:
    server = make_server()
    alice = TurnClient(server)
    attrs = {} if requested is None else {"LIFETIME": requested}
    alice.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24, **attrs}, tid=TID)
    response = aiostun.parse_message(one(server.relay_opened(1, RELAY, NOW)))
    assert response.attributes["LIFETIME"] == granted


@pytest.mark.parametrize(
    ("change", "code", "counter"),
    [
        ("password", 401, "auth_bad_integrity"),
        ("realm", 401, "auth_wrong_realm"),
        ("expired", 401, "auth_bad_or_expired_username"),
        ("far_future", 401, "auth_bad_or_expired_username"),
        ("no_expiry", 401, "auth_bad_or_expired_username"),
        ("nonce", 438, "auth_stale_nonce"),
    ],
)
def test_bad_credentials_are_refused(change: str, code: int, counter: str) -> None:
    server = make_server()
    alice = TurnClient(server)
    first = alice.build(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
    challenge = aiostun.parse_message(one(alice.send(first)))
    nonce = challenge.attributes["NONCE"]
    username, password, realm, now = alice.creds.username, alice.creds.password, REALM, NOW
    if change == "password":
        password = "wrong"
    elif change == "realm":
        realm = "other"
    elif change == "expired":
        now = alice.creds.expires_at + 1.0
        nonce = server.nonces.mint(CLIENT.address[0], now)
    elif change == "far_future":
        username = f"{int(NOW + MAX_CREDENTIAL_TTL_S + 10)}:alice"
        password = turn_password(SECRET, username)
    elif change == "no_expiry":
        username = "alice"
        password = turn_password(SECRET, username)
    elif change == "nonce":
        now = NOW + 2 * NONCE_WINDOW_S
    message = aiostun.Message(
        Method.ALLOCATE, Class.REQUEST, TID, {"REQUESTED-TRANSPORT": 17 << 24}
    )
    message.attributes.update(USERNAME=username, REALM=realm, NONCE=nonce)
    message.add_message_integrity(make_integrity_key(username, realm, password))
    reply = aiostun.parse_message(one(server.receive(bytes(message), CLIENT, now)))
    assert reply.error_code == code
    assert "MESSAGE-INTEGRITY" not in reply.attributes  # we do not know the client's key
    assert len(bytes(reply)) == CHALLENGE_BYTES
    assert server.stats[counter] == 1


def test_nonce_is_valid_for_its_window_and_the_next() -> None:
    server = make_server()
    alice = TurnClient(server, ttl=3600)
    alice.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, tid=TID)
    server.relay_opened(1, RELAY, NOW)
    # NOW is 1_700_000_000: its window started 200 s earlier and ends 400 s later
    start = NOW - NOW % NONCE_WINDOW_S
    late = start + 2 * NONCE_WINDOW_S - 0.001
    assert alice.request(Method.REFRESH, {}, now=late)[0].message_class == Class.RESPONSE
    stale = aiostun.parse_message(one(alice.send(alice.build(Method.REFRESH, {}), start + 1200)))
    assert stale.error_code == 438
    assert stale.attributes["NONCE"] != alice.nonce


def test_another_username_on_the_same_five_tuple_gets_441() -> None:
    server = make_server()
    TurnClient(server, who="alice").allocate()
    bob = TurnClient(server, who="bob")
    response, _ = bob.request(Method.REFRESH, {})
    assert response.error_code == 441


def test_message_integrity_sha256_is_checked_and_answered_in_kind() -> None:
    server = make_server()
    alice = TurnClient(server)
    alice.allocate()
    assert alice.nonce is not None
    data = bytes(aiostun.Message(Method.REFRESH, Class.REQUEST, TID, {"LIFETIME": 900}))
    data = stun._append(data, stun.USERNAME, alice.creds.username.encode())
    data = stun._append(data, 0x0014, REALM.encode())
    data = stun._append(data, 0x0015, alice.nonce)
    covered = aiostun.set_body_length(data, len(data) - 20 + 36)
    mac = hmac.new(alice.key, covered, hashlib.sha256).digest()
    signed = stun._append(data, stun.MESSAGE_INTEGRITY_SHA256, mac)
    reply = stun.decode(one(server.receive(signed, CLIENT, NOW)))
    assert reply.cls == stun.RESPONSE and reply.attributes["LIFETIME"] == 900
    assert reply.integrity == "sha256" and reply.check_integrity(alice.key)
    broken = signed[:-1] + bytes([signed[-1] ^ 1])
    assert aiostun.parse_message(one(server.receive(broken, CLIENT, NOW))).error_code == 401


# -- Allocate refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "code"),
    [
        ({}, 400),  # no REQUESTED-TRANSPORT
        ({"REQUESTED-TRANSPORT": 6 << 24}, 442),  # TCP relays (RFC 6062) are not offered
    ],
)
def test_allocate_refusals(attributes: dict[str, Any], code: int) -> None:
    alice = TurnClient(make_server())
    response, _ = alice.request(Method.ALLOCATE, attributes)
    assert response.error_code == code


def test_allocate_with_unsupported_attributes() -> None:
    server = make_server()
    alice = TurnClient(server)
    alice.fetch_nonce()
    base = alice.build(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, TID)
    unsigned = base[: base.index(struct.pack("!H", stun.USERNAME) + b"\x00")]
    unsigned = aiostun.set_body_length(unsigned, len(unsigned) - 20)

    def with_attribute(attr_type: int, value: bytes) -> aiostun.Message:
        data = alice._sign(stun._append(unsigned, attr_type, value))
        return aiostun.parse_message(one(server.receive(data, CLIENT, NOW)))

    dont_fragment = with_attribute(0x001A, b"")
    assert dont_fragment.error_code == 420
    assert dont_fragment.check_message_integrity(alice.key)
    raw = one(server.receive(alice._sign(stun._append(unsigned, 0x001A, b"")), CLIENT, NOW))
    assert raw[-8 - 24 - 8 : -8 - 24] == b"\x00\x0a\x00\x02\x00\x1a\x00\x00"  # UNKNOWN-ATTRIBUTES
    assert with_attribute(0x0017, b"\x02\x00\x00\x00").error_code == 440  # IPv6 relay
    assert with_attribute(0x0018, b"\x80").error_code == 508  # EVEN-PORT R: reserve
    data = alice._sign(stun._append(unsigned, 0x0018, b"\x00"))  # EVEN-PORT, no reservation
    assert server.receive(data, CLIENT, NOW) == [OpenRelay(1, 4, even_port=True)]


def test_allocation_quotas() -> None:
    server = make_server(limits=TurnLimits(max_allocations_per_user=2, max_allocations=3))
    for port in (1, 2):
        TurnClient(server, Client(UDP, ("198.51.100.7", port)), who="alice").allocate()
    third = TurnClient(server, Client(UDP, ("198.51.100.7", 3)), who="alice")
    assert third.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})[0].error_code == 486
    TurnClient(server, Client(UDP, ("198.51.100.8", 1)), who="bob").allocate()
    carol = TurnClient(server, Client(UDP, ("198.51.100.9", 1)), who="carol")
    assert carol.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})[0].error_code == 508
    assert server.stats["refused_allocation_quota"] == server.stats["refused_allocations_full"] == 1


def test_relay_failed_answers_508_and_forgets() -> None:
    server = make_server()
    alice = TurnClient(server)
    alice.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, tid=TID)
    response = aiostun.parse_message(one(server.relay_failed(1, NOW)))
    assert response.error_code == 508 and response.transaction_id == TID
    assert server.allocation(1) is None
    assert server.relay_opened(1, RELAY, NOW) == [CloseRelay(1)]


# -- Refresh and expiry ---------------------------------------------------------------------


def test_refresh_extends_and_lifetime_zero_deletes() -> None:
    server = make_server()
    alice = TurnClient(server)
    allocation = alice.allocate()
    response, _ = alice.request(Method.REFRESH, {"LIFETIME": 1200}, now=NOW + 100)
    assert response.attributes["LIFETIME"] == 1200
    alloc = server.allocation(allocation)
    assert alloc is not None and alloc.expires == NOW + 1300
    response, outputs = alice.request(Method.REFRESH, {"LIFETIME": 0}, now=NOW + 200)
    assert response.attributes["LIFETIME"] == 0
    assert outputs[1:] == [CloseRelay(allocation)]
    assert server.allocation(allocation) is None
    response, _ = alice.request(Method.REFRESH, {}, now=NOW + 201)
    assert response.error_code == 437


def test_allocation_expires_exactly_on_time_and_refresh_moves_it() -> None:
    server = make_server()
    alice = TurnClient(server, ttl=3600)
    allocation = alice.allocate()
    assert server.handle_timer(NOW + 30) == []  # housekeeping only
    assert server.next_timer() == NOW + 60
    alice.request(Method.REFRESH, {}, now=NOW + 300)  # -> NOW + 900
    for t in (NOW + 60, NOW + 90, NOW + 120):
        server.handle_timer(t)
    while server.next_timer() < NOW + 599:
        server.handle_timer(server.next_timer())
    assert server.handle_timer(NOW + 600) == []  # the old expiry: refreshed since
    assert server.allocation(allocation) is not None
    while server.next_timer() < NOW + 900:
        assert server.handle_timer(server.next_timer()) == []
    assert server.next_timer() == NOW + 900
    assert server.handle_timer(NOW + 899.999) == []
    assert server.handle_timer(NOW + 900) == [CloseRelay(allocation)]
    assert server.allocation(allocation) is None
    assert server.stats["allocations_expired"] == 1
    # its client may allocate again
    alice.allocate(now=NOW + 901)


def test_tcp_connection_closing_deletes_its_allocation() -> None:
    server = make_server()
    client = Client(TCP, ("198.51.100.7", 40000), connection=3)
    allocation = TurnClient(server, client).allocate()
    assert server.client_gone(client, NOW + 1) == [CloseRelay(allocation)]
    assert server.client_gone(client, NOW + 1) == []


# -- permissions and peers ------------------------------------------------------------------


def test_create_permission_installs_every_peer_and_expires_after_300_s() -> None:
    server = make_server()
    alice = TurnClient(server)
    allocation = alice.allocate()
    assert alice.permit(PEER, PEER2).message_class == Class.RESPONSE
    alloc = server.allocation(allocation)
    assert alloc is not None
    assert alloc.permissions == {PEER[0]: NOW + 300, PEER2[0]: NOW + 300}
    assert server.receive_from_peer(allocation, b"hi", PEER, NOW + 299.9) != []
    assert server.receive_from_peer(allocation, b"hi", PEER, NOW + 300) == []
    assert server.stats["drop_peer_no_permission"] == 1
    assert server.receive_from_peer(allocation, b"hi", ("9.9.9.9", 1), NOW) == []
    assert server.stats["drop_peer_no_permission"] == 2


SPECIAL_PEERS = [
    ("127.0.0.1", 80),
    ("0.0.0.0", 80),
    ("10.0.0.1", 80),
    ("192.168.1.1", 80),
    ("169.254.169.254", 80),
    ("100.64.0.1", 80),
    ("224.0.0.1", 80),
    ("255.255.255.255", 80),
    ("192.0.2.5", 80),
    ("1.2.3.4", 0),  # port 0
]


@pytest.mark.parametrize("peer", SPECIAL_PEERS)
def test_special_peers_are_forbidden(peer: tuple[str, int]) -> None:
    server = make_server()
    alice = TurnClient(server)
    allocation = alice.allocate()
    assert alice.permit(peer).error_code == 403
    assert alice.permit(PEER, peer).error_code == 403  # one bad peer: none installed
    assert alice.bind(0x4000, peer).error_code == 403
    alloc = server.allocation(allocation)
    assert alloc is not None and alloc.permissions == {} and alloc.channels == {}
    # Send to it: no permission, so nothing leaves
    send = aiostun.Message(
        Method.SEND, Class.INDICATION, TID, {"XOR-PEER-ADDRESS": peer, "DATA": b"x"}
    )
    assert alice.send(bytes(send)) == []


@pytest.mark.parametrize(
    "peer", [("::ffff:127.0.0.1", 80), ("::1", 80), ("64:ff9b::a00:1", 80), ("2002:7f00:1::", 80)]
)
def test_ipv6_peers_on_an_ipv4_relay_are_a_family_mismatch(peer: tuple[str, int]) -> None:
    alice = TurnClient(make_server())
    alice.allocate()
    assert alice.permit(peer).error_code == 443


def test_allow_list_opens_a_private_range_but_never_loopback() -> None:
    server = make_server(address_filter=AddressFilter(["10.99.0.0/24", "127.0.0.0/8"]))
    alice = TurnClient(server)
    alice.allocate()
    assert alice.permit(("10.99.0.5", 3478)).message_class == Class.RESPONSE
    assert alice.permit(("127.0.0.1", 3478)).error_code == 403
    assert alice.permit(("10.99.1.5", 3478)).error_code == 403


def test_own_listener_is_not_a_peer() -> None:
    server = make_server(address_filter=AddressFilter(["10.99.0.0/24"]))
    server.own.add_socket(("10.99.0.1", 3478))
    alice = TurnClient(server)
    alice.allocate()
    assert alice.permit(("10.99.0.1", 3478)).error_code == 403
    assert alice.permit(("10.99.0.1", 3479)).error_code == 403  # our host: any port
    assert alice.permit(("10.99.0.2", 3478)).message_class == Class.RESPONSE


def test_permission_table_is_bounded() -> None:
    server = make_server(limits=TurnLimits(max_permissions_per_allocation=2))
    alice = TurnClient(server)
    alice.allocate()
    assert alice.permit(PEER, PEER2).message_class == Class.RESPONSE
    assert alice.permit(("9.9.9.9", 1)).error_code == 508
    assert alice.permit(PEER).message_class == Class.RESPONSE  # a refresh is fine


# -- channels and data ----------------------------------------------------------------------


def test_channel_data_both_ways_exact_bytes() -> None:
    server = make_server()
    alice = TurnClient(server)
    allocation = alice.allocate()
    assert alice.bind(0x4001, PEER).message_class == Class.RESPONSE
    # client -> peer: the payload, from the relayed socket
    assert alice.send(channel_data(0x4001, b"hello")) == [ToPeer(allocation, PEER, b"hello")]
    # UDP ChannelData may carry padding after the payload
    assert alice.send(channel_data(0x4001, b"hello") + b"\0\0\0") == [
        ToPeer(allocation, PEER, b"hello")
    ]
    # peer -> client: ChannelData, unpadded on UDP
    assert server.receive_from_peer(allocation, b"world", PEER, NOW) == [
        ToClient(CLIENT, b"\x40\x01\x00\x05world")
    ]
    # from another port of the same peer IP: a Data indication (permission is per IP)
    other = (PEER[0], 5001)
    indication = aiostun.parse_message(one(server.receive_from_peer(allocation, b"x", other, NOW)))
    assert indication.message_method == Method.DATA
    assert indication.message_class == Class.INDICATION
    assert indication.attributes == {"XOR-PEER-ADDRESS": other, "DATA": b"x"}
    alloc = server.allocation(allocation)
    assert alloc is not None
    assert (alloc.bytes_to_peers, alloc.bytes_from_peers) == (10, 6)
    assert (alloc.packets_to_peers, alloc.packets_from_peers) == (2, 2)


def test_channel_data_is_padded_on_tcp() -> None:
    server = make_server()
    client = Client(TCP, ("198.51.100.7", 40000), connection=1)
    alice = TurnClient(server, client)
    allocation = alice.allocate()
    alice.bind(0x4000, PEER)
    assert server.receive_from_peer(allocation, b"world", PEER, NOW) == [
        ToClient(client, b"\x40\x00\x00\x05world\0\0\0")
    ]
    assert server.receive_from_peer(allocation, b"four", PEER, NOW) == [
        ToClient(client, b"\x40\x00\x00\x04four")
    ]


def test_send_indication_reaches_permitted_peers_only() -> None:
    server = make_server()
    alice = TurnClient(server)
    allocation = alice.allocate()
    alice.permit(PEER)
    send = aiostun.Message(
        Method.SEND, Class.INDICATION, TID, {"XOR-PEER-ADDRESS": PEER, "DATA": b"voice"}
    )
    assert alice.send(bytes(send)) == [ToPeer(allocation, PEER, b"voice")]
    send.attributes["XOR-PEER-ADDRESS"] = PEER2
    assert alice.send(bytes(send)) == []
    assert server.stats["drop_no_permission"] == 1


@pytest.mark.parametrize("number", [0x3FFF, 0x7FFF, 0x8000, 0xFFFF])
def test_channel_numbers_out_of_range(number: int) -> None:
    alice = TurnClient(make_server())
    alice.allocate()
    assert alice.bind(number, PEER).error_code == 400


def test_channel_rebinding_rules_and_quarantine() -> None:
    server = make_server()
    alice = TurnClient(server, ttl=3600)
    allocation = alice.allocate()
    assert alice.bind(0x4000, PEER).message_class == Class.RESPONSE
    assert alice.bind(0x4000, PEER2).error_code == 400  # number taken by another peer
    assert alice.bind(0x4001, PEER).error_code == 400  # peer bound to another number
    assert alice.bind(0x4000, PEER, now=NOW + 500).message_class == Class.RESPONSE  # refresh
    # it expires at NOW + 1100 (keep the allocation alive meanwhile)
    alice.request(Method.REFRESH, {"LIFETIME": 3600}, now=NOW + 550)
    alice.permit(PEER, now=NOW + 1000)  # permissions expire on their own (300 s)
    assert alice.send(channel_data(0x4000, b"x"), NOW + 1099) != []
    assert alice.send(channel_data(0x4000, b"x"), NOW + 1100) == []
    assert server.stats["drop_channel_unbound"] == 1
    # reserved for 5 more minutes, then free for another peer
    assert alice.bind(0x4000, PEER2, now=NOW + 1399).error_code == 400
    assert alice.bind(0x4000, PEER2, now=NOW + 1400.5).message_class == Class.RESPONSE
    assert alice.send(channel_data(0x4000, b"y"), NOW + 1401) == [ToPeer(allocation, PEER2, b"y")]


def test_channel_table_is_bounded() -> None:
    alice = TurnClient(make_server(limits=TurnLimits(max_channels_per_allocation=1)))
    alice.allocate()
    assert alice.bind(0x4000, PEER).message_class == Class.RESPONSE
    assert alice.bind(0x4001, PEER2).error_code == 508


def test_data_without_allocation_or_channel_is_dropped_and_counted() -> None:
    server = make_server()
    alice = TurnClient(server)
    assert alice.send(channel_data(0x4000, b"x")) == []
    assert server.receive_from_peer(99, b"x", PEER, NOW) == []
    alice.allocate()
    assert alice.send(channel_data(0x4000, b"x")) == []
    assert alice.send(b"\x40\x00\x00\x09short") == []
    assert dict((k, v) for k, v in server.stats.items() if k.startswith("drop_")) == {
        "drop_channel_no_allocation": 1,
        "drop_peer_no_allocation": 1,
        "drop_channel_unbound": 1,
        "drop_malformed": 1,
    }


def test_oversized_payloads_are_dropped() -> None:
    server = make_server(limits=TurnLimits(max_payload_bytes=100))
    alice = TurnClient(server)
    allocation = alice.allocate()
    alice.bind(0x4000, PEER)
    assert alice.send(channel_data(0x4000, b"x" * 101)) == []
    assert server.receive_from_peer(allocation, b"x" * 101, PEER, NOW) == []
    assert server.stats["drop_oversized"] == 2


# -- quotas, the owner's cap, the snapshot --------------------------------------------------


def test_byte_quota_per_allocation() -> None:
    server = make_server(limits=TurnLimits(max_allocation_bytes=1000))
    alice = TurnClient(server)
    allocation = alice.allocate()
    alice.bind(0x4000, PEER)
    for _ in range(3):
        assert alice.send(channel_data(0x4000, b"x" * 200)) != []
    for _ in range(2):
        assert server.receive_from_peer(allocation, b"y" * 200, PEER, NOW) != []
    assert alice.send(channel_data(0x4000, b"x")) == []  # 1001 > 1000
    assert server.receive_from_peer(allocation, b"y", PEER, NOW) == []
    assert server.stats["drop_allocation_quota"] == 2
    snapshot = server.snapshot(NOW).allocations[0]
    assert (snapshot.bytes_to_peers, snapshot.bytes_from_peers, snapshot.packets_dropped) == (
        600,
        400,
        2,
    )


def test_bandwidth_cap_is_one_bucket_for_all_allocations() -> None:
    # burst: max(0.2 s, 1500 B) = 1500; each 200-byte payload leaves as a 228-byte packet
    server = make_server(bandwidth_bytes_per_s=2000.0)
    alice = TurnClient(server)
    bob = TurnClient(server, Client(UDP, ("198.51.100.8", 1)), who="bob")
    for who in (alice, bob):
        who.allocate()
        who.bind(0x4000, PEER)
    later = NOW + 10  # the answers above are paid for, the bucket is full again
    sent = [alice.send(channel_data(0x4000, b"a" * 200), later) != [] for _ in range(4)]
    sent += [bob.send(channel_data(0x4000, b"b" * 200), later) != [] for _ in range(4)]
    assert sent == [True] * 6 + [False] * 2  # 6 x 228 = 1368 of the 1500 burst
    assert server.stats["drop_bandwidth_cap"] == 2
    assert bob.send(channel_data(0x4000, b"b" * 200), later + 0.0625) != []  # 132 + 125 B
    assert bob.send(channel_data(0x4000, b"b" * 200), later + 0.0625) == []  # 29 B left
    assert alice.send(channel_data(0x4000, b"a" * 200), later + 0.25) != []  # +375 B


def test_answers_count_against_the_cap_and_relayed_packets_wait_them_out() -> None:
    server = make_server(bandwidth_bytes_per_s=2000.0)
    alice = TurnClient(server)
    alice.allocate()
    alice.bind(0x4000, PEER)
    bucket = server.data.bucket
    for _ in range(20):  # Binding answers go out whatever the cap (and run it into debt)
        assert server.receive(BINDING_REQUEST, CLIENT, NOW) != []
    assert bucket.tokens < 0
    assert alice.send(channel_data(0x4000, b"a" * 200), NOW) == []
    debt_paid_s = (228 - bucket.tokens) / 2000
    assert alice.send(channel_data(0x4000, b"a" * 200), NOW + debt_paid_s - 0.01) == []
    assert alice.send(channel_data(0x4000, b"a" * 200), NOW + debt_paid_s + 0.01) != []


def test_refusing_allocations_keeps_the_granted_ones_relaying() -> None:
    server = make_server()
    alice = TurnClient(server)
    alice.allocate()
    alice.bind(0x4000, PEER)
    server.refusing_allocations = True
    bob = TurnClient(server, Client(UDP, ("198.51.100.8", 1)), who="bob")
    response, _ = bob.request(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
    assert response.error_code == 508
    assert server.stats["refused_allocation_shedding"] == 1
    assert alice.send(channel_data(0x4000, b"a" * 200)) != []  # a call in progress goes on


def test_snapshot_is_exact() -> None:
    server = make_server(bandwidth_bytes_per_s=5000.0)
    alice = TurnClient(server)
    allocation = alice.allocate()
    alice.bind(0x4000, PEER)
    alice.permit(PEER2)
    for i in range(10):  # 100 bytes each second for 10 s, each way
        alice.send(channel_data(0x4000, b"x" * 100), NOW + i)
        server.receive_from_peer(allocation, b"y" * 100, PEER, NOW + i + 0.5)
    snapshot = server.snapshot(NOW + 10)
    assert snapshot.cap_bytes_per_s == 5000.0
    assert snapshot.rate_bytes_per_s == 200.0  # the last 5 whole seconds
    assert snapshot.total_bytes_relayed == 2000
    (only,) = snapshot.allocations
    assert only.allocation == allocation
    assert only.username == alice.creds.username
    assert (only.transport, only.client, only.relayed) == (UDP, CLIENT.address, RELAY)
    assert only.expires_in_s == 590.0
    assert only.permissions == (PEER[0], PEER2[0])
    assert only.channels == ((0x4000, PEER),)
    assert (only.bytes_to_peers, only.bytes_from_peers) == (1000, 1000)
    assert (only.packets_to_peers, only.packets_from_peers, only.packets_dropped) == (10, 10, 0)
    assert snapshot.drops["allocations_created"] == 1
    # an hour later nothing is relayed any more
    assert server.snapshot(NOW + 3600).rate_bytes_per_s == 0.0


# -- credentials and configuration ----------------------------------------------------------


def test_issue_credentials() -> None:
    creds = issue_credentials(b"k", "node-1f2e", 600, 1000.0)
    assert creds.username == "1600:node-1f2e"
    assert creds.expires_at == 1600
    assert creds.password == turn_password(b"k", "1600:node-1f2e")
    assert len(creds.password) == 28  # base64 of 20 bytes
    assert long_term_key(b"k", creds.username, REALM, 1600.0) is not None
    assert long_term_key(b"k", creds.username, REALM, 1600.5) is None


@pytest.mark.parametrize(
    ("secret", "who", "ttl"),
    [(b"", "a", 60), (b"k", "", 60), (b"k", "a:b", 60), (b"k", "a", 0), (b"k", "a", 1e9)],
)
def test_issue_credentials_misuse(secret: bytes, who: str, ttl: float) -> None:
    with pytest.raises(LocalProtocolError):
        issue_credentials(secret, who, ttl, NOW)


def test_configuration_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        TurnServer(b"", bandwidth_bytes_per_s=1.0, now=NOW, rng=random.Random(1))
    with pytest.raises(LocalProtocolError):
        make_server(bandwidth_bytes_per_s=0.0)
    with pytest.raises(LocalProtocolError):
        make_server(relay_families=(5,))
    with pytest.raises(LocalProtocolError):
        TurnLimits(default_lifetime_s=4000)
    with pytest.raises(LocalProtocolError):
        TurnLimits(max_allocations=0)


def test_oldest_first_hands_a_congested_second_out_by_age() -> None:
    first = OldestFirst(1000.0)
    for t in (10.0, 10.5, 11.0, 11.5, 12.0, 12.5):  # one call, 600 B/s: fits
        assert first.admits(1, 300, t)
    assert first.admits(1, 300, 13.0) and first.admits(1, 300, 13.5)
    assert all(first.admits(2, 250, 13.0 + i / 4) for i in range(4))  # a newcomer: 1000 B/s
    assert first.allowance is None  # second 12 fitted: nobody held back in second 13
    # second 13 asked for 1600 B/s: the older call keeps its 600 (+25 %), the newcomer 250
    assert first.admits(1, 300, 14.0) and first.admits(1, 300, 14.5)
    assert [first.admits(2, 250, 14.0 + i / 4) for i in range(4)] == [True, False, False, False]
    assert first.allowance == {1: 750.0, 2: 250.0}


def test_a_flood_of_new_allocations_cannot_cut_a_call_in_progress() -> None:
    server = make_server(bandwidth_bytes_per_s=3000.0)
    old = TurnClient(server)
    old.allocate()
    old.bind(0x4000, PEER)
    new = TurnClient(server, Client(UDP, ("198.51.100.8", 1)), who="bob")
    new.allocate()
    new.bind(0x4000, PEER)
    sent = {"old": 0, "new": 0}
    passed = {"old": 0, "new": 0}
    old_lost_at: list[float] = []
    for tick in range(10 * 20):  # 10 s in 50-ms ticks
        now = NOW + 10 + tick / 20
        senders = [("old", old)] if tick % 2 == 0 else []  # 10 packets/s: 2280 B/s
        senders += [("new", new)] * (2 if tick >= 40 else 0)  # from 2 s on: 40 packets/s
        for name, client in senders:
            sent[name] += 1
            went = client.send(channel_data(0x4000, b"x" * 200), now) != []
            passed[name] += went
            if name == "old" and not went:
                old_lost_at.append(now - NOW - 10)
    # the call in progress loses packets only as the flood begins (the demand is seen a
    # second later, and the bucket the newcomer emptied refills), never after
    assert sent["old"] == 100 and all(2 <= at <= 3.0 for at in old_lost_at), old_lost_at
    assert passed["new"] < sent["new"] / 4  # the newcomer: what is left of 3000 B/s
    assert server.stats["drop_bandwidth_newest_first"] > 0
