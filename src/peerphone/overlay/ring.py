"""Consistent-hash ring over supernode ids: who is responsible for a directory key."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from peerphone.identity import NodeId


class Ring:
    """A sorted list of node ids; a key belongs to the `r` ids at or after it (wrapping)."""

    __slots__ = ("_ids",)

    def __init__(self, ids: list[NodeId] | None = None) -> None:
        self._ids: list[NodeId] = sorted(set(ids or []))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node: object) -> bool:
        if not isinstance(node, bytes):
            return False
        i = bisect_left(self._ids, node)
        return i < len(self._ids) and self._ids[i] == node

    def ids(self) -> list[NodeId]:
        return list(self._ids)

    def add(self, node: NodeId) -> bool:
        if node in self:
            return False
        insort(self._ids, node)
        return True

    def remove(self, node: NodeId) -> bool:
        i = bisect_left(self._ids, node)
        if i < len(self._ids) and self._ids[i] == node:
            del self._ids[i]
            return True
        return False

    def replicas(self, key: bytes, r: int) -> list[NodeId]:
        """The `r` (or fewer, on a small ring) successors of `key`, in ring order."""
        ids = self._ids
        n = len(ids)
        if n == 0:
            return []
        start = bisect_left(ids, key)
        return [ids[(start + i) % n] for i in range(min(r, n))]

    def affected_arc(self, node: NodeId, r: int) -> tuple[bytes, bytes] | None:
        """Keys whose replica set changes when `node` joins or leaves: the half-open arc
        (r-th predecessor of node, node]. Returns None when every key is affected."""
        ids = self._ids
        n = len(ids)
        if n <= r:
            return None
        # node sits (or would sit) at index i; it is a replica of keys whose primary index
        # is one of i-r+1 .. i, i.e. keys in (ids[i-r], node]; unchanged by inserting node.
        i = bisect_left(ids, node)
        return (ids[(i - r) % n], node)


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
