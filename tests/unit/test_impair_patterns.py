"""The loss patterns of tests/support/impair.py (no lab): seeded, at the asked rate, bursty
in runs of the asked mean length, and written as nftables set elements."""

from __future__ import annotations

import itertools

import pytest

from tests.support.impair import (
    NO_LOSS,
    PATTERN_PACKETS,
    bursty_loss,
    random_loss,
    set_elements,
)


def runs(pattern: list[bool]) -> list[int]:
    return [len(list(group)) for dropped, group in itertools.groupby(pattern) if dropped]


@pytest.mark.parametrize("percent", [1.5, 5.0, 20.0])
def test_random_loss_drops_the_asked_share_in_short_runs(percent: float) -> None:
    pattern = random_loss(percent, seed=3).pattern()
    assert len(pattern) == PATTERN_PACKETS
    assert sum(pattern) / len(pattern) == pytest.approx(percent / 100, rel=0.15)
    mean_run = sum(runs(pattern)) / len(runs(pattern))
    assert mean_run == pytest.approx(1 / (1 - percent / 100), rel=0.15)  # geometric


@pytest.mark.parametrize("percent", [3.0, 10.0, 20.0])
def test_bursty_loss_has_the_asked_share_and_mean_burst(percent: float) -> None:
    pattern = bursty_loss(percent, seed=4, mean_burst=3.0).pattern()
    assert sum(pattern) / len(pattern) == pytest.approx(percent / 100, rel=0.2)
    assert sum(runs(pattern)) / len(runs(pattern)) == pytest.approx(3.0, rel=0.2)


def test_patterns_repeat_with_their_seed_and_differ_without_it() -> None:
    assert random_loss(5, 1).pattern() == random_loss(5, 1).pattern()
    assert random_loss(5, 1).pattern() != random_loss(5, 2).pattern()
    assert bursty_loss(5, 1).pattern() != random_loss(5, 1).pattern()
    assert NO_LOSS.pattern(10) == [False] * 10
    assert random_loss(0, 1) == NO_LOSS
    with pytest.raises(ValueError, match="seed"):
        random_loss(5, None).pattern()  # the kernel's random has no pattern
    with pytest.raises(ValueError, match="outside"):
        random_loss(101, 1)


def test_drops_become_set_elements_with_ranges_for_runs() -> None:
    assert set_elements([True, False, True, True, True, False, False, True]) == ["0", "2-4", "7"]
    assert set_elements([False, False]) == []
