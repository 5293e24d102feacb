"""Managed mode on real processes: a `peerphone node` whose /etc/peerphone/policy.toml lists
one supernode, in a mount namespace of its own (a private /etc/peerphone bind-mounted from
a temporary directory: the machine's real one is never written, other tests run beside).

The supernodes are NodeRuntimes in this process (tests/support/loopback_net.py), so the
test can see who the managed node talks to, and can send it a Promote itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerphone.daemon.client import ControlClient, ControlError
from peerphone.daemon.policy import POLICY_PATH
from peerphone.identity import NodeId
from peerphone.overlay.events import Attached, CallEnded, Published
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.wire import Promote
from tests.support.loopback_net import Loopback, member_record, next_event, run_bounded

BUDGET_S = 60.0
POLICY_DIR = POLICY_PATH.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private /etc/peerphone",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_policy(directory: Path, supernode: NodeRuntime | None, listen_port: int) -> None:
    node_id = supernode.core.id.hex() if supernode else "ab" * 32
    address = f"127.0.0.1:{supernode.address[1]}" if supernode and supernode.address else ""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.toml").write_text(
        f'listen = "127.0.0.1:{listen_port}"\n\n'
        "[[supernodes]]\n"
        f'node_id = "{node_id}"\n'
        f'address = "{address or "127.0.0.1:9"}"\n\n'
        "[calls]\n"
        'allow_suffixes = [".corp"]\n'
    )


def start_managed(policy_dir: Path, data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`peerphone node` with `policy_dir` as its /etc/peerphone (and only its own: a mount
    namespace of its own; the shell execs the node, so the PID is the node's)."""
    POLICY_DIR.mkdir(parents=True, exist_ok=True)  # the mount point: an empty directory
    data_dir.mkdir(parents=True, exist_ok=True)
    node = [sys.executable, "-m", "peerphone", "node", "--data-dir", str(data_dir), *args]
    script = f'mount --bind "$0" {POLICY_DIR} && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    argv += [str(policy_dir), *node]
    with (data_dir / "stderr.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env())


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_conflicting_role_is_refused_naming_the_policy(tmp_path: Path) -> None:
    write_policy(tmp_path / "etc", None, free_udp_port())
    data_dir = tmp_path / "carol"
    proc = start_managed(tmp_path / "etc", data_dir, "--name", "carol.corp", "--role", "supernode")
    assert proc.wait(20) == 1
    out = (data_dir / "stderr.log").read_text()
    assert "--role supernode: refused: this node is managed by /etc/peerphone/policy.toml" in out
    assert not (POLICY_DIR / "policy.toml").exists()  # the machine's own stays untouched


def test_bad_policy_stops_the_node_with_file_line_and_reason(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    write_policy(etc, None, free_udp_port())
    path = etc / "policy.toml"
    path.write_text(path.read_text().replace("[calls]", "[calls]\nallow_everyone = true"))
    data_dir = tmp_path / "carol"
    proc = start_managed(etc, data_dir, "--name", "carol.corp")
    assert proc.wait(20) == 1
    out = (data_dir / "stderr.log").read_text()
    assert "/etc/peerphone/policy.toml:8: calls.allow_everyone: unknown setting" in out
    assert not (data_dir / "control.json").exists()  # never started


async def status(data_dir: Path) -> dict[str, Any]:
    def ask() -> dict[str, Any] | None:
        try:
            return ControlClient(data_dir).status()
        except Exception:
            return None

    while True:
        st = await asyncio.to_thread(ask)
        if st is not None:
            return st
        await asyncio.sleep(0.1)


async def until_status(data_dir: Path, ok: Any) -> dict[str, Any]:
    while True:
        st = await status(data_dir)
        if ok(st):
            return st
        await asyncio.sleep(0.1)


def test_managed_node_never_serves_attaches_only_to_listed_and_screens_calls(
    tmp_path: Path,
) -> None:
    async def scenario(net: Loopback) -> None:
        listed, other = await net.supernodes(2)
        assert other.address is not None
        etc, data_dir = tmp_path / "etc", tmp_path / "carol"
        write_policy(etc, listed, free_udp_port())
        # the user's own ideas: another supernode to start from, a saved role auto
        args = ["--name", "carol.corp", "--bootstrap", f"127.0.0.1:{other.address[1]}"]
        proc = start_managed(etc, data_dir, *args)
        try:
            await check(net, listed, other, data_dir)
        finally:
            await asyncio.to_thread(stop, proc)

    async def check(net: Loopback, listed: NodeRuntime, other: NodeRuntime, data_dir: Path) -> None:
        st = await until_status(data_dir, lambda s: s["state"] == "online" and s["registered"])
        me = NodeId(bytes.fromhex(st["node_id"]))
        # attaches only to the listed supernode: the other is neither primary nor backup
        # (the listed one names it among its peers; an unmanaged client would take it)
        await asyncio.sleep(2.0)
        st = await status(data_dir)
        assert st["attached"]["primary"]["node_id"] == listed.core.id.hex()
        assert st["attached"]["backup"] is None
        assert other.link_to(me) is None  # never even dialled
        assert st["managed"]["file"] == str(POLICY_PATH)
        assert st["managed"]["fixed"]["supernodes"][0]["node_id"] == listed.core.id.hex()
        assert any("ignored" in note for note in st["managed"]["overridden"])
        text = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "peerphone", "status", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            env=_env(),
        )
        assert f"managed by {POLICY_PATH}: fixed role client" in text.stdout
        # the tier asks it to serve: it does not, and runs no relay
        listed.drive([(me, Promote([member_record(listed)], 2))])
        await asyncio.sleep(2.0)
        st = await status(data_dir)
        assert st["role"] == "client" and st["supernode"] is None
        assert st["role_reason"] == f"client: managed by {POLICY_PATH} (never serves)"
        assert st["sharing"]["relay"] is None  # no relay runs
        assert st["sharing"]["consented"] is False
        sn = listed.core.supernode
        assert sn is not None and me not in sn.membership.members
        assert "role: supernode" not in (data_dir / "node.log").read_text()
        # a call to a user outside the allow-list is refused with the reason
        client = ControlClient(data_dir)
        with pytest.raises(ControlError, match="outside the organisation's allow-list"):
            await asyncio.to_thread(client.request, "POST", "/v1/calls", {"name": "eve"})
        # and one from such a user is rejected, the caller told why
        eve = await net.client("eve", [listed])
        await next_event(eve, Published)
        # the control: unmanaged, eve takes the other supernode as her backup
        backup = await next_event(eve, Attached, lambda e: e.backup is not None)
        assert backup.backup == other.core.id
        call_id, sends = eve.core.call("carol.corp", "v=0\r\n", eve.now())
        eve.drive(sends)
        ended = await next_event(eve, CallEnded, lambda e: e.call_id == call_id)
        assert "refused by policy" in ended.reason

    run_bounded(scenario, Loopback(seed=12), BUDGET_S)
