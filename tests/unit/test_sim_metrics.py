"""The simulator's measurements on made-up data: percentiles, recovery, the lookup and
presence ledgers. Each asserts an exact number, so a measurement that stops measuring fails."""

from __future__ import annotations

from typing import cast

import pytest

from peerphone.overlay.events import LookupDone
from peerphone.overlay.node import NodeCore
from peerphone.records import Record, Status
from peerphone.sim.config import SimConfig
from peerphone.sim.engine import SimNode
from peerphone.sim.ledger import (
    ASKER_CRASHED,
    ASKER_LOGGED_OUT,
    PRESENCE_DEADLINE_S,
    TARGET_LEFT,
    LookupLedger,
    PresenceLedger,
)
from peerphone.sim.metrics import Metrics, most_at_once
from peerphone.sim.population import Population, User
from peerphone.stats import percentile

# -- percentile ---------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.0  # rank ceil(0.5 * 4) = 2, not the mean 2.5
    assert percentile(values, 51) == 3.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 0.1) == 1.0
    assert percentile([float(x) for x in range(1, 101)], 99) == 99.0
    assert percentile([], 50) == 0.0


# -- recovery -----------------------------------------------------------------------------


def metrics_with(lookups: list[tuple[float, bool]]) -> Metrics:
    m = Metrics()
    for started, ok in lookups:
        m.record_lookup(started, ok, 0.1, 2, "" if ok else "timeout")
    return m


def every_tenth_second(
    start: int, stop: int, failing: tuple[float, float] = (0.0, 0.0)
) -> list[tuple[float, bool]]:
    """Ten lookups a second in [start, stop); those started in `failing` fail."""
    lo, hi = failing
    times = [s + k / 10 for s in range(start, stop) for k in range(10)]
    return [(t, not lo <= t < hi) for t in times]


def test_recovery_is_zero_when_nothing_failed() -> None:
    m = metrics_with(every_tenth_second(0, 300))
    assert m.recovery_s(100.0, 300.0) == 0.0


def test_recovery_ends_with_the_last_window_below_target() -> None:
    # lookups started in [100, 105) fail: the windows [t - 10, t) ending at t = 101 ... 114
    # hold some of them, so the last bad window ends at 114
    m = metrics_with(every_tenth_second(0, 300, failing=(100.0, 105.0)))
    assert m.recovery_s(100.0, 300.0) == 14.0
    assert m.recovery_s(100.5, 300.0) == 13.5  # measured from the event, not a whole second


def test_one_failure_in_a_hundred_is_still_healthy() -> None:
    lookups = every_tenth_second(0, 300)
    lookups[1500] = (lookups[1500][0], False)  # t = 150.0: one of the 100 in each window
    assert metrics_with(lookups).recovery_s(100.0, 300.0) == 0.0
    lookups[1501] = (lookups[1501][0], False)  # two of 100: 98 % < 99 %
    assert metrics_with(lookups).recovery_s(100.0, 300.0) == 60.0  # last bad window ends at 160


def test_failures_before_the_event_do_not_count() -> None:
    m = metrics_with(every_tenth_second(0, 300, failing=(20.0, 40.0)))
    assert m.recovery_s(100.0, 300.0) == 0.0


def test_a_window_without_lookups_is_unknown_not_healthy() -> None:
    # nobody looks anything up in [150, 170): the windows ending at 160 ... 170 are empty
    lookups = every_tenth_second(0, 150) + every_tenth_second(170, 300)
    assert metrics_with(lookups).recovery_s(100.0, 300.0) == 70.0
    # and a run whose lookups stop is not known to have recovered at all
    assert metrics_with(every_tenth_second(0, 200)).recovery_s(100.0, 300.0) is None


def test_not_recovered_by_the_end_is_none() -> None:
    m = metrics_with(every_tenth_second(0, 300, failing=(100.0, 300.0)))
    assert m.recovery_s(100.0, 300.0) is None


def test_windows_count_judged_and_succeeded_lookups() -> None:
    m = metrics_with([(0.5, True), (1.5, False), (1.7, True), (12.0, True)])
    assert m.windows(1.0, 3.0, window_s=2.0) == [(1, 1), (2, 3), (1, 2)]


def test_most_at_once_counts_overlaps_inside_the_range() -> None:
    spans = [(0.0, 10.0), (5.0, 6.0), (6.0, 7.0), (20.0, 30.0)]
    assert most_at_once(spans, 0.0, 100.0) == 2  # [5, 6) ends where [6, 7) starts
    assert most_at_once(spans, 10.0, 20.0) == 0
    assert most_at_once(spans, 25.0, 26.0) == 1
    assert most_at_once([], 0.0, 1.0) == 0


# -- the ledgers --------------------------------------------------------------------------


def population_of(count: int, buddies: int = 2) -> Population:
    population = Population(count, buddies)
    for i in range(count):
        node = SimNode(i, cast(NodeCore, None), (0.0, 0.0))  # the ledgers never touch the core
        population.add(User(i, f"user{i}", False, node))
    return population


def log_in(population: Population, user: User, now: float, published: bool = True) -> None:
    user.online = True
    user.session += 1
    user.login_at = now
    user.published_seq = int(now * 1000) + 1 if published else None
    population.logged_in.add(user.index)
    if published:
        population.online.add(user.index)


def log_out(population: Population, user: User) -> None:
    user.online = False
    population.logged_in.discard(user.index)
    population.online.discard(user.index)


def presence(seq: int) -> Record:
    return Record(None, b"", seq, 0, b"", b"")  # type: ignore[arg-type]  # only .seq is read


def done(req: int, record: Record | None, reason: str = "", started: float = 10.0) -> LookupDone:
    status = Status.ONLINE if record is not None else None
    return LookupDone(req, "x", record, status, 2, started, started + 0.2, reason)


def test_lookups_are_judged_or_lost_with_a_reason() -> None:
    population = population_of(4)
    m = Metrics()
    ledger = LookupLedger(population, m)
    asker, target, late, leaver = population.users
    for user in (asker, target, leaver):
        log_in(population, user, 1.0)
    log_in(population, late, 9.0, published=False)  # logged in, not findable yet

    ledger.started(asker, 1, target)
    ledger.done(asker, done(1, presence(target.published_seq or 0)))
    ledger.started(asker, 2, late)
    ledger.done(asker, done(2, presence(500)))  # the previous session's record: stale
    ledger.started(asker, 3, leaver)
    log_out(population, leaver)
    ledger.done(asker, done(3, None, "not found"))  # the target left meanwhile
    ledger.started(asker, 4, target)
    ledger.done(asker, done(4, None, "logged out"))
    ledger.started(asker, 5, target)
    ledger.started(asker, 6, late)
    assert ledger.unfinished() == 2
    ledger.asker_gone(asker, crashed=True)  # its process vanished with both lookups

    assert m.lookups_issued == 6
    assert m.lookup_ok == [True, False]
    assert m.failure_reasons == {"stale record": 1}
    assert m.lookups_lost == {TARGET_LEFT: 1, ASKER_LOGGED_OUT: 1, ASKER_CRASHED: 2}
    assert (m.unfindable_lookups, m.unfindable_lookups_ok) == (1, 0)
    assert ledger.unfinished() == 0
    assert m.lookups_issued == len(m.lookup_ok) + sum(m.lookups_lost.values())


def test_a_crashed_askers_request_id_is_not_matched_to_its_next_session() -> None:
    population = population_of(3)
    m = Metrics()
    ledger = LookupLedger(population, m)
    asker, first, second = population.users
    for user in population.users:
        log_in(population, user, 1.0)
    ledger.started(asker, 7, first)
    ledger.asker_gone(asker, crashed=True)
    log_in(population, asker, 50.0)  # a fresh process: request ids start over
    ledger.started(asker, 7, second)
    ledger.done(asker, done(7, presence(second.published_seq or 0)))
    assert m.lookup_ok == [True] and m.lookups_lost == {ASKER_CRASHED: 1}


def test_a_new_record_of_a_not_yet_findable_target_is_an_answer() -> None:
    population = population_of(2)
    m = Metrics()
    ledger = LookupLedger(population, m)
    asker, late = population.users
    log_in(population, asker, 1.0)
    log_in(population, late, 9.0, published=False)
    ledger.started(asker, 1, late)
    ledger.done(asker, done(1, presence(9_000)))  # made at login: stored, not yet acknowledged
    assert m.lookup_ok == [True] and (m.unfindable_lookups, m.unfindable_lookups_ok) == (1, 1)


def test_presence_changes_are_expected_of_online_watchers_and_judged_at_the_deadline() -> None:
    population = population_of(7, buddies=6)
    m = Metrics()
    ledger = PresenceLedger(population, m)
    changer = population.users[0]
    watchers = [population.users[i] for i in population.watchers_of(changer.index)]
    heard, silent, leaver, unpublished = watchers[:4]
    for user in (changer, heard, silent, leaver):
        log_in(population, user, 1.0)
    log_in(population, unpublished, 1.0, published=False)  # its watch is not placed yet
    # (any further watchers stay offline: nobody expects them to hear)

    ledger.changed(changer, 100.0)
    assert m.presence_expected == 3  # heard, silent and leaver: online and published
    ledger.heard(heard, changer.name, 100.0)  # the new record, made at the change
    ledger.heard(silent, changer.name, 40.0)  # only an older one
    log_out(population, leaver)
    ledger.judge(100.0 + PRESENCE_DEADLINE_S - 0.1)
    assert ledger.unjudged() == 3  # not yet due
    ledger.judge(100.0 + PRESENCE_DEADLINE_S)
    assert (m.presence_delivered, m.presence_missing, m.presence_unjudged) == (1, 1, 1)
    assert ledger.unjudged() == 0


@pytest.mark.parametrize("buddies", [1, 3])
def test_watchers_are_the_reverse_of_buddy_lists(buddies: int) -> None:
    population = population_of(50, buddies)
    for user in population.users:
        for index in population.watchers_of(user.index):
            assert user.name in population.buddies_of(population.users[index])
            assert index != user.index
    total = sum(len(population.watchers_of(u.index)) for u in population.users)
    pairs = {
        (u.index, b) for u in population.users for b in population.buddies_of(u) if b != u.name
    }
    assert total == len(pairs)


@pytest.mark.parametrize("scenario", ["mass-reboot", "login-storm"])
def test_a_disaster_that_cannot_fit_in_the_run_is_an_error(scenario: str) -> None:
    """--duration 600 used to put the event at 600 s, the very end: a steady run that
    reported a disaster. It is refused, naming the duration needed."""
    with pytest.raises(ValueError, match="at least 720 s"):
        SimConfig(users=100, duration_s=600.0, scenario=scenario)
    with pytest.raises(ValueError, match="at least 520 s"):
        SimConfig(users=100, duration_s=500.0, scenario=scenario, event_at=400.0)
    assert SimConfig(users=100, duration_s=720.0, scenario=scenario).disaster_time() == 600.0
    # a third into a run long enough for it; never at (or near) the end
    for duration in (1800.0, 3600.0, 7200.0):
        at = SimConfig(users=100, duration_s=duration, scenario=scenario).disaster_time()
        assert at == duration / 3
    assert SimConfig(users=100, duration_s=600.0, scenario="steady").duration_s == 600.0


def test_a_dip_long_after_the_event_settled_is_its_own_not_the_events() -> None:
    # the event's harm ends with the window at 114; two failures at 500 s, after 300 s of
    # health, make a dip of their own: counted, not a recovery of 410 s
    lookups = every_tenth_second(0, 700, failing=(100.0, 105.0))
    lookups[5000] = (lookups[5000][0], False)
    lookups[5001] = (lookups[5001][0], False)
    m = metrics_with(lookups)
    assert m.recovery_s(100.0, 700.0) == 14.0
    assert m.later_dips(100.0, 14.0, 700.0) == 10  # the windows ending at 501 ... 510
    # within the settling time it is still the event's
    assert m.recovery_s(100.0, 700.0, settle_s=500.0) == 410.0
