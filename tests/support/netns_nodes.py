"""Helpers for tests that run real `peerphone node` processes in the NAT lab (netlab.py).

A `Node` is one node process in a lab host; its CLI runs inside the host's namespace
(`ip netns exec`), since the control API listens on that namespace's loopback. Every wait
has a deadline and fails the test with the tails of the node logs; the processes are
started through the lab, which kills them by PID on teardown.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.netlab import Host, NetLab

PY = sys.executable
T = TypeVar("T")

NODE_UDP_PORT = 4433  # fixed ports: only inside the lab's namespaces
NODE_TCP_PORT = 443
CLI_TIMEOUT_S = 20.0  # one CLI call (a lookup waits up to 10 s inside the node)
ATTACH_TIMEOUT_S = 30.0  # spawn until online, attached and registered (seen: 2.5-4.5 s)
POLL_S = 0.2
LOG_TAIL_LINES = 40


@dataclass
class Node:
    """One `peerphone node` process in a lab host, and the CLI to drive it."""

    name: str
    host: Host
    data_dir: Path
    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic() at spawn
    ready_s: float | None = None  # seconds from spawn to first seen ready (wait_ready)

    def cli(
        self, *args: str, json_out: bool = True, timeout_s: float = CLI_TIMEOUT_S
    ) -> tuple[int, Any, str]:
        """Run `peerphone ARGS --data-dir DIR [--json]` in the node's namespace.

        Returns the exit status, stdout (decoded as JSON with `json_out`, None if it is not
        JSON), stderr. A run over `timeout_s` is killed and reported as exit -1.
        """
        argv = ["ip", "netns", "exec", self.host.ns, PY, "-m", "peerphone", *args]
        argv += ["--data-dir", str(self.data_dir)]
        if json_out:
            argv.append("--json")
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return -1, None, f"timed out after {timeout_s} s"
        if not json_out:
            return done.returncode, done.stdout, done.stderr.strip()
        try:
            out = json.loads(done.stdout)
        except ValueError:
            out = None
        return done.returncode, out, done.stderr.strip()

    def status(self) -> dict[str, Any] | None:
        code, out, _ = self.cli("status")
        return out if code == 0 and isinstance(out, dict) else None

    def lookup(self, name: str) -> dict[str, Any]:
        code, out, err = self.cli("lookup", name)
        if not isinstance(out, dict):
            return {"found": False, "cli_error": f"exit {code}: {err}"}
        return out

    def log_entries(self) -> list[dict[str, Any]]:
        path = self.data_dir / "node.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        entries = []
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def log_seconds(self, first: str, then: str, since: float = 0.0) -> float:
        """Seconds between the first log line (at or after the epoch time `since`) that
        contains `first` and the next one that contains `then` (nan if there is none)."""
        start = None
        for entry in self.log_entries():
            msg, ts = str(entry.get("msg", "")), float(entry.get("ts", 0.0))
            if start is None and ts >= since and first in msg:
                start = ts
            elif start is not None and then in msg:
                return ts - start
        return float("nan")

    def log_tail(self) -> str:
        parts = []
        for file in ("node.log", "stderr.log"):
            path = self.data_dir / file
            text = path.read_text(errors="replace") if path.exists() else "(none)\n"
            tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
            parts.append(f"--- {self.name} ({self.host.name}) {file}:\n{tail}")
        return "\n".join(parts)


def logs(nodes: Sequence[Node]) -> str:
    return "\n".join(node.log_tail() for node in nodes)


def spawn(
    lab: NetLab,
    host: Host,
    name: str,
    root: Path,
    role: str,
    bootstrap: Sequence[str] = (),
    tcp: bool = False,
    extra: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
    config_toml: str = "",
) -> Node:
    """Start `peerphone node` on `host` (UDP on 4433, and TCP 443 when `tcp`); `extra`:
    more options for `peerphone node`; `files`: its data directory's files to start with,
    by name (config.toml with a `[share]`, sharing.json); `config_toml`: the same as
    `files={"config.toml": ...}`."""
    data_dir = root / name
    data_dir.mkdir(parents=True)
    if config_toml:
        files = {**(files or {}), "config.toml": config_toml}
    for file, text in (files or {}).items():
        (data_dir / file).write_text(text)
    argv = [PY, "-m", "peerphone", "node", "--data-dir", str(data_dir), "--name", name]
    argv += ["--listen", f"{host.addr}:{NODE_UDP_PORT}", "--role", role]
    if tcp:
        argv += ["--tcp-listen", f"{host.addr}:{NODE_TCP_PORT}"]
    for address in bootstrap:
        argv += ["--bootstrap", address]
    argv += extra
    with (data_dir / "stderr.log").open("wb") as err:
        proc: subprocess.Popen[bytes] = lab.run(
            host, argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT
        )
    return Node(name, host, data_dir, proc, time.monotonic())


def wait_for(
    what: str, check: Callable[[], T | None], timeout_s: float, nodes: Sequence[Node]
) -> T:
    """Poll `check` until it returns something other than None; fail with logs after
    `timeout_s` or as soon as one of `nodes` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        dead = [n for n in nodes if n.proc.poll() is not None]
        if dead:
            names = ", ".join(f"{n.name} (exit {n.proc.returncode})" for n in dead)
            pytest.fail(f"{what}: {names} exited\n{logs(nodes)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s\n{logs(nodes)}", pytrace=False)
        time.sleep(POLL_S)


def ready(node: Node) -> dict[str, Any] | None:
    """The node's status once it is online, registered and attached to a primary."""
    st = node.status()
    if st is None or st["state"] != "online" or not st["registered"]:
        return None
    return st if st["attached"]["primary"] is not None else None


def wait_ready(nodes: Sequence[Node], timeout_s: float) -> dict[str, float]:
    """Wait (at most `timeout_s`) until the nodes are ready; return the seconds from spawn to
    ready of those that got there, by name. Fails early only if a node exits."""
    took: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)

    def progress() -> bool | None:
        for node in list(pending):
            if ready(node) is not None:
                took[node.name] = node.ready_s = time.monotonic() - node.started
                pending.remove(node)
        return True if not pending or time.monotonic() > deadline else None

    wait_for(f"{[n.name for n in pending]} ready", progress, 2 * timeout_s, nodes)
    return took


def wait_all_ready(nodes: Sequence[Node], timeout_s: float) -> dict[str, float]:
    """As `wait_ready`, but fail (with the logs) unless every node got ready."""
    took = wait_ready(nodes, timeout_s)
    late = [n.name for n in nodes if n.name not in took]
    if late:
        pytest.fail(f"{late} not ready within {timeout_s} s\n{logs(nodes)}", pytrace=False)
    return took


def start_supernodes(
    lab: NetLab, root: Path, count: int, extra: Sequence[str] = (), config_toml: str = ""
) -> list[Node]:
    """`count` supernodes on public hosts sn1…snN, each bootstrapped from sn1; all ready.
    `extra`: more options for each `peerphone node`; `config_toml`: each one's config."""
    host = lab.public_host("sn1")
    first = spawn(
        lab, host, "sn1", root, "supernode", tcp=True, extra=extra, config_toml=config_toml
    )
    wait_all_ready([first], ATTACH_TIMEOUT_S)
    seed = [f"{first.host.addr}:{NODE_UDP_PORT}"]
    rest = [
        spawn(
            lab,
            lab.public_host(f"sn{i}"),
            f"sn{i}",
            root,
            "supernode",
            seed,
            True,
            extra,
            config_toml=config_toml,
        )
        for i in range(2, count + 1)
    ]
    nodes = [first, *rest]
    wait_all_ready(rest, ATTACH_TIMEOUT_S)

    def tier_complete() -> bool | None:
        sizes = [(n.status() or {}).get("supernode") or {} for n in nodes]
        return True if all(s.get("membership_size") == count for s in sizes) else None

    wait_for(f"a tier of {count} supernodes", tier_complete, ATTACH_TIMEOUT_S, nodes)
    return nodes


def bootstrap_list(seed: Node) -> list[str]:
    """The one bootstrap list every client gets: the seed's UDP and TCP addresses."""
    return [f"{seed.host.addr}:{NODE_UDP_PORT}", f"tcp://{seed.host.addr}:{NODE_TCP_PORT}"]
