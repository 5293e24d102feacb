"""Call signaling messages, signed by the sender's user key (end to end, across supernodes).

Supernodes route these as opaque payloads (`Signal`). Everything a supernode could want to
change — the SDP with its DTLS fingerprint, who calls whom, where to answer (`from_node`,
`reply_via`), a transfer target — is covered by the signature, so tampering fails closed.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from peerphone.errors import DecodeError
from peerphone.identity import KeyPair, verify_signature
from peerphone.records import Key32, Username
from peerphone.wire import MAX_REASON_CHARS, Via

DOMAIN = b"peerphone/call/v1\x00"
CALL_ID_BYTES = 16
MAX_SDP_CHARS = 16 * 1024
SIGNATURE_BYTES = 64

CallId = Annotated[bytes, msgspec.Meta(min_length=CALL_ID_BYTES, max_length=CALL_ID_BYTES)]
Sdp = Annotated[str, msgspec.Meta(max_length=MAX_SDP_CHARS)]
OptionalUser = Annotated[str, msgspec.Meta(max_length=32)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]


class CallKind(enum.IntEnum):
    INVITE = 1  # carries the offer
    RINGING = 2
    ACCEPT = 3  # carries the answer
    REJECT = 4  # reason: busy, declined, or why the invite was refused
    CANCEL = 5  # the caller gives up before an answer
    BYE = 6
    HOLD = 7
    RESUME = 8
    TRANSFER = 9  # blind transfer: the peer is asked to call `target`


class CallMessage(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    call_id: CallId
    kind: CallKind
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**31)]  # per sender and call, increasing
    sent_ms: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    from_user: Username
    to_user: Username
    from_key: Key32  # the sender's user key (checked against the directory or a pin)
    from_node: Key32  # the sender's device: where answers are delivered
    reply_via: Via  # the sender's supernodes, primary first: where to answer
    sdp: Sdp
    reason: Reason
    target: OptionalUser  # TRANSFER: whom to call
    referred_by: OptionalUser  # INVITE made because of a transfer: who asked
    signature: Annotated[
        bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)
    ]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CallMessage)


def _signed_bytes(msg: CallMessage) -> bytes:
    fields = msgspec.structs.astuple(msg)[:-1]  # everything but the signature
    return DOMAIN + _encoder.encode(fields)


def make_call_message(
    keys: KeyPair,
    *,
    call_id: bytes,
    kind: CallKind,
    seq: int,
    sent_ms: int,
    from_user: str,
    to_user: str,
    from_node: bytes,
    reply_via: list[bytes],
    sdp: str = "",
    reason: str = "",
    target: str = "",
    referred_by: str = "",
) -> CallMessage:
    unsigned = CallMessage(
        call_id,
        kind,
        seq,
        sent_ms,
        from_user,
        to_user,
        keys.public,
        from_node,
        reply_via,
        sdp,
        reason,
        target,
        referred_by,
        bytes(SIGNATURE_BYTES),
    )
    return msgspec.structs.replace(unsigned, signature=keys.sign(_signed_bytes(unsigned)))


def encode_call_message(msg: CallMessage) -> bytes:
    return _encoder.encode(msg)


def decode_call_message(data: bytes) -> CallMessage:
    """Decode (not verify) a call message, or raise DecodeError."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise DecodeError(str(exc)) from None


def signature_valid(msg: CallMessage) -> bool:
    """Whether `msg` was signed by the key it names (who that key belongs to is checked
    separately, against the directory or a pinned contact key)."""
    return verify_signature(msg.from_key, msg.signature, _signed_bytes(msg))
