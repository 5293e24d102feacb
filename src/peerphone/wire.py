"""Every overlay message as a msgspec struct (msgpack on the wire), with explicit size limits.

`decode_message(data)` either returns one of `Message` or raises `DecodeError`, whatever the
bytes. Records travel inside messages as `Record` envelopes and are checked separately.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from peerphone.errors import DecodeError, MessageTooLarge
from peerphone.identity import NodeId
from peerphone.records import (
    MAX_ADDRESS_CHARS,
    MAX_ATTACHED_SUPERNODES,
    Capacity,
    Count,
    Key32,
    Record,
    Username,
)

MAX_MESSAGE_BYTES = 256 * 1024  # a full membership page is the biggest message (~150 KiB)
MAX_RECORDS_PER_MESSAGE = 512
# Records a sender puts in one message: 128 of the largest (~1.2 KiB) still fit the limit.
RECORDS_PER_BATCH = 128
MAX_GOSSIP_PER_MESSAGE = 16  # piggy-backed membership updates per probe
MAX_NAMES_PER_WATCH = 256
MAX_HINTS = 8  # supernode suggestions in a redirect or accept
MAX_REASON_CHARS = 120
MAX_SIGNAL_BYTES = 32 * 1024  # one signed call message (an SDP offer is ~1-4 KiB)

ReqId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=16, max_length=32)]


class ReasonCode(enum.StrEnum):
    """The reasons a receiver acts on. A `Reason` field may also carry free text (why a
    record was refused, a signature failure ...): compare with these, never with literals."""

    NOT_ATTACHED = "not attached here"  # Lookup, Signal, TurnRequest: re-attach
    NOT_PRIMARY = "not attached here as primary"  # Publish: re-attach
    NOT_A_SUPERNODE = "not a supernode"  # Attach to a node that does not serve
    NAME_TAKEN = "name taken by another key"  # final: the user must act
    PRESENCE_OF_ANOTHER_NODE = "presence names another node"  # a publish refusal
    CONFLICT = "replicas disagree on the name's owner"  # a lookup: no agreed owner
    NOT_FOUND = "not found"
    BUSY = "busy"  # too many lookups pending at the supernode
    UNDELIVERED = "no supernode of the target delivered it"  # a signal


Records = Annotated[list[Record], msgspec.Meta(max_length=MAX_RECORDS_PER_MESSAGE)]
Hints = Annotated[list[Record], msgspec.Meta(max_length=MAX_HINTS)]
SignalPayload = Annotated[bytes, msgspec.Meta(max_length=MAX_SIGNAL_BYTES)]
Via = Annotated[list[Key32], msgspec.Meta(max_length=MAX_ATTACHED_SUPERNODES)]


class _Msg(msgspec.Struct, frozen=True, array_like=True, tag=True, forbid_unknown_fields=True):
    pass


# --- client <-> its supernode -------------------------------------------------------------


class Attach(_Msg, tag=1, frozen=True):
    """A client asks a supernode to serve it; `primary` says whether as primary or backup."""

    req: ReqId
    capacity: Capacity
    primary: bool


class AttachAccept(_Msg, tag=2, frozen=True):
    """The supernode serves the client; `others` are member records of further supernodes."""

    req: ReqId
    member: Record
    others: Hints


class AttachRedirect(_Msg, tag=3, frozen=True):
    """The supernode refuses (full, leaving, policy) and suggests others."""

    req: ReqId
    reason: Reason
    others: Hints


class Publish(_Msg, tag=4, frozen=True):
    """Store the client's own signed records (name and presence) in the directory."""

    req: ReqId
    records: Annotated[list[Record], msgspec.Meta(max_length=4)]


class PublishAck(_Msg, tag=5, frozen=True):
    req: ReqId
    stored: Count  # replicas that accepted the newest record
    reason: Reason


class Lookup(_Msg, tag=6, frozen=True):
    req: ReqId
    username: Username


class LookupResult(_Msg, tag=7, frozen=True):
    """Name and presence records found (freshest of the replicas asked), or empty lists."""

    req: ReqId
    records: Annotated[list[Record], msgspec.Meta(max_length=4)]
    hops: Count
    reason: Reason


class Watch(_Msg, tag=8, frozen=True):
    """Subscribe (or with `add=False` unsubscribe) to presence changes of these users."""

    req: ReqId
    usernames: Annotated[list[Username], msgspec.Meta(max_length=MAX_NAMES_PER_WATCH)]
    add: bool


class PresenceUpdate(_Msg, tag=9, frozen=True):
    """A watched user's presence changed; the client verifies the record itself."""

    records: Records


class Detach(_Msg, tag=10, frozen=True):
    """The client leaves on purpose (logout); its supernode drops it at once."""

    reason: Reason


class Redirect(_Msg, tag=11, frozen=True):
    """A supernode asks its client to move (shedding load or leaving the tier)."""

    reason: Reason
    others: Hints


class Promote(_Msg, tag=12, frozen=True):
    """The tier asks a candidate to become a supernode; `members` is a first membership page."""

    members: Records
    total: Count


# --- supernode <-> supernode --------------------------------------------------------------


class MemberState(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class Gossip(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One piggy-backed membership update (ALIVE ones carry the member's signed record)."""

    state: MemberState
    node: Key32
    incarnation: Count
    record: Record | None


GossipList = Annotated[list[Gossip], msgspec.Meta(max_length=MAX_GOSSIP_PER_MESSAGE)]


class Ping(_Msg, tag=20, frozen=True):
    seq: ReqId
    load: Count  # sender's attached clients, for the election's load estimate
    gossip: GossipList


class Ack(_Msg, tag=21, frozen=True):
    seq: ReqId
    load: Count
    gossip: GossipList


class PingReq(_Msg, tag=22, frozen=True):
    """Ask a member to probe `target` for us (SWIM indirect probe)."""

    seq: ReqId
    target: Key32
    gossip: GossipList


class IndirectAck(_Msg, tag=23, frozen=True):
    seq: ReqId
    target: Key32


class Join(_Msg, tag=24, frozen=True):
    """A new supernode announces its signed member record and asks for the membership."""

    record: Record
    offset: Count


class MembershipPage(_Msg, tag=25, frozen=True):
    members: Records
    offset: Count
    total: Count


class ReachCheck(_Msg, tag=32, frozen=True):
    """A member asks us to dial candidate `node` back, from our own sockets, at the UDP and
    TCP addresses its link to the asker comes from (overlay/reachability.py)."""

    req: ReqId
    node: Key32
    udp: Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS_CHARS)]
    tcp: Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS_CHARS)]  # "": none advertised


class ReachResult(_Msg, tag=33, frozen=True):
    """Whether we reached `node` as itself there (`declined`: we could not test it)."""

    req: ReqId
    node: Key32
    reached: bool
    declined: bool
    reason: Reason


class ReachProbe(_Msg, tag=34, frozen=True):
    """On a dial-back's own connection, once it authenticated us: echo this nonce."""

    nonce: Nonce


class ReachEcho(_Msg, tag=35, frozen=True):
    """The answer to a ReachProbe, on the same connection."""

    nonce: Nonce


class Store(_Msg, tag=26, frozen=True):
    """Replicate records to a responsible replica (publish, refresh or hand-over)."""

    req: ReqId
    records: Records


class StoreAck(_Msg, tag=27, frozen=True):
    req: ReqId
    accepted: Count
    reason: Reason


class Fetch(_Msg, tag=28, frozen=True):
    """Ask a replica for the name and presence records under `key`."""

    req: ReqId
    key: Key32


class FetchResult(_Msg, tag=29, frozen=True):
    req: ReqId
    records: Annotated[list[Record], msgspec.Meta(max_length=4)]
    responsible: bool  # False: the replica does not think it is responsible for the key


class Subscribe(_Msg, tag=30, frozen=True):
    """A supernode registers (add) or drops its interest in changes under these keys."""

    keys: Annotated[list[Key32], msgspec.Meta(max_length=MAX_NAMES_PER_WATCH)]
    add: bool


class Notify(_Msg, tag=31, frozen=True):
    """A replica tells a subscribed supernode about new records under watched keys."""

    records: Records


# --- call signaling, routed by supernodes (payloads are signed by users: overlay/calls.py)


class Signal(_Msg, tag=40, frozen=True):
    """A client asks its supernode to deliver `payload` to the node `to_node`, attached at
    `via` (node and supernodes as named in the callee's verified presence record, in order).

    Routing is by the device's node id, which a supernode checks against the link its client
    authenticated with, never by a user name or key that a client merely claimed."""

    req: ReqId
    to_node: Key32
    via: Via
    payload: SignalPayload


class SignalAck(_Msg, tag=41, frozen=True):
    """The supernode's answer to a client's Signal: delivered or not, and why not."""

    req: ReqId
    delivered: bool
    reason: Reason


class SignalRelay(_Msg, tag=42, frozen=True):
    """Supernode to supernode: deliver `payload` to your attached client `to_node`."""

    req: ReqId
    to_node: Key32
    payload: SignalPayload


class SignalRelayAck(_Msg, tag=43, frozen=True):
    req: ReqId
    delivered: bool
    reason: Reason


class SignalDeliver(_Msg, tag=44, frozen=True):
    """A supernode hands a client a signaling payload addressed to its user."""

    payload: SignalPayload


# --- relay credentials: a client's own supernode hands out short-lived TURN credentials


class TurnRequest(_Msg, tag=45, frozen=True):
    req: ReqId


class TurnGrant(_Msg, tag=46, frozen=True):
    """TURN servers (turn:/turns:/stun: URLs) and credentials valid until `expires_ms`;
    no URLs (and a reason) when the supernode runs no relay."""

    req: ReqId
    urls: Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=4)]
    username: Annotated[str, msgspec.Meta(max_length=128)]
    password: Annotated[str, msgspec.Meta(max_length=128)]
    expires_ms: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    reason: Reason


Message = (
    Attach
    | AttachAccept
    | AttachRedirect
    | Publish
    | PublishAck
    | Lookup
    | LookupResult
    | Watch
    | PresenceUpdate
    | Detach
    | Redirect
    | Promote
    | Ping
    | Ack
    | PingReq
    | IndirectAck
    | Join
    | MembershipPage
    | ReachCheck
    | ReachResult
    | ReachProbe
    | ReachEcho
    | Store
    | StoreAck
    | Fetch
    | FetchResult
    | Subscribe
    | Notify
    | Signal
    | SignalAck
    | SignalRelay
    | SignalRelayAck
    | SignalDeliver
    | TurnRequest
    | TurnGrant
)

# What every overlay core's input methods return: (destination node, message) pairs.
Send = tuple[NodeId, Message]

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode_message(message: Message) -> bytes:
    data = _encoder.encode(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"{type(message).__name__} encodes to {len(data)} bytes")
    return data


def decode_message(data: bytes) -> Message:
    """Decode one message or raise DecodeError (never anything else)."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(str(exc)) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # defensive
        raise DecodeError(f"{type(exc).__name__}: {exc}") from None
