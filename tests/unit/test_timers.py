"""`CoreTimer`: one loop timer at a core's deadline, moved only when the deadline moves."""

from __future__ import annotations

import asyncio

from peerphone.timers import CoreTimer


def test_the_timer_follows_the_deadline_and_fires_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = CoreTimer(loop, lambda: fired.append(timer.due(loop.time())))
        start = loop.time()
        timer.arm(start + 10.0)
        handle = timer._handle
        timer.arm(start + 10.0)  # the same deadline: the same loop timer
        assert timer._handle is handle
        timer.arm(float("inf"))  # "no timer", as the NAT core says it
        assert timer.at is None and timer._handle is None
        timer.arm(start + 0.01)
        await asyncio.sleep(0.05)
        assert len(fired) == 1 and fired[0] >= start + 0.01  # never before the deadline
        timer.arm(start + 0.01)  # asked again after firing: armed again
        await asyncio.sleep(0.02)
        assert len(fired) == 2
        timer.stop()
        timer.arm(loop.time())
        await asyncio.sleep(0.02)
        assert len(fired) == 2 and timer.at is None

    asyncio.run(main())


def test_a_core_clock_is_mapped_onto_the_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        epoch = 1_000_000.0  # the core's clock = the loop's + epoch
        fired: list[float] = []
        timer = CoreTimer(loop, lambda: fired.append(loop.time()), lambda at: at - epoch)
        timer.arm(loop.time() + epoch + 0.01)
        await asyncio.sleep(0.05)
        assert len(fired) == 1

    asyncio.run(main())
