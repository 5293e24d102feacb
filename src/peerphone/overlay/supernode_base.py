"""The supernode role's state and configuration, shared by its parts.

`SupernodeCore` (supernode.py) is built in layers, each a module: this state, presence
watches (watches.py), the directory's replication and hand-over (replication.py), and the
core itself (clients, lookups, signaling, election, timers).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.directory import RecordStore
from peerphone.overlay.election import ElectionConfig
from peerphone.overlay.events import PromotionChecked
from peerphone.overlay.independence import member_group
from peerphone.overlay.lookups import LookupCoordinator
from peerphone.overlay.membership import Membership, MembershipConfig
from peerphone.overlay.reachability import ReachChecks, ReachVerifier
from peerphone.overlay.signals import SignalRouter
from peerphone.records import (
    Capacity,
    MemberBody,
    Record,
)

# node -> (IP, UDP port or None over TCP) its link comes from, where the runtime tells
ObservedAddress = Callable[[NodeId], tuple[str, int | None] | None]
# (client, now) -> TURN URLs, username, password, expiry (s): short-lived relay credentials
TurnIssuer = Callable[[NodeId, float], tuple[list[str], str, str, float]]

MAX_WATCHES_PER_CLIENT = 1000
MAX_EARLY_STORE_SENDERS = 64  # unknown supernodes whose hand-over we hold back
MAX_EARLY_STORE_RECORDS = 20_000  # records held back in all (~10 MB at most)
EARLY_STORE_TTL_S = 30.0  # the sender's member record arrives within seconds, or never
MAX_CACHED_GROUPS = 200_000  # address groups of members (one per member; MAX_MEMBERS)

# Replicas a watching supernode subscribes at. One is enough: ring changes move the
# subscription at once and it is renewed every resubscribe_interval_s anyway.
WATCH_FANOUT = 1


@dataclass(frozen=True, slots=True)
class SupernodeConfig:
    """Limits and timers of the supernode role."""

    replication: int = 4
    max_clients: int = 600  # admission limit on primary clients
    max_backups: int = 1200  # clients using us as their backup
    fetch_timeout_s: float = 0.8
    lookup_rounds: int = 2
    store_timeout_s: float = 1.5
    expire_interval_s: float = 60.0
    resubscribe_interval_s: float = 300.0
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)


@dataclass(slots=True)
class ClientEntry:
    """A client attached to this supernode."""

    node: NodeId
    primary: bool
    capacity: Capacity
    since: float
    key: bytes | None = None
    records: list[Record] = field(default_factory=list)
    watches: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class PendingStore:
    client: NodeId
    client_req: int
    outstanding: set[NodeId]
    accepted: int
    deadline: float
    reason: str = ""  # why a replica refused (e.g. the name is taken), for the client
    key: bytes = b""  # the user key published
    records: list[Record] = field(default_factory=list)
    taken: int = 0  # replicas that said the name belongs to another key


class SupernodeState:
    """Everything the supernode role holds; its parts (watches, replication, the core) are
    the subclasses that act on it."""

    def __init__(
        self,
        keys: KeyPair,
        body: MemberBody,
        now: float,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: SupernodeConfig | None = None,
        seed: bool = False,
    ) -> None:
        self.config = config or SupernodeConfig()
        self.me = keys.node_id
        self.rng = rng
        self.verifier = verifier
        self.seed = seed  # bootstrap supernodes never demote themselves
        self.started = now
        self.membership = Membership(keys, body, now, rng, verifier, self.config.membership)
        self.store = RecordStore(verifier)
        self.clients: dict[NodeId, ClientEntry] = {}
        self.primary_count = 0
        self.backup_count = 0
        self.retired = False
        self.retire_reason = ""
        self.admitting = True  # False while the owner's caps shed work: attaches redirected
        self.watching: dict[bytes, set[NodeId]] = {}  # key -> our clients watching it
        self._last_notified: dict[bytes, int] = {}
        self._last_group: dict[bytes, list[Record]] = {}  # what watchers last got, per key
        self.lookups = LookupCoordinator(
            self.me,
            verifier,
            self.store.get,
            self.config.fetch_timeout_s,
            self.config.lookup_rounds,
            self._group_of,
        )
        self.signals = SignalRouter(self.me, self._client_of, self._is_member)
        # set by the runtime that runs a TURN relay beside this supernode
        self.turn_issuer: TurnIssuer | None = None
        self._stores: dict[int, PendingStore] = {}
        self._groups: dict[NodeId, tuple[int, bytes]] = {}  # member -> (incarnation, group)
        # hand-overs from supernodes not (yet) known as members: sender -> (until, records)
        self._early_stores: dict[NodeId, tuple[float, list[Record]]] = {}
        self._req = 0
        self._next_expire = now + self.config.expire_interval_s
        self._next_resubscribe = now + self.config.resubscribe_interval_s
        self._next_election = now + rng.uniform(0.0, self.config.election.interval_s)
        self._last_promotion = -1e18
        self._promoted: dict[NodeId, float] = {}
        self.reach = ReachChecks(self.me, rng)  # candidates we have dialled back
        self.reach_verifier = ReachVerifier(self.me)  # dial-backs other members ask of us
        self.observed: ObservedAddress = lambda node: None  # set by NodeCore
        self.events: list[PromotionChecked] = []  # drained by NodeCore
        self.stats: dict[str, int] = {
            "redirected": 0,
            "promoted": 0,
            "rejected_records": 0,
            "stores_from_unknown": 0,
            "refused_shedding": 0,
            "redirected_shedding": 0,
        }

    @property
    def record(self) -> Record:
        return self.membership.record

    def _next_req(self) -> int:
        self._req += 1
        return self._req

    def _client_of(self, node: NodeId) -> NodeId | None:
        """`node` if it is attached to us (its link authenticated as that node id)."""
        return node if node in self.clients else None

    def _group_of(self, node: NodeId) -> bytes | None:
        """The address range whose vote `node` casts (see overlay.independence); None for a
        supernode no longer a member (removed since it was asked): its vote does not count."""
        member = self.membership.members.get(node)
        record = self.record if node == self.me else member.record if member else None
        if record is None:
            return None
        cached = self._groups.get(node)
        if cached is not None and record is not None and cached[0] == record.seq:
            return cached[1]
        group = member_group(node, record)
        if len(self._groups) >= MAX_CACHED_GROUPS:
            self._groups.clear()
        self._groups[node] = (record.seq, group)
        return group

    def _is_member(self, node: NodeId) -> bool:
        return node == self.me or node in self.membership.members
