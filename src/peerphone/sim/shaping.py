"""A supernode's upload as its owner capped it: bytes per second of virtual time, a token
bucket that paces what the supernode sends, and the relayed calls' flows.

`Bins` count bytes per whole second; a 10 s window is ten consecutive bins, and the share
of a cap used in it is the window's bytes over (cap x 10 s).

`Shaper` is a token bucket of rate r and depth `DEPTH_S` of r: what leaves it in any 10 s
is at most r x 10 s + r x 0.5 s, 105 % of the cap, whatever is offered. Messages of a
packet or less (interactive: answers, acks, notifications) go first: at once while there
are tokens, else behind the bucket's debt, and dropped (counted) when that wait would pass
`MAX_QUEUE_S`. Bigger ones, and background traffic whatever its size (the engine's
`BULK_TYPES`: hand-overs, membership pages, presence notifications, redirects), wait in a
queue of their own and take only the tokens above half the depth, in steps of `DRAIN_S`,
so they never hold an answer up. Within that queue a redirect (`urgent`) goes before the
data: it tells a client that the supernode has already forgotten it, and until it comes
the client cannot look anyone up (behind a hand-over's backlog it waited 13 s). Bytes
count in the bins as tokens pay for them.

`RelayFlows` are the relayed calls a supernode carries: each a constant rate, admitted
only while the sum stays within the relay cap, never cut short once admitted.
"""

from __future__ import annotations

from collections import deque
from typing import Any

BULK_BYTES = 1500  # bigger than one packet: paced as bulk
DEPTH_S = 0.5  # bucket depth in seconds of the rate: 5 % of a 10 s window
MAX_QUEUE_S = 2.0  # an interactive message that would wait longer is dropped
DRAIN_S = 0.1  # the bulk queue takes its tokens this often
WINDOW_S = 10  # the window the caps are judged over


class Bins:
    """Bytes per whole second of virtual time."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes: dict[int, float] = {}

    def add(self, t: float, n: float) -> None:
        k = int(t)
        self.bytes[k] = self.bytes.get(k, 0.0) + n

    def add_span(self, t0: float, t1: float, n: float) -> None:
        """`n` bytes spread evenly over [t0, t1)."""
        if n <= 0.0:
            return
        if t1 - t0 <= 1e-12 or int(t0) == int(t1):
            self.add(t0, n)
            return
        rate = n / (t1 - t0)
        t = t0
        while t < t1:
            edge = min(float(int(t) + 1), t1)
            self.add(t, rate * (edge - t))
            t = edge

    def last(self, now: float, seconds: int = WINDOW_S) -> float:
        """Bytes in the `seconds` whole seconds before the one `now` is in."""
        end = int(now)
        get = self.bytes.get
        return sum(get(k, 0.0) for k in range(end - seconds, end))

    def window_sums(self, start: int, end: int, width: int = WINDOW_S) -> list[float]:
        """The bytes of every window [k, k + width) with start <= k and k + width <= end."""
        get = self.bytes.get
        if end - start < width:
            return []
        total = sum(get(k, 0.0) for k in range(start, start + width))
        sums = [total]
        for k in range(start + 1, end - width + 1):
            total += get(k + width - 1, 0.0) - get(k - 1, 0.0)
            sums.append(total)
        return sums

    def max_window(self, width: int = WINDOW_S) -> float:
        """The most bytes in any window of `width` seconds, anywhere."""
        if not self.bytes:
            return 0.0
        keys = sorted(self.bytes)
        return max(self.window_sums(keys[0] - width + 1, keys[-1] + width, width))


class Shaper:
    """A token bucket on one machine's signaling + directory upload (see module doc)."""

    def __init__(self, kbps: int) -> None:
        self.rate = kbps * 125.0  # bytes per second
        self.depth = self.rate * DEPTH_S
        self.tokens = self.depth
        self.last = 0.0
        self.bins = Bins()  # every byte that left, when it left
        self.asked = Bins()  # interactive bytes, when the supernode sent them (its load)
        self.sent_total = 0.0
        self.bulk: deque[tuple[float, Any]] = deque()  # (size, payload), in order
        self.urgent: deque[tuple[float, Any]] = deque()  # redirects: before the data
        self.head: tuple[float, Any] | None = None  # the message being paid for
        self.paid = 0.0  # of the head
        self.draining = False
        self.active = False  # its machine serves (else it only finishes what is queued)
        self.dropped = 0  # interactive messages that would have waited too long
        self.waited = 0  # interactive messages that waited for tokens
        self.bulk_sent = 0

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.depth, self.tokens + self.rate * (now - self.last))
            self.last = now

    def send(self, size: float, now: float) -> float | None:
        """An interactive message of `size` bytes: when its last byte leaves, or None if
        it would wait more than MAX_QUEUE_S (dropped)."""
        self._refill(now)
        tokens = self.tokens
        if tokens >= size:
            self.tokens = tokens - size
            self.bins.add(now, size)
            self.asked.add(now, size)
            self.sent_total += size
            return now
        leaves = now + (size - tokens) / self.rate
        if leaves - now > MAX_QUEUE_S:
            self.dropped += 1
            return None
        self.waited += 1
        instant = max(tokens, 0.0)
        if instant > 0.0:
            self.bins.add(now, instant)
        start = now + max(0.0, -tokens) / self.rate
        self.bins.add_span(start, leaves, size - instant)
        self.asked.add(now, size)
        self.sent_total += size
        self.tokens = tokens - size
        return leaves

    def bulk_now(self, size: float, now: float) -> bool:
        """A bulk message that may leave at once: nothing queued before it and tokens
        for it above half the depth (else the caller enqueues it)."""
        if self.queued():
            return False
        self._refill(now)
        if self.tokens - size < self.depth / 2:
            return False
        self.tokens -= size
        self.bins.add(now, size)
        self.sent_total += size
        self.bulk_sent += 1
        return True

    def queued(self) -> bool:
        """Whether bulk messages wait."""
        return self.head is not None or bool(self.urgent) or bool(self.bulk)

    def enqueue(self, size: float, payload: Any, urgent: bool = False) -> bool:
        """A bulk message (`urgent`: ahead of the data, behind the message being paid
        for); True if the queue was idle (the caller schedules `drain`)."""
        (self.urgent if urgent else self.bulk).append((size, payload))
        if self.draining:
            return False
        self.draining = True
        return True

    def drain(self, now: float) -> tuple[list[Any], float | None]:
        """Pay the bulk queue (urgent messages first) from the tokens above half the
        depth: the payloads whose last byte left now, and when to drain next (None: the
        queue is empty)."""
        self._refill(now)
        released: list[Any] = []
        while True:
            if self.head is None:
                if self.urgent:
                    self.head = self.urgent.popleft()
                elif self.bulk:
                    self.head = self.bulk.popleft()
                else:
                    break
            spare = self.tokens - self.depth / 2
            if spare <= 0.0:
                break
            size, payload = self.head
            pay = min(spare, size - self.paid)
            self.tokens -= pay
            self.paid += pay
            self.bins.add(now, pay)
            self.sent_total += pay
            if self.paid < size - 1e-9:
                break
            self.head = None
            self.paid = 0.0
            self.bulk_sent += 1
            released.append(payload)
        if not self.queued():
            self.draining = False
            return released, None
        return released, now + DRAIN_S

    def clear(self) -> None:
        """The machine vanished: what it had queued never leaves."""
        self.bulk.clear()
        self.urgent.clear()
        self.head = None
        self.paid = 0.0
        self.draining = False

    def backlog_s(self, now: float) -> float:
        """How long an answer sent now would wait for tokens."""
        self._refill(now)
        return max(0.0, -self.tokens) / self.rate

    def idle(self, now: float) -> bool:
        """Nothing queued and no debt: the node may leave the shaper."""
        self._refill(now)
        return not self.queued() and self.tokens >= 0.0

    def pressure(self, now: float) -> float:
        """The interactive load of the last 10 s as a share of the cap (what shedding
        can lower; bulk takes only what is left over)."""
        return self.asked.last(now) / (self.rate * WINDOW_S)


class RelayFlows:
    """The relayed calls one supernode carries (see module doc)."""

    def __init__(self, kbps: int) -> None:
        self.cap = kbps * 125.0  # bytes per second
        self.flows: dict[int, float] = {}  # flow id -> bytes per second
        self.rate = 0.0
        self.since = 0.0
        self.bins = Bins()
        self.sent_total = 0.0

    def settle(self, now: float) -> None:
        """Count the bytes relayed since the last change up to `now`."""
        if now > self.since:
            if self.rate > 0.0:
                n = self.rate * (now - self.since)
                self.bins.add_span(self.since, now, n)
                self.sent_total += n
            self.since = now

    def fits(self, bytes_per_s: float) -> bool:
        return self.rate + bytes_per_s <= self.cap + 1e-9

    def open(self, flow: int, bytes_per_s: float, now: float) -> None:
        self.settle(now)
        self.flows[flow] = bytes_per_s
        self.rate += bytes_per_s

    def close(self, flow: int, now: float) -> bool:
        """End a flow; False if it was not carried here."""
        bytes_per_s = self.flows.pop(flow, None)
        if bytes_per_s is None:
            return False
        self.settle(now)
        self.rate = max(0.0, self.rate - bytes_per_s)
        if not self.flows:
            self.rate = 0.0
        return True

    def pressure(self) -> float:
        return self.rate / self.cap if self.cap > 0 else 0.0
