"""Issue 8, breaks 1 and 2, against real node processes on loopback.

The attackers are stock nodes with small patches (tests/support/attackers/directory_attacker.py):
- a name squatter (a node named "alice" with its own key that does not exit when the name is
  refused) attached to alice's primary supernode must not receive calls meant for alice;
- a self-made supernode whose node key was ground to sit right after alice's directory key
  (so it is her first replica) and that answers every Fetch for "alice" with a name and a
  presence record signed by its own key must not make any client — fresh, or restarted —
  accept its key for alice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerphone.overlay.client import PIN_MISMATCH
from peerphone.records import user_key
from peerphone.wire import ReasonCode
from tests.support.grind import grind_after
from tests.support.node_procs import START_TIMEOUT_S, Node, NodeProcs, wait_for

ROOT = Path(__file__).resolve().parents[2]


def spawn_attacker(
    procs: NodeProcs, mode: str, name: str, data_dir: Path, *args: str, env: dict[str, str]
) -> tuple[Node, Path]:
    """Start the patched node; its counters go to DIR/attack.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    report = data_dir / "attack.json"
    argv = [sys.executable, "-m", "tests.support.attackers.directory_attacker", mode, str(report)]
    argv += ["node", "--data-dir", str(data_dir), "--name", name, "--listen", "127.0.0.1:0"]
    argv += list(args)
    with (data_dir / "stderr.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **env},
        )
    node = Node(data_dir, proc)
    procs.nodes.append(node)  # stopped by PID with the others
    return node, report


def counters(report: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(report.read_text())
    return data


def running(procs: NodeProcs, name: str, sns: list[Node]) -> Node:
    """The client `name` of an earlier test in this module, or a new one."""
    node = next((n for n in procs.nodes if n.data_dir.name == name), None)
    if node is None or node.proc.poll() is not None:
        node = procs.start(name, "--role", "client", "--bootstrap", sns[0].udp_address())
        wait_for(f"{name} online", node.online, START_TIMEOUT_S)
    return node


def supernode_of(sns: list[Node], node_id: str) -> Node:
    return next(sn for sn in sns if sn.status()["node_id"] == node_id)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcs, list[Node]]]:
    procs = NodeProcs(tmp_path_factory.mktemp("attacks"))
    try:
        sn0 = procs.supernode("sn0")
        sns = [sn0, procs.supernode("sn1", sn0), procs.supernode("sn2", sn0)]

        def tier_formed() -> bool | None:
            sizes = [sn.status()["supernode"]["membership_size"] for sn in sns]
            return True if sizes == [3, 3, 3] else None

        wait_for("every supernode knowing the other two", tier_formed, 20.0)
        alice = procs.start("alice", "--role", "client", "--auto-answer")
        alice.proc.kill()  # only to reserve the directory name; restarted below with options
        alice.proc.wait()
        procs.nodes.remove(alice)
        yield procs, sns
    finally:
        procs.close()


def test_a_name_squatter_on_alices_supernode_never_receives_her_calls(
    lab: tuple[NodeProcs, list[Node]],
) -> None:
    procs, sns = lab
    alice = procs.start("alice", "--role", "client", "--bootstrap", sns[0].udp_address())
    wait_for("alice online", alice.online, START_TIMEOUT_S)
    carol = procs.client("carol", sns[0])
    primary_id = alice.status()["attached"]["primary"]["node_id"]
    primary = supernode_of(sns, primary_id)
    mallory, report = spawn_attacker(
        procs,
        "squat",
        "alice",
        procs.root / "mallory",
        "--role",
        "client",
        "--bootstrap",
        primary.udp_address(),
        env={},
    )

    def squatting() -> dict[str, Any] | None:
        st = mallory.status()
        attached = st["attached"]["primary"]
        on_primary = attached is not None and attached["node_id"] == primary_id
        return st if st["name_refused"] and on_primary else None

    wait_for("the squatter attached to alice's primary, name refused", squatting, 20.0)
    calls = 3
    for _ in range(calls):
        carol.control.request("POST", "/v1/calls", {"name": "alice"})

    def alice_rang() -> list[dict[str, Any]] | None:
        incoming = [c for c in alice.control.request("GET", "/v1/calls") if c["peer"] == "carol"]
        return incoming if len(incoming) >= calls else None

    incoming = wait_for("alice's incoming calls", alice_rang, 20.0)
    seen = counters(report)
    print(f"squatter: calls placed {calls}, alice saw {len(incoming)}, squatter got {seen}")
    assert seen["signals"] == 0, seen
    assert mallory.control.request("GET", "/v1/calls") == []


def test_a_ground_hostile_supernode_cannot_hand_out_a_forged_alice(
    lab: tuple[NodeProcs, list[Node]],
) -> None:
    procs, sns = lab
    alice, carol = running(procs, "alice", sns), running(procs, "carol", sns)
    alice_key = alice.status()["user_key"]
    # carol knew alice before the attack: her pin must survive a restart
    assert carol.control.lookup("alice")["record"]["owner"] == alice_key
    ring = [bytes.fromhex(sn.status()["node_id"]) for sn in sns]
    keys = grind_after(user_key("alice"), ring)
    evil_dir = procs.root / "evil"
    evil_dir.mkdir()
    (evil_dir / "node.key").write_bytes(keys.private_bytes())
    (evil_dir / "node.key").chmod(0o600)
    evil, report = spawn_attacker(
        procs,
        "forge",
        "evil",
        evil_dir,
        "--role",
        "supernode",
        "--tcp-listen",
        "127.0.0.1:0",
        "--bootstrap",
        sns[0].udp_address(),
        env={"PEERPHONE_FORGE": "alice"},
    )
    wait_for("the hostile supernode online", evil.online, START_TIMEOUT_S)
    evil_key = evil.status()["user_key"]

    def tier_knows_evil() -> bool | None:
        counts = [sn.status()["supernode"]["membership_size"] for sn in sns]
        return True if all(c >= 4 for c in counts) else None

    wait_for("the tier admitted the hostile supernode", tier_knows_evil, 20.0)
    procs.stop(carol)
    carol_again = procs.start("carol")  # settings and pins come from its data directory
    wait_for("carol online again", carol_again.online, START_TIMEOUT_S)
    dave = procs.client("dave", sns[1])  # a fresh client, no pin
    evil_id = evil.status()["node_id"]
    results: list[tuple[bool, dict[str, Any]]] = []
    for node in (dave, carol_again, dave, carol_again):
        attached = node.status()["attached"]
        on_evil = any(a and a["node_id"] == evil_id for a in attached.values())
        results.append((on_evil, node.control.lookup("alice")))
    forged = counters(report)["forged"]
    owners = [r["record"]["owner"] if r["record"] else r["reason"] for _, r in results]
    print(f"hostile supernode: forged answers sent {forged}; lookups saw owners {owners}")
    assert forged > 0, "the hostile supernode was never asked: the attack did not happen"
    assert evil_key not in owners
    for on_evil, r in results:
        if r["found"]:
            assert r["record"]["owner"] == alice_key
        else:  # only a client with the hostile supernode as its own primary or backup:
            # its forged answer meets the honest one (unpinned) or carol's pin: unresolved
            assert on_evil and r["reason"] in (ReasonCode.CONFLICT, PIN_MISMATCH), r
    pins = json.loads((carol_again.data_dir / "pins.json").read_text())["pins"]
    assert pins["alice"] == alice_key
    # a fresh client whose *primary* is the hostile supernode: it answers her lookup itself,
    # but an unpinned name is asked of both supernodes and they disagree
    erin = procs.client("erin", evil)

    def has_backup() -> dict[str, Any] | None:
        st = erin.status()
        attached = st["attached"]
        on_evil = attached["primary"] and attached["primary"]["node_id"] == evil.status()["node_id"]
        return st if on_evil and attached["backup"] else None

    wait_for("erin on the hostile supernode, with an honest backup", has_backup, 20.0)
    seen = erin.control.lookup("alice")
    print(f"hostile primary: erin's lookup of alice -> found {seen['found']}, {seen['reason']!r}")
    assert not seen["found"] or seen["record"]["owner"] == alice_key
    erin_pins = erin.data_dir / "pins.json"
    pinned = json.loads(erin_pins.read_text())["pins"] if erin_pins.exists() else {}
    assert pinned.get("alice") in (None, alice_key)


def test_the_tier_admits_neither_a_false_address_nor_a_made_up_member(
    lab: tuple[NodeProcs, list[Node]],
) -> None:
    procs, sns = lab
    sizes_before = [sn.status()["supernode"]["membership_size"] for sn in sns]
    intruder, report = spawn_attacker(
        procs,
        "intrude",
        "intruder",
        procs.root / "intruder",
        "--role",
        "supernode",
        "--tcp-listen",
        "127.0.0.1:0",
        "--bootstrap",
        sns[0].udp_address(),
        env={},
    )
    intruder_id = wait_for("the intruder's control API", lambda: intruder.status())["node_id"]
    made_up = wait_for("the made-up member sent", lambda: counters(report).get("made_up_member"))

    def decided() -> dict[str, int] | None:
        st = sns[0].status()["supernode"]
        counts: dict[str, int] = st.get("membership_refused", {})
        taken_in = st["membership_size"] > sizes_before[0]
        return counts if sum(counts.values()) >= 1 or taken_in else None

    counts = wait_for("sn0 refusing (or taking in) the intruder", decided, 20.0)
    time_for_gossip = 3.0  # a probe interval and more: anything admitted would spread
    time.sleep(time_for_gossip)
    sizes_after = [sn.status()["supernode"]["membership_size"] for sn in sns]
    print(f"intruder: sn0 refused {counts}; membership sizes {sizes_before} -> {sizes_after}")
    assert max(sizes_after) <= max(sizes_before), (sizes_before, sizes_after)
    assert counts.get("address not the one its link comes from", 0) >= 1
    assert intruder.status()["supernode"]["membership_size"] == 1, "no member took it in"
    assert intruder_id and made_up


def test_a_supernode_not_reachable_at_its_address_is_not_admitted(
    lab: tuple[NodeProcs, list[Node]],
) -> None:
    """A joiner whose member record gives an address where it does not answer (its own IP,
    a port nothing listens on) is dialled back there and refused, by Join and by gossip."""
    procs, sns = lab
    sizes_before = [sn.status()["supernode"]["membership_size"] for sn in sns]
    refused_before = sns[0].status()["supernode"].get("membership_refused", {})
    hidden, _ = spawn_attacker(
        procs,
        "hide",
        "hidden",
        procs.root / "hidden",
        "--role",
        "supernode",
        "--bootstrap",
        sns[0].udp_address(),
        env={},
    )
    wait_for("the hidden supernode's control API", lambda: hidden.status())
    reason = "not reachable at its address"

    def refused() -> int | None:
        counts = sns[0].status()["supernode"].get("membership_refused", {})
        n = int(counts.get(reason, 0)) - int(refused_before.get(reason, 0))
        return n if n >= 1 else None

    n = wait_for("sn0 refusing the hidden supernode after its dial-back", refused, 30.0)
    time.sleep(3.0)  # a probe interval and more: anything admitted would spread
    sizes_after = [sn.status()["supernode"]["membership_size"] for sn in sns]
    print(f"hidden supernode: refused {n} times at sn0; sizes {sizes_before} -> {sizes_after}")
    assert sizes_after == sizes_before, (sizes_before, sizes_after)
    assert hidden.status()["supernode"]["membership_size"] == 1, "no member took it in"
