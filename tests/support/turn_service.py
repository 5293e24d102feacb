"""The TURN service on loopback, for tests."""

from __future__ import annotations

import asyncio
import random
import time

from peerphone.nat.server import TurnService
from peerphone.nat.turn import TurnServer

SECRET = b"loopback secret"

HOST = "127.0.0.1"


async def start_service() -> TurnService:
    core = TurnServer(SECRET, bandwidth_bytes_per_s=1e6, now=time.time(), rng=random.Random(3))
    return TurnService(core, HOST)


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
