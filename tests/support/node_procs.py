"""Real `peerphone node` processes on loopback for tests, killed by PID at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from peerphone.daemon.client import ControlClient, ControlError
from peerphone.daemon.datadir import DataDirError

T = TypeVar("T")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 20.0) -> T:
    """Poll `probe` until it returns something other than None (or raise, naming `what`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except (ControlError, DataDirError):
            value = None
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


class Node:
    """One node process and its control client."""

    def __init__(self, data_dir: Path, proc: subprocess.Popen[bytes]) -> None:
        self.data_dir = data_dir
        self.proc = proc
        self._client: ControlClient | None = None

    @property
    def control(self) -> ControlClient:
        if self._client is None:
            self._client = wait_for("control API", lambda: ControlClient(self.data_dir))
        return self._client

    def status(self) -> dict[str, Any]:
        return self.control.status()

    def log(self) -> str:
        path = self.data_dir / "stderr.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def udp_address(self) -> str:
        address: str = self.status()["addresses"][0]
        return address

    def online(self) -> dict[str, Any] | None:
        st = self.status()
        return st if st["state"] == "online" and st["registered"] else None


class NodeProcs:
    """Starts nodes in `root`; `close` stops them (SIGTERM, then SIGKILL) by PID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []

    def start(self, name: str, *args: str, data_dir: Path | None = None) -> Node:
        data_dir = data_dir or self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "peerphone", "node", "--data-dir", str(data_dir)]
        argv += ["--name", name, "--listen", "127.0.0.1:0", *args]
        with (data_dir / "stderr.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        node = Node(data_dir, proc)
        self.nodes.append(node)
        return node

    def supernode(self, name: str, *bootstrap: Node) -> Node:
        args = ["--role", "supernode", "--tcp-listen", "127.0.0.1:0"]
        for other in bootstrap:
            args += ["--bootstrap", other.udp_address()]
        node = self.start(name, *args)
        wait_for(f"{name} online", node.online, START_TIMEOUT_S)
        return node

    def client(self, name: str, *bootstrap: Node) -> Node:
        args = ["--role", "client"]
        for other in bootstrap:
            args += ["--bootstrap", other.udp_address()]
        node = self.start(name, *args)
        wait_for(f"{name} online", node.online, START_TIMEOUT_S)
        return node

    def stop(self, node: Node, sig: int = signal.SIGTERM) -> int:
        if node.proc.poll() is None:
            os.kill(node.proc.pid, sig)
        return node.proc.wait(STOP_TIMEOUT_S)

    def close(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
