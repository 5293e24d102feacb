"""Events the overlay cores hand to the application (small frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from peerphone.identity import NodeId
from peerphone.records import Record, Status


@dataclass(frozen=True, slots=True)
class Attached:
    """The client has a primary supernode (and maybe a backup)."""

    primary: NodeId
    backup: NodeId | None


@dataclass(frozen=True, slots=True)
class AttachLost:
    """The client lost its primary supernode; it re-attaches, to its backup if it has one."""

    supernode: NodeId
    to_backup: bool


@dataclass(frozen=True, slots=True)
class Published:
    """The client's presence with sequence `seq` is stored on `stored` replicas."""

    seq: int
    stored: int


@dataclass(frozen=True, slots=True)
class PublishRefused:
    """Every replica refused the client's records, for `reason` (e.g. the name is taken)."""

    reason: str


@dataclass(frozen=True, slots=True)
class KeyPinned:
    """The user key of `username` was seen for the first time and is now trusted for it
    (trust on first use); the application keeps the pin across restarts."""

    username: str
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 32:
            raise ValueError("a user key is 32 bytes")


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """A lookup (agreed by the name's replicas) found `username` bound to `seen`, not to
    the key we trust for it (`pinned`): someone else holds the name now, or the user
    started over with a new key. The pin stays; the application warns its user. Once per
    (name, seen key)."""

    username: str
    pinned: bytes
    seen: bytes


@dataclass(frozen=True, slots=True)
class LookupDone:
    """A lookup finished: `presence` is a verified record, or None (with `reason`)."""

    req: int
    username: str
    presence: Record | None
    status: Status | None
    hops: int
    started: float
    finished: float
    reason: str

    def __post_init__(self) -> None:
        if self.finished < self.started:
            raise ValueError("lookup finished before it started")


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A watched user's verified presence changed."""

    username: str
    status: Status
    record: Record


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """This node became a supernode (True) or stopped being one (False)."""

    supernode: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CallIncoming:
    """A verified call is ringing here; accept it with an answer to `sdp`, or reject it."""

    call_id: bytes
    from_user: str
    sdp: str
    referred_by: str  # set when the caller was transferred to us by this user


@dataclass(frozen=True, slots=True)
class CallRinging:
    """The callee's node verified our invite and is ringing."""

    call_id: bytes


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The callee accepted; `sdp` is its (signed) answer."""

    call_id: bytes
    sdp: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over (rejected, cancelled, hung up, failed, transferred) and why."""

    call_id: bytes
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class CallHoldChanged:
    """One side put the call on hold (`held`) or resumed it."""

    call_id: bytes
    held: bool
    by_peer: bool


@dataclass(frozen=True, slots=True)
class CallTransferRequested:
    """`by_user` asked us to call `target` instead (the call with them has ended)."""

    call_id: bytes
    target: str
    by_user: str


@dataclass(frozen=True, slots=True)
class TurnGranted:
    """Our supernode's relay: URLs and credentials valid until `expires` (no URLs: none)."""

    urls: list[str]
    username: str
    password: str
    expires: float
    reason: str


@dataclass(frozen=True, slots=True)
class DialBack:
    """Reach `node` at `address` on a connection of our own and report whether it answered
    there as itself (`NodeCore.dial_back_done`): its admission to the tier waits on it."""

    node: bytes
    address: str


@dataclass(frozen=True, slots=True)
class ReachDial:
    """A member asks us to dial candidate `node` back at `udp` (and `tcp`) from our own
    sockets and report (`NodeCore.reach_dial_done`); see overlay/reachability.py."""

    asker: bytes
    req: int
    node: bytes
    udp: str
    tcp: str


@dataclass(frozen=True, slots=True)
class PromotionChecked:
    """Our supernode role dialled candidate `node` back: promoted it or not, and why."""

    node: bytes
    promoted: bool
    reason: str


Event = (
    Attached
    | AttachLost
    | Published
    | PublishRefused
    | KeyPinned
    | KeyChanged
    | LookupDone
    | PresenceChanged
    | RoleChanged
    | CallIncoming
    | CallRinging
    | CallAnswered
    | CallEnded
    | CallHoldChanged
    | CallTransferRequested
    | TurnGranted
    | DialBack
    | ReachDial
    | PromotionChecked
)
