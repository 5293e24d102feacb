"""The election rule: who may become a supernode, and when the tier grows or shrinks.

Candidates report capacity when they attach. With `verify_reachability` (real nodes) the
tier trusts none of it for promotion: a candidate is dialled back by two other supernodes
(overlay/reachability.py), ranked only by how long its promoter has itself seen it
attached, and its own measurements (uptime history, upload, spare CPU) can only keep it
out (docs/decisions/0019-measured-eligibility.md). Without it (the simulator, which has no
sockets to dial from) the declared capacity is taken as its ground truth. The tier
promotes when the average load passes `high_water` and demotes under `low_water`; the gap
between the two is the hysteresis. Every supernode decides for itself from its load
estimate, with a probability sized so that the tier as a whole makes about the number of
changes needed (so 500 supernodes seeing the same average do not all promote at once).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from peerphone.records import Capacity


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    """Thresholds of eligibility and of the tier's size."""

    high_water: float = 300.0  # mean clients per supernode above which the tier grows
    low_water: float = 100.0  # ... below which it shrinks
    min_supernodes: int = 4  # never shrink below this (at least the replication factor)
    interval_s: float = 10.0  # how often a supernode applies the rule
    promote_cooldown_s: float = 30.0  # per supernode, between two promotions it starts
    demote_cooldown_s: float = 300.0  # a new supernode is not demoted before this age
    min_uptime_s: float = 600.0
    min_up_kbps: int = 1_000
    min_cpu_score: int = 50
    # real nodes: prove reachability by dial-backs before promoting, trust no declared value
    verify_reachability: bool = False
    min_attached_s: float = 60.0  # ... and the promoter saw the candidate attached this long

    def __post_init__(self) -> None:
        if not 0 < self.low_water < self.high_water:
            raise ValueError("need 0 < low_water < high_water")

    @property
    def target(self) -> float:
        return (self.high_water + self.low_water) / 2


def eligible(capacity: Capacity, config: ElectionConfig) -> bool:
    """Whether a node's declared capacity lets it be a supernode."""
    return (
        capacity.reachable
        and capacity.uptime_s >= config.min_uptime_s
        and capacity.up_kbps >= config.min_up_kbps
        and capacity.cpu_score >= config.min_cpu_score
    )


def eligible_measured(reported: Capacity, attached_s: float, config: ElectionConfig) -> bool:
    """Whether a candidate may be dialled back: what its promoter saw (`attached_s`) must
    pass, and its own measurements may keep it out but never let it in alone."""
    return (
        attached_s >= config.min_attached_s
        and reported.uptime_s >= config.min_uptime_s
        and reported.up_kbps >= config.min_up_kbps
        and reported.cpu_score >= config.min_cpu_score
    )


def measured_score(attached_s: float) -> float:
    """Order of preference among measured candidates: longest seen attached first (a
    node that reports more than it has gains nothing)."""
    return min(attached_s, 86_400.0)


def score(capacity: Capacity) -> float:
    """Order of preference among eligible candidates (more bandwidth, CPU, uptime first)."""
    return capacity.up_kbps / 1000 + capacity.cpu_score / 10 + min(capacity.uptime_s, 86_400) / 3600


class Decision(enum.Enum):
    STAY = "stay"
    PROMOTE = "promote"  # ask one of our eligible clients to become a supernode
    DEMOTE = "demote"  # leave the tier, handing records and clients over


def decide(
    average_load: float,
    own_load: int,
    tier_size: int,
    age_s: float,
    since_last_promotion_s: float,
    config: ElectionConfig,
    rng: random.Random,
) -> Decision:
    """Apply the rule once; `rng` spreads the tier's decisions (see module doc)."""
    if average_load > config.high_water:
        if own_load < average_load or since_last_promotion_s < config.promote_cooldown_s:
            return Decision.STAY
        # the tier needs about tier_size * (avg/target - 1) new members; about half of the
        # tier is at or above average and acts, each once per cooldown
        wanted = tier_size * (average_load / config.target - 1.0)
        p = min(1.0, 2.0 * wanted / max(tier_size, 1))
        return Decision.PROMOTE if rng.random() < p else Decision.STAY
    if average_load < config.low_water and tier_size > config.min_supernodes:
        if own_load > average_load or age_s < config.demote_cooldown_s:
            return Decision.STAY
        surplus = tier_size * (1.0 - average_load / config.target)
        room = tier_size - config.min_supernodes
        p = min(1.0, 2.0 * min(surplus, room) / tier_size) * (config.interval_s / 60.0)
        return Decision.DEMOTE if rng.random() < p else Decision.STAY
    return Decision.STAY
