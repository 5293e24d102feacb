"""The one asyncio timer that follows a sans-I/O core's `next_timer()`.

Every adapter has the same loop: after each call into its core, ask the core when it
wants `handle_timer` next and move a single loop timer there (only if the time changed:
re-arming costs a heap operation per packet otherwise). When it fires, hand the core a
`now` no earlier than the time asked for: asyncio may fire a hair early, and a core that
gets a time before its deadline does nothing and asks for the same time again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class CoreTimer:
    """One loop timer at a core's next deadline; `on_fire()` when it is due (then
    `due(now)` is the time to hand the core).

    `to_loop_time` maps a deadline on the core's clock onto the loop's clock (the identity
    when the core runs on the loop's clock). `None` and `inf` both mean "no timer".
    """

    __slots__ = ("_handle", "_loop", "_on_fire", "_stopped", "_to_loop_time", "at")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_fire: Callable[[], None],
        to_loop_time: Callable[[float], float] = lambda at: at,
    ) -> None:
        self._loop = loop
        self._on_fire = on_fire
        self._to_loop_time = to_loop_time
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False
        self.at: float | None = None  # the deadline armed, on the core's clock

    def arm(self, at: float | None) -> None:
        """Fire at `at` (the core's clock) instead of whenever it was armed for."""
        if at is not None and math.isinf(at):
            at = None
        if self._stopped or (at == self.at and (self._handle is not None or at is None)):
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = at
        if at is not None:
            self._handle = self._loop.call_at(self._to_loop_time(at), self._fire)

    def due(self, now: float) -> float:
        """The `now` to hand the core when the timer fired: never before its deadline."""
        return max(self.at or 0.0, now)

    def cancel(self) -> None:
        """Disarm; a later `arm` arms again."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle, self.at = None, None

    def stop(self) -> None:
        """Disarm for good: `arm` does nothing from now on."""
        self.cancel()
        self._stopped = True

    def _fire(self) -> None:
        self._handle = None
        self._on_fire()
