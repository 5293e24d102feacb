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
from peerphone.sim.shaping import BULK_BYTES, Shaper
from peerphone.wire import (
    MembershipPage,
    Notify,
    PresenceUpdate,
    Redirect,
    Send,
    Store,
    decode_message,
    encode_message,
)

DELIVER, TIMER, LINK_LOST, ACTION = 0, 1, 2, 3
# background traffic, paced behind a supernode's answers and never dropped: membership
# pages, presence notifications (a new replica's catch-up comes in floods), the redirects
# of a supernode handing its clients over; hand-over Stores too (see send)
BULK_TYPES = (MembershipPage, Notify, PresenceUpdate, Redirect)


def is_bulk(msg: object, size: int) -> bool:
    """Whether a supernode's shaper sends `msg` as background traffic (see sim.shaping)."""
    return (
        size > BULK_BYTES
        or isinstance(msg, BULK_TYPES)
        or (isinstance(msg, Store) and msg.req == 0)  # a hand-over
    )


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
    host: str = ""  # the IP its links come from (its public address, or its NAT's)
    told: set[NodeId] = field(default_factory=set)  # peers whose link's host the core knows
    shaper: Shaper | None = None  # the owner's cap on what it sends, while it serves


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
        """Hand a node's output to the network (through its shaper while it has one) and
        re-arm its timer."""
        now = self.now
        queue = self._queue
        counter = self._counter
        network = self.network
        shaper = node.shaper
        if shaper is not None and not shaper.active and shaper.idle(now):
            node.shaper = shaper = None  # served, and handed everything over
        for dst_id, msg in sends:
            dst = self.nodes.get(dst_id)
            if dst is None:
                continue
            if dst is node:
                heapq.heappush(queue, (now, next(counter), DELIVER, dst, node.core.id, msg))
                continue
            if not network.delivers(node.index, dst.index):
                continue
            data = None
            if self.encode_messages:
                data = encode_message(msg)
                msg = decode_message(data)
            delay = network.delay(node.coord, dst.coord)
            node.links.add(dst_id)
            if shaper is None:
                at = now + delay
            else:
                size = len(data if data is not None else encode_message(msg))
                if is_bulk(msg, size):
                    if not shaper.bulk_now(size, now):
                        urgent = isinstance(msg, Redirect)
                        if shaper.enqueue(size, (dst, msg, delay), urgent):
                            self.schedule(now, self._drain, node, shaper)
                        continue
                    at = now + delay
                else:
                    leaves = shaper.send(size, now)
                    if leaves is None:
                        continue  # it would wait too long behind the cap: dropped (counted)
                    at = leaves + delay
            heapq.heappush(queue, (at, next(counter), DELIVER, dst, node.core.id, msg))
        self.rearm(node)

    def _drain(self, node: SimNode, shaper: Shaper) -> None:
        """Send the bulk messages the shaper's tokens have paid for (see sim.shaping)."""
        now = self.now
        released, again = shaper.drain(now)
        for dst, msg, delay in released:
            heapq.heappush(
                self._queue, (now + delay, next(self._counter), DELIVER, dst, node.core.id, msg)
            )
        if again is not None:
            self.schedule(again, self._drain, node, shaper)

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
        node.told.clear()
        if node.shaper is not None:
            node.shaper.clear()  # what it had queued never leaves
            node.shaper = None
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
                    if b not in node.told:  # a new link: the runtime says where it comes from
                        node.told.add(b)
                        src = self.nodes.get(b)
                        if src is not None and src.host:
                            out = node.core.link_up(b, src.host, at)
                            if out:
                                self.send(node, out)
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
                    node.told.discard(b)
                    self.send(node, node.core.connection_lost(b, at))
            else:
                a(*b)
        self.now = max(self.now, until)
