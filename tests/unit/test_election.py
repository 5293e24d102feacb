"""The election rule: eligibility, promotion and demotion thresholds with hysteresis."""

from __future__ import annotations

import random

import pytest

from peerphone.overlay.election import Decision, ElectionConfig, decide, eligible, score
from peerphone.records import Capacity

CFG = ElectionConfig(high_water=300, low_water=100, min_supernodes=4)
GOOD = Capacity(True, 7200, 10_000, 50_000, 200)


class Always(random.Random):
    """An rng whose draws always pass a probability test."""

    def random(self) -> float:
        return 0.0


class Never(random.Random):
    def random(self) -> float:
        return 0.999999


@pytest.mark.parametrize(
    ("capacity", "expected"),
    [
        (GOOD, True),
        (Capacity(False, 7200, 10_000, 50_000, 200), False),  # not reachable
        (Capacity(True, 60, 10_000, 50_000, 200), False),  # not up long enough
        (Capacity(True, 7200, 500, 50_000, 200), False),  # too little upstream
        (Capacity(True, 7200, 10_000, 50_000, 10), False),  # no spare CPU
    ],
)
def test_eligibility(capacity: Capacity, expected: bool) -> None:
    assert eligible(capacity, CFG) is expected


def test_score_prefers_more_bandwidth() -> None:
    assert score(Capacity(True, 7200, 20_000, 0, 200)) > score(GOOD)


@pytest.mark.parametrize(
    ("avg", "own", "size", "age", "since", "rng", "expected"),
    [
        (400, 450, 10, 1000, 1000, Always(), Decision.PROMOTE),  # overloaded tier, we're busy
        (400, 350, 10, 1000, 1000, Always(), Decision.STAY),  # below average: others act
        (400, 450, 10, 1000, 5, Always(), Decision.STAY),  # promotion cooldown
        (250, 450, 10, 1000, 1000, Always(), Decision.STAY),  # inside the hysteresis band
        (150, 0, 10, 1000, 1000, Always(), Decision.STAY),  # still inside the band
        (50, 20, 10, 1000, 1000, Always(), Decision.DEMOTE),  # underloaded, we're idle
        (50, 80, 10, 1000, 1000, Always(), Decision.STAY),  # busier than average: stay
        (50, 20, 4, 1000, 1000, Always(), Decision.STAY),  # at the minimum tier size
        (50, 20, 10, 100, 1000, Always(), Decision.STAY),  # too young to demote
    ],
)
def test_decide_table(
    avg: float,
    own: int,
    size: int,
    age: float,
    since: float,
    rng: random.Random,
    expected: Decision,
) -> None:
    assert decide(avg, own, size, age, since, CFG, rng) is expected


def test_promotion_probability_scales_with_overload() -> None:
    # with a narrow band the tier needs only a few promotions: a lottery spreads them
    narrow = ElectionConfig(high_water=300, low_water=250)
    rng = random.Random(5)
    runs = 4000
    mild = sum(
        decide(310, 400, 100, 1e4, 1e4, narrow, rng) is Decision.PROMOTE for _ in range(runs)
    )
    heavy = sum(
        decide(330, 400, 100, 1e4, 1e4, narrow, rng) is Decision.PROMOTE for _ in range(runs)
    )
    # p = 2 * (avg / target - 1): 0.255 and 0.4 for target 275
    assert abs(mild / runs - 0.2545) < 0.03
    assert abs(heavy / runs - 0.4) < 0.03
    assert decide(330, 400, 100, 1e4, 1e4, narrow, Never()) is Decision.STAY


def test_config_rejects_inverted_watermarks() -> None:
    with pytest.raises(ValueError, match="low_water"):
        ElectionConfig(high_water=100, low_water=200)
