"""A contact whose name the directory now binds to another key: the node keeps its pin,
refuses the new key, and says so once (KeyChanged) so that the user can be warned."""

from __future__ import annotations

from peerphone.identity import KeyPair
from peerphone.overlay.client import PIN_MISMATCH
from peerphone.overlay.events import KeyChanged, LookupDone, PresenceChanged
from peerphone.records import NameBody, PresenceBody, RecordKind, Status, make_record
from peerphone.wire import PresenceUpdate
from tests.support.calls import of
from tests.support.fakenet import FakeNet


def test_a_lookup_that_finds_another_key_warns_once_and_keeps_the_pin() -> None:
    net = FakeNet(seed=21)
    tier = net.supernodes([f"sn{i}" for i in range(5)])
    bob, alice = net.log_in(tier, ["bob", "alice"])
    net.run_until(2.0)
    old_key = KeyPair.generate().public  # what alice trusted for "bob" before
    alice.pin({"bob": old_key})
    for _ in range(2):
        req, sends = alice.lookup("bob", net.now)
        net.call(alice, sends)
        net.run_until(net.now + 2.0)
        done = [e for e in of(net, alice, LookupDone) if isinstance(e, LookupDone)]
        assert done[-1].req == req and done[-1].presence is None
        assert done[-1].reason == PIN_MISMATCH
    changes = [e for e in of(net, alice, KeyChanged) if isinstance(e, KeyChanged)]
    assert changes == [KeyChanged("bob", old_key, bob.user_keys.public)]  # once
    assert alice.pins()["bob"] == old_key


def test_one_replicas_watch_answer_never_raises_the_warning() -> None:
    """A watch is served by one replica: its word alone must not tell the user a contact's
    key changed (a hostile replica would scare users at will)."""
    net = FakeNet(seed=22)
    tier = net.supernodes([f"sn{i}" for i in range(5)])
    (alice,) = net.log_in(tier, ["alice"])
    net.run_until(2.0)
    real = KeyPair.generate()
    alice.pin({"bob": real.public})
    net.call(alice, alice.watch(["bob"], net.now))
    net.run_until(net.now + 1.0)
    forger = KeyPair.generate()
    expires = int((net.now + 600) * 1000)
    body = PresenceBody("bob", "x", Status.ONLINE, [], [], ["voice"], b"\x00" * 32)
    forged = [
        make_record(RecordKind.NAME, forger, 1, expires, NameBody("bob")),
        make_record(RecordKind.PRESENCE, forger, 1, expires, body),
    ]
    primary = alice.attached()[0]
    assert primary is not None
    net.send(primary, [(alice.id, PresenceUpdate(forged))])
    net.run_until(net.now + 1.0)
    assert not of(net, alice, KeyChanged)
    assert not of(net, alice, PresenceChanged)
    # the same way in, bob's real key: read and shown (so the forgery was read, not lost)
    genuine = [
        make_record(RecordKind.NAME, real, 1, expires, NameBody("bob")),
        make_record(RecordKind.PRESENCE, real, 1, expires, body),
    ]
    net.send(primary, [(alice.id, PresenceUpdate(genuine))])
    net.run_until(net.now + 1.0)
    seen = [e for e in of(net, alice, PresenceChanged) if isinstance(e, PresenceChanged)]
    assert [e.username for e in seen] == ["bob"]
    assert not of(net, alice, KeyChanged)


def test_a_watched_contact_with_another_key_is_checked_by_a_lookup_then_warned() -> None:
    """The watch (one replica) only hints; the lookup that follows (the replicas
    together) confirms, and only then is the user warned."""
    net = FakeNet(seed=23)
    tier = net.supernodes([f"sn{i}" for i in range(5)])
    bob, alice = net.log_in(tier, ["bob", "alice"])
    net.run_until(2.0)
    old_key = KeyPair.generate().public
    alice.pin({"bob": old_key})
    net.call(alice, alice.watch(["bob"], net.now))
    net.run_until(net.now + 3.0)
    changes = [e for e in of(net, alice, KeyChanged) if isinstance(e, KeyChanged)]
    assert changes == [KeyChanged("bob", old_key, bob.user_keys.public)]
    lookups = [e for e in of(net, alice, LookupDone) if isinstance(e, LookupDone)]
    assert lookups == []  # the check is the node's own: no application lookup was told
