"""`peerphone demo`: a small peerphone network on loopback, exercised and torn down.

Starts N `peerphone node` processes with real QUIC on 127.0.0.1 (a few bootstrap
supernodes, the rest `--role auto`), waits until every user is registered and attached,
makes everyone a contact of everyone, looks every user up from every other node, changes
a few users' status and times how fast each watcher hears of it (WebSocket events), then
prints a report and stops every process (SIGTERM, then SIGKILL by PID).
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from peerphone.daemon.datadir import DataDir, DataDirError
from peerphone.errors import PeerphoneError
from peerphone.stats import percentile

READY_TIMEOUT_S = 30.0  # every node registered and attached
PRESENCE_TIMEOUT_S = 10.0  # one status change reaching every watcher
STOP_TIMEOUT_S = 5.0  # graceful stop before SIGKILL
LOOKUP_CONCURRENCY = 16
POLL_S = 0.1
CALL_S = 3.0  # how long the demo call lasts once connected
CALL_CONNECT_TIMEOUT_S = 20.0
TONE_HZ = 440
NO_ICE_ADDRESS = "no non-loopback IPv4 address on this machine: ICE has no host candidate"


class DemoError(PeerphoneError):
    """The demo network did not come up or did not behave."""


@dataclass
class DemoNode:
    """One node process of the demo and how to reach its control API."""

    name: str
    role: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    base: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float:
    """stats.percentile (nearest rank) for a fraction `q`; NaN when nothing was measured
    (the demo prints it as such rather than a made-up 0)."""
    return percentile(values, q * 100.0) if values else float("nan")


class Demo:
    """The network of one demo run; `run` returns the report."""

    def __init__(self, nodes: int, workdir: Path) -> None:
        if nodes < 2:
            raise DemoError("the demo needs at least 2 nodes")
        self.count = nodes
        self.workdir = workdir
        self.supernodes = min(3, max(1, nodes // 4))
        self.nodes: list[DemoNode] = []
        self.session: aiohttp.ClientSession | None = None
        self.tone = workdir / "tone.wav"

    # -- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, role: str, bootstrap: list[str]) -> DemoNode:
        data_dir = self.workdir / name
        args = [sys.executable, "-m", "peerphone", "node", "--data-dir", str(data_dir)]
        args += ["--name", name, "--listen", "127.0.0.1:0", "--role", role]
        args += ["--auto-answer", "--answer-play", str(self.tone)]
        for address in bootstrap:
            args += ["--bootstrap", address]
        data_dir.mkdir(parents=True)
        log = (data_dir / "stderr.log").open("wb")
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        node = DemoNode(name, role, data_dir, proc)
        self.nodes.append(node)
        return node

    async def _connect(self, node: DemoNode) -> None:
        """Wait for the node's control file, then for its first status."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if node.proc.poll() is not None:
                raise DemoError(
                    f"{node.name} exited with {node.proc.returncode}; see "
                    f"{node.data_dir / 'stderr.log'}"
                )
            try:
                info = DataDir(node.data_dir).read_control()
                node.base = f"http://{info['host']}:{info['port']}"
                node.headers = {"Authorization": f"Bearer {info['token']}"}
                node.status = await self._get(node, "/v1/status")
                return
            except (DataDirError, aiohttp.ClientError):
                if time.monotonic() > deadline:
                    raise DemoError(f"{node.name} did not start its control API") from None
                await asyncio.sleep(POLL_S)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in self.nodes:
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    # -- control API ------------------------------------------------------------------------

    async def _get(self, node: DemoNode, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(node.base + path, headers=node.headers) as resp:
            return await resp.json()

    async def _post(self, node: DemoNode, path: str, body: dict[str, Any]) -> Any:
        assert self.session is not None
        async with self.session.post(node.base + path, headers=node.headers, json=body) as resp:
            if resp.status >= 400:
                raise DemoError(f"{node.name} {path}: {(await resp.json())['error']}")
            return await resp.json()

    async def _wait_ready(self) -> float:
        started = time.monotonic()
        pending = list(self.nodes)
        while pending:
            if time.monotonic() - started > READY_TIMEOUT_S:
                names = ", ".join(n.name for n in pending)
                raise DemoError(
                    f"not registered and attached after {READY_TIMEOUT_S:.0f} s: {names}"
                )
            for node in list(pending):
                node.status = await self._get(node, "/v1/status")
                if node.status["registered"] and node.status["state"] == "online":
                    pending.remove(node)
            await asyncio.sleep(POLL_S)
        return time.monotonic() - started

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        write_tone(self.tone, TONE_HZ, CALL_S + 2.0)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            self.session = session
            first = self._spawn("sn0", "supernode", [])
            await self._connect(first)
            seeds = [first.status["addresses"][0]]
            for i in range(1, self.supernodes):
                await self._connect(self._spawn(f"sn{i}", "supernode", seeds[:1]))
                seeds.append(self.nodes[-1].status["addresses"][0])
            for i in range(self.count - self.supernodes):
                self._spawn(f"user{i}", "auto", seeds)
            for node in self.nodes[self.supernodes :]:
                await self._connect(node)
            ready_s = await self._wait_ready()
            names = [n.name for n in self.nodes]
            for node in self.nodes:
                for other in names:
                    if other != node.name:
                        await self._post(node, "/v1/contacts", {"name": other})
            lookups = await self._lookups()
            presence = await self._presence()
            call = await self._call()
            for node in self.nodes:
                node.status = await self._get(node, "/v1/status")
        return self._report(ready_s, lookups, presence, call, time.monotonic() - t0)

    async def _call(self) -> dict[str, Any]:
        """The first user calls the second (who auto-answers with a tone) for CALL_S."""
        users = self.nodes[self.supernodes :] or self.nodes
        caller, callee = users[0], users[1 % len(users)]
        if not ice_host_addresses():
            return {
                "caller": caller.name,
                "callee": callee.name,
                "state": "skipped",
                "end_reason": NO_ICE_ADDRESS,
            }
        call: dict[str, Any] = await self._post(
            caller, "/v1/calls", {"name": callee.name, "play": str(self.tone)}
        )
        path = f"/v1/calls/{call['call_id']}"
        deadline = time.monotonic() + CALL_CONNECT_TIMEOUT_S
        while call["state"] != "ended" and not (call["state"] == "active" and call.get("path")):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_S)
            call = await self._get(caller, path)
        if call["state"] == "active":
            await asyncio.sleep(CALL_S)
            await self._post(caller, path + "/hangup", {})
            for _ in range(50):
                call = await self._get(caller, path)
                if call["state"] == "ended":
                    break
                await asyncio.sleep(POLL_S)
        call["caller"], call["callee"] = caller.name, callee.name
        return call

    async def _lookups(self) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def one(node: DemoNode, name: str) -> dict[str, Any]:
            async with gate:
                result: dict[str, Any] = await self._get(node, f"/v1/lookup/{name}")
                result["from"] = node.name
                return result

        pairs = [(n, m.name) for n in self.nodes for m in self.nodes if m is not n]
        return list(await asyncio.gather(*(one(n, name) for n, name in pairs)))

    async def _presence(self) -> list[float]:
        """Set a few users away (then online again); milliseconds until each watcher hears."""
        assert self.session is not None
        sockets = [
            await self.session.ws_connect(n.base + "/v1/events", headers=n.headers)
            for n in self.nodes
        ]
        delays: list[float] = []
        try:
            changers = self.nodes[self.supernodes :][:3] or self.nodes[:1]
            for changer in changers:
                for status in ("away", "online"):
                    start = time.monotonic()
                    await self._post(changer, "/v1/presence", {"status": status})
                    waits = [
                        self._hear(ws, changer.name, status, start)
                        for n, ws in zip(self.nodes, sockets, strict=True)
                        if n is not changer
                    ]
                    delays.extend(await asyncio.gather(*waits))
        finally:
            for ws in sockets:
                await ws.close()
        return delays

    async def _hear(
        self, ws: aiohttp.ClientWebSocketResponse, name: str, status: str, start: float
    ) -> float:
        deadline = start + PRESENCE_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive_json(timeout=left)
            except TimeoutError:
                break
            wanted = (msg.get("type"), msg.get("name"), msg.get("status"))
            if wanted == ("PresenceChanged", name, status):
                return (time.monotonic() - start) * 1000
        return float("inf")

    def _report(
        self,
        ready_s: float,
        lookups: list[dict[str, Any]],
        delays: list[float],
        call: dict[str, Any],
        wall_s: float,
    ) -> dict[str, Any]:
        ok = [r for r in lookups if r.get("found") and r.get("online")]
        latency = [r["latency_ms"] for r in ok]
        heard = [d for d in delays if d != float("inf")]
        nodes = []
        by_id = {n.status["node_id"]: n.name for n in self.nodes}
        for node in self.nodes:
            st = node.status
            attached = st["attached"]
            nodes.append(
                {
                    "name": node.name,
                    "role": st["role"],
                    "role_reason": st["role_reason"],
                    "primary": by_id.get((attached["primary"] or {}).get("node_id", ""), "-"),
                    "backup": by_id.get((attached["backup"] or {}).get("node_id", ""), "-"),
                    "clients_served": (st["supernode"] or {}).get("clients_served", 0),
                    "errors_total": st["errors_total"],
                }
            )
        return {
            "nodes": nodes,
            "ready_s": round(ready_s, 3),
            "lookups": {
                "attempted": len(lookups),
                "succeeded": len(ok),
                "failed": [
                    f"{r['from']}->{r['name']}: {r.get('reason')}" for r in lookups if r not in ok
                ],
                "latency_ms": {"p50": _percentile(latency, 0.5), "p95": _percentile(latency, 0.95)},
            },
            "presence": {
                "changes_expected": len(delays),
                "changes_heard": len(heard),
                "propagation_ms": {"p50": _percentile(heard, 0.5), "p95": _percentile(heard, 0.95)},
            },
            "call": call,
            "wall_s": round(wall_s, 3),
            "ok": len(ok) == len(lookups)
            and len(heard) == len(delays)
            and (
                call.get("end_reason") == NO_ICE_ADDRESS
                or (call.get("end_reason") == "hung up" and bool(call.get("bytes_received")))
            ),
        }


def ice_host_addresses() -> list[str]:
    """The addresses aioice would offer as host candidates (it leaves loopback out)."""
    from aioice.ice import get_host_addresses

    addresses: list[str] = get_host_addresses(use_ipv4=True, use_ipv6=False)
    return addresses


def _call_line(call: dict[str, Any]) -> str:
    if call["state"] == "skipped":
        return f"call {call['caller']} -> {call['callee']}: skipped ({call['end_reason']})"
    rates = call.get("bitrate_kbps") or {}
    return (
        f"call {call['caller']} -> {call['callee']}: {call['state']} ({call.get('end_reason')}), "
        f"path {call.get('path')}, setup {call.get('setup_ms')} ms, rtt {call.get('rtt_ms')} ms, "
        f"jitter {call.get('jitter_ms')} ms, loss {call.get('loss')}, "
        f"{rates.get('sent')} kbit/s sent / {rates.get('received')} kbit/s received"
    )


def write_tone(path: Path, hz: int, seconds: float) -> None:
    """A mono 48 kHz 16-bit WAV of a sine tone (what auto-answering nodes play)."""
    rate = 48_000
    samples = array.array(
        "h", (int(8000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(rate * seconds)))
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'node':<8} {'role':<10} {'primary':<8} {'backup':<8} clients  why"]
    for n in report["nodes"]:
        lines.append(
            f"{n['name']:<8} {n['role']:<10} {n['primary']:<8} {n['backup']:<8} "
            f"{n['clients_served']:>7}  {n['role_reason']}"
        )
    lk, pr = report["lookups"], report["presence"]
    lines += [
        "",
        f"ready (all registered and attached): {report['ready_s']:.2f} s",
        f"lookups: {lk['succeeded']}/{lk['attempted']} ok, latency p50 "
        f"{lk['latency_ms']['p50']:.1f} ms, p95 {lk['latency_ms']['p95']:.1f} ms",
        f"presence changes heard: {pr['changes_heard']}/{pr['changes_expected']}, propagation "
        f"p50 {pr['propagation_ms']['p50']:.1f} ms, p95 {pr['propagation_ms']['p95']:.1f} ms",
        _call_line(report["call"]),
        f"wall time: {report['wall_s']:.1f} s - {'OK' if report['ok'] else 'FAILED'}",
    ]
    lines += [f"  failed lookup {f}" for f in lk["failed"][:10]]
    return "\n".join(lines)


def run_demo(nodes: int, json_path: Path | None, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="peerphone-demo-"))
    demo = Demo(nodes, workdir)
    try:
        report = asyncio.run(demo.run())
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(report))
    if keep:
        print(f"node directories kept in {workdir}")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    exit_codes = [n.proc.returncode for n in demo.nodes]
    if any(code != 0 for code in exit_codes):
        print(f"nodes exited with {exit_codes}", file=sys.stderr)
        return 1
    return 0 if report["ok"] else 1
