"""Consistent-hash ring over supernode positions: who is responsible for a directory key.

A supernode's position is not its node id when it has a public address: a joiner could
grind keys until its id lands next to a name it wants to hold. `position_of` derives the
position from the supernode's public address range and its rank in that range instead
(the way CFS derived Chord ids from IP addresses), so choosing a position means choosing
an address range. Without a public address (loopback, a lab, an organisation's own
private tier) ranges cannot be told apart and the position is the node id.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right, insort

from peerphone.identity import NodeId

POSITION_DOMAIN = b"peerphone ring position v1\x00"


def position_of(node: NodeId, group: bytes | None, rank: int) -> bytes:
    """The ring position of `node`: from its public range `group` (overlay.independence)
    and its `rank` among that range's supernodes (by node id); its id without a range."""
    if group is None:
        return bytes(node)
    return hashlib.sha256(POSITION_DOMAIN + group + rank.to_bytes(2, "big")).digest()


class Ring:
    """Supernodes sorted by position; a key belongs to the `r` positions at or after it
    (wrapping). `Ring(ids)` places each node at its id."""

    __slots__ = ("_node_at", "_pos_of", "_positions")

    def __init__(self, ids: list[NodeId] | None = None) -> None:
        self._positions: list[bytes] = []
        self._node_at: dict[bytes, NodeId] = {}
        self._pos_of: dict[NodeId, bytes] = {}
        for node in ids or []:
            self.add(node)

    def __len__(self) -> int:
        return len(self._positions)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, bytes) and node in self._pos_of

    def ids(self) -> list[NodeId]:
        """The nodes in ring order."""
        return [self._node_at[p] for p in self._positions]

    def position(self, node: NodeId) -> bytes | None:
        return self._pos_of.get(node)

    def holder(self, position: bytes) -> NodeId | None:
        """The node at exactly `position`, if any."""
        return self._node_at.get(position)

    def add(self, node: NodeId, position: bytes | None = None) -> bool:
        """Place `node` at `position` (default: its id), moving it if it sat elsewhere.
        False if nothing changed or another node holds that position."""
        position = bytes(node) if position is None else position
        old = self._pos_of.get(node)
        if old == position:
            return False
        if position in self._node_at:
            return False
        if old is not None:
            self.remove(node)
        insort(self._positions, position)
        self._node_at[position] = node
        self._pos_of[node] = position
        return True

    def remove(self, node: NodeId) -> bool:
        position = self._pos_of.pop(node, None)
        if position is None:
            return False
        del self._node_at[position]
        del self._positions[bisect_left(self._positions, position)]
        return True

    def replicas(self, key: bytes, r: int) -> list[NodeId]:
        """The nodes at the `r` (or fewer, on a small ring) positions at or after `key`, in
        ring order."""
        positions = self._positions
        n = len(positions)
        if n == 0:
            return []
        start = bisect_left(positions, key)
        return [self._node_at[positions[(start + i) % n]] for i in range(min(r, n))]

    def affected_arc(self, position: bytes, r: int) -> tuple[bytes, bytes] | None:
        """Keys whose replica set changes when a node joins at, or leaves, `position`: the
        half-open arc (r-th predecessor of position, position]. None: every key."""
        positions = self._positions
        n = len(positions)
        if n <= r:
            return None
        # the node sits (or would sit) at index i; it is a replica of keys whose primary
        # index is one of i-r+1 .. i, i.e. keys in (positions[i-r], position]
        i = bisect_left(positions, position)
        return (positions[(i - r) % n], position)


def in_arc(key: bytes, arc: tuple[bytes, bytes] | None) -> bool:
    """Whether key lies in the half-open ring arc (low, high]; None means the whole ring."""
    if arc is None:
        return True
    low, high = arc
    if low < high:
        return low < key <= high
    return key > low or key <= high


def keys_in_arc(sorted_keys: list[bytes], arc: tuple[bytes, bytes] | None) -> list[bytes]:
    """Members of a sorted key list that lie in `arc` (see in_arc)."""
    if arc is None:
        return list(sorted_keys)
    low, high = arc
    if low < high:
        return sorted_keys[bisect_right(sorted_keys, low) : bisect_right(sorted_keys, high)]
    return (
        sorted_keys[bisect_right(sorted_keys, low) :]
        + sorted_keys[: bisect_right(sorted_keys, high)]
    )
