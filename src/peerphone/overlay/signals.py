"""Routing of call signaling on a supernode (sans-I/O): client -> supernode -> supernode -> client.

A client's `Signal` names the target device's node id and the supernodes that the target's
verified presence record lists (`via`, primary first). The client's supernode delivers it
itself when the target node is attached to it, else relays it to the next supernode of
`via`, and tells the client whether it arrived. A supernode delivers only to the client
whose QUIC link authenticated as that node id: a client that claims someone's name or key
(or replays their presence) never receives their signals. Payloads are opaque here: they
are signed by users (overlay/calls.py), so a supernode can drop or delay a signal but not
forge or alter one unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peerphone.identity import NodeId
from peerphone.wire import (
    ReasonCode,
    Send,
    Signal,
    SignalAck,
    SignalDeliver,
    SignalRelay,
    SignalRelayAck,
)

MAX_PENDING_SIGNALS = 10_000  # relays awaiting an answer from another supernode
RELAY_TIMEOUT_S = 2.0  # then the next supernode of `via` is tried


@dataclass(slots=True)
class _Pending:
    client: NodeId
    client_req: int
    to_node: NodeId
    payload: bytes
    via: list[NodeId]  # supernodes still to try
    deadline: float
    hop: NodeId | None = None  # the supernode asked last
    last_reason: str = ReasonCode.UNDELIVERED


class SignalRouter:
    """The signals one supernode routes for its clients and delivers to them."""

    def __init__(
        self,
        me: NodeId,
        client_of: Callable[[NodeId], NodeId | None],
        is_member: Callable[[NodeId], bool],
    ) -> None:
        self.me = me
        self.client_of = client_of  # the node if it is attached to us as a client, else None
        self.is_member = is_member
        self._pending: dict[int, _Pending] = {}
        self._req = 0
        self.delivered = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._pending)

    def handle_signal(self, msg: Signal, src: NodeId, now: float) -> list[Send]:
        """From our client `src` (the caller checked it is attached)."""
        if len(self._pending) >= MAX_PENDING_SIGNALS:
            return [(src, SignalAck(msg.req, False, "supernode busy"))]
        via = [NodeId(v) for v in msg.via]
        pending = _Pending(src, msg.req, NodeId(msg.to_node), msg.payload, via, now)
        return self._next(pending, now)

    def _next(self, pending: _Pending, now: float) -> list[Send]:
        while pending.via:
            hop = pending.via.pop(0)
            if hop == self.me:
                target = self.client_of(pending.to_node)
                if target is None:
                    pending.last_reason = ReasonCode.NOT_ATTACHED
                    continue
                self.delivered += 1
                return [
                    (target, SignalDeliver(pending.payload)),
                    (pending.client, SignalAck(pending.client_req, True, "")),
                ]
            if not self.is_member(hop):
                pending.last_reason = "not a known supernode"
                continue
            self._req += 1
            pending.hop = hop
            pending.deadline = now + RELAY_TIMEOUT_S
            self._pending[self._req] = pending
            return [(hop, SignalRelay(self._req, pending.to_node, pending.payload))]
        self.failed += 1
        return [(pending.client, SignalAck(pending.client_req, False, pending.last_reason))]

    def handle_relay(self, msg: SignalRelay, src: NodeId, now: float) -> list[Send]:
        """From another supernode: deliver to our client, and say whether we could."""
        if not self.is_member(src):
            return []
        target = self.client_of(NodeId(msg.to_node))
        if target is None:
            return [(src, SignalRelayAck(msg.req, False, ReasonCode.NOT_ATTACHED))]
        self.delivered += 1
        return [(target, SignalDeliver(msg.payload)), (src, SignalRelayAck(msg.req, True, ""))]

    def handle_relay_ack(self, msg: SignalRelayAck, src: NodeId, now: float) -> list[Send]:
        pending = self._pending.get(msg.req)
        if pending is None or pending.hop != src:
            return []
        del self._pending[msg.req]
        if msg.delivered:
            return [(pending.client, SignalAck(pending.client_req, True, ""))]
        pending.last_reason = msg.reason or ReasonCode.UNDELIVERED
        return self._next(pending, now)

    def next_timer(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        for req in sorted(r for r, p in self._pending.items() if p.deadline <= now):
            pending = self._pending.pop(req)
            pending.last_reason = "timeout"
            out.extend(self._next(pending, now))
        return out
