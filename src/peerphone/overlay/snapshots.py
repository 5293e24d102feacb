"""Read-only views of a node's cores, for everything outside the overlay.

The daemon's status page, the control API, the benchmarks and the simulator's reports see
the cores through these frozen snapshots (built by `NodeCore.snapshot` and friends), never
through the cores' own attributes: a view cannot change a core, and a core can change its
insides without breaking its readers. Counters are copied into read-only mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from peerphone.identity import NodeId
from peerphone.overlay.calls import Call, CallState
from peerphone.overlay.client import ClientCore, ClientState
from peerphone.overlay.supernode import SupernodeCore
from peerphone.records import Capacity, Status


@dataclass(frozen=True, slots=True)
class SupernodeSnapshot:
    """What the supernode role holds and does right now."""

    clients_served: int  # attached with us as their primary (counted in the client table)
    primary_count: int  # the same, as the core keeps count of it (they must agree)
    backup_for: int  # attached with us as their backup
    max_clients: int
    records_held: int
    keys_held: int
    membership_size: int  # the tier as we know it, ourselves included
    seed: bool
    lookups_pending: int
    ring_position: bytes | None  # where we sit on the directory ring
    stats: Mapping[str, int]
    membership_refused: Mapping[str, int]  # member records refused, by reason


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node as a whole: its user, attachment, and the supernode role if it has one."""

    node_id: NodeId
    username: str
    user_key: bytes
    device: str
    state: ClientState
    status: Status
    name_refused: bool  # the directory said our name belongs to another key
    primary: NodeId | None
    backup: NodeId | None
    host_cache_size: int
    watched: int
    capacity: Capacity
    addresses: tuple[str, ...]
    supernode: SupernodeSnapshot | None


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """One call's signaling state."""

    call_id: bytes
    peer: str
    outgoing: bool
    state: CallState
    held_local: bool
    held_remote: bool
    end_reason: str
    remote_sdp: str


def supernode_snapshot(sn: SupernodeCore) -> SupernodeSnapshot:
    primaries = sum(1 for entry in sn.clients.values() if entry.primary)
    membership = sn.membership
    return SupernodeSnapshot(
        clients_served=primaries,
        primary_count=sn.primary_count,
        backup_for=len(sn.clients) - primaries,
        max_clients=sn.config.max_clients,
        records_held=sn.store.record_count,
        keys_held=len(sn.store.entries),
        membership_size=len(membership.members) + 1,
        seed=sn.seed,
        lookups_pending=len(sn.lookups),
        ring_position=membership.position(sn.me),
        stats=MappingProxyType(dict(sn.stats)),
        membership_refused=MappingProxyType(dict(membership.refused)),
    )


def node_snapshot(
    node_id: NodeId, client: ClientCore, addresses: list[str], sn: SupernodeCore | None
) -> NodeSnapshot:
    return NodeSnapshot(
        node_id=node_id,
        username=client.username,
        user_key=client.user_keys.public,
        device=client.device,
        state=client.state,
        status=client.status,
        name_refused=client.name_refused,
        primary=client.primary,
        backup=client.backup,
        host_cache_size=len(client.host_cache),
        watched=len(client.watched),
        capacity=client.capacity,
        addresses=tuple(addresses),
        supernode=supernode_snapshot(sn) if sn is not None else None,
    )


def call_snapshot(call: Call) -> CallSnapshot:
    return CallSnapshot(
        call_id=call.call_id,
        peer=call.peer_user,
        outgoing=call.outgoing,
        state=call.state,
        held_local=call.held_local,
        held_remote=call.held_remote,
        end_reason=call.end_reason,
        remote_sdp=call.remote_sdp,
    )
