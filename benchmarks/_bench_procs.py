"""The child processes of the supernode benchmark, and how the parent drives and measures them.

Two children, each started as ``python -m benchmarks.bench_supernode <command>``:

* ``serve``: one seeded supernode (a `NodeRuntime` on 127.0.0.1), alone in its ring, so it
  is the only replica of every record and answers every lookup itself.
* ``echo-serve``: a bare aioquic server that answers each request-sized chunk on a stream
  with a reply-sized chunk: the transport floor the supernode's lookups are compared with.

Both print one JSON line when they listen (pid, port, and for the supernode its signed
member record), then obey lines on stdin: ``stats`` prints a JSON line of counters,
``quit`` (or end of input) stops the process. The parent reads CPU and memory of a child
from /proc, never from the child itself, so measuring costs the child nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StreamDataReceived

from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Capacity, encode_record
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.runtime.quic_identity import make_configuration

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `-m benchmarks...` resolves
SUPERNODE_CAPACITY = Capacity(True, 86_400, 10_000, 50_000, 200)
READY_TIMEOUT_S = 30.0  # a child that has not printed its ready line by then is broken
STATS_TIMEOUT_S = 10.0  # a child that does not answer `stats` by then is stuck
QUIT_TIMEOUT_S = 5.0  # after `quit`, then it is killed
# The bare echo moves as many bytes as a lookup: a framed Lookup (4 + 17 bytes) and a
# framed LookupResult carrying a name and a presence record (4 + 328 bytes), measured.
REQUEST_BYTES = 21
REPLY_BYTES = 332

log = logging.getLogger(__name__)


# -- children ---------------------------------------------------------------------------------


def _say(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def _obey_stdin(stats: Any) -> None:
    """Answer `stats` lines until `quit` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.strip()
        if command == b"stats":
            _say(stats())
        elif command == b"quit":
            return


async def serve_supernode(port: int, max_clients: int, seed: int) -> None:
    """Run one seeded supernode admitting `max_clients` primary clients until told to quit."""
    rng = random.Random(f"supernode-{seed}")  # never the keys of a client of that seed
    config = SupernodeConfig(max_clients=max_clients, max_backups=max_clients)
    core = NodeCore(
        KeyPair.from_rng(rng),
        KeyPair.from_rng(rng),
        "supernode",
        random.Random(rng.random()),
        SignatureVerifier(),
        capacity=SUPERNODE_CAPACITY,
        supernode_config=config,
    )
    runtime = NodeRuntime(core, core.node_keys, LOOPBACK, port, [])
    await runtime.start()
    # after start: the member record carries the bound port. Seeded: a ring of one that
    # never demotes itself, and is the replica of every key.
    sn = core.become_supernode(runtime.now(), "benchmark", seed=True)
    runtime.drive([])
    drain = asyncio.create_task(_drain_events(runtime))
    assert runtime.address is not None

    def stats() -> dict[str, Any]:
        view = core.snapshot().supernode
        assert view is not None  # seeded: never demotes itself
        return {
            "clients": view.clients_served,
            "backups": view.backup_for,
            "links": runtime.link_stats().up,
            "records": view.keys_held,
            "lookups_pending": view.lookups_pending,
            "core_errors": core.errors,
            "runtime": dict(sorted(runtime.stats.items())),
            "supernode": dict(sorted(view.stats.items())),
        }

    _say({"pid": os.getpid(), "port": runtime.address[1], "record": encode_record(sn.record).hex()})
    try:
        await _obey_stdin(stats)
    finally:
        drain.cancel()
        await runtime.stop()


async def _drain_events(runtime: NodeRuntime) -> None:
    """Nobody reads the supernode's events here; take them so none are counted as dropped."""
    while True:
        await runtime.events.get()


class EchoServerProtocol(QuicConnectionProtocol):
    """Answers every `REQUEST_BYTES` received on a stream with `REPLY_BYTES` on that stream."""

    served = 0  # requests answered by every connection of this process

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self._partial: dict[int, int] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            have = self._partial.get(event.stream_id, 0) + len(event.data)
            replies, self._partial[event.stream_id] = divmod(have, REQUEST_BYTES)
            if replies:
                # sent by the base class's transmit() right after this event
                self._quic.send_stream_data(event.stream_id, bytes(REPLY_BYTES * replies))
                EchoServerProtocol.served += replies


async def serve_echo(port: int) -> None:
    """A bare aioquic echo server (Retry on, as on the supernode) until told to quit."""
    configuration = make_configuration(KeyPair.generate(), is_client=False)
    loop = asyncio.get_running_loop()
    # what aioquic's `serve` does, keeping the transport to learn the bound port
    transport, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(
            configuration=configuration, create_protocol=EchoServerProtocol, retry=True
        ),
        local_addr=(LOOPBACK, port),
    )
    _say({"pid": os.getpid(), "port": transport.get_extra_info("sockname")[1]})
    try:
        await _obey_stdin(lambda: {"served": EchoServerProtocol.served})
    finally:
        server.close()


# -- the parent's side ------------------------------------------------------------------------

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far (resolution: one clock tick)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold ")"
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS_PER_S


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent not idle so far, summed over its CPUs (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]  # steal and guest: not ours
    return (user + nice + system + irq + softirq) / CLOCK_TICKS_PER_S


def memory_kib(pid: int) -> dict[str, int]:
    """Resident set size now (VmRSS) and at its peak (VmHWM) of process `pid`, in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return {"rss_kib": found["VmRSS"], "hwm_kib": found["VmHWM"]}


class Child:
    """A benchmark child process: its ready line, its `stats`, and a sure end (`close`)."""

    def __init__(self, process: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.process = process
        self.ready = ready
        self.pid = process.pid
        self.port = int(ready["port"])

    @classmethod
    async def start(cls, *args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.bench_supernode",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)
            if not line:
                raise RuntimeError(f"benchmark child {args} exited before it was ready")
            return cls(process, json.loads(line))
        except BaseException:
            _kill(process)
            await process.wait()
            raise

    async def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"stats\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), STATS_TIMEOUT_S)
        result: dict[str, Any] = json.loads(line)
        return result

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_kib(self) -> dict[str, int]:
        return memory_kib(self.pid)

    async def close(self) -> None:
        """Ask the child to quit; kill it (by its pid) if it has not within QUIT_TIMEOUT_S."""
        if self.process.returncode is None and self.process.stdin is not None:
            try:
                self.process.stdin.write(b"quit\n")
                await self.process.stdin.drain()
                await asyncio.wait_for(self.process.wait(), QUIT_TIMEOUT_S)
            except (TimeoutError, ConnectionError):
                log.warning("benchmark child %d did not quit: killed", self.pid)
        _kill(self.process)
        await self.process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # SIGKILL to this pid only
