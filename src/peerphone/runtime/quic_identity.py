"""QUIC links authenticated by the nodes' Ed25519 identity keys (mutual TLS 1.3, aioquic).

Every node presents a self-signed X.509 certificate whose key *is* its Ed25519 identity
key, and the peer's NodeId is sha256 of that raw key. No CA is involved: chain
verification is switched off (``verify_mode = CERT_NONE``). What authenticates the link
is the TLS 1.3 CertificateVerify, which aioquic checks in every verify mode: a signature
over the handshake transcript proving that the peer holds the private key of the
certificate it sent. The certificate's dates and self-signature are checked by nobody;
the certificate only carries the key.

aioquic has no public API for the two things this needs, so this module, and only this
module, uses its internals:

* ``QuicConnection._initialize``: the method that creates ``connection.tls``. On a
  server it runs while the first Initial packet is processed, and the server's whole
  first flight is built in the same call, so the flag below cannot be set from outside:
  before the first packet ``connection.tls`` does not exist, after it the flight without
  a CertificateRequest is already queued. `request_client_certificate` wraps this method
  on one connection instance (no global patch).
* ``tls.Context._request_client_certificate`` (marked "for test purposes only" in
  aioquic): when true, the server sends a TLS CertificateRequest.
* ``tls.Context._peer_certificate``: the certificate the peer presented, read by
  `peer_node_id`, and only once ``tls.Context.state`` says the handshake is complete,
  because aioquic sets the attribute *before* it checks the CertificateVerify and leaves
  it set when that check fails.
* ``QuicConfiguration.certificate``, ``private_key``, ``verify_mode`` and
  ``max_datagram_frame_size``, documented by aioquic as "for internal purposes, not
  guaranteed to be stable".

Because of them the aioquic version range is pinned (every release from 1.2.0 to 1.7.2
was tested), and tests/loopback/test_quic_identity.py fails if an upgrade moves any of them.

aioquic does not enforce client authentication. A client that answers the
CertificateRequest with an empty Certificate completes the handshake (RFC 8446 allows
the server to go on), and a resumed (PSK) handshake carries no certificate at all. So:
never enable session tickets or 0-RTT on these links, and call `authenticate` on
``HandshakeCompleted``. It closes links whose peer is not proven to hold an Ed25519 key
(or is not the NodeId the caller dialled); discard every later event of such a link.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from peerphone.errors import LocalProtocolError
from peerphone.identity import KeyPair, NodeId, node_id_of

DEFAULT_ALPN = "peerphone/1"
CERTIFICATE_LIFETIME = timedelta(hours=24)  # informational: peers never check the dates
CLOCK_SKEW = timedelta(minutes=5)  # not_before is backdated by this much
MAX_DATAGRAM_FRAME_SIZE = 65_536  # QUIC DATAGRAM frames need this on both ends

# CONNECTION_CLOSE codes used by `authenticate`: CRYPTO_ERROR + TLS alert (RFC 9001 §4.8)
ERROR_CERTIFICATE_REQUIRED = QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.certificate_required
ERROR_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.bad_certificate

_HANDSHAKE_DONE = frozenset({tls.State.CLIENT_POST_HANDSHAKE, tls.State.SERVER_POST_HANDSHAKE})


def self_signed_certificate(keys: KeyPair, now: datetime) -> x509.Certificate:
    """A certificate carrying `keys`' Ed25519 key, signed by itself, subject CN = NodeId hex.

    Valid from `now - CLOCK_SKEW` to `now + CERTIFICATE_LIFETIME`; pass an aware UTC time.
    """
    private = Ed25519PrivateKey.from_private_bytes(keys.private_bytes())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, keys.node_id.hex())])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .sign(private, algorithm=None)  # Ed25519 signs without a separate hash
    )


def make_configuration(
    keys: KeyPair, is_client: bool, alpn: str = DEFAULT_ALPN, idle_timeout_s: float = 15.0
) -> QuicConfiguration:
    """A QUIC configuration presenting `keys` as the certificate key, with no CA checks.

    Use a fresh one per client connection: aioquic's `connect` writes `server_name` into
    it. A server must also call `request_client_certificate` on each new connection.
    """
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[alpn],
        idle_timeout=idle_timeout_s,
        certificate=self_signed_certificate(keys, datetime.now(UTC)),
        private_key=Ed25519PrivateKey.from_private_bytes(keys.private_bytes()),
        verify_mode=ssl.CERT_NONE,  # authenticated by key (`authenticate`), not by a CA
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
    )


def request_client_certificate(connection: QuicConnection) -> None:
    """Make this server-side connection ask the client for its certificate.

    Call it on a new connection before it receives its first datagram, e.g. in the
    `create_protocol` callable given to aioquic's `serve`.
    """
    if connection.configuration.is_client:
        raise LocalProtocolError("only a server requests a client certificate")
    if hasattr(connection, "tls"):
        raise LocalProtocolError("too late: the connection's TLS context already exists")
    initialize: Callable[[bytes], None] = connection._initialize

    def initialize_and_request(peer_cid: bytes) -> None:
        initialize(peer_cid)
        connection.tls._request_client_certificate = True

    connection._initialize = initialize_and_request  # type: ignore[method-assign]


def _handshake_done(connection: QuicConnection) -> tls.Context | None:
    context: tls.Context | None = getattr(connection, "tls", None)  # absent until 1st packet
    if context is None or context.state not in _HANDSHAKE_DONE:
        return None
    return context


def peer_node_id(connection: QuicConnection) -> NodeId | None:
    """The NodeId the peer proved it holds the key of, or None.

    None before the handshake is complete, when the peer sent no certificate, and when the
    certificate's key is not Ed25519.
    """
    context = _handshake_done(connection)
    certificate = None if context is None else context._peer_certificate
    if certificate is None:
        return None
    try:
        key = certificate.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return node_id_of(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def authenticate(connection: QuicConnection, expected: NodeId | None = None) -> NodeId | None:
    """Call on ``HandshakeCompleted``: the peer's NodeId, or None after closing the link.

    Closes with CRYPTO_ERROR + certificate_required when the peer sent no certificate, and
    with CRYPTO_ERROR + bad_certificate when its key is not Ed25519 or its NodeId is not
    `expected` (when given). The caller still has to transmit the close.
    """
    context = _handshake_done(connection)
    if context is None:
        raise LocalProtocolError("authenticate() before the handshake completed")
    node = peer_node_id(connection)
    if node is not None and (expected is None or node == expected):
        return node
    if context._peer_certificate is None:
        code, reason = ERROR_CERTIFICATE_REQUIRED, "peer sent no certificate"
    elif node is None:
        code, reason = ERROR_BAD_CERTIFICATE, "peer certificate key is not Ed25519"
    else:
        code, reason = ERROR_BAD_CERTIFICATE, "peer is not the expected node"
    connection.close(error_code=code, frame_type=QuicFrameType.CRYPTO, reason_phrase=reason)
    return None
