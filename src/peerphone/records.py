"""Signed records: name, presence and supernode membership, and their acceptance checks.

A record is an envelope (kind, owner key, sequence, expiry, body bytes, signature). The
signature covers a canonical msgpack encoding of everything but itself, prefixed with a
domain tag, so a signature made for one kind or purpose can never be replayed as another.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Annotated

import msgspec

from peerphone.errors import DecodeError, RecordRejected
from peerphone.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, KeyPair, NodeId, SignatureVerifier

SIGNATURE_DOMAIN = b"peerphone-record-v1"

MAX_BODY_BYTES = 1024  # a presence body with 4 supernodes and 8 addresses is ~500 B
MAX_USERNAME_CHARS = 32
MAX_ADDRESSES = 8
MAX_ADDRESS_CHARS = 64
MAX_ATTACHED_SUPERNODES = 4
MAX_CAPABILITIES = 16
MAX_CAPABILITY_CHARS = 32
MAX_SEQ = 2**62

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")  # use with fullmatch

Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Address = Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS_CHARS)]
Username = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_USERNAME_CHARS)]
Capability = Annotated[str, msgspec.Meta(max_length=MAX_CAPABILITY_CHARS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65_535)]


class RecordKind(enum.IntEnum):
    NAME = 1
    PRESENCE = 2
    MEMBER = 3


class Status(enum.IntEnum):
    OFFLINE = 0
    ONLINE = 1
    AWAY = 2
    BUSY = 3


class Record(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A signed, versioned, expiring statement by the holder of `owner`'s private key."""

    kind: RecordKind
    owner: Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    expires_ms: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    body: Annotated[bytes, msgspec.Meta(max_length=MAX_BODY_BYTES)]
    sig: Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]

    def signed_payload(self) -> bytes:
        return signed_payload(self.kind, self.owner, self.seq, self.expires_ms, self.body)

    def expires(self) -> float:
        return self.expires_ms / 1000.0

    def newer_than(self, other: Record) -> bool:
        return self.seq > other.seq


class NameBody(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Binds a username to the owner key, first come first served."""

    username: Username


class Capacity(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What a node says it measured it could give as a supernode. The tier trusts none of it
    for promotion: reachability is proven by dial-backs, uptime capped by what the promoter
    saw, and the rest can only keep a node out (docs/decisions/0019)."""

    reachable: bool = False  # ignored when the tier dials candidates back
    uptime_s: Count = 0
    up_kbps: Count = 0
    down_kbps: Count = 0
    cpu_score: Count = 0  # spare CPU in hundredths of a core
    udp_port: Port = 0  # where it listens: dialled back at the IP its link comes from
    tcp_port: Port = 0  # 0: no TCP listener


class PresenceBody(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Where and how a user can be reached right now."""

    username: Username
    device: Annotated[str, msgspec.Meta(max_length=32)]
    status: Status
    supernodes: Annotated[list[Key32], msgspec.Meta(max_length=MAX_ATTACHED_SUPERNODES)]
    addresses: Annotated[list[Address], msgspec.Meta(max_length=MAX_ADDRESSES)]
    capabilities: Annotated[list[Capability], msgspec.Meta(max_length=MAX_CAPABILITIES)]
    # the publishing device's node id: signals for this user go to the client whose link
    # authenticated as this node, and a supernode takes the record only from that node
    node: Key32


class MemberBody(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A supernode's self-signed entry in the one-hop membership (its incarnation is `seq`)."""

    addresses: Annotated[list[Address], msgspec.Meta(max_length=MAX_ADDRESSES)]
    capacity: Capacity
    max_clients: Count


Body = NameBody | PresenceBody | MemberBody

BODY_TYPES: dict[RecordKind, type[NameBody] | type[PresenceBody] | type[MemberBody]] = {
    RecordKind.NAME: NameBody,
    RecordKind.PRESENCE: PresenceBody,
    RecordKind.MEMBER: MemberBody,
}

_body_encoder = msgspec.msgpack.Encoder()
_body_decoders = {kind: msgspec.msgpack.Decoder(t) for kind, t in BODY_TYPES.items()}
_record_decoder = msgspec.msgpack.Decoder(Record)


def signed_payload(kind: int, owner: bytes, seq: int, expires_ms: int, body: bytes) -> bytes:
    """The canonical bytes a record's signature covers."""
    return _body_encoder.encode((SIGNATURE_DOMAIN, int(kind), owner, seq, expires_ms, body))


def user_key(username: str) -> bytes:
    """Directory key of a user's name and presence records."""
    return hashlib.sha256(b"user:" + username.encode()).digest()


def valid_username(username: str) -> bool:
    return USERNAME_RE.fullmatch(username) is not None


def make_record(
    kind: RecordKind,
    keys: KeyPair,
    seq: int,
    expires_ms: int,
    body: NameBody | PresenceBody | MemberBody,
) -> Record:
    """Sign `body` as a record of `kind` owned by `keys`."""
    if not isinstance(body, BODY_TYPES[kind]):
        raise TypeError(f"{type(body).__name__} is not the body of a {kind.name} record")
    raw = _body_encoder.encode(body)
    if len(raw) > MAX_BODY_BYTES:
        raise ValueError(f"record body is {len(raw)} bytes, limit {MAX_BODY_BYTES}")
    sig = keys.sign(signed_payload(kind, keys.public, seq, expires_ms, raw))
    return Record(kind, keys.public, seq, expires_ms, raw, sig)


def decode_body(record: Record) -> NameBody | PresenceBody | MemberBody:
    """Decode a record's body by its kind, or raise DecodeError."""
    try:
        return _body_decoders[record.kind].decode(record.body)
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError) as exc:
        # ValueError: msgspec raises UnicodeDecodeError for a str that is not UTF-8
        raise DecodeError(f"bad {getattr(record.kind, 'name', record.kind)} body: {exc}") from None


def decode_record(data: bytes) -> Record:
    """Decode one standalone record (e.g. from a file), or raise DecodeError."""
    try:
        return _record_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"bad record: {exc}") from None


def encode_record(record: Record) -> bytes:
    return _body_encoder.encode(record)


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """Bounds of the acceptance rule."""

    max_ttl_s: float = 31 * 24 * 3600.0  # no record may claim to live longer than this
    max_clock_skew_s: float = 30.0  # grace before an expired record is refused


DEFAULT_LIMITS = RecordLimits()


def check_record(
    record: Record,
    now: float,
    verifier: SignatureVerifier,
    limits: RecordLimits = DEFAULT_LIMITS,
) -> NameBody | PresenceBody | MemberBody:
    """Validate a record on its own (signature, expiry, body); return its body.

    Raises RecordRejected naming the failed check. Whether it may replace a stored record
    (owner, sequence) is the directory's decision, see `overlay.directory`.
    """
    expires = record.expires_ms / 1000.0
    if expires + limits.max_clock_skew_s < now:
        raise RecordRejected("expired")
    if expires > now + limits.max_ttl_s + limits.max_clock_skew_s:
        raise RecordRejected("expiry too far ahead")
    # signature and body depend only on the record: remember the outcome per record
    outcome = verifier.recall(record)
    if outcome is None:
        outcome = _check_content(record, verifier)
        verifier.remember(record, outcome)
    if isinstance(outcome, str):
        raise RecordRejected(outcome)
    return outcome  # type: ignore[return-value]


def _check_content(record: Record, verifier: SignatureVerifier) -> Body | str:
    """The record's body if signature and body are valid, else the reason they are not."""
    if not verifier.verify(record.owner, record.sig, record.signed_payload()):
        return "bad signature"
    try:
        body = decode_body(record)
    except DecodeError as exc:
        return str(exc)
    if isinstance(body, (NameBody, PresenceBody)) and not valid_username(body.username):
        return "invalid username"
    return body


def record_key(record: Record, body: NameBody | PresenceBody | MemberBody) -> bytes:
    """The directory key a record is stored under (member records: the node id)."""
    if isinstance(body, (NameBody, PresenceBody)):
        return user_key(body.username)
    return bytes(node_id_of_owner(record))


def node_id_of_owner(record: Record) -> NodeId:
    return NodeId(hashlib.sha256(record.owner).digest())
