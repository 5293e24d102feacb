"""The simulated network: per-link latency from node coordinates, loss and partitions."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Latency, loss and partition settings of the virtual network."""

    latency: str = "geo"  # "geo": base + distance on a unit square + jitter; "constant"
    base_latency_s: float = 0.005
    max_distance_latency_s: float = 0.110  # one-way, corner to corner
    jitter_mean_s: float = 0.002  # exponential jitter added per message
    loss: float = 0.001  # probability a message is lost

    def __post_init__(self) -> None:
        if self.latency not in ("geo", "constant"):
            raise ValueError(f"unknown latency model {self.latency!r}")
        if not 0.0 <= self.loss < 1.0:
            raise ValueError("loss must be in [0, 1)")


class Network:
    """Decides, for one message, whether it arrives and after how long."""

    def __init__(self, config: NetworkConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.partition: dict[int, int] | None = None  # node index -> side
        self.sent = 0
        self.lost = 0

    def place(self) -> tuple[float, float]:
        """Coordinates for a new node."""
        return (self.rng.random(), self.rng.random())

    def delay(self, a: tuple[float, float], b: tuple[float, float]) -> float:
        cfg = self.config
        if cfg.latency == "constant":
            return cfg.base_latency_s
        distance = math.hypot(a[0] - b[0], a[1] - b[1]) / math.sqrt(2.0)
        jitter = self.rng.expovariate(1.0 / cfg.jitter_mean_s) if cfg.jitter_mean_s > 0 else 0.0
        return cfg.base_latency_s + distance * cfg.max_distance_latency_s + jitter

    def delivers(self, src: int, dst: int) -> bool:
        self.sent += 1
        if self.partition is not None and self.partition.get(src, 0) != self.partition.get(dst, 0):
            self.lost += 1
            return False
        if self.config.loss > 0.0 and self.rng.random() < self.config.loss:
            self.lost += 1
            return False
        return True
