"""Supernode core: hand-over on joins and leaves, promotion, and refusing bad input."""

from __future__ import annotations

import msgspec

from peerphone.overlay.election import ElectionConfig
from peerphone.overlay.events import RoleChanged
from peerphone.overlay.independence import address_group
from peerphone.overlay.node import NodeCore
from peerphone.overlay.ring import position_of
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Capacity, RecordKind, user_key
from peerphone.wire import Join, Promote, Publish, PublishAck, Redirect, Store
from tests.support.fakenet import FakeNet


def online_users(net: FakeNet, tier: list[NodeCore], count: int) -> list[NodeCore]:
    records = [c.supernode.record for c in tier if c.supernode]
    users = [net.node(f"user{i}") for i in range(count)]
    for user in users:
        user.learn_supernodes(records, 0.0)
        net.call(user, user.login(net.now))
    net.run_until(net.now + 3.0)
    return users


def holders(tier: list[NodeCore], name: str) -> set[bytes]:
    return {c.id for c in tier if c.supernode is not None and c.supernode.store.get(user_key(name))}


def test_joining_supernode_receives_the_records_of_its_arc() -> None:
    net = FakeNet(seed=3)
    tier = net.supernodes([f"sn{i}" for i in range(5)])
    users = online_users(net, tier, 30)
    newcomer = net.node("newsn")
    newcomer.become_supernode(net.now, "test")
    assert newcomer.supernode is not None
    newcomer.supernode.membership.add_record(tier[0].supernode.record, net.now)  # type: ignore[union-attr]
    newcomer.supernode.membership.changes.clear()
    net.send(newcomer.id, [(tier[0].id, Join(newcomer.supernode.record, 0))])
    net.run_until(net.now + 60.0)  # gossip spreads the new member to everyone
    everyone = [*tier, newcomer]
    for core in everyone:
        assert core.supernode is not None
        assert len(core.supernode.membership.ring) == 6
    ring = newcomer.supernode.membership.ring
    for user in users:
        name = user.client.username
        expected = set(ring.replicas(user_key(name), 4))
        assert holders(everyone, name) == expected, name


def test_leaving_supernode_hands_over_and_redirects_clients() -> None:
    net = FakeNet(seed=4)
    tier = net.supernodes([f"sn{i}" for i in range(6)])
    users = online_users(net, tier, 30)
    leaver = max(tier, key=lambda c: c.supernode.primary_count if c.supernode else 0)
    served = [u for u in users if leaver.id in (u.client.primary, u.client.backup)]
    assert served
    net.call(leaver, leaver.logout(net.now))
    assert leaver.supernode is None
    assert any(isinstance(e, RoleChanged) and not e.supernode for e in net.events[leaver.id])
    assert any(src == leaver.id and isinstance(m, Redirect) for _, src, _, m in net.sent_log)
    net.run_until(net.now + 30.0)
    remaining = [c for c in tier if c is not leaver]
    for user in served:
        assert user.client.primary not in (None, leaver.id)
    ring = remaining[0].supernode.membership.ring  # type: ignore[union-attr]
    assert leaver.id not in ring
    for user in users:
        name = user.client.username
        assert holders(remaining, name) == set(ring.replicas(user_key(name), 4)), name


def test_overloaded_tier_promotes_an_eligible_client_which_takes_load() -> None:
    config = SupernodeConfig(
        max_clients=50,
        election=ElectionConfig(high_water=8, low_water=2, min_supernodes=4, interval_s=5.0),
    )
    net = FakeNet(seed=5)
    tier = net.supernodes([f"sn{i}" for i in range(4)], config)
    weak = Capacity(False, 100, 100, 100, 10)
    records = [c.supernode.record for c in tier if c.supernode]
    users = []
    for i in range(60):
        user = net.node(
            f"u{i}",
            capacity=Capacity(True, 86_400, 20_000, 50_000, 200) if i % 10 == 0 else weak,
            supernode=config,
        )
        user.learn_supernodes(records, 0.0)
        net.call(user, user.login(0.0))
        users.append(user)
    net.run_until(40.0)
    promoted = [u for u in users if u.supernode is not None]
    assert promoted, "no promotion although mean load is far above high water"
    assert all(u.client.capacity.reachable for u in promoted)  # only eligible ones
    assert net.sent(Promote)
    assert any(u.supernode.primary_count > 0 for u in promoted if u.supernode)


def test_store_from_a_non_member_is_ignored() -> None:
    net = FakeNet(seed=6)
    tier = net.supernodes([f"sn{i}" for i in range(4)])
    users = online_users(net, tier, 2)
    stranger = net.node("stranger")
    victim = tier[0]
    records = [r for r in victim.supernode.store.get(user_key(users[0].client.username))]  # type: ignore[union-attr]
    before = victim.supernode.store.record_count  # type: ignore[union-attr]
    assert victim.receive(Store(1, records), stranger.id, net.now) == []
    assert victim.supernode.store.record_count == before  # type: ignore[union-attr]


def test_publish_with_a_forged_signature_is_refused_with_reason() -> None:
    net = FakeNet(seed=7)
    tier = net.supernodes([f"sn{i}" for i in range(4)])
    users = online_users(net, tier, 1)
    alice = users[0]
    presence = alice.client._presence
    assert presence is not None and presence.kind is RecordKind.PRESENCE
    forged = msgspec.structs.replace(presence, seq=presence.seq + 10)  # signature no longer fits
    primary = net.nodes[alice.client.primary]  # type: ignore[index]
    out = primary.receive(Publish(99, [forged]), alice.id, net.now)
    acks = [m for _, m in out if isinstance(m, PublishAck)]
    assert acks and acks[0].stored == 0 and acks[0].reason == "bad signature"


def test_a_hand_over_that_overtakes_its_senders_member_record_is_kept_until_it_arrives() -> None:
    net = FakeNet(seed=5)
    tier = net.supernodes(["sn0", "sn1"])
    online_users(net, tier, 1)
    sender = tier[0].supernode
    assert sender is not None
    records = sender.store.get(user_key("user0"))
    assert records
    newcomer = net.node("newsn")
    sn = newcomer.become_supernode(net.now, "test")
    # the hand-over arrives before the newcomer knows its sender as a member
    assert sn.handle_store(Store(0, records), tier[0].id, net.now) == []
    assert not sn.store.get(user_key("user0"))
    assert sn.stats["stores_from_unknown"] == 1
    sn.membership.add_record(sender.record, net.now)  # the sender's record arrives
    sn.after_input(net.now)
    assert sn.store.get(user_key("user0")) == records


def test_a_joiner_in_a_shared_range_moves_a_member_and_every_record_follows() -> None:
    """Ring positions follow the public range and the rank in it (overlay.ring): a joiner
    with a smaller id in a member's /24 takes rank 0 and moves that member to rank 1. The
    moved member hands over what it no longer replicates; every record ends on exactly the
    replicas of the ring; and again when the joiner leaves."""
    net = FakeNet(seed=5)
    newcomer = net.node("newsn")
    cores = [net.node(f"sn{i}") for i in range(6)]
    shared = min((c for c in cores if c.id > newcomer.id), key=lambda c: c.id)
    for i, core in enumerate(cores):
        core.addresses[:] = ["44.0.9.1:4433" if core is shared else f"44.0.{i}.1:4433"]
        core.become_supernode(net.now, "test", seed=True)
    records = [c.supernode.record for c in cores if c.supernode is not None]
    for core in cores:
        assert core.supernode is not None
        for record in records:
            core.supernode.membership.add_record(record, net.now)
        core.supernode.membership.changes.clear()
    users = online_users(net, cores, 40)
    sn = shared.supernode
    assert sn is not None
    before = sn.membership.position(shared.id)
    newcomer.addresses[:] = ["44.0.9.2:4433"]
    newcomer.become_supernode(net.now, "test")
    assert newcomer.supernode is not None
    newcomer.supernode.membership.add_record(records[0], net.now)
    newcomer.supernode.membership.changes.clear()
    net.send(newcomer.id, [(cores[0].id, Join(newcomer.supernode.record, 0))])
    net.run_until(net.now + 60.0)
    everyone = [*cores, newcomer]
    group = address_group("44.0.9.1:4433")
    for core in everyone:
        assert core.supernode is not None
        m = core.supernode.membership
        assert m.position(newcomer.id) == position_of(newcomer.id, group, 0)
        assert m.position(shared.id) == position_of(shared.id, group, 1) != before
    ring = newcomer.supernode.membership.ring
    for user in users:
        name = user.client.username
        assert holders(everyone, name) == set(ring.replicas(user_key(name), 4)), name
    # the joiner leaves: the member moves back to rank 0, and again every record follows
    net.call(newcomer, newcomer.logout(net.now))
    net.run_until(net.now + 60.0)
    assert sn.membership.position(shared.id) == before
    ring = sn.membership.ring
    for user in users:
        name = user.client.username
        assert holders(cores, name) == set(ring.replicas(user_key(name), 4)), name
