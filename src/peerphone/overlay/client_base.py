"""The client role's state and configuration, shared by its parts.

`ClientCore` (client.py) is built in layers: this state, lookups and buddy presence
(client_lookups.py), and the core itself (attachment, publishing, relay credentials,
timers).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from peerphone.errors import LocalProtocolError
from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.events import (
    Event,
)
from peerphone.records import (
    Capacity,
    Record,
    Status,
    valid_username,
)
from peerphone.wire import (
    LookupResult,
    Send,
)

MAX_HOST_CACHE = 200  # supernode member records remembered (persisted by the runtime)
MAX_PENDING_LOOKUPS = 64
MAX_WATCHED = 1000  # buddies per user
INF = float("inf")
PIN_MISMATCH = "name bound to a different key than the pinned one"  # a lookup's refusal
REFUSAL_MEMORY_S = 60.0  # a supernode that refused us is not asked again for this long


class ClientState(enum.Enum):
    OFFLINE = "offline"
    ATTACHING = "attaching"
    ONLINE = "online"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Timers and limits of attachment and publishing."""

    refresh_interval_s: float = 600.0  # soft state: a presence lives 3 refreshes
    presence_ttl_s: float = 1800.0
    name_ttl_s: float = 30 * 86_400.0
    attach_timeout_s: float = 2.0
    publish_timeout_s: float = 2.0
    publish_retries: int = 3  # then the primary is treated as lost
    lookup_try_timeout_s: float = 2.0
    lookup_deadline_s: float = 6.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    immediate_redirects: int = 3  # hinted retries before backing off


@dataclass(frozen=True, slots=True)
class AttachTry:
    """The Attach we are waiting on."""

    req: int
    target: NodeId
    primary: bool  # asking it to be our primary (else our backup)
    deadline: float


@dataclass(frozen=True, slots=True)
class PublishTry:
    """The Publish we are waiting on."""

    req: int
    deadline: float
    tries: int


@dataclass(slots=True)
class PendingLookup:
    username: str
    started: float
    deadline: float
    try_deadline: float
    sent_to: NodeId | None
    buddy: bool = False  # started by a presence update of a watched, unpinned user
    # an unpinned name is asked of both our supernodes: one hostile supernode alone must
    # not decide whom we trust; `second` is the other one asked, `first` the first answer
    second: NodeId | None = None
    first: LookupResult | None = None


class ClientBase:
    """Everything the client role holds; lookups (client_lookups.py) and the core
    (client.py) are the subclasses that act on it."""

    def __init__(
        self,
        node_keys: KeyPair,
        user_keys: KeyPair,
        username: str,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: ClientConfig | None = None,
        device: str = "default",
    ) -> None:
        if not valid_username(username):
            raise LocalProtocolError(f"invalid username {username!r}")
        self.node_keys = node_keys
        self.user_keys = user_keys
        self.username = username
        self.device = device
        self.rng = rng
        self.verifier = verifier
        self.config = config or ClientConfig()
        self.state = ClientState.OFFLINE
        self.status = Status.ONLINE
        self.capacity = Capacity()
        self.started_at = 0.0
        self.host_cache: dict[NodeId, Record] = {}
        self.refused: dict[NodeId, float] = {}
        self.primary: NodeId | None = None
        self.backup: NodeId | None = None
        self.addresses: list[str] = []
        self.pinned: dict[str, bytes] = {}  # username -> user key (trust on first use)
        self._key_warned: set[tuple[str, bytes]] = set()  # KeyChanged already told
        self._key_checked: set[str] = set()  # names whose other key a lookup was asked about
        self.watched: set[str] = set()
        self.buddies: dict[str, Record] = {}  # last verified presence of each watched user
        self._events: list[Event] = []  # drained by pop_events
        self._req = 0
        self._attach: AttachTry | None = None
        self._failures = 0
        self._redirects = 0
        self._next_attempt: float | None = None
        self._name_record: Record | None = None
        self.name_refused = False  # the directory said our name belongs to another key
        self._turn_req = -1  # the TurnRequest awaiting its grant
        self._presence: Record | None = None
        self._seq = 0
        self._next_refresh: float | None = None
        self._publish: PublishTry | None = None
        self._lookups: dict[int, PendingLookup] = {}
        self._hint: list[NodeId] = []  # supernodes a redirect suggested, tried first
        # supernodes known only by their authenticated NodeId (a bootstrap address
        # answered); their member records arrive with the AttachAccept
        self.bootstrap_ids: list[NodeId] = []
        # managed mode: the only supernodes we may attach to (None: any)
        self.allowed: frozenset[NodeId] | None = None

    def has_events(self) -> bool:
        return bool(self._events)

    def pop_events(self, only: Callable[[Event], bool] | None = None) -> list[Event]:
        """Drain the events; with `only`, just those it selects (the rest stay, in order)."""
        if only is None:
            events, self._events = self._events, []
            return events
        taken = [e for e in self._events if only(e)]
        if taken:
            self._events = [e for e in self._events if not only(e)]
        return taken

    def _next_req(self) -> int:
        self._req += 1
        return self._req

    def connection_lost(self, peer: NodeId, now: float) -> list[Send]:
        """Our link to `peer` is gone (the core re-attaches); see ClientCore."""
        raise NotImplementedError
