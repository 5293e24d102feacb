"""Acceptance tests of calls with real `peerphone node` processes behind real NATs (netlab.py).

One supernode on a public host runs the overlay (UDP 4433, TCP carrier on 443) and the
STUN/TURN relay (UDP 3478; TURN over TCP on 443, shared with the carrier), allowed to relay
inside the lab's 10.99.0.0/24. Users sit behind port-restricted cone NATs (alice, bob,
carol), symmetric NATs (sym1, sym2) and a firewall that forwards only outbound TCP 443
(fw). Every user auto-answers, playing its own seeded test signal and recording what it
hears; callers play another seeded signal and record too, so each call checks the audio
both ways (normalised cross-correlation after alignment, as in test_media.py).

Everything is driven through the CLI inside each user's namespace (`call`, `calls`,
`hold`, `transfer`, `hangup`, `status`). Bytes on the wire of the direct call are counted
by nftables in the caller's namespace: UDP to and from the callee's public (NAT) address,
i.e. every STUN, DTLS, SRTP and SRTCP datagram of the call and nothing of the overlay.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peerphone.media import reference_signal
from tests.support.audio import read_wav, windowed_correlation, write_wav
from tests.support.lab_probe import WireRate, rate_of
from tests.support.netlab import INTERNET_NET, NatKind, NetLab, require_available
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    Node,
    bootstrap_list,
    logs,
    spawn,
    start_supernodes,
    wait_all_ready,
    wait_for,
)

RATE = 48_000
SIGNAL_S = 5.0  # each side's test signal
TALK_S = SIGNAL_S + 1.5  # a call stays up this long once connected (signal + jitter slack)
CALL_CLI_TIMEOUT_S = 70.0  # `peerphone call` gives up after 60 s itself
END_TIMEOUT_S = 10.0  # hangup until both sides show the call ended (recordings closed)
SIGNAL_TIMEOUT_S = 15.0  # hold/transfer requests until the peer shows their effect
MIN_CORRELATION = 0.9
HELD_CALL_MIN_CORRELATION = 0.5  # a recording with a held (silent) stretch in it
WIRE_LIMIT_KBPS = 48.0  # the budget per direction for a voice call
RELAY_SUBNET = f"{INTERNET_NET}.0/24"  # the lab's "internet" is private: allow our relay there
SUPERNODE_OPTIONS = ("--turn-port", "3478", "--relay-allow", RELAY_SUBNET)
USERS: dict[str, NatKind] = {
    "alice": "cone",
    "bob": "cone",
    "carol": "cone",
    "sym1": "symmetric",
    "sym2": "symmetric",
    "fw": "firewall443",
}
SEEDS = {name: 100 + i for i, name in enumerate(USERS)}  # what each user says when answering
CALLER_SEED_OFFSET = 50  # what a user says when calling


@dataclass
class Users:
    """The module's lab: the supernode, the users and their files."""

    lab: NetLab
    root: Path
    supernode: Node
    nodes: dict[str, Node]

    def involved(self, *names: str) -> list[Node]:
        """The supernode and the named users (whose logs a failure shows)."""
        return [self.supernode, *(self.nodes[name] for name in names)]


def signal_file(root: Path, seed: int) -> Path:
    path = root / f"signal-{seed}.wav"
    if not path.exists():
        write_wav(path, reference_signal(seed, SIGNAL_S), RATE, 1)
    return path


def answered_dir(root: Path, name: str) -> Path:
    """Where `name` records the calls it auto-answers (call-<id>.wav)."""
    return root / f"{name}-answered"


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Users]:
    require_available()
    root = tmp_path_factory.mktemp("netns-calls")
    with NetLab() as lab:
        (supernode,) = start_supernodes(lab, root, 1, SUPERNODE_OPTIONS)
        bootstrap = bootstrap_list(supernode)
        nodes: dict[str, Node] = {}
        for name, kind in USERS.items():
            heard = answered_dir(root, name)
            heard.mkdir()
            extra = ["--auto-answer", "--answer-play", str(signal_file(root, SEEDS[name]))]
            extra += ["--answer-record", str(heard)]
            host = lab.nat_host(name, kind)
            nodes[name] = spawn(lab, host, name, root, "client", bootstrap, extra=extra)
        wait_all_ready(list(nodes.values()), ATTACH_TIMEOUT_S)
        yield Users(lab, root, supernode, nodes)


# -- driving calls -----------------------------------------------------------------------


def calls_of(node: Node) -> list[dict[str, Any]]:
    code, out, err = node.cli("calls")
    assert code == 0 and isinstance(out, list), f"calls on {node.name}: {code} {err}"
    return out


def call_view(node: Node, call_id: str) -> dict[str, Any] | None:
    return next((c for c in calls_of(node) if c["call_id"] == call_id), None)


def action(node: Node, *args: str) -> None:
    code, out, err = node.cli(*args, json_out=False)
    assert code == 0, f"{args} on {node.name}: exit {code}: {err} {out}\n{node.log_tail()}"


def place_call(users: Users, caller: str, callee: str, play: Path, record: Path) -> dict[str, Any]:
    """`peerphone call` until connected (the call stays up); its JSON."""
    node = users.nodes[caller]
    started = time.monotonic()
    code, out, err = node.cli(
        "call", callee, "--play", str(play), "--record", str(record), timeout_s=CALL_CLI_TIMEOUT_S
    )
    took = time.monotonic() - started
    involved = users.involved(caller, callee)
    if code != 0 or not isinstance(out, dict):
        pytest.fail(f"{caller} -> {callee}: exit {code} {out} {err}\n{logs(involved)}", False)
    print(f"{caller} -> {callee}: connected, CLI returned after {took:.2f} s: {json.dumps(out)}")
    return out


def incoming_call(node: Node, peer: str, since: set[str]) -> dict[str, Any] | None:
    """The newest call on `node` from `peer` not in `since` (call ids), if any."""
    for call in reversed(calls_of(node)):
        fresh = call["call_id"] not in since
        if fresh and call["peer"] == peer and call["direction"] == "incoming":
            return call
    return None


def wait_ended(node: Node, call_id: str, involved: list[Node]) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        view = call_view(node, call_id)
        return view if view is not None and view["state"] == "ended" else None

    return wait_for(f"call {call_id[:8]} ended on {node.name}", ended, END_TIMEOUT_S, involved)


def audio_score(played_seed: int, recording: Path) -> float:
    """Correlation of a recording with the test signal of `played_seed`, second by second
    (0.0: no audio): the receiver's jitter buffer may move the timeline."""
    rate, heard = read_wav(recording)
    if rate != RATE or len(heard) < RATE // 2:
        print(f"{recording}: {len(heard)} samples at {rate} Hz")
        return 0.0
    played = np.array(reference_signal(played_seed, SIGNAL_S), dtype=np.float64)
    return windowed_correlation(played, heard)


def expect(condition: bool, what: str, nodes: list[Node]) -> None:
    """Fail with `what` and the nodes' log tails unless `condition`."""
    if not condition:
        pytest.fail(f"{what}\n{logs(nodes)}", pytrace=False)


WIRE_TABLE = "calls_test"


def count_udp_with(users: Users, name: str, peer_addr: str) -> None:
    """Count (nftables, in `name`'s namespace) the UDP datagrams to and from `peer_addr`."""
    rules = f"""
table inet {WIRE_TABLE} {{
    counter sent {{}}
    counter received {{}}
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {peer_addr} meta l4proto udp counter name "sent";
    }}
    chain in {{
        type filter hook input priority 0; policy accept;
        ip saddr {peer_addr} meta l4proto udp counter name "received";
    }}
}}
"""
    users.lab.exec(users.nodes[name].host, ["nft", "-f", "-"], input=rules)


@dataclass(frozen=True, slots=True)
class WireCount:
    """UDP to and from the peer, counted in one namespace at one time: packets, IP bytes."""

    at: float  # time.monotonic()
    packets_sent: int
    ip_bytes_sent: int
    packets_received: int
    ip_bytes_received: int


def read_wire(users: Users, name: str) -> WireCount:
    listing = users.lab.exec(users.nodes[name].host, ["nft", "-j", "list", "counters"])
    found = {
        item["counter"]["name"]: item["counter"]
        for item in json.loads(listing)["nftables"]
        if "counter" in item and item["counter"]["table"] == WIRE_TABLE
    }
    sent, received = found["sent"], found["received"]
    return WireCount(
        time.monotonic(), sent["packets"], sent["bytes"], received["packets"], received["bytes"]
    )


def wire_rates(before: WireCount, after: WireCount) -> tuple[WireRate, WireRate]:
    """(sent, received) rates between two counts."""
    seconds = after.at - before.at
    return (
        rate_of(
            after.packets_sent - before.packets_sent,
            after.ip_bytes_sent - before.ip_bytes_sent,
            seconds,
        ),
        rate_of(
            after.packets_received - before.packets_received,
            after.ip_bytes_received - before.ip_bytes_received,
            seconds,
        ),
    )


@dataclass
class CallResult:
    """A call from its caller's side and its callee's, after both hung up."""

    nodes: list[Node]  # the supernode, the caller, the callee
    caller: dict[str, Any]  # `call` JSON once connected
    caller_final: dict[str, Any]  # `calls` entry after the end
    callee_final: dict[str, Any]
    caller_heard: float  # correlation of what each side recorded with what the other played
    callee_heard: float
    relay_before: dict[str, Any]  # the supernode's sharing.relay before, during, after
    relay_during: dict[str, Any]
    relay_after: dict[str, Any]
    wire: tuple[WireRate, WireRate] | None  # the caller's (sent, received), if counted


def sharing(users: Users) -> dict[str, Any]:
    st = users.supernode.status()
    assert st is not None, users.supernode.log_tail()
    relay = st["sharing"]["relay"]
    assert relay is not None, st["sharing"]
    return dict(relay)


def full_call(users: Users, caller: str, callee: str, count_wire: bool = False) -> CallResult:
    """A call of TALK_S seconds with a test signal each way; both sides' results.

    With `count_wire`, the caller's UDP to and from the callee's public address is counted
    from the moment the call is connected until just before the hangup."""
    root = users.root
    seed = SEEDS[caller] + CALLER_SEED_OFFSET
    heard = root / f"{caller}-heard-{callee}.wav"
    callee_node = users.nodes[callee]
    known = {c["call_id"] for c in calls_of(callee_node)}
    relay_before = sharing(users)
    if count_wire:
        count_udp_with(users, caller, callee_node.host.public_addr)
    call = place_call(users, caller, callee, signal_file(root, seed), heard)
    wire_start = read_wire(users, caller) if count_wire else None
    call_id = call["call_id"]
    involved = users.involved(caller, callee)
    incoming = wait_for(
        f"{callee} sees the call from {caller}",
        lambda: incoming_call(callee_node, caller, known),
        SIGNAL_TIMEOUT_S,
        involved,
    )
    time.sleep(TALK_S / 2)
    relay_during = sharing(users)
    time.sleep(TALK_S / 2)
    wire = None if wire_start is None else wire_rates(wire_start, read_wire(users, caller))
    action(users.nodes[caller], "hangup", call_id)
    caller_final = wait_ended(users.nodes[caller], call_id, involved)
    callee_final = wait_ended(callee_node, incoming["call_id"], involved)
    relay_after = sharing(users)
    recorded = answered_dir(root, callee) / f"call-{incoming['call_id']}.wav"
    return CallResult(
        involved,
        call,
        caller_final,
        callee_final,
        audio_score(SEEDS[callee], heard),
        audio_score(seed, recorded),
        relay_before,
        relay_during,
        relay_after,
        wire,
    )


def relayed_bytes(result: CallResult) -> int:
    """What the supernode's relay moved (both directions) while the call ran."""
    after, before = result.relay_after, result.relay_before
    return int(after["total_bytes_relayed"] - before["total_bytes_relayed"])


def check_call(label: str, result: CallResult, path: str) -> None:
    """Report the call; fail (with the logs) unless it went by `path` and the audio arrived
    intact both ways."""
    c, f, callee = result.caller, result.caller_final, result.callee_final
    print(
        f"{label}: path {c['path']}, setup {c['setup_ms']} ms (caller: offer to connected),"
        f" {callee['setup_ms']} ms (callee: offer in to connected), rtt {f['rtt_ms']} ms,"
        f" bitrate {f['bitrate_kbps']} kbit/s over {f['connected_s']} s, correlation"
        f" caller->callee {result.callee_heard:.4f}, callee->caller {result.caller_heard:.4f},"
        f" pair {c['local_candidate']} -> {c['remote_candidate']},"
        f" relayed {relayed_bytes(result)} bytes"
    )
    nodes = result.nodes
    for side, view in (("caller", c), ("caller at the end", f), ("callee at the end", callee)):
        expect(view["path"] == path, f"{label}: {side} path {view['path']}: {view}", nodes)
    expect(c["setup_ms"] is not None, f"{label}: no setup time once connected: {c}", nodes)
    for direction, score in (
        ("caller->callee", result.callee_heard),
        ("callee->caller", result.caller_heard),
    ):
        expect(score >= MIN_CORRELATION, f"{label}: {direction} correlation {score}", nodes)


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct_call(users: Users) -> CallResult:
    """alice (cone) calls bob (cone), bytes on the wire counted at alice."""
    return full_call(users, "alice", "bob", count_wire=True)


def test_cone_to_cone_call_goes_direct(direct_call: CallResult) -> None:
    check_call("cone -> cone", direct_call, "direct")
    assert relayed_bytes(direct_call) == 0, direct_call.relay_after  # none of it relayed


def test_direct_call_uses_at_most_48_kbits_per_direction_on_the_wire(
    direct_call: CallResult,
) -> None:
    """Whole packets (headers included) of every datagram between alice and bob's NAT
    (STUN consent, SRTP, SRTCP), over the call, counted as IPv4 (the lab has no IPv6) and
    checked as IPv6, the worst case (20 bytes more a packet); the UDP payload is printed too."""
    assert direct_call.wire is not None
    sent, received = direct_call.wire
    final = direct_call.caller_final
    print(
        f"direct call on the wire (alice's namespace, UDP to/from bob's NAT address):"
        f" alice->bob {sent.udp_payload_kbps} kbit/s UDP payload ({sent.ip_kbps} kbit/s of"
        f" IPv4 packets, {sent.packets_per_s} packets/s), bob->alice"
        f" {received.udp_payload_kbps} kbit/s UDP payload ({received.ip_kbps} kbit/s IPv4,"
        f" {received.packets_per_s} packets/s); as IPv6 packets {sent.ipv6_kbps} and"
        f" {received.ipv6_kbps} kbit/s; the call's own bitrate_kbps"
        f" {final['bitrate_kbps']}"
    )
    for rate in (sent, received):
        # the call did flow: 25 packets/s of 40 ms while the signal plays (SIGNAL_S of the
        # TALK_S), then DTX: one packet per 400 ms
        assert rate.packets_per_s > 0.8 * 25 * SIGNAL_S / TALK_S, rate
        assert rate.ip_kbps <= rate.ipv6_kbps <= WIRE_LIMIT_KBPS, rate  # worst case: IPv6
    for key in ("sent", "received"):
        assert 0 < final["bitrate_kbps"][key] <= WIRE_LIMIT_KBPS, final


def test_symmetric_to_symmetric_call_goes_through_the_relay(users: Users) -> None:
    result = full_call(users, "sym1", "sym2")
    check_call("symmetric -> symmetric", result, "relay")
    print(f"relay allocations during the call: {json.dumps(result.relay_during['per_allocation'])}")
    expect(result.relay_after["total_bytes_relayed"] > 0, "nothing relayed", result.nodes)
    expect(relayed_bytes(result) > 0, f"not relayed: {result.relay_after}", result.nodes)


def test_firewalled_host_calls_a_cone_host_through_turn_over_tcp_443(users: Users) -> None:
    result = full_call(users, "fw", "carol")
    check_call("firewall443 -> cone", result, "relay")
    allocations = result.relay_during["per_allocation"]
    print(f"relay allocations during the call: {json.dumps(allocations)}")
    expect(relayed_bytes(result) > 0, f"not relayed: {result.relay_after}", result.nodes)
    # fw's own allocation (from its NAT's address; TCP 443 is the only way out) is on TCP
    fw_nat = users.nodes["fw"].host.public_addr
    mine = [a for a in allocations if a["client"].rsplit(":", 1)[0] == fw_nat]
    expect(bool(mine), f"no allocation of {fw_nat}: {allocations}", result.nodes)
    expect(all(a["transport"] == "tcp" for a in mine), f"not TCP: {mine}", result.nodes)
    expect(sum(a["bytes_to_peers"] for a in mine) > 0, f"idle: {mine}", result.nodes)
    expect(result.caller["local_candidate"].startswith("relay "), str(result.caller), result.nodes)


def test_hold_resume_and_transfer_with_three_users(users: Users) -> None:
    """alice calls bob, holds, resumes, then transfers bob to carol: bob's daemon calls
    carol by itself, carol (auto-answer) talks with bob, alice's call is over."""
    alice, bob, carol = (users.nodes[n] for n in ("alice", "bob", "carol"))
    involved = users.involved("alice", "bob", "carol")
    known_bob = {c["call_id"] for c in calls_of(bob)}
    known_carol = {c["call_id"] for c in calls_of(carol)}
    root = users.root
    play = signal_file(root, SEEDS["alice"] + CALLER_SEED_OFFSET)
    call_id = place_call(users, "alice", "bob", play, root / "alice-heard-bob-2.wav")["call_id"]
    at_bob = wait_for(
        "bob sees alice's call",
        lambda: incoming_call(bob, "alice", known_bob),
        SIGNAL_TIMEOUT_S,
        involved,
    )
    bob_call_id = at_bob["call_id"]
    expect(at_bob["held"] is False, f"held from the start: {at_bob}", involved)

    def bob_sees(held: bool) -> dict[str, Any] | None:
        view = call_view(bob, bob_call_id)
        return view if view is not None and view["held"] is held else None

    # -- hold and resume
    started = time.monotonic()
    action(alice, "hold", call_id)
    held = wait_for("bob sees the call held", lambda: bob_sees(True), SIGNAL_TIMEOUT_S, involved)
    held_s = time.monotonic() - started
    expect(held["state"] == "active", f"held call not active at bob: {held}", involved)
    at_alice = call_view(alice, call_id)
    expect(at_alice is not None and at_alice["held"] is True, f"alice: {at_alice}", involved)
    started = time.monotonic()
    action(alice, "hold", call_id, "--resume")
    resumed = wait_for(
        "bob sees the call resumed", lambda: bob_sees(False), SIGNAL_TIMEOUT_S, involved
    )
    resumed_s = time.monotonic() - started
    expect(resumed["state"] == "active", f"resumed call not active at bob: {resumed}", involved)
    print(f"hold seen by bob {held_s:.2f} s after `hold` on alice, resume {resumed_s:.2f} s")

    # -- blind transfer: alice sends bob on to carol
    started = time.monotonic()
    action(alice, "transfer", call_id, "carol")
    old_at_bob = wait_ended(bob, bob_call_id, involved)
    reason = old_at_bob["end_reason"]
    expect("transfer" in reason and "carol" in reason, f"bob's old call: {old_at_bob}", involved)
    expect(old_at_bob["transferred_to"] == "carol", f"bob's old call: {old_at_bob}", involved)

    def carol_active() -> dict[str, Any] | None:
        view = incoming_call(carol, "bob", known_carol)
        return view if view is not None and view["state"] == "active" else None

    at_carol = wait_for("carol in a call with bob", carol_active, SIGNAL_TIMEOUT_S, involved)
    transfer_s = time.monotonic() - started

    def bob_to_carol() -> dict[str, Any] | None:
        for view in calls_of(bob):
            if view["peer"] == "carol" and view["direction"] == "outgoing":
                return view if view.get("media_state") == "connected" else None
        return None

    new_at_bob = wait_for("bob's call to carol connected", bob_to_carol, SIGNAL_TIMEOUT_S, involved)
    expect(new_at_bob["call_id"] == at_carol["call_id"], f"{new_at_bob} {at_carol}", involved)
    at_alice = wait_ended(alice, call_id, involved)
    expect("transfer" in at_alice["end_reason"], f"alice's call: {at_alice}", involved)
    print(
        f"transfer: carol active with bob {transfer_s:.2f} s after `transfer` on alice;"
        f" bob's old call ended: {reason!r}, alice's: {at_alice['end_reason']!r};"
        f" bob -> carol path {new_at_bob['path']}, setup {new_at_bob['setup_ms']} ms"
    )

    # -- the new call carries audio both ways; bob's recording of alice survived it
    time.sleep(TALK_S / 2)
    action(bob, "hangup", new_at_bob["call_id"])
    wait_ended(bob, new_at_bob["call_id"], involved)
    wait_ended(carol, at_carol["call_id"], involved)
    bob_dir = answered_dir(root, "bob")
    carol_heard = audio_score(
        SEEDS["bob"], answered_dir(root, "carol") / f"call-{at_carol['call_id']}.wav"
    )
    bob_heard = audio_score(
        SEEDS["carol"], bob_dir / f"call-{bob_call_id}-transferred-to-carol.wav"
    )
    print(f"bob -> carol correlation {carol_heard:.4f}, carol -> bob {bob_heard:.4f}")
    expect(carol_heard >= MIN_CORRELATION, f"carol heard bob: {carol_heard}", involved)
    expect(bob_heard >= MIN_CORRELATION, f"bob heard carol: {bob_heard}", involved)
    # alice's signal around a hole where the call was held (silence is left out); carol's
    # would be ~0.0
    first = audio_score(SEEDS["alice"] + CALLER_SEED_OFFSET, bob_dir / f"call-{bob_call_id}.wav")
    print(f"bob's recording of alice's (held, resumed, transferred) call: correlation {first:.4f}")
    expect(first >= HELD_CALL_MIN_CORRELATION, f"bob's recording of alice: {first}", involved)
