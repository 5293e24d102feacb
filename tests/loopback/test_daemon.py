"""The node daemon: configuration, data directory, and real node processes on loopback
driven through the CLI and the control API."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerphone.cli import main
from peerphone.daemon.config import ConfigError, NodeConfig, checked_endpoint, load_config
from peerphone.daemon.datadir import Contact, DataDir, DataDirError
from peerphone.daemon.logs import ErrorDigest
from peerphone.daemon.service import EXIT_NAME_TAKEN
from peerphone.demo import ice_host_addresses
from peerphone.runtime.tcp_carrier import MAGIC
from tests.support.node_procs import Node, NodeProcs, wait_for

# -- configuration and data directory (no processes) ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:4433", ("udp", ("10.0.0.1", 4433))),
        ("udp://10.0.0.1:1", ("udp", ("10.0.0.1", 1))),
        ("tcp://10.0.0.1:443", ("tcp", ("10.0.0.1", 443))),
        ("[::1]:9", ("udp", ("::1", 9))),
        ("tcp://[2001:db8::1]:443", ("tcp", ("2001:db8::1", 443))),
        ("0.0.0.0:0", ("udp", ("0.0.0.0", 0))),  # a setting may ask for any free port
    ],
)
def test_endpoints_parse(text: str, expected: tuple[str, tuple[str, int]]) -> None:
    assert checked_endpoint(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.1",
        "10.0.0.1:",
        "10.0.0.1:x",
        "10.0.0.1:70000",
        "example.com:443",
        "http://10.0.0.1:80",
        "tcp://:443",
        "[::1:443",
    ],
)
def test_bad_endpoints_are_refused_with_the_text(text: str) -> None:
    with pytest.raises(ConfigError, match=r"expected|must|transport") as refused:
        checked_endpoint(text)
    assert str(refused.value).startswith(repr(text) + ": ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name = ", "config.toml"),  # not TOML
        ('nmae = "alice"', "nmae: unknown setting"),
        ("listen = 4433", "listen: expected str"),
        ('bootstrap = "10.0.0.1:1"', "bootstrap: expected list"),
        ("[share]\nmax_clients = 'many'", "share.max_clients: expected int"),
        ("share = 3", "share: expected a table"),
    ],
)
def test_config_file_errors_name_the_setting(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "no name"),
        ({"name": "Not Valid"}, "is not valid"),
        ({"role": "boss"}, "role"),
        ({"control": "10.0.0.1:80"}, "loopback only"),
        ({"listen": "tcp://127.0.0.1:1"}, "listen"),
    ],
)
def test_config_values_are_checked(change: dict[str, str], message: str) -> None:
    config = NodeConfig(name="alice")
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=message):
        config.check()


def test_cli_refuses_a_bad_option_before_touching_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["node", "--data-dir", str(tmp_path / "d"), "--name", "x", "--bootstrap", "nope"]) == 1
    )
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_keys_are_created_once_and_private(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    node, user, created = data.keys()
    assert created and node.node_id != user.node_id
    again_node, again_user, created_again = data.keys()
    assert not created_again
    assert (again_node.node_id, again_user.node_id) == (node.node_id, user.node_id)
    for name in ("node.key", "user.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    (tmp_path / "user.key").write_bytes(b"short")
    with pytest.raises(DataDirError, match="exactly 32 bytes"):
        data.keys()


def test_damaged_host_cache_is_set_aside_and_contacts_round_trip(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    (tmp_path / "host_cache.bin").write_bytes(b"\x93garbage")
    assert data.load_host_cache() == []
    assert (tmp_path / "host_cache.bin").exists() is False
    assert (tmp_path / "host_cache.bad").exists()
    contacts = [Contact("bob"), Contact("carol", bytes(range(32)))]
    data.save_contacts(contacts)
    assert data.load_contacts() == contacts
    (tmp_path / "contacts.toml").write_text('[[contact]]\nname = "Bad Name"\n')
    with pytest.raises(DataDirError, match="not a valid username"):
        data.load_contacts()


def test_error_digest_logs_increments_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    digest = ErrorDigest(logging.getLogger("digest-test"), interval_s=10.0)
    counters: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING, "digest-test"):
        assert not digest.maybe_log(counters, now=0.0)  # nothing yet
        counters["drop_bad_header"] += 500
        assert digest.maybe_log(counters, now=1.0)
        counters["drop_bad_header"] += 7
        assert not digest.maybe_log(counters, now=5.0)  # within the interval: silent
        assert digest.maybe_log(counters, now=11.0)
    assert [r.getMessage().split(": ")[1] for r in caplog.records] == [
        "drop_bad_header=500",
        "drop_bad_header=7",
    ]


# -- real node processes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcs, list[Node]]]:
    """Two supernodes and two users (alice, bob) as separate processes."""
    procs = NodeProcs(tmp_path_factory.mktemp("nodes"))
    try:
        sn0 = procs.supernode("sn0")
        sn1 = procs.supernode("sn1", sn0)
        alice = procs.client("alice", sn0, sn1)
        bob = procs.client("bob", sn0, sn1)
        yield procs, [sn0, sn1, alice, bob]
    finally:
        procs.close()


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, object]:
    code = main(list(args))
    return code, json.loads(capsys.readouterr().out)


def test_status_lookup_contacts_and_presence_through_the_cli(
    net: tuple[NodeProcs, list[Node]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, (sn0, _, alice, bob) = net
    d_alice, d_bob = ["--data-dir", str(alice.data_dir)], ["--data-dir", str(bob.data_dir)]
    code, st = cli_json(capsys, "status", *d_alice, "--json")
    assert code == 0 and isinstance(st, dict)
    assert st["name"] == "alice" and st["role"] == "client" and st["state"] == "online"
    assert st["attached"]["primary"] is not None and st["attached"]["backup"] is not None
    assert "--role client" in st["role_reason"]
    code, sn = cli_json(capsys, "status", "--data-dir", str(sn0.data_dir), "--json")
    assert isinstance(sn, dict) and sn["role"] == "supernode"
    assert sn["supernode"]["membership_size"] == 2 and sn["supernode"]["records_held"] >= 8

    code, found = cli_json(capsys, "lookup", "bob", *d_alice, "--json")
    assert code == 0 and isinstance(found, dict)
    assert found["found"] and found["online"] and found["verified"]
    assert found["record"]["owner"] == bob.status()["user_key"]
    assert found["record"]["addresses"] == bob.status()["addresses"]
    code, missing = cli_json(capsys, "lookup", "nobody-here", *d_alice, "--json")
    assert code == 1 and isinstance(missing, dict) and not missing["found"]

    assert main(["contacts", "add", "bob", *d_alice]) == 0
    capsys.readouterr()

    def bob_is(status: str) -> bool | None:
        items = alice.control.request("GET", "/v1/contacts")
        return True if items and items[0]["status"] == status else None

    wait_for("bob online in alice's contacts", lambda: bob_is("online"))
    assert main(["set-status", "away", *d_bob]) == 0
    assert capsys.readouterr().out == "status: away\n"
    wait_for("bob away in alice's contacts", lambda: bob_is("away"))
    code, items = cli_json(capsys, "contacts", "list", *d_alice, "--json")
    assert isinstance(items, list) and items[0]["pinned_key"] == bob.status()["user_key"]
    assert main(["contacts", "remove", "bob", *d_alice]) == 0
    assert alice.control.request("GET", "/v1/contacts") == []


def _raw(node: Node, method: str, path: str, body: bytes | None, token: str | None) -> int:
    req = urllib.request.Request(node.control.base + path, data=body, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        json.loads(exc.read())  # every refusal is a JSON error
        return int(exc.code)


def test_control_api_refuses_bad_requests_and_keeps_serving(
    net: tuple[NodeProcs, list[Node]],
) -> None:
    _, (_, _, alice, _) = net
    token = alice.control.token
    assert _raw(alice, "GET", "/v1/status", None, None) == 401
    assert _raw(alice, "GET", "/v1/status", None, "wrong" + token) == 401
    assert _raw(alice, "POST", "/v1/contacts", b"{not json", token) == 400
    assert _raw(alice, "POST", "/v1/contacts", b'{"name": 7}', token) == 400
    assert _raw(alice, "POST", "/v1/contacts", b'{"name": "Bad Name"}', token) == 400
    assert _raw(alice, "POST", "/v1/contacts", b"x" * 10_000, token) in (400, 413)
    assert _raw(alice, "POST", "/v1/presence", b'{"status": "offline"}', token) == 400
    assert _raw(alice, "POST", "/v1/presence", b'{"status": "sleepy"}', token) == 400
    assert _raw(alice, "GET", "/v1/lookup/NOT%20VALID", None, token) == 400
    assert _raw(alice, "DELETE", "/v1/contacts/nobody", None, token) == 404
    assert alice.status()["state"] == "online"


def test_a_taken_name_stops_the_new_node_with_a_clear_error(
    net: tuple[NodeProcs, list[Node]],
) -> None:
    procs, (sn0, _, alice, _) = net
    twin = procs.start("alice", data_dir=alice.data_dir)  # the same directory: refused
    assert twin.proc.wait(20) == 1
    assert "is already running with data directory" in twin.log()
    impostor = procs.start("alice", "--bootstrap", sn0.udp_address(), data_dir=procs.root / "i")
    assert impostor.proc.wait(20) == EXIT_NAME_TAKEN
    assert "registered by another user key" in impostor.log()
    assert alice.status()["state"] == "online"


def test_junk_datagrams_are_counted_and_the_node_keeps_answering(
    net: tuple[NodeProcs, list[Node]],
) -> None:
    _, (sn0, _, alice, _) = net
    host, port = sn0.udp_address().rsplit(":", 1)
    rng = random.Random(7)
    before = sn0.status()["errors_total"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(300):
            size = [rng.randrange(1, 64), 1200, 1199, 5000][i % 4]
            sock.sendto(rng.randbytes(size), (host, int(port)))
            if i % 20 == 19:
                time.sleep(0.005)  # paced: the socket buffer must not drop what we count

    def counted() -> dict[str, Any] | None:
        st = sn0.status()
        return st if st["errors_total"] >= before + 300 else None

    st = wait_for("junk counted", counted)
    assert st["errors"].get("drop_oversized", 0) >= 75
    assert alice.control.lookup("bob")["found"]
    assert sn0.proc.poll() is None


def test_junk_on_the_tcp_carrier_is_counted_and_the_node_keeps_answering(
    net: tuple[NodeProcs, list[Node]],
) -> None:
    _, (sn0, _, alice, _) = net
    host, port = sn0.status()["listen"]["tcp"].rsplit(":", 1)
    rng = random.Random(8)
    before = sn0.status()["errors"]
    junk = [
        rng.randbytes(200),  # no preamble
        b"GET / HTTP/1.1\r\n\r\n",  # someone else's protocol
        MAGIC + b"\xff\xff" + rng.randbytes(100),  # a frame above any datagram size
        MAGIC + b"\x00\x05abc",  # a truncated frame, then the connection closes
    ]
    for payload in junk:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(payload)
            conn.settimeout(5)
            try:  # the node closes the connection (or we give up waiting)
                while conn.recv(4096):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass

    def counted() -> dict[str, Any] | None:
        errors = sn0.status()["errors"]
        new = sum(v - before.get(k, 0) for k, v in errors.items())
        return errors if new >= 3 else None

    # the carrier refuses what starts with its magic but is not framed; the rest goes to
    # the supernode's TURN relay (which shares the port), which refuses it in turn
    errors = wait_for("TCP junk counted", counted)
    assert errors.get("tcp_drop_oversized_frame", 0) > before.get("tcp_drop_oversized_frame", 0)
    assert any(k.startswith("relay_") and v > before.get(k, 0) for k, v in errors.items())
    assert alice.control.lookup("bob")["found"]
    assert sn0.proc.poll() is None


def test_restart_keeps_identity_contacts_and_settings(net: tuple[NodeProcs, list[Node]]) -> None:
    procs, (_, _, alice, _) = net
    alice.control.request("POST", "/v1/contacts", {"name": "carol"})
    before = alice.status()
    assert procs.stop(alice) == 0
    assert not (alice.data_dir / "control.json").exists()
    again = procs.start("alice", data_dir=alice.data_dir)
    st = wait_for("alice back online", again.online)
    assert (st["node_id"], st["user_key"]) == (before["node_id"], before["user_key"])
    assert [c["name"] for c in again.control.request("GET", "/v1/contacts")] == ["carol"]
    assert st["role_setting"] == "client"  # from config.toml, not repeated on the command line
    assert again.control.lookup("alice")["record"]["owner"] == before["user_key"]


def test_killed_supernode_clients_move_to_their_backup(tmp_path: Path) -> None:
    procs = NodeProcs(tmp_path)
    try:
        sn0 = procs.supernode("sn0")
        sns = [sn0, procs.supernode("sn1", sn0), procs.supernode("sn2", sn0)]
        alice = procs.client("alice", *sns)
        bob = procs.client("bob", *sns)
        primary = alice.status()["attached"]["primary"]["node_id"]
        victim = next(n for n in sns if n.status()["node_id"] == primary)
        procs.stop(victim, signal.SIGKILL)
        killed = time.monotonic()
        # before alice has even noticed: the surviving replicas serve her record
        early = bob.control.lookup("alice")
        assert early["found"] and early["record"]["owner"] == alice.status()["user_key"]

        def moved() -> dict[str, object] | None:
            st = alice.status()
            now = st["attached"]["primary"]
            return st if now is not None and now["node_id"] != primary else None

        wait_for("alice on another primary", moved, timeout_s=30)
        took = time.monotonic() - killed
        print(f"failover after SIGKILL: {took:.1f} s")
        # timers, not speed: the 6 s link idle timeout plus one re-attach (measured 7.5 s;
        # the issue asks for 10 s). Twice that, so that a loaded machine keeps it.
        assert took <= 20.0, f"failover took {took:.1f} s"
        wait_for("alice findable", lambda: bob.control.lookup("alice")["found"] or None)
        assert bob.control.lookup("bob")["found"]
    finally:
        procs.close()


def test_demo_runs_a_small_network(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "peerphone", "demo", "--nodes", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["ok"] and report["lookups"]["succeeded"] == report["lookups"]["attempted"] == 20
    assert report["presence"]["changes_heard"] == report["presence"]["changes_expected"] > 0
    assert {n["role"] for n in report["nodes"]} == {"supernode", "client"}
    call = report["call"]
    if ice_host_addresses():  # else the demo says why it placed no call
        assert call["path"] == "direct" and call["end_reason"] == "hung up", call
        assert call["bytes_received"] > 0 and call["setup_ms"] > 0, call
