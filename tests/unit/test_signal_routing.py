"""Signals reach only the node the directory names, never a name squatter (issue 8, break 1).

Sans-I/O: the same attack as tests/test_security_processes.py, on the fake network.
"""

from __future__ import annotations

import msgspec

from peerphone.identity import KeyPair, NodeId
from peerphone.overlay.events import CallIncoming, LookupDone, PublishRefused
from peerphone.overlay.node import NodeCore
from peerphone.records import NameBody, PresenceBody, RecordKind, Status, make_record
from peerphone.wire import LookupResult, Message, Publish, PublishAck, ReasonCode, SignalDeliver
from tests.support.calls import OFFER, of
from tests.support.fakenet import FakeNet


def incoming(net: FakeNet, core: NodeCore) -> list[bytes]:
    return [e.call_id for e in of(net, core, CallIncoming) if isinstance(e, CallIncoming)]


def squatter_beside_alice(seed: int, name: str) -> tuple[FakeNet, NodeCore, NodeCore, NodeCore]:
    """Alice and carol logged in; a node called `name` attached to alice's primary."""
    net = FakeNet(seed)
    tier = net.supernodes([f"sn{i}" for i in range(5)])
    alice, carol = net.log_in(tier, ["alice", "carol"])
    net.run_until(1.0)
    primary = alice.client.primary
    assert primary is not None
    sn = net.nodes[primary].supernode
    assert sn is not None
    other = net.node(name)
    other.learn_supernodes([sn.record], net.now)
    net.call(other, other.login(net.now))
    net.run_until(net.now + 2.0)
    assert other.client.primary == primary
    return net, alice, carol, other


def test_a_name_squatter_on_the_callees_supernode_gets_no_signal() -> None:
    # mallory: a stock node named "alice" with her own key, attached to alice's primary
    net, alice, carol, mallory = squatter_beside_alice(7, "alice")
    assert [e for e in net.events[mallory.id] if isinstance(e, PublishRefused)]
    call_id, sends = carol.call("alice", OFFER, net.now)
    net.call(carol, sends)
    net.run_until(net.now + 2.0)
    assert incoming(net, alice) == [call_id]
    assert net.sent(SignalDeliver, src=alice.client.primary)
    assert all(dst != mallory.id for _, _, dst, _ in net.sent(SignalDeliver))
    assert not of(net, mallory, CallIncoming)


def test_a_replayed_presence_is_refused_and_routes_nothing() -> None:
    net, alice, carol, mallory = squatter_beside_alice(8, "mallory")
    primary = alice.client.primary
    assert primary is not None
    publishes = [m for _, _, _, m in net.sent(Publish, src=alice.id) if isinstance(m, Publish)]
    genuine = [r for m in publishes for r in m.records]
    name = next(r for r in genuine if r.kind is RecordKind.NAME)
    presence = next(r for r in reversed(genuine) if r.kind is RecordKind.PRESENCE)
    net.call(mallory, [(primary, Publish(999, [name, presence]))])
    net.run_until(net.now + 1.0)
    acks = [m for _, s, d, m in net.log if d == mallory.id and isinstance(m, PublishAck)]
    assert any(a.req == 999 and a.stored == 0 for a in acks)
    assert any(a.reason == ReasonCode.PRESENCE_OF_ANOTHER_NODE for a in acks)
    call_id, sends = carol.call("alice", OFFER, net.now)
    net.call(carol, sends)
    net.run_until(net.now + 2.0)
    assert incoming(net, alice) == [call_id]
    assert all(dst != mallory.id for _, _, dst, _ in net.sent(SignalDeliver))


def test_a_hostile_primary_cannot_decide_alone_whom_its_client_trusts() -> None:
    net, alice, carol, _ = squatter_beside_alice(9, "mallory")
    evil = KeyPair.from_seed(bytes(range(32)))
    primary = carol.client.primary
    assert primary is not None and carol.client.backup is not None

    def forge(src: NodeId, dst: NodeId, msg: Message) -> Message:
        # carol's primary answers her lookup of alice with records signed by its own key
        if src == primary and dst == carol.id and isinstance(msg, LookupResult):
            exp = int((net.now + 600) * 1000)
            body = PresenceBody("alice", "x", Status.ONLINE, [bytes(primary)], [], [], primary)
            forged = [
                make_record(RecordKind.NAME, evil, 2**60, exp, NameBody("alice")),
                make_record(RecordKind.PRESENCE, evil, 2**60, exp, body),
            ]
            return msgspec.structs.replace(msg, records=forged)
        return msg

    net.tamper = forge
    req, sends = carol.lookup("alice", net.now)
    net.call(carol, sends)
    net.run_until(net.now + 3.0)
    (done,) = [e for e in net.events[carol.id] if isinstance(e, LookupDone) and e.req == req]
    assert done.presence is None and done.reason == ReasonCode.CONFLICT
    assert "alice" not in carol.client.pinned
    net.tamper = None  # an honest answer from both: alice's real key
    req, sends = carol.lookup("alice", net.now)
    net.call(carol, sends)
    net.run_until(net.now + 3.0)
    assert carol.client.pinned["alice"] == alice.client.user_keys.public


def test_a_conflict_seen_by_one_supernode_is_not_overruled_by_the_other() -> None:
    net, _, carol, _ = squatter_beside_alice(10, "mallory")
    evil = KeyPair.from_seed(bytes(range(1, 33)))
    primary, backup = carol.client.primary, carol.client.backup
    assert primary is not None and backup is not None

    def split(src: NodeId, dst: NodeId, msg: Message) -> Message:
        if dst != carol.id or not isinstance(msg, LookupResult):
            return msg
        if src == backup:  # the honest side could not settle the owner
            return msgspec.structs.replace(msg, records=[], reason=ReasonCode.CONFLICT)
        exp = int((net.now + 600) * 1000)  # the hostile primary names its own key
        return msgspec.structs.replace(
            msg, records=[make_record(RecordKind.NAME, evil, 2**60, exp, NameBody("alice"))]
        )

    net.tamper = split
    req, sends = carol.lookup("alice", net.now)
    net.call(carol, sends)
    net.run_until(net.now + 3.0)
    (done,) = [e for e in net.events[carol.id] if isinstance(e, LookupDone) and e.req == req]
    assert done.presence is None and done.reason == ReasonCode.CONFLICT
    assert "alice" not in carol.client.pinned
