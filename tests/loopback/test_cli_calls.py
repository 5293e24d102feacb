"""The terminal phone against real node processes on loopback: `call` shows its progress
and exits with a status that says how the call ended, `answer` and `decline` take the
ringing call (or any unique prefix of a call id), Ctrl-C hangs up, `events` streams one
line per event and ends when the node stops, which a WebSocket client no longer holds up.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node_procs import Node, NodeProcs, wait_for

EXIT_DECLINED = 3
EXIT_INTERRUPTED = 130
# a node with a WebSocket client used to wait ~30 s for it; the node's own shutdown
# (hand-over grace, link close) takes 1-3 s
NODE_STOP_LIMIT_S = 10.0


def cli(node: Node, *args: str) -> list[str]:
    return [sys.executable, "-m", "peerphone", *args, "--data-dir", str(node.data_dir)]


def run(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(node, *args), capture_output=True, text=True, timeout=60)


def spawn(node: Node, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli(node, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcs, Node, Node]]:
    procs = NodeProcs(tmp_path_factory.mktemp("cli-calls"))
    try:
        sn = procs.supernode("sn0")
        alice = procs.client("alice", sn)
        bob = procs.client("bob", sn)
        yield procs, alice, bob
    finally:
        procs.close()


def calls(node: Node) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = node.control.request("GET", "/v1/calls")
    return items


def ringing_at(node: Node, peer: str) -> dict[str, Any] | None:
    for call in calls(node):
        if call["peer"] == peer and call["state"] == "ringing" and call["direction"] == "incoming":
            return call
    return None


def state_of(node: Node, call_id: str) -> str:
    states: dict[str, str] = {c["call_id"]: c["state"] for c in calls(node)}
    return states[call_id]


def test_declined_call_says_so_and_exits_3(net: tuple[NodeProcs, Node, Node]) -> None:
    _, alice, bob = net
    caller = spawn(alice, "call", "bob")
    ringing = wait_for("bob's phone ringing", lambda: ringing_at(bob, "alice"))
    declined = run(bob, "decline")  # no id: the call that rings
    assert declined.returncode == 0, declined.stderr
    assert f"declined the call from alice (call {ringing['call_id'][:8]})" in declined.stdout
    out, err = caller.communicate(timeout=30)
    assert caller.returncode == EXIT_DECLINED, err
    assert "ringing at bob..." in err
    assert "call failed: bob declined the call" in err
    assert "Traceback" not in err
    assert "ended (declined)" in out
    # and the callee's own view says why too (the API's hangup took the reason)
    mine = {c["call_id"]: c for c in calls(bob)}[ringing["call_id"]]
    assert mine["end_reason"] == "declined", mine


def test_answered_call_connects_and_reports_progress(net: tuple[NodeProcs, Node, Node]) -> None:
    _, alice, bob = net
    caller = spawn(alice, "call", "bob", "--duration", "3")
    ringing = wait_for("bob's phone ringing", lambda: ringing_at(bob, "alice"))
    answered = run(bob, "answer", ringing["call_id"][:6])  # a prefix is enough
    assert answered.returncode == 0, answered.stderr
    assert "connected via direct with alice" in answered.stderr
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 0, err
    steps = [line for line in err.splitlines() if line]
    assert steps.index("looking bob up in the directory...") < steps.index("ringing at bob...")
    assert steps.index("ringing at bob...") < steps.index("connected via direct with bob")
    assert "path direct" in out and "kbit/s sent" in out  # the whole-call average, 3 s in


def test_ctrl_c_while_ringing_cancels_the_call_on_both_sides(
    net: tuple[NodeProcs, Node, Node],
) -> None:
    _, alice, bob = net
    caller = spawn(alice, "call", "bob")
    ringing = wait_for("bob's phone ringing", lambda: ringing_at(bob, "alice"))
    caller.send_signal(signal.SIGINT)
    _, err = caller.communicate(timeout=30)
    assert caller.returncode == EXIT_INTERRUPTED
    assert "interrupted: call hung up" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    call_id = ringing["call_id"]
    wait_for("bob's side ended", lambda: state_of(bob, call_id) == "ended" or None)
    assert state_of(alice, call_id) == "ended"


def test_ctrl_c_in_a_call_hangs_up_and_hold_shows_its_mark(
    net: tuple[NodeProcs, Node, Node],
) -> None:
    _, alice, bob = net
    caller = spawn(alice, "call", "bob", "--duration", "60")
    ringing = wait_for("bob's phone ringing", lambda: ringing_at(bob, "alice"))
    call_id = ringing["call_id"]
    assert run(bob, "answer").returncode == 0
    assert caller.stderr is not None
    stderr = caller.stderr
    wait_for("connected", lambda: "connected via" in stderr.readline() or None)
    held = run(alice, "hold", call_id[:5])
    assert held.returncode == 0, held.stderr
    assert ": active (HELD)" in held.stdout
    resumed = run(alice, "hold", "--resume", call_id[:5])
    assert ": active," in resumed.stdout and "HELD" not in resumed.stdout
    caller.send_signal(signal.SIGINT)
    _, err = caller.communicate(timeout=30)
    assert caller.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in err
    wait_for("bob's side ended", lambda: state_of(bob, call_id) == "ended" or None)


def test_answer_and_decline_say_when_nothing_rings_and_prefixes_must_be_unique(
    net: tuple[NodeProcs, Node, Node],
) -> None:
    _, alice, _ = net
    nothing = run(alice, "answer")
    assert nothing.returncode == 1 and "no call is ringing" in nothing.stderr
    assert "not a call id" in run(alice, "hangup", "xyz").stderr
    ids = [c["call_id"] for c in calls(alice)]
    assert len(ids) >= 2  # the tests above placed several
    unknown = next(h for h in "0123456789abcdef" if not any(i.startswith(h) for i in ids))
    assert "no call with an id starting" in run(alice, "hangup", unknown).stderr
    shown = run(alice, "calls").stdout
    assert all(f"call {i[:8]} " in shown for i in ids)  # the 8 characters the log shows


def test_events_stream_calls_and_presence_and_end_when_the_node_stops(
    tmp_path: Path,
) -> None:
    procs = NodeProcs(tmp_path)
    try:
        sn = procs.supernode("sn1")
        carol = procs.client("carol", sn)
        dave = procs.client("dave", sn)
        assert run(carol, "contacts", "add", "dave").returncode == 0
        watcher = spawn(carol, "events", "--json")
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "listening for events" in watcher.stderr.readline()
        assert run(dave, "set-status", "away").returncode == 0
        caller = spawn(dave, "call", "carol")
        events: list[dict[str, Any]] = []
        while not any(e["type"] == "CallIncoming" for e in events):
            events.append(json.loads(watcher.stdout.readline()))
        presence = [e for e in events if e["type"] == "PresenceChanged" and e["name"] == "dave"]
        assert presence and presence[-1]["status"] == "away"
        assert run(carol, "decline").returncode == 0
        while events[-1]["type"] != "CallEnded":
            events.append(json.loads(watcher.stdout.readline()))
        caller.communicate(timeout=30)
        started = time.monotonic()
        assert procs.stop(carol) == 0
        stop_s = time.monotonic() - started
        assert stop_s < NODE_STOP_LIMIT_S, f"the node took {stop_s:.1f} s to stop"
        rest, err = watcher.communicate(timeout=10)
        assert watcher.returncode == 0, err
        assert json.loads(rest.splitlines()[-1])["type"] == "NodeStopping"
    finally:
        procs.close()


def test_event_lines_for_a_person(tmp_path: Path) -> None:
    procs = NodeProcs(tmp_path)
    try:
        sn = procs.supernode("sn2")
        erin = procs.client("erin", sn)
        frank = procs.client("frank", sn)
        watcher = spawn(erin, "events")
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "listening for events" in watcher.stderr.readline()
        caller = spawn(frank, "call", "erin")
        line = watcher.stdout.readline()
        while "incoming call" not in line:
            line = watcher.stdout.readline()
        assert "from frank" in line and "peerphone answer " in line
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=10)
        assert "Traceback" not in err
        caller.send_signal(signal.SIGINT)
        caller.communicate(timeout=30)
    finally:
        procs.close()
