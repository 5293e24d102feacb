"""The load generator of the supernode benchmark: many client nodes in one process.

Each client is a full `NodeCore` on its own `NodeRuntime`, so on its own UDP socket with
its own QUIC link to the supernode, as on a user's machine. They share one event loop and
one signature verifier: the generator stands for thousands of machines, and sharing the
verifier's cache only trims the generator's CPU (each client checks the records its
lookups return); the supernode does all of its work as it would for real clients.

Also here: the client of the bare aioquic echo that the lookups are compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from benchmarks._bench_procs import LOOPBACK, REPLY_BYTES, REQUEST_BYTES
from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.events import Attached, AttachLost, Published, PublishRefused
from peerphone.overlay.node import NodeCore
from peerphone.records import Record
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.runtime.quic_identity import make_configuration
from peerphone.stats import percentile as percentile  # re-exported: bench_supernode uses it

LOOKUP_WAIT_S = 10.0  # past the core's own deadline (6 s): a lookup never hangs the run
ECHO_WAIT_S = 10.0  # the longest wait for one echo (loopback answers in milliseconds)
FDS_PER_PROCESS = 64  # descriptors besides the clients' sockets (stdio, pipes, uvloop)


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one if `needed` descriptors do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft, hard


@dataclass(slots=True)
class AttachResult:
    """How the logins of the fleet went (times from `login()`, in seconds)."""

    attached_s: list[float] = field(default_factory=list)
    published_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    lost: int = 0  # attachments lost on the way (the client then tried again)
    wall_s: float = 0.0


@dataclass(slots=True)
class RequestResult:
    """Requests (lookups or echoes) with a bounded number in flight."""

    latencies_s: list[float] = field(default_factory=list)  # of every answered request
    failures: Counter[str] = field(default_factory=Counter)  # answered, but not as hoped
    unanswered: int = 0  # no answer within the caller's wait
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def succeeded(self) -> int:
        return max(0, self.answered - sum(self.failures.values()))

    @property
    def failed(self) -> int:
        return sum(self.failures.values()) + self.unanswered


async def bounded_requests(
    request: Callable[[int], Awaitable[str]],
    in_flight: int,
    count: int,
    duration_s: float,
) -> RequestResult:
    """Call `request(worker)` from `in_flight` workers, `count` times in all (or, with
    count 0, until `duration_s` has passed). It returns "" on success, else why it failed;
    a TimeoutError counts as unanswered, without a latency."""
    loop = asyncio.get_running_loop()
    result = RequestResult()
    issued = 0
    deadline = loop.time() + duration_s

    def more() -> bool:
        return issued < count if count else loop.time() < deadline

    async def worker(index: int) -> None:
        nonlocal issued
        while more():
            issued += 1
            t0 = time.perf_counter()
            try:
                failure = await request(index)
            except TimeoutError:
                result.unanswered += 1
                continue
            result.latencies_s.append(time.perf_counter() - t0)
            if failure:
                result.failures[failure] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    result.wall_s = time.perf_counter() - start
    return result


class Fleet:
    """`count` client nodes that log in to the supernode of `member_record`."""

    def __init__(self, count: int, member_record: Record, seed: int) -> None:
        rng = random.Random(f"clients-{seed}")
        verifier = SignatureVerifier()
        self.member_record = member_record
        self.cores = [
            NodeCore(
                KeyPair.from_rng(rng),
                KeyPair.from_rng(rng),
                f"user{i:05d}",
                random.Random(rng.random()),
                verifier,
                may_serve=False,  # the supernode must not promote one of them
            )
            for i in range(count)
        ]
        self.runtimes: list[NodeRuntime] = []
        self.published: list[NodeRuntime] = []  # attached, with records stored: lookups use these

    async def log_in(self, in_flight: int, deadline_s: float) -> AttachResult:
        """Start every client and log it in, `in_flight` at a time (each until it has
        published or `deadline_s` has passed), so that handshakes queue in the generator
        rather than time out at the supernode."""
        loop = asyncio.get_running_loop()
        result = AttachResult()
        window = asyncio.Semaphore(in_flight)

        async def one(core: NodeCore) -> None:
            async with window:
                runtime = NodeRuntime(
                    core, core.node_keys, LOOPBACK, 0, [], host_cache=[self.member_record]
                )
                self.runtimes.append(runtime)
                try:
                    await runtime.start()
                except OSError as exc:  # e.g. out of file descriptors (see raise_fd_limit)
                    result.failures[f"socket: {exc.strerror}"] += 1
                    return
                t0 = time.perf_counter()
                runtime.login()
                why = await _until_published(runtime, loop.time() + deadline_s, result, t0)
                if why:
                    result.failures[why] += 1
                else:
                    self.published.append(runtime)

        start = time.perf_counter()
        await asyncio.gather(*(one(core) for core in self.cores))
        result.wall_s = time.perf_counter() - start
        return result

    async def lookups(
        self, in_flight: int, count: int, duration_s: float, seed: int
    ) -> RequestResult:
        """Random clients look random other users up, `in_flight` at a time."""
        rng = random.Random(f"lookups-{seed}")
        clients = sorted(self.published, key=lambda r: r.core.username)
        names = [r.core.username for r in clients]
        if len(clients) < 2:
            return RequestResult(failures=Counter({"fewer than two clients attached": 1}))

        async def lookup(worker: int) -> str:
            asker = rng.randrange(len(clients))
            target = rng.randrange(len(clients) - 1)
            target += target >= asker  # anyone but the asker
            done = await clients[asker].lookup(names[target], LOOKUP_WAIT_S)
            if done.presence is None:
                return done.reason or "no presence"
            return ""

        return await bounded_requests(lookup, in_flight, count, duration_s)

    def stats(self) -> Counter[str]:
        """The runtimes' counters, summed over the fleet."""
        total: Counter[str] = Counter()
        for runtime in self.runtimes:
            total.update(runtime.stats)
        return total

    async def stop(self) -> None:
        for runtime in self.runtimes:
            await runtime.stop(notify=False)  # the supernode is stopped right after


async def _until_published(
    runtime: NodeRuntime, deadline: float, result: AttachResult, t0: float
) -> str:
    """Wait for the client's Attached and Published events; "" or why it did not get there.

    Durations come from `time.perf_counter` (`t0` too): uvloop's clock ticks in ms."""
    loop = runtime.loop
    attached = False
    while True:
        try:
            event = await asyncio.wait_for(runtime.events.get(), deadline - loop.time())
        except TimeoutError:
            return "published too late" if attached else "not attached in time"
        if isinstance(event, Attached) and not attached:
            attached = True
            result.attached_s.append(time.perf_counter() - t0)
        elif isinstance(event, Published) and attached:
            result.published_s.append(time.perf_counter() - t0)
            return ""
        elif isinstance(event, PublishRefused):
            return f"publish refused: {event.reason}"
        elif isinstance(event, AttachLost):
            result.lost += 1


class EchoClientProtocol(QuicConnectionProtocol):
    """One request in flight on one bidirectional stream: `REQUEST_BYTES` out, then wait
    for `REPLY_BYTES` back."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self._stream: int | None = None
        self._received = 0
        self._waiter: asyncio.Future[None] | None = None

    async def request(self) -> None:
        if self._stream is None:
            self._stream = self._quic.get_next_available_stream_id()
        self._waiter = asyncio.get_running_loop().create_future()
        self._quic.send_stream_data(self._stream, bytes(REQUEST_BYTES))
        self.transmit()
        await asyncio.wait_for(self._waiter, ECHO_WAIT_S)

    def quic_event_received(self, event: QuicEvent) -> None:
        waiter = self._waiter
        if isinstance(event, StreamDataReceived):
            self._received += len(event.data)
            if self._received >= REPLY_BYTES and waiter is not None and not waiter.done():
                self._received -= REPLY_BYTES
                waiter.set_result(None)
        elif isinstance(event, ConnectionTerminated) and waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(event.reason_phrase))


@contextlib.asynccontextmanager
async def echo_clients(port: int, connections: int) -> AsyncIterator[list[EchoClientProtocol]]:
    """`connections` QUIC connections to the echo server at `port`, each on its own UDP
    socket (as each client node has); all closed together on exit."""
    async with contextlib.AsyncExitStack() as stack:
        clients: list[EchoClientProtocol] = []
        try:
            for _ in range(connections):
                configuration = make_configuration(KeyPair.generate(), is_client=True)
                protocol = await stack.enter_async_context(
                    connect(
                        LOOPBACK,
                        port,
                        configuration=configuration,
                        create_protocol=EchoClientProtocol,
                    )
                )
                clients.append(cast(EchoClientProtocol, protocol))
            yield clients
        finally:
            for client in clients:  # at once, or their closing periods (~0.1 s) add up
                client.close()


async def echo_requests(
    clients: list[EchoClientProtocol], count: int, duration_s: float
) -> RequestResult:
    """Request/response with one request in flight on each of `clients`."""

    async def echo(worker: int) -> str:
        try:
            await clients[worker].request()
        except ConnectionError as exc:
            return f"connection lost: {exc}"
        return ""

    return await bounded_requests(echo, len(clients), count, duration_s)
