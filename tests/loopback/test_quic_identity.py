"""QUIC links authenticated by Ed25519 identity keys.

Most tests pair two aioquic connections sans-I/O (datagrams handed across in memory, a
virtual clock); one test runs a real client and server over loopback UDP.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import AlertDescription
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from peerphone.errors import LocalProtocolError
from peerphone.identity import KeyPair, NodeId
from peerphone.runtime.quic_identity import (
    CERTIFICATE_LIFETIME,
    DEFAULT_ALPN,
    ERROR_BAD_CERTIFICATE,
    ERROR_CERTIFICATE_REQUIRED,
    authenticate,
    make_configuration,
    peer_node_id,
    request_client_certificate,
    self_signed_certificate,
)

CLIENT_ADDR = ("192.0.2.1", 50001)  # never used on a socket: sans-I/O addresses only
SERVER_ADDR = ("192.0.2.2", 4433)
ALICE = KeyPair.from_seed(bytes([1]) * 32)
BOB = KeyPair.from_seed(bytes([2]) * 32)


class Pair:
    """A client and a server QuicConnection joined in memory, on a virtual clock."""

    def __init__(
        self,
        client_config: QuicConfiguration,
        server_config: QuicConfiguration,
        *,
        request_certificate: bool = True,
    ) -> None:
        self.now = 1000.0
        self.server_config = server_config
        self.request_certificate = request_certificate
        self.client = QuicConnection(configuration=client_config)
        self._server: QuicConnection | None = None
        self.client_events: list[events.QuicEvent] = []
        self.server_events: list[events.QuicEvent] = []
        self.client.connect(SERVER_ADDR, now=self.now)

    @property
    def server(self) -> QuicConnection:
        assert self._server is not None, "the server has not received anything yet"
        return self._server

    def _accept(self, first_datagram: bytes) -> QuicConnection:
        # what aioquic's QuicServer does with the first Initial packet of a connection; the
        # destination connection id of a long header is at bytes 6.. (RFC 8999 invariants)
        destination_cid = first_datagram[6 : 6 + first_datagram[5]]
        server = QuicConnection(
            configuration=self.server_config,
            original_destination_connection_id=destination_cid,
        )
        if self.request_certificate:
            request_client_certificate(server)
        return server

    def run(self, max_rounds: int = 50) -> None:
        """Carry datagrams both ways until neither side has anything left to send."""
        for _ in range(max_rounds):
            self.now += 0.001
            moved = False
            for data, _addr in self.client.datagrams_to_send(now=self.now):
                moved = True
                if self._server is None:
                    self._server = self._accept(data)
                self._server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            if self._server is not None:
                for data, _addr in self._server.datagrams_to_send(now=self.now):
                    moved = True
                    self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            self._drain()
            if not moved:
                return
        raise AssertionError(f"connections still talking after {max_rounds} rounds")

    def advance(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass, firing timers as they fall due.

        aioquic reports ConnectionTerminated, on both ends, only when the closing or draining
        period (3 PTO) ends, so a test that closes a link must let time pass.
        """
        end = self.now + seconds
        for _ in range(100):
            live = [c for c in (self.client, self._server) if c is not None]
            due = [t for c in live if (t := c.get_timer()) is not None and t <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            for connection in live:
                timer = connection.get_timer()
                if timer is not None and timer <= self.now:
                    connection.handle_timer(now=self.now)
            self.run()
        self.now = max(self.now, end)

    def _drain(self) -> None:
        for connection, sink in (
            (self.client, self.client_events),
            (self._server, self.server_events),
        ):
            while connection is not None and (event := connection.next_event()) is not None:
                sink.append(event)


E = TypeVar("E", bound=events.QuicEvent)


def of_type(found: list[events.QuicEvent], kind: type[E]) -> list[E]:
    return [event for event in found if isinstance(event, kind)]


def ecdsa_configuration(is_client: bool) -> QuicConfiguration:
    """A configuration whose certificate holds an ECDSA P-256 key instead of Ed25519."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not an ed25519 node")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[DEFAULT_ALPN],
        certificate=certificate,
        private_key=key,
        verify_mode=ssl.CERT_NONE,
    )


def test_self_signed_certificate_carries_the_identity_key() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    certificate = self_signed_certificate(ALICE, now)
    key = certificate.public_key()
    assert isinstance(key, Ed25519PublicKey)
    assert key.public_bytes(Encoding.Raw, PublicFormat.Raw) == ALICE.public
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == ALICE.node_id.hex()
    assert certificate.issuer == certificate.subject
    assert certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc
    assert certificate.not_valid_after_utc - now == CERTIFICATE_LIFETIME
    key.verify(certificate.signature, certificate.tbs_certificate_bytes)  # self-signed


def test_mutual_handshake_authenticates_both_ends() -> None:
    pair = Pair(make_configuration(ALICE, is_client=True), make_configuration(BOB, is_client=False))
    pair.run()

    for found in (pair.client_events, pair.server_events):
        [completed] = of_type(found, events.HandshakeCompleted)
        assert completed.alpn_protocol == DEFAULT_ALPN
        assert not completed.session_resumed
    assert peer_node_id(pair.client) == BOB.node_id
    assert peer_node_id(pair.server) == ALICE.node_id
    assert authenticate(pair.client, expected=BOB.node_id) == BOB.node_id
    assert authenticate(pair.server) == ALICE.node_id
    pair.run()
    assert not of_type(pair.client_events + pair.server_events, events.ConnectionTerminated)


def test_stream_and_datagram_round_trip_after_the_handshake() -> None:
    pair = Pair(make_configuration(ALICE, is_client=True), make_configuration(BOB, is_client=False))
    pair.run()
    assert authenticate(pair.server) == ALICE.node_id

    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, b"ring ring", end_stream=True)
    pair.run()
    [request] = of_type(pair.server_events, events.StreamDataReceived)
    assert (request.stream_id, request.data, request.end_stream) == (stream_id, b"ring ring", True)

    pair.server.send_stream_data(stream_id, b"hello?", end_stream=True)
    pair.client.send_datagram_frame(b"voice frame")  # needs max_datagram_frame_size both ends
    pair.run()
    [reply] = of_type(pair.client_events, events.StreamDataReceived)
    assert (reply.stream_id, reply.data, reply.end_stream) == (stream_id, b"hello?", True)
    [datagram] = of_type(pair.server_events, events.DatagramFrameReceived)
    assert datagram.data == b"voice frame"


def test_client_without_certificate_completes_tls_but_is_closed_by_authenticate() -> None:
    anonymous = QuicConfiguration(
        is_client=True, alpn_protocols=[DEFAULT_ALPN], verify_mode=ssl.CERT_NONE
    )
    pair = Pair(anonymous, make_configuration(BOB, is_client=False))
    pair.run()

    # aioquic itself lets the handshake finish: an empty Certificate is legal TLS 1.3
    assert of_type(pair.server_events, events.HandshakeCompleted)
    assert of_type(pair.client_events, events.HandshakeCompleted)
    assert peer_node_id(pair.client) == BOB.node_id
    assert peer_node_id(pair.server) is None

    assert authenticate(pair.server) is None  # closes the link
    pair.run()
    pair.advance(2.0)
    [terminated] = of_type(pair.client_events, events.ConnectionTerminated)
    assert terminated.error_code == ERROR_CERTIFICATE_REQUIRED
    assert terminated.reason_phrase == "peer sent no certificate"


def test_without_the_request_hook_no_client_certificate_is_sent() -> None:
    """The private flag is what makes mutual TLS work: without it the server never asks."""
    pair = Pair(
        make_configuration(ALICE, is_client=True),
        make_configuration(BOB, is_client=False),
        request_certificate=False,
    )
    pair.run()
    assert of_type(pair.server_events, events.HandshakeCompleted)
    assert peer_node_id(pair.client) == BOB.node_id
    assert peer_node_id(pair.server) is None


@pytest.mark.parametrize("ecdsa_side", ["client", "server"])
def test_non_ed25519_certificate_yields_no_node_id(ecdsa_side: str) -> None:
    if ecdsa_side == "client":
        pair = Pair(ecdsa_configuration(is_client=True), make_configuration(BOB, is_client=False))
    else:
        pair = Pair(make_configuration(ALICE, is_client=True), ecdsa_configuration(is_client=False))
    pair.run()
    # TLS succeeds (the ECDSA CertificateVerify is valid), but there is no NodeId to bind to
    assert of_type(pair.client_events, events.HandshakeCompleted)
    assert of_type(pair.server_events, events.HandshakeCompleted)
    checker, other = (
        (pair.server, pair.client_events)
        if ecdsa_side == "client"
        else (pair.client, pair.server_events)
    )
    assert peer_node_id(checker) is None
    assert authenticate(checker) is None
    pair.run()
    pair.advance(2.0)
    [terminated] = of_type(other, events.ConnectionTerminated)
    assert terminated.error_code == ERROR_BAD_CERTIFICATE


def test_unexpected_node_is_refused_by_the_dialler() -> None:
    pair = Pair(make_configuration(ALICE, is_client=True), make_configuration(BOB, is_client=False))
    pair.run()
    assert authenticate(pair.client, expected=NodeId(bytes(32))) is None
    pair.run()
    pair.advance(2.0)
    [terminated] = of_type(pair.server_events, events.ConnectionTerminated)
    assert terminated.error_code == ERROR_BAD_CERTIFICATE
    assert terminated.reason_phrase == "peer is not the expected node"


@pytest.mark.parametrize("forger", ["client", "server"])
def test_certificate_for_a_key_the_peer_does_not_hold_fails_the_handshake(forger: str) -> None:
    """Mallory presents a certificate carrying Bob's public key but signs with her own key."""
    mallory = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
    config = make_configuration(BOB, is_client=forger == "client")
    config.certificate = self_signed_certificate(BOB, datetime.now(UTC))  # anyone can build it
    config.private_key = mallory
    if forger == "server":
        pair = Pair(make_configuration(ALICE, is_client=True), config)
    else:
        pair = Pair(config, make_configuration(ALICE, is_client=False))
    pair.run()
    pair.advance(2.0)

    victim, forger_events = (
        (pair.client, pair.server_events)
        if forger == "server"
        else (pair.server, pair.client_events)
    )
    [terminated] = of_type(forger_events, events.ConnectionTerminated)
    assert terminated.error_code == QuicErrorCode.CRYPTO_ERROR + AlertDescription.decrypt_error
    # aioquic keeps the unproven certificate; peer_node_id must not trust it
    assert victim.tls._peer_certificate is not None
    assert peer_node_id(victim) is None


def test_request_client_certificate_misuse_is_refused() -> None:
    client = QuicConnection(configuration=make_configuration(ALICE, is_client=True))
    with pytest.raises(LocalProtocolError, match="only a server"):
        request_client_certificate(client)
    pair = Pair(make_configuration(ALICE, is_client=True), make_configuration(BOB, is_client=False))
    pair.run()
    with pytest.raises(LocalProtocolError, match="too late"):
        request_client_certificate(pair.server)
    with pytest.raises(LocalProtocolError, match="before the handshake"):
        authenticate(client)  # never connected


class Link(QuicConnectionProtocol):
    """An asyncio QUIC protocol that authenticates its peer; servers echo streams in capitals."""

    def __init__(self, quic: QuicConnection, stream_handler: QuicStreamHandler | None = None):
        super().__init__(quic, stream_handler=stream_handler)
        self.connection = quic
        self.peer: NodeId | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self.peer = authenticate(self.connection)
            self.transmit()
        elif isinstance(event, events.StreamDataReceived) and self.peer is None:
            return  # never act on an unauthenticated peer
        elif (
            isinstance(event, events.StreamDataReceived)
            and not self.connection.configuration.is_client
        ):
            self.connection.send_stream_data(event.stream_id, event.data.upper(), event.end_stream)
            self.transmit()
            return
        super().quic_event_received(event)


def test_real_udp_sockets_on_loopback() -> None:
    accepted: list[Link] = []

    def accept(quic: QuicConnection, stream_handler: QuicStreamHandler | None = None) -> Link:
        request_client_certificate(quic)
        accepted.append(Link(quic, stream_handler=stream_handler))
        return accepted[-1]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            lambda: QuicServer(
                configuration=make_configuration(BOB, is_client=False), create_protocol=accept
            ),
            local_addr=("127.0.0.1", 0),
        )
        port = transport.get_extra_info("sockname")[1]
        try:
            async with connect(
                "127.0.0.1",
                port,
                configuration=make_configuration(ALICE, is_client=True),
                create_protocol=Link,
            ) as client:
                assert isinstance(client, Link)
                assert client.peer == BOB.node_id
                reader, writer = await client.create_stream()
                writer.write(b"hello over quic")
                writer.write_eof()
                assert await reader.read() == b"HELLO OVER QUIC"
                [link] = accepted
                assert link.peer == ALICE.node_id
        finally:
            close_server: Callable[[], None] = server.close  # untyped in aioquic 1.2.0
            close_server()  # closes the server's connections and its socket
            await asyncio.sleep(0)

    asyncio.run(asyncio.wait_for(scenario(), timeout=5.0))
