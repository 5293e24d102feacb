"""NodeRuntimes on loopback for tests: build a network, wait for events, bound the time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.events import Event, LookupDone
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Capacity, PresenceBody, Record, Status, decode_body
from peerphone.runtime.node_runtime import DEFAULT_IDLE_TIMEOUT_S, NodeRuntime, run

LOOPBACK = "127.0.0.1"

TEST_BUDGET_S = 4.0  # per test (the crash test: 1.5 times that): the whole file < 20 s

EVENT_TIMEOUT_S = 4.0

LOOKUP_TIMEOUT_S = 4.0

ELIGIBLE = Capacity(True, 86_400, 10_000, 50_000, 200)

# loopback round trips take a millisecond: waits for a dead replica can be short
LOOPBACK_SUPERNODE = SupernodeConfig(fetch_timeout_s=0.3, store_timeout_s=0.5)

E = TypeVar("E", bound=Event)

T = TypeVar("T")


class Loopback:
    """Node runtimes on 127.0.0.1 made from one seed; `close` stops every one of them."""

    def __init__(self, seed: int, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.rng = random.Random(seed)
        self.idle_timeout_s = idle_timeout_s
        self.runtimes: list[NodeRuntime] = []

    def _core(self, name: str) -> NodeCore:
        return NodeCore(
            KeyPair.from_rng(self.rng),
            KeyPair.from_rng(self.rng),
            name,
            random.Random(self.rng.random()),
            SignatureVerifier(),
            capacity=ELIGIBLE,
            supernode_config=LOOPBACK_SUPERNODE,
        )

    async def _start(self, runtime: NodeRuntime) -> NodeRuntime:
        self.runtimes.append(runtime)
        await runtime.start()
        return runtime

    async def supernodes(self, count: int) -> list[NodeRuntime]:
        """A bootstrapped tier: seeded supernodes that hold each other's member records."""
        tier = []
        for i in range(count):
            core = self._core(f"sn{i}")
            runtime = NodeRuntime(
                core, core.node_keys, LOOPBACK, 0, [], idle_timeout_s=self.idle_timeout_s
            )
            tier.append(await self._start(runtime))
        for runtime in tier:  # after start: the member record carries the bound port
            runtime.core.become_supernode(runtime.now(), "test", seed=True)
        records = [member_record(runtime) for runtime in tier]
        for runtime in tier:
            runtime.core.seed_tier(records, runtime.now())
            runtime.drive([])  # the core changed behind the runtime's back: re-arm its timer
        return tier

    async def client(
        self, name: str, supernodes: list[NodeRuntime], with_records: bool = True
    ) -> NodeRuntime:
        """A logged-in client whose host cache holds these supernodes' member records
        (or, with `with_records=False`, that knows nothing but their addresses)."""
        core = self._core(name)
        bootstrap = [sn.address for sn in supernodes if sn.address is not None]
        runtime = NodeRuntime(
            core,
            core.node_keys,
            LOOPBACK,
            0,
            bootstrap,
            host_cache=[member_record(sn) for sn in supernodes] if with_records else [],
            idle_timeout_s=self.idle_timeout_s,
        )
        await self._start(runtime)
        runtime.login()
        return runtime

    async def close(self) -> None:
        for runtime in self.runtimes:
            await runtime.stop()


def member_record(runtime: NodeRuntime) -> Record:
    record = runtime.core.member_record()
    assert record is not None, "not a supernode"
    return record


async def next_event(
    runtime: NodeRuntime, kind: type[E], match: Callable[[E], bool] = lambda e: True
) -> E:
    """The next event of `kind` that `match`es on `runtime`'s queue (others are skipped)."""

    async def wait() -> E:
        while True:
            event = await runtime.events.get()
            if isinstance(event, kind) and match(event):
                return event

    return await asyncio.wait_for(wait(), EVENT_TIMEOUT_S)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (on counters: nothing to await) until it holds, or TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT_S
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


def found(done: LookupDone, owner: NodeRuntime) -> PresenceBody:
    """The verified presence a lookup returned, checked to be signed by `owner`'s user key."""
    assert done.presence is not None, done.reason
    assert done.status is Status.ONLINE
    assert done.presence.owner == owner.core.client.user_keys.public
    body = decode_body(done.presence)
    assert isinstance(body, PresenceBody) and body.username == owner.core.client.username
    return body


class Closable(Protocol):
    async def close(self) -> None: ...


N = TypeVar("N", bound=Closable)


def run_bounded(test: Callable[[N], Awaitable[T]], net: N, budget_s: float = TEST_BUDGET_S) -> T:
    """Run `test` on a fresh network of nodes within `budget_s`, and stop every node."""

    async def main() -> T:
        try:
            return await asyncio.wait_for(test(net), budget_s)
        finally:
            await net.close()

    coroutine: Coroutine[Any, Any, T] = main()
    return run(coroutine)
