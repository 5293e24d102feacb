"""The event loop: one queue, virtual time, the real node cores, a simulated network."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peerphone.errors import PeerphoneError
from peerphone.identity import NodeId
from peerphone.overlay.node import NodeCore
from peerphone.sim.network import Network
from peerphone.wire import Send, decode_message, encode_message

DELIVER, TIMER, LINK_LOST, ACTION = 0, 1, 2, 3


class TimerStuck(PeerphoneError):
    """A core's handle_timer left its next timer at or before now (it would spin forever)."""


@dataclass(slots=True, eq=False)
class SimNode:
    """One simulated machine: a node core, where it is, and whether it is running."""

    index: int
    core: NodeCore
    coord: tuple[float, float]
    alive: bool = False
    timer_at: float | None = None
    links: set[NodeId] = field(default_factory=set)  # peers we hold a connection to


class Engine:
    """Delivers messages and timers to node cores in virtual-time order."""

    def __init__(self, network: Network, encode_messages: bool = False) -> None:
        self.network = network
        self.encode_messages = encode_messages  # round-trip every message through the codec
        self.now = 0.0
        self.nodes: dict[NodeId, SimNode] = {}
        self.events = 0
        self._queue: list[tuple[float, int, int, Any, Any, Any]] = []
        self._counter = itertools.count()
        self.on_events: Callable[[SimNode], None] | None = None
        self.link_timeout: Callable[[], float] = lambda: 10.0

    def add(self, node: SimNode) -> None:
        self.nodes[node.core.id] = node

    def schedule(self, at: float, action: Callable[..., None], *args: object) -> None:
        heapq.heappush(self._queue, (at, next(self._counter), ACTION, action, args, None))

    def send(self, node: SimNode, sends: list[Send]) -> None:
        """Hand a node's output to the network and re-arm its timer."""
        now = self.now
        queue = self._queue
        counter = self._counter
        network = self.network
        for dst_id, msg in sends:
            dst = self.nodes.get(dst_id)
            if dst is None:
                continue
            if dst is node:
                heapq.heappush(queue, (now, next(counter), DELIVER, dst, node.core.id, msg))
                continue
            if not network.delivers(node.index, dst.index):
                continue
            if self.encode_messages:
                msg = decode_message(encode_message(msg))
            at = now + network.delay(node.coord, dst.coord)
            heapq.heappush(queue, (at, next(counter), DELIVER, dst, node.core.id, msg))
            node.links.add(dst_id)
        self.rearm(node)

    def rearm(self, node: SimNode) -> None:
        t = node.core.next_timer()
        if t is not None and (node.timer_at is None or t < node.timer_at):
            t = max(t, self.now)
            node.timer_at = t
            heapq.heappush(self._queue, (t, next(self._counter), TIMER, node, t, None))
        core = node.core
        if core.has_events() and self.on_events is not None:
            self.on_events(node)

    def crash(self, node: SimNode) -> None:
        """The machine vanishes: peers notice when their link times out."""
        node.alive = False
        node.timer_at = None
        for peer_id in sorted(node.links):
            peer = self.nodes.get(peer_id)
            if peer is not None and peer.alive:
                at = self.now + self.link_timeout()
                heapq.heappush(
                    self._queue, (at, next(self._counter), LINK_LOST, peer, node.core.id, node)
                )
        node.links.clear()

    def run(self, until: float, progress: Callable[[float], None] | None = None) -> None:
        queue = self._queue
        pop = heapq.heappop
        next_progress = self.now
        while queue and queue[0][0] <= until:
            at, _, kind, a, b, c = pop(queue)
            self.now = at
            self.events += 1
            if progress is not None and at >= next_progress:
                progress(at)
                next_progress = at + 10.0
            if kind == DELIVER:
                node = a
                assert isinstance(node, SimNode)
                if node.alive:
                    node.links.add(b)
                    self.send(node, node.core.receive(c, b, at))
            elif kind == TIMER:
                node = a
                assert isinstance(node, SimNode)
                if node.alive and node.timer_at == b:
                    node.timer_at = None
                    sends = node.core.handle_timer(at)
                    due = node.core.next_timer()
                    if due is not None and due <= at:
                        raise TimerStuck(f"node {node.index} left its timer at {due} <= now {at}")
                    self.send(node, sends)
            elif kind == LINK_LOST:
                node = a
                assert isinstance(node, SimNode)
                dead = c
                assert isinstance(dead, SimNode)
                # a peer that rebooted and connected to us again has a new, live connection:
                # only the old one timed out, which the runtime would not report
                if node.alive and not (dead.alive and node.core.id in dead.links):
                    node.links.discard(b)
                    self.send(node, node.core.connection_lost(b, at))
            else:
                a(*b)
        self.now = max(self.now, until)
