"""Attachment, publishing, lookups and watches: client and supernode cores on a fake link."""

from __future__ import annotations

import pytest

from peerphone.overlay.client import ClientConfig, ClientState
from peerphone.overlay.events import (
    Attached,
    LookupDone,
    PresenceChanged,
    Published,
    PublishRefused,
)
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Status
from peerphone.wire import Attach, AttachAccept, AttachRedirect, Lookup, Publish, ReasonCode, Store
from tests.support.fakenet import FakeNet


def _tier(net: FakeNet, n: int = 5, config: SupernodeConfig | None = None) -> list:  # type: ignore[type-arg]
    return net.supernodes([f"sn{i}" for i in range(n)], config)


def test_login_attaches_primary_and_backup_and_publishes() -> None:
    net = FakeNet()
    tier = _tier(net)
    alice = net.node("alice")
    alice.learn_supernodes([c.supernode.record for c in tier], 0.0)
    net.call(alice, alice.login(0.0))
    # the first Attach leaves at once, asks for primary service
    first = net._queue[0]
    assert first[0] == pytest.approx(0.01) and isinstance(first[4], Attach) and first[4].primary
    net.run_until(1.0)
    assert alice.client.state is ClientState.ONLINE
    assert alice.client.primary is not None and alice.client.backup is not None
    assert alice.client.primary != alice.client.backup
    published = [e for e in net.events[alice.id] if isinstance(e, Published)]
    assert published and published[0].stored == 4  # replication factor
    attached = [e for e in net.events[alice.id] if isinstance(e, Attached)]
    assert attached[0].primary == alice.client.primary
    # Attach left at 0.00, the accept came back at 0.02 and the first presence was signed
    # then: the refresh is due exactly refresh_interval_s later
    publish_sent = [
        t for t, src, _, m in net.sent_log if src == alice.id and isinstance(m, Publish)
    ]
    assert publish_sent[0] == pytest.approx(0.02)
    assert alice.client._next_refresh == pytest.approx(
        0.02 + alice.client.config.refresh_interval_s
    )


def test_presence_stored_on_exactly_the_ring_replicas() -> None:
    net = FakeNet()
    tier = _tier(net, 6)
    alice = net.node("alice")
    alice.learn_supernodes([c.supernode.record for c in tier], 0.0)
    net.call(alice, alice.login(0.0))
    net.run_until(1.0)
    from peerphone.records import user_key

    key = user_key("alice")
    ring = tier[0].supernode.membership.ring
    expected = set(ring.replicas(key, 4))
    holders = {c.id for c in tier if c.supernode.store.get(key)}
    assert holders == expected


def test_refresh_publishes_higher_sequence_at_exact_time() -> None:
    net = FakeNet()
    tier = _tier(net)
    alice = net.node("alice", client=ClientConfig(refresh_interval_s=100.0, presence_ttl_s=300.0))
    alice.learn_supernodes([c.supernode.record for c in tier], 0.0)
    net.call(alice, alice.login(0.0))
    net.run_until(1.0)
    due = alice.client._next_refresh
    assert due is not None
    seq_before = alice.client._presence.seq  # type: ignore[union-attr]
    net.run_until(due - 0.001)
    assert alice.client._presence.seq == seq_before  # type: ignore[union-attr]
    net.run_until(due + 0.5)
    assert alice.client._presence.seq > seq_before  # type: ignore[union-attr]
    assert alice.client._next_refresh == pytest.approx(due + 100.0)


def test_lookup_finds_online_user_in_two_hops() -> None:
    net = FakeNet()
    tier = _tier(net, 6)
    alice, bob = net.log_in(tier, ["alice", "bob"])
    net.run_until(2.0)
    req, sends = alice.lookup("bob", net.now)
    net.call(alice, sends)
    net.run_until(4.0)
    done = [e for e in net.events[alice.id] if isinstance(e, LookupDone) and e.req == req]
    assert len(done) == 1
    assert done[0].presence is not None and done[0].status is Status.ONLINE
    assert done[0].hops in (1, 2)
    assert done[0].presence.owner == bob.client.user_keys.public
    # the lookup took client -> supernode -> replicas -> supernode -> client
    assert done[0].finished - done[0].started == pytest.approx(0.04 if done[0].hops == 2 else 0.02)


def test_lookup_of_unknown_user_reports_not_found() -> None:
    net = FakeNet()
    tier = _tier(net)
    alice = net.node("alice")
    alice.learn_supernodes([c.supernode.record for c in tier], 0.0)
    net.call(alice, alice.login(0.0))
    net.run_until(1.0)
    req, sends = alice.lookup("nobody", net.now)
    net.call(alice, sends)
    net.run_until(5.0)
    done = [e for e in net.events[alice.id] if isinstance(e, LookupDone) and e.req == req]
    assert done[0].presence is None and done[0].reason == "not found"


def test_lookup_survives_a_dead_replica() -> None:
    net = FakeNet()
    tier = _tier(net, 6)
    alice, _bob = net.log_in(tier, ["alice", "bob"])
    net.run_until(2.0)
    from peerphone.records import user_key

    ring = tier[0].supernode.membership.ring
    first = ring.replicas(user_key("bob"), 4)[0]
    if first in (alice.client.primary, alice.client.backup):
        first = ring.replicas(user_key("bob"), 4)[1]
    net.down.add(first)
    req, sends = alice.lookup("bob", net.now)
    net.call(alice, sends)
    net.run_until(8.0)
    done = [e for e in net.events[alice.id] if isinstance(e, LookupDone) and e.req == req]
    assert done and done[0].presence is not None


def test_full_supernode_redirects_and_client_follows_hint() -> None:
    net = FakeNet()
    tier = _tier(net, 4, SupernodeConfig(max_clients=1, max_backups=10))
    records = [c.supernode.record for c in tier]
    users = [net.node(f"u{i}") for i in range(4)]
    for user in users:
        user.learn_supernodes(records, 0.0)
        net.call(user, user.login(0.0))
    net.run_until(3.0)
    assert all(u.client.state is ClientState.ONLINE for u in users)
    for sn in tier:
        assert sn.supernode.primary_count <= 1
    assert net.sent(AttachRedirect)  # someone was refused with hints ...
    primaries = sorted(u.client.primary for u in users if u.client.primary)
    assert len(set(primaries)) == 4  # ... and every client found a free supernode


def test_attach_backs_off_exponentially_with_jitter() -> None:
    net = FakeNet()
    tier = _tier(net, 1)
    alice = net.node(
        "alice", client=ClientConfig(attach_timeout_s=2.0, backoff_base_s=1.0, backoff_max_s=8.0)
    )
    alice.learn_supernodes([tier[0].supernode.record], 0.0)
    net.down.add(tier[0].id)  # nobody answers
    net.call(alice, alice.login(0.0))
    net.run_until(60.0)
    attempts = [t for t, src, _, m in net.sent_log if src == alice.id and isinstance(m, Attach)]
    assert attempts[0] == 0.0
    assert len(attempts) >= 5
    for k in range(1, len(attempts)):
        # attempt k timed out 2 s after it was sent, then waited d/2..d, d = min(8, 2^(k-1))
        cap = min(8.0, 2.0 ** (k - 1))
        gap = attempts[k] - (attempts[k - 1] + 2.0)
        assert cap / 2 - 1e-9 <= gap <= cap + 1e-9, (k, gap)


def test_backoff_delays_double_and_cap() -> None:
    net = FakeNet()
    alice = net.node("alice", client=ClientConfig(backoff_base_s=1.0, backoff_max_s=8.0))
    client = alice.client
    client._failures = 0
    delays = []
    for _ in range(6):
        client._back_off(100.0)
        assert client._next_attempt is not None
        delays.append(client._next_attempt - 100.0)
    caps = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap


def test_primary_loss_moves_to_backup_and_republishes() -> None:
    net = FakeNet()
    tier = _tier(net)
    alice = net.node("alice")
    alice.learn_supernodes([c.supernode.record for c in tier], 0.0)
    net.call(alice, alice.login(0.0))
    net.run_until(1.0)
    old_primary, backup = alice.client.primary, alice.client.backup
    assert old_primary is not None and backup is not None
    seq = alice.client._presence.seq  # type: ignore[union-attr]
    dead = net.nodes[old_primary]
    net.kill(dead, notify_after_s=10.0)
    net.run_until(net.now + 2.0)
    assert alice.client.primary == backup
    assert alice.client._presence.seq > seq  # type: ignore[union-attr]
    from peerphone.records import PresenceBody, decode_body

    body = decode_body(alice.client._presence)  # type: ignore[arg-type]
    assert isinstance(body, PresenceBody)
    assert old_primary not in body.supernodes and backup in body.supernodes


def test_watch_reports_buddy_status_change() -> None:
    net = FakeNet()
    tier = _tier(net, 6)
    alice, bob = net.log_in(tier, ["alice", "bob"])
    net.call(alice, alice.watch(["bob"], 0.0))
    net.run_until(2.0)
    changes = [e for e in net.events[alice.id] if isinstance(e, PresenceChanged)]
    assert changes and changes[-1].status is Status.ONLINE
    net.call(bob, bob.set_status(Status.BUSY, net.now))
    t0 = net.now
    net.run_until(t0 + 1.0)
    changes = [e for e in net.events[alice.id] if isinstance(e, PresenceChanged)]
    assert changes[-1].status is Status.BUSY
    # set-status -> supernode -> replica -> watcher's supernode -> alice: 4 links of 10 ms
    stored_at = max(t for t, _, _, m in net.log if isinstance(m, Store))
    assert stored_at - t0 <= 0.05


def test_logout_publishes_offline_and_detaches() -> None:
    net = FakeNet()
    tier = _tier(net)
    alice, bob = net.log_in(tier, ["alice", "bob"])
    net.run_until(2.0)
    net.call(bob, bob.logout(net.now))
    net.run_until(3.0)
    assert bob.client.state is ClientState.OFFLINE
    assert all(bob.id not in c.supernode.clients for c in tier)
    req, sends = alice.lookup("bob", net.now)
    net.call(alice, sends)
    net.run_until(5.0)
    done = [e for e in net.events[alice.id] if isinstance(e, LookupDone) and e.req == req]
    assert done[0].status is Status.OFFLINE


def test_lookups_queue_while_attaching() -> None:
    net = FakeNet()
    tier = _tier(net)
    alice = net.node("alice")
    alice.learn_supernodes([c.supernode.record for c in tier], 0.0)
    net.call(alice, alice.login(0.0))
    req, sends = alice.lookup("alice", 0.0)  # before any supernode answered
    assert sends == []
    net.call(alice, sends)
    net.run_until(3.0)
    done = [e for e in net.events[alice.id] if isinstance(e, LookupDone) and e.req == req]
    assert done and done[0].presence is not None
    assert net.sent(Lookup, alice.id)


def state_of(core: NodeCore) -> ClientState:
    return core.client.state


def test_client_attaches_to_a_supernode_known_only_by_node_id() -> None:
    """Bootstrap by address: the runtime learns who answered; the core attaches there and
    learns the supernode's member record (and hints) from the AttachAccept."""
    net = FakeNet()
    tier = _tier(net, 5)
    alice = net.node("alice")
    net.call(alice, alice.login(0.0))
    net.run_until(5.0)
    assert state_of(alice) is ClientState.ATTACHING  # nothing known: backing off
    net.call(alice, alice.learn_bootstrap([tier[0].id], net.now))
    net.run_until(net.now + 1.0)
    assert state_of(alice) is ClientState.ONLINE
    assert alice.client.primary == tier[0].id
    assert tier[0].id in alice.client.host_cache  # the record came with the accept
    assert len(alice.client.host_cache) > 1  # and hints for a backup
    assert alice.client.backup is not None


def test_accept_with_someone_elses_member_record_is_refused() -> None:
    net = FakeNet()
    tier = _tier(net, 3)
    alice = net.node("alice")
    alice.learn_supernodes([tier[0].supernode.record], 0.0)
    net.call(alice, alice.login(0.0))
    attach = next(m for _, _, _, m in net.sent_log if isinstance(m, Attach))
    forged = AttachAccept(attach.req, tier[1].supernode.record, [])  # not tier[0]'s record
    out = alice.receive(forged, tier[0].id, 0.02)
    assert alice.client.primary is None
    assert tier[0].id in alice.client.refused
    assert all(not isinstance(m, Publish) for _, m in out)


def test_second_key_claiming_a_taken_name_is_refused_with_the_reason() -> None:
    net = FakeNet()
    tier = _tier(net)
    (first,) = net.log_in(tier, ["alice"])
    net.run_until(1.0)
    (impostor,) = net.log_in(tier, ["alice"])  # same name, another user key
    net.run_until(2.0)
    refused = [e for e in net.events[impostor.id] if isinstance(e, PublishRefused)]
    assert refused == [PublishRefused(ReasonCode.NAME_TAKEN)]
    assert impostor.client.name_refused
    assert not [e for e in net.events[impostor.id] if isinstance(e, Published)]
    # the directory still answers with the first owner's presence
    req, sends = first.lookup("alice", net.now)
    net.call(first, sends)
    net.run_until(3.0)
    (done,) = [e for e in net.events[first.id] if isinstance(e, LookupDone) and e.req == req]
    assert done.presence is not None and done.presence.owner == first.client.user_keys.public
    # and the refused client does not keep re-publishing on its refresh timer
    publishes = len(
        [m for _, s, _, m in net.sent_log if s == impostor.id and isinstance(m, Publish)]
    )
    net.run_until(3.0 + 2 * impostor.client.config.refresh_interval_s)
    assert publishes == len(
        [m for _, s, _, m in net.sent_log if s == impostor.id and isinstance(m, Publish)]
    )


def test_a_late_watcher_gets_the_current_presence_at_once() -> None:
    net = FakeNet()
    tier = _tier(net, 1)  # one supernode: both watchers share it
    _, bob, carol = net.log_in(tier, ["alice", "bob", "carol"])
    net.run_until(1.0)
    net.call(bob, bob.watch(["alice"], net.now))
    net.run_until(2.0)
    assert "alice" in bob.client.buddies
    net.call(carol, carol.watch(["alice"], net.now))  # the key is already subscribed
    net.run_until(3.0)
    seen = [e for e in net.events[carol.id] if isinstance(e, PresenceChanged)]
    assert [(e.username, e.status) for e in seen] == [("alice", Status.ONLINE)]
