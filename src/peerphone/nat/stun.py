"""STUN messages on the server side (RFC 8489): strict decoding, encoding with integrity.

aioice's `stun` module supplies the attribute value codecs (its `ATTRIBUTES_BY_TYPE`
table), the integrity and fingerprint helpers and the `Message` packer. Its own
`parse_message` is too lenient for a server, so the message frame is walked here:

* the magic cookie, the two zero bits, a 4-aligned length that matches the datagram and
  attributes that stay inside it are required (anything else is `DecodeError`);
* every XOR-PEER-ADDRESS is kept (CreatePermission may carry several; aioice keeps the
  last), and comprehension-required attributes we do not implement are listed, for 420;
* MESSAGE-INTEGRITY-SHA256 (RFC 8489), which aioice does not know, is checked too; the
  attributes after an integrity attribute are ignored, except FINGERPRINT, which must be
  last and right.

aioice's tables are read, never changed: aiortc shares them in the same process.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import Any

from aioice import stun as aiostun

from peerphone.errors import DecodeError

HEADER_BYTES = 20
COOKIE = aiostun.COOKIE
COOKIE_BYTES = COOKIE.to_bytes(4, "big")
MAX_MESSAGE_BYTES = 4096  # a STUN message or ChannelData above this is dropped
MAX_ATTRIBUTES = 32  # attributes walked per message; a request needs at most ~8
SHA1_INTEGRITY_BYTES = 20
SHA256_INTEGRITY_BYTES = 32
FINGERPRINT_XOR = aiostun.FINGERPRINT_XOR

# methods and classes (the type field is method | class, with method < 0x10 here)
BINDING = aiostun.Method.BINDING
ALLOCATE = aiostun.Method.ALLOCATE
REFRESH = aiostun.Method.REFRESH
SEND = aiostun.Method.SEND
DATA = aiostun.Method.DATA
CREATE_PERMISSION = aiostun.Method.CREATE_PERMISSION
CHANNEL_BIND = aiostun.Method.CHANNEL_BIND
REQUEST = aiostun.Class.REQUEST
INDICATION = aiostun.Class.INDICATION
RESPONSE = aiostun.Class.RESPONSE
ERROR = aiostun.Class.ERROR

# attribute types
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
XOR_PEER_ADDRESS = 0x0012
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
MESSAGE_INTEGRITY_SHA256 = 0x001C
FINGERPRINT = 0x8028
COMPREHENSION_OPTIONAL = 0x8000  # types from here on may be ignored

# Comprehension-required attributes this server implements; any other one in a request
# is answered with 420 (CHANGE-REQUEST, DONT-FRAGMENT, RESERVATION-TOKEN,
# USERHASH, PASSWORD-ALGORITHM, ...). PRIORITY and USE-CANDIDATE come with ICE checks
# sent to a STUN server by mistake; they change nothing in a Binding response.
UNDERSTOOD = frozenset(
    {
        0x0001,  # MAPPED-ADDRESS
        USERNAME,
        MESSAGE_INTEGRITY,
        0x0009,  # ERROR-CODE
        CHANNEL_NUMBER,
        0x000D,  # LIFETIME
        XOR_PEER_ADDRESS,
        0x0013,  # DATA
        0x0014,  # REALM
        0x0015,  # NONCE
        0x0016,  # XOR-RELAYED-ADDRESS
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        0x0019,  # REQUESTED-TRANSPORT
        MESSAGE_INTEGRITY_SHA256,
        0x0020,  # XOR-MAPPED-ADDRESS
        0x0024,  # PRIORITY
        0x0025,  # USE-CANDIDATE
    }
)


@dataclass(slots=True)
class StunMessage:
    """A decoded STUN message: known attribute values by aioice name, and what a server
    must know beyond them (every peer address, unknown required types, integrity)."""

    method: int
    cls: int
    transaction_id: bytes
    size: int
    attributes: dict[str, Any] = field(default_factory=dict)
    peers: list[tuple[str, int]] = field(default_factory=list)  # every XOR-PEER-ADDRESS
    unknown_required: list[int] = field(default_factory=list)
    integrity: str | None = None  # "sha1" or "sha256": the one to check and to answer with
    integrity_value: bytes = b""
    integrity_covered: bytes = b""  # the message up to the integrity attribute
    fingerprint: bool = False
    requested_family: int | None = None  # REQUESTED-ADDRESS-FAMILY: 1 (IPv4) or 2 (IPv6)
    even_port: int | None = None  # EVEN-PORT: its R bit (1: reserve the next port too)

    def check_integrity(self, key: bytes) -> bool:
        """Whether the integrity attribute is right for `key` (False when there is none)."""
        if self.integrity is None:
            return False
        return hmac.compare_digest(
            self.integrity_value, integrity(self.integrity_covered, key, self.integrity)
        )


def integrity(covered: bytes, key: bytes, algorithm: str) -> bytes:
    """The HMAC of `covered` (a message up to its integrity attribute), whose length field
    is set to end just after that attribute (RFC 8489 sections 14.5, 14.6)."""
    if algorithm == "sha1":
        return aiostun.message_integrity(covered, key)
    size = SHA256_INTEGRITY_BYTES
    data = aiostun.set_body_length(covered, len(covered) - HEADER_BYTES + 4 + size)
    return hmac.new(key, data, hashlib.sha256).digest()[:size]


def fingerprint(data: bytes) -> int:
    """The FINGERPRINT of `data` (a message up to that attribute)."""
    check = aiostun.set_body_length(data, len(data) - HEADER_BYTES + 8)
    return binascii.crc32(check) ^ FINGERPRINT_XOR


def looks_like_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: STUN (not ChannelData) and the magic cookie in place."""
    return len(data) >= HEADER_BYTES and data[0] < 0x40 and data[4:8] == COOKIE_BYTES


def decode(data: bytes) -> StunMessage:
    """Decode one STUN message; `DecodeError` for anything a server must drop."""
    size = len(data)
    if size < HEADER_BYTES or size > MAX_MESSAGE_BYTES:
        raise DecodeError("STUN message size out of range")
    message_type, length = struct.unpack_from("!HH", data)
    if message_type & 0xC000 or data[4:8] != COOKIE_BYTES:
        raise DecodeError("not a STUN message (type bits or magic cookie)")
    if length != size - HEADER_BYTES or length % 4:
        raise DecodeError("STUN length field does not match the datagram")
    transaction_id = data[8:20]
    message = StunMessage(message_type & 0x3EEF, message_type & 0x0110, transaction_id, size)
    attributes = message.attributes
    pos, count = HEADER_BYTES, 0
    sealed = False  # an integrity attribute was seen: the rest is not covered by it
    while pos < size:
        count += 1
        if count > MAX_ATTRIBUTES or pos + 4 > size:
            raise DecodeError("too many STUN attributes or a truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        end = start + attr_len
        if end > size:
            raise DecodeError("STUN attribute runs past the message")
        value = data[start:end]
        if attr_type == FINGERPRINT:
            if attr_len != 4 or end != size:
                raise DecodeError("FINGERPRINT malformed or not last")
            if int.from_bytes(value, "big") != fingerprint(data[:pos]):
                raise DecodeError("FINGERPRINT does not match")
            message.fingerprint = True
        elif attr_type in (MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256):
            _integrity_attribute(message, attr_type, value, data[:pos], sealed)
            sealed = True
        elif not sealed:
            _attribute(message, attributes, attr_type, value, transaction_id)
        pos = end + (-attr_len % 4)
    if pos != size:
        raise DecodeError("STUN attribute padding runs past the message")
    return message


def _integrity_attribute(
    message: StunMessage, attr_type: int, value: bytes, covered: bytes, sealed: bool
) -> None:
    if attr_type == MESSAGE_INTEGRITY:
        if len(value) != SHA1_INTEGRITY_BYTES:
            raise DecodeError("MESSAGE-INTEGRITY must be 20 bytes")
        if sealed:
            raise DecodeError("MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256")
        message.integrity, message.integrity_value = "sha1", value
    else:
        # we send and accept the untruncated 32 bytes (RFC 8489 allows 16..32)
        if len(value) != SHA256_INTEGRITY_BYTES:
            raise DecodeError("MESSAGE-INTEGRITY-SHA256 must be 32 bytes")
        # SHA-256 wins when both are present (RFC 8489 section 9.2.4)
        message.integrity, message.integrity_value = "sha256", value
    message.integrity_covered = covered


def _attribute(
    message: StunMessage,
    attributes: dict[str, Any],
    attr_type: int,
    value: bytes,
    transaction_id: bytes,
) -> None:
    if attr_type == REQUESTED_ADDRESS_FAMILY:
        if len(value) != 4 or value[0] not in (1, 2):
            raise DecodeError("REQUESTED-ADDRESS-FAMILY malformed")
        message.requested_family = value[0]
        return
    if attr_type == EVEN_PORT:
        if len(value) != 1:
            raise DecodeError("EVEN-PORT malformed")
        message.even_port = value[0] >> 7
        return
    entry = aiostun.ATTRIBUTES_BY_TYPE.get(attr_type)
    if entry is None or attr_type not in UNDERSTOOD:
        if attr_type < COMPREHENSION_OPTIONAL:
            message.unknown_required.append(attr_type)
        return
    _, name, _, unpack = entry
    try:
        if unpack is aiostun.unpack_xor_address:
            decoded = unpack(value, transaction_id=transaction_id)
        else:
            decoded = unpack(value)
    except (ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise DecodeError(f"STUN attribute {name} malformed: {exc}") from exc
    if attr_type == XOR_PEER_ADDRESS:
        message.peers.append(decoded)
    attributes.setdefault(name, decoded)


def encode(
    method: int,
    cls: int,
    transaction_id: bytes,
    attributes: dict[str, Any],
    *,
    key: bytes | None = None,
    algorithm: str = "sha1",
    add_fingerprint: bool = True,
    unknown: list[int] | None = None,
) -> bytes:
    """Encode a message; with `key`, sign it with `algorithm` (as the request was);
    `unknown` adds UNKNOWN-ATTRIBUTES (which aioice cannot pack)."""
    message = aiostun.Message(
        aiostun.Method(method), aiostun.Class(cls), transaction_id, dict(attributes)
    )
    data = bytes(message)
    if unknown:
        value = b"".join(t.to_bytes(2, "big") for t in unknown)
        data = _append(data, UNKNOWN_ATTRIBUTES, value)
    if key is not None:
        if algorithm == "sha1":
            data = _append(data, MESSAGE_INTEGRITY, aiostun.message_integrity(data, key))
        else:
            data = _append(data, MESSAGE_INTEGRITY_SHA256, integrity(data, key, "sha256"))
    if add_fingerprint:
        data = _append(data, FINGERPRINT, fingerprint(data).to_bytes(4, "big"))
    return data


def _append(data: bytes, attr_type: int, value: bytes) -> bytes:
    """`data` (a whole message) with one more attribute, its length field updated."""
    padding = -len(value) % 4
    body = len(data) - HEADER_BYTES + 4 + len(value) + padding
    head = data[:2] + body.to_bytes(2, "big") + data[4:]
    return (
        head
        + attr_type.to_bytes(2, "big")
        + len(value).to_bytes(2, "big")
        + value
        + (b"\x00" * padding)
    )


def xor_address_value(address: tuple[str, int], transaction_id: bytes) -> bytes:
    """The value of an XOR-*-ADDRESS attribute (aioice's packer)."""
    return aiostun.pack_xor_address(address, transaction_id)


def data_indication(transaction_id: bytes, peer: tuple[str, int], payload: bytes) -> bytes:
    """A Data indication (XOR-PEER-ADDRESS, DATA), built without `Message` for speed."""
    peer_value = xor_address_value(peer, transaction_id)
    padding = -len(payload) % 4
    body = 4 + len(peer_value) + 4 + len(payload) + padding
    return b"".join(
        (
            struct.pack("!HHI12s", DATA | INDICATION, body, COOKIE, transaction_id),
            struct.pack("!HH", XOR_PEER_ADDRESS, len(peer_value)),
            peer_value,
            struct.pack("!HH", 0x0013, len(payload)),
            payload,
            b"\x00" * padding,
        )
    )
