"""The consistent-hash ring and the arc a membership change affects."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from peerphone.identity import NodeId
from peerphone.overlay.ring import Ring, in_arc, keys_in_arc, position_of


def nid(i: int) -> NodeId:
    return NodeId(hashlib.sha256(f"node{i}".encode()).digest())


def key(i: int) -> bytes:
    return hashlib.sha256(f"key{i}".encode()).digest()


def test_replicas_are_successors_in_ring_order_and_wrap() -> None:
    ids = sorted(nid(i) for i in range(6))
    ring = Ring(ids)
    assert ring.replicas(ids[2], 3) == ids[2:5]  # a key equal to an id belongs to it first
    just_after_last = ids[-1][:-1] + bytes([ids[-1][-1] + 1]) if ids[-1][-1] < 255 else b"\xff" * 32
    assert ring.replicas(just_after_last, 2) == ids[:2]  # wraps to the start
    assert ring.replicas(key(1), 10) == ring.replicas(key(1), 6)  # never more than the ring
    assert Ring().replicas(key(1), 4) == []


def test_add_remove_and_contains() -> None:
    ring = Ring([nid(1)])
    assert ring.add(nid(2)) and not ring.add(nid(2))
    assert nid(2) in ring and len(ring) == 2
    assert ring.remove(nid(2)) and not ring.remove(nid(2))
    assert nid(2) not in ring and "text" not in ring


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    nodes=st.sets(st.integers(0, 10_000), min_size=1, max_size=30),
    changed=st.integers(10_001, 20_000),
    r=st.integers(1, 5),
    joined=st.booleans(),
)
def test_affected_arc_covers_every_key_whose_replicas_change(
    nodes: set[int], changed: int, r: int, joined: bool
) -> None:
    before = Ring([nid(i) for i in nodes])
    after = Ring([nid(i) for i in nodes])
    after.add(nid(changed))
    if not joined:
        before, after = after, before
    # the arc is computed on the ring as it is after the change, as the supernode does
    arc = after.affected_arc(nid(changed), r)
    for k in range(300):
        kk = key(k)
        if before.replicas(kk, r) != after.replicas(kk, r):
            assert in_arc(kk, arc), (k, r, joined)


def test_keys_in_arc_matches_in_arc_including_wraparound() -> None:
    keys = sorted(key(i) for i in range(200))
    for low_i, high_i in [(10, 50), (150, 20), (0, 199)]:
        arc = (keys[low_i], keys[high_i])
        assert keys_in_arc(keys, arc) == [k for k in keys if in_arc(k, arc)] or (
            sorted(keys_in_arc(keys, arc)) == sorted(k for k in keys if in_arc(k, arc))
        )
    assert keys_in_arc(keys, None) == keys


def test_nodes_sit_at_their_positions_and_move_when_placed_again() -> None:
    ring = Ring()
    a, b = nid(1), nid(2)
    assert ring.add(a, key(10)) and ring.add(b, key(20))
    assert ring.position(a) == key(10) and ring.holder(key(20)) == b
    assert ring.replicas(key(10), 1) == [a]  # a key belongs to the position at or after it
    assert not ring.add(a, key(10))  # already there
    assert not ring.add(a, key(20))  # b's place: refused, a stays
    assert ring.position(a) == key(10)
    assert ring.add(a, key(30)) and ring.position(a) == key(30) and ring.holder(key(10)) is None
    assert len(ring) == 2 and sorted(ring.ids()) == sorted([a, b])
    assert ring.remove(a) and ring.position(a) is None and a not in ring


def test_a_position_follows_the_range_and_rank_not_the_key() -> None:
    group = b"net:" + bytes([44, 5, 6, 0, 24])
    assert position_of(nid(1), group, 0) == position_of(nid(2), group, 0)
    assert position_of(nid(1), group, 0) != position_of(nid(1), group, 1)
    assert position_of(nid(1), None, 0) == bytes(nid(1))  # no public range: the id
