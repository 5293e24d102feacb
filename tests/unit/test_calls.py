"""Call signaling between user cores through supernodes, on the fake network."""

from __future__ import annotations

import msgspec
import pytest

from peerphone.identity import NodeId
from peerphone.overlay.callmsg import (
    CallKind,
    decode_call_message,
    encode_call_message,
    make_call_message,
)
from peerphone.overlay.calls import ENDED_LINGER_S, RING_TIMEOUT_S, CallState
from peerphone.overlay.events import (
    CallAnswered,
    CallEnded,
    CallHoldChanged,
    CallIncoming,
    CallRinging,
    CallTransferRequested,
    TurnGranted,
)
from peerphone.overlay.node import NodeCore
from peerphone.wire import LookupResult, Message, Signal, SignalDeliver, SignalRelay
from tests.support.calls import (
    OFFER,
    of,
)
from tests.support.fakenet import FakeNet

ANSWER = "v=0\r\na=fingerprint:sha-256 11:22:33\r\n"


def network(n_users: int = 3, seed: int = 1) -> tuple[FakeNet, list[NodeCore]]:
    """Five supernodes and `n_users` of alice, bob, carol, logged in."""
    net = FakeNet(seed)
    tier = net.supernodes([f"sn{i}" for i in range(5)])
    users = net.log_in(tier, ["alice", "bob", "carol"][:n_users])
    net.run_until(1.0)
    return net, users


def place(net: FakeNet, caller: NodeCore, callee: str, referred_by: str = "") -> bytes:
    call_id, sends = caller.call(callee, OFFER, net.now, referred_by)
    net.call(caller, sends)
    return call_id


def answer(net: FakeNet, callee: NodeCore) -> bytes:
    (incoming,) = of(net, callee, CallIncoming)[-1:]
    assert isinstance(incoming, CallIncoming)
    net.call(callee, callee.accept_call(incoming.call_id, ANSWER, net.now))
    return incoming.call_id


def test_call_rings_is_answered_and_hung_up() -> None:
    net, (alice, bob, _) = network()
    call_id = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    (incoming,) = of(net, bob, CallIncoming)
    assert incoming == CallIncoming(call_id, "alice", OFFER, "")
    assert of(net, alice, CallRinging) == [CallRinging(call_id)]
    assert bob.calls.calls[call_id].peer_key == alice.client.user_keys.public  # checked
    answer(net, bob)
    net.run_until(net.now + 1.0)
    assert of(net, alice, CallAnswered) == [CallAnswered(call_id, ANSWER)]
    assert alice.calls.calls[call_id].state is CallState.ACTIVE
    net.call(bob, bob.hangup(call_id, net.now))
    net.run_until(net.now + 1.0)
    assert of(net, alice, CallEnded) == [CallEnded(call_id, "hung up", True)]
    assert of(net, bob, CallEnded) == [CallEnded(call_id, "hung up", False)]


def test_busy_callee_rejects_and_caller_can_cancel() -> None:
    net, (alice, bob, carol) = network()
    first = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    net.call(bob, bob.reject_call(first, "busy", net.now))
    net.run_until(net.now + 1.0)
    assert of(net, alice, CallEnded) == [CallEnded(first, "busy", True)]
    second = place(net, alice, "carol")
    net.run_until(net.now + 1.0)
    assert carol.calls.calls[second].state is CallState.RINGING
    net.call(alice, alice.hangup(second, net.now))
    net.run_until(net.now + 1.0)
    assert of(net, carol, CallEnded) == [CallEnded(second, "cancelled", True)]


def test_unanswered_call_is_cancelled_after_the_ring_timeout() -> None:
    net, (alice, bob, _) = network()
    call_id = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    rang_at = alice.calls.calls[call_id].deadline - RING_TIMEOUT_S
    net.run_until(rang_at + RING_TIMEOUT_S + 1.0)
    assert of(net, alice, CallEnded) == [CallEnded(call_id, "no answer", False)]
    assert of(net, bob, CallEnded) == [CallEnded(call_id, "no answer", True)]


def test_calling_someone_offline_fails_with_the_reason() -> None:
    net, (alice, _, _) = network()
    call_id = place(net, alice, "nobody")
    net.run_until(net.now + 10.0)
    (ended,) = of(net, alice, CallEnded)
    assert isinstance(ended, CallEnded) and ended.call_id == call_id
    assert ended.reason.startswith("nobody not found")


def test_hold_and_resume_reach_the_peer() -> None:
    net, (alice, bob, _) = network()
    call_id = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    answer(net, bob)
    net.run_until(net.now + 1.0)
    net.call(alice, alice.hold(call_id, True, net.now))
    net.run_until(net.now + 1.0)
    net.call(alice, alice.hold(call_id, False, net.now))
    net.run_until(net.now + 1.0)
    assert of(net, bob, CallHoldChanged) == [
        CallHoldChanged(call_id, True, True),
        CallHoldChanged(call_id, False, True),
    ]
    assert not bob.calls.calls[call_id].held_remote


def test_blind_transfer_sends_the_peer_on_and_the_transferor_leaves() -> None:
    net, (alice, bob, carol) = network()
    first = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    answer(net, bob)
    net.run_until(net.now + 1.0)
    net.call(alice, alice.transfer(first, "carol", net.now))
    net.run_until(net.now + 1.0)
    assert of(net, bob, CallTransferRequested) == [CallTransferRequested(first, "carol", "alice")]
    assert of(net, alice, CallEnded) == [CallEnded(first, "transferred to carol", True)]
    second = place(net, bob, "carol", referred_by="alice")  # what bob's application does
    net.run_until(net.now + 1.0)
    (incoming,) = of(net, carol, CallIncoming)
    assert incoming == CallIncoming(second, "bob", OFFER, "alice")
    answer(net, carol)
    net.run_until(net.now + 1.0)
    assert bob.calls.calls[second].state is CallState.ACTIVE
    assert alice.calls.calls[first].state is CallState.ENDED


def _rewrite_sdp(kind: CallKind) -> object:
    """A supernode that swaps the DTLS fingerprint inside `kind` messages it routes."""

    def tamper(src: NodeId, dst: NodeId, msg: Message) -> Message:
        if not isinstance(msg, (Signal, SignalRelay, SignalDeliver)):
            return msg
        cm = decode_call_message(msg.payload)
        if cm.kind is not kind:
            return msg
        forged = msgspec.structs.replace(
            cm, sdp=cm.sdp.replace("AA:BB", "EE:EE").replace("11:22", "EE:EE")
        )
        return msgspec.structs.replace(msg, payload=encode_call_message(forged))

    return tamper


@pytest.mark.parametrize("kind", [CallKind.INVITE, CallKind.ACCEPT])
def test_a_supernode_rewriting_the_sdp_fingerprint_makes_the_call_fail_closed(
    kind: CallKind,
) -> None:
    net, (alice, bob, _) = network()
    net.tamper = _rewrite_sdp(kind)  # type: ignore[assignment]
    call_id = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    if kind is CallKind.ACCEPT:
        answer(net, bob)
        net.run_until(net.now + 1.0)
    (ended,) = of(net, alice, CallEnded)
    assert isinstance(ended, CallEnded) and ended.call_id == call_id
    assert "signature check failed" in ended.reason
    assert not of(net, alice, CallAnswered)  # the altered answer never reached the application
    if kind is CallKind.INVITE:
        assert not of(net, bob, CallIncoming)  # the altered offer never rang
    else:
        assert of(net, bob, CallEnded)[0] == CallEnded(call_id, "signature check failed", True)


def test_an_invite_signed_by_another_key_than_the_directorys_is_refused() -> None:
    net, (alice, bob, mallory) = network()
    # mallory signs an invite claiming to be alice, with its own key
    cm = make_call_message(
        mallory.client.user_keys,
        call_id=bytes(16),
        kind=CallKind.INVITE,
        seq=1,
        sent_ms=int(net.now * 1000),
        from_user="alice",
        to_user="bob",
        from_node=mallory.id,
        reply_via=[bytes(mallory.client.primary or b"")],
        sdp=OFFER,
    )
    bob_sn = bob.client.primary
    assert bob_sn is not None and mallory.client.primary is not None
    net.call(
        mallory,
        [(mallory.client.primary, Signal(99, bob.id, [bytes(bob_sn)], encode_call_message(cm)))],
    )
    net.run_until(net.now + 2.0)
    assert not of(net, bob, CallIncoming)
    assert of(net, bob, CallEnded) == [
        CallEnded(bytes(16), "caller key does not match the directory", False)
    ]
    assert bob.client.pinned["alice"] == alice.client.user_keys.public


def test_replayed_invite_does_not_ring_twice() -> None:
    net, (alice, bob, _) = network()
    captured: list[Message] = []

    def record(src: NodeId, dst: NodeId, msg: Message) -> Message:
        if isinstance(msg, SignalDeliver) and dst == bob.id:
            captured.append(msg)
        return msg

    net.tamper = record
    call_id = place(net, alice, "bob")
    net.run_until(net.now + 1.0)
    net.call(bob, bob.reject_call(call_id, "declined", net.now))
    net.run_until(net.now + 1.0)
    sn = bob.client.primary
    assert sn is not None and captured
    net.send(sn, [(bob.id, captured[0])])  # the supernode replays the invite
    net.run_until(net.now + 1.0)
    assert bob.calls.refused["replayed or reordered"] == 1  # the ended call is still known
    net.run_until(net.now + ENDED_LINGER_S + 1.0)
    assert call_id not in bob.calls.calls
    net.send(sn, [(bob.id, captured[0])])  # and once the call is forgotten
    net.run_until(net.now + 1.0)
    assert bob.calls.refused["replayed invite"] == 1
    assert len(of(net, bob, CallIncoming)) == 1


def test_relay_credentials_come_from_our_own_supernode() -> None:
    net, (alice,) = network(1)
    net.call(alice, alice.client.request_turn(net.now))
    net.run_until(net.now + 1.0)
    (none,) = of(net, alice, TurnGranted)
    assert isinstance(none, TurnGranted) and none.urls == [] and "no relay" in none.reason
    primary = net.nodes[alice.client.primary or NodeId(b"")]
    assert primary.supernode is not None
    asked: list[NodeId] = []

    def issue(client: NodeId, now: float) -> tuple[list[str], str, str, float]:
        asked.append(client)
        return ["turn:10.0.0.1:3478?transport=udp"], f"{int(now) + 600}:x", "pw", now + 600

    primary.supernode.turn_issuer = issue
    net.call(alice, alice.client.request_turn(net.now))
    net.run_until(net.now + 1.0)
    grant = of(net, alice, TurnGranted)[-1]
    assert isinstance(grant, TurnGranted) and grant.urls == ["turn:10.0.0.1:3478?transport=udp"]
    assert grant.password == "pw" and grant.expires == pytest.approx(net.now - 1.0 + 600, abs=0.1)
    assert asked == [alice.id]


def test_an_invite_to_supernodes_the_callee_has_left_is_retried_after_a_new_lookup() -> None:
    net, (alice, bob, _) = network()
    old_presence = bob.client._presence  # names bob's supernodes at the time
    assert old_presence is not None
    old_via = [bytes(s) for s in (bob.client.primary, bob.client.backup) if s is not None]
    for sn in old_via:  # bob moves: his supernodes leave the tier (graceful)
        core = net.nodes[NodeId(sn)]
        net.call(core, core.logout(net.now))
    net.run_until(net.now + 5.0)
    assert bob.client.primary is not None and bytes(bob.client.primary) not in old_via
    stale = [True, True]  # both answers of the first lookup (primary and backup: bob is unpinned)

    def first_lookup_is_stale(src: NodeId, dst: NodeId, msg: Message) -> Message:
        # the first answers alice gets hold bob's old (genuine, signed) presence record
        if dst == alice.id and isinstance(msg, LookupResult) and stale:
            stale.pop()
            records = [r for r in msg.records if r.kind != old_presence.kind] + [old_presence]
            return msgspec.structs.replace(msg, records=records)
        return msg

    net.tamper = first_lookup_is_stale
    call_id = place(net, alice, "bob")
    net.run_until(net.now + 5.0)
    assert not stale  # the stale record was served
    assert alice.calls.calls[call_id].relooked
    assert [e.call_id for e in of(net, bob, CallIncoming) if isinstance(e, CallIncoming)] == [
        call_id
    ]
    assert of(net, alice, CallRinging) == [CallRinging(call_id)]
