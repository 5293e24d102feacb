"""A tiny fake network for pairing overlay cores on virtual time in unit tests."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.client import ClientConfig
from peerphone.overlay.events import Event
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Capacity
from peerphone.wire import Message, Send, decode_message, encode_message

ELIGIBLE = Capacity(True, 86_400, 10_000, 50_000, 200)


class FakeNet:
    """Delivers messages after a fixed latency and fires core timers, in time order.

    Every message is round-tripped through the wire codec, so these tests also prove that
    what the cores send can be encoded and decoded.
    """

    def __init__(self, seed: int = 1, latency_s: float = 0.01) -> None:
        self.rng = random.Random(seed)
        self.verifier = SignatureVerifier()
        self.latency_s = latency_s
        self.now = 0.0
        self.nodes: dict[NodeId, NodeCore] = {}
        self.down: set[NodeId] = set()
        self.drop: set[tuple[NodeId, NodeId]] = set()  # (src, dst) links that lose everything
        self.log: list[tuple[float, NodeId, NodeId, Message]] = []  # delivered
        self.sent_log: list[tuple[float, NodeId, NodeId, Message]] = []  # sent, maybe lost
        self.events: dict[NodeId, list[Event]] = {}
        self._queue: list[tuple[float, int, NodeId, NodeId, Message]] = []
        self._count = itertools.count()
        self._keys = random.Random(seed + 1000)
        # a hostile hop: sees every message (src, dst, msg) and may return a changed one
        self.tamper: Callable[[NodeId, NodeId, Message], Message] | None = None

    def node(
        self,
        name: str,
        capacity: Capacity = ELIGIBLE,
        client: ClientConfig | None = None,
        supernode: SupernodeConfig | None = None,
    ) -> NodeCore:
        core = NodeCore(
            KeyPair.from_rng(self._keys),
            KeyPair.from_rng(self._keys),
            name,
            self.rng,
            self.verifier,
            capacity=capacity,
            client_config=client,
            supernode_config=supernode,
        )
        self.nodes[core.id] = core
        self.events[core.id] = []
        return core

    def supernodes(
        self, names: list[str], config: SupernodeConfig | None = None, seed: bool = True
    ) -> list[NodeCore]:
        """Make already-elected supernodes that know each other (a bootstrapped tier)."""
        cores = [self.node(n, supernode=config) for n in names]
        for core in cores:
            core.become_supernode(self.now, "test", seed=seed)
        records = [c.supernode.record for c in cores if c.supernode is not None]
        for core in cores:
            core.seed_tier(records, self.now)
        return cores

    def log_in(
        self, tier: list[NodeCore], names: list[str], config: ClientConfig | None = None
    ) -> list[NodeCore]:
        """New user nodes that know `tier`'s member records and have started to log in."""
        records = [c.supernode.record for c in tier if c.supernode is not None]
        users = [self.node(name, client=config) for name in names]
        for user in users:
            user.learn_supernodes(records, self.now)
            self.call(user, user.login(self.now))
        return users

    def send(self, src: NodeId, sends: list[Send]) -> None:
        for dst, msg in sends:
            self.sent_log.append((self.now, src, dst, msg))
            if self.tamper is not None:
                msg = self.tamper(src, dst, msg)
            msg = decode_message(encode_message(msg))
            heapq.heappush(
                self._queue, (self.now + self.latency_s, next(self._count), src, dst, msg)
            )

    def _collect(self, core: NodeCore) -> None:
        self.events[core.id].extend(core.pop_events())

    def next_time(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        for node_id, core in self.nodes.items():
            t = core.next_timer()
            if t is not None and node_id not in self.down:
                times.append(t)
        return min(times) if times else None

    def step(self) -> bool:
        t = self.next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        if self._queue and self._queue[0][0] <= self.now:
            _, _, src, dst, msg = heapq.heappop(self._queue)
            core = self.nodes.get(dst)
            if core is None or dst in self.down or (src, dst) in self.drop:
                return True
            self.log.append((self.now, src, dst, msg))
            self.send(dst, core.receive(msg, src, self.now))
            self._collect(core)
            return True
        for node_id in sorted(self.nodes):
            core = self.nodes[node_id]
            due = core.next_timer()
            if node_id not in self.down and due is not None and due <= self.now:
                self.send(node_id, core.handle_timer(self.now))
                self._collect(core)
        return True

    def run_until(self, t: float) -> None:
        while True:
            nxt = self.next_time()
            if nxt is None or nxt > t:
                break
            self.step()
        self.now = max(self.now, t)

    def call(self, core: NodeCore, sends: list[Send]) -> None:
        """Send what an application call on `core` returned."""
        self.send(core.id, sends)
        self._collect(core)

    def kill(self, core: NodeCore, notify_after_s: float | None = None) -> None:
        """Crash a node; its peers are told the link is lost after `notify_after_s`."""
        self.down.add(core.id)
        if notify_after_s is None:
            return
        self.run_until(self.now + notify_after_s)
        for other_id in sorted(self.nodes):
            if other_id in self.down:
                continue
            other = self.nodes[other_id]
            self.send(other_id, other.connection_lost(core.id, self.now))
            self._collect(other)

    def sent(
        self, kind: type, src: NodeId | None = None
    ) -> list[tuple[float, NodeId, NodeId, Message]]:
        return [e for e in self.log if isinstance(e[3], kind) and (src is None or e[1] == src)]
