"""Supernode duty (issue 12, item 2): the caps' pressures, the shedding ladder's order and
timing, the directory bucket, quiet hours, and the supernode core's shedding hooks."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from peerphone.daemon.duty import (
    CALM_S,
    CLIMB_INTERVAL_S,
    DIRECTORY_BURST_S,
    REJOIN_HOLD_S,
    Budget,
    Caps,
    DutyLadder,
    Measures,
    QuietHours,
    Step,
    parse_quiet_hours,
    pressures,
)
from peerphone.overlay.events import RoleChanged
from peerphone.wire import AttachRedirect, Redirect
from tests.support.fakenet import FakeNet
from tests.unit.test_supernode import online_users

CAPS = Caps(
    max_clients=10,
    relay_bytes_per_s=25_000.0,  # 200 kbit/s
    directory_bytes_per_s=1_000.0,
    day_bytes=1_000_000,
    month_bytes=10_000_000,
    cpu_percent=50.0,
)
CALM = Measures(
    directory_up_bytes=0,
    relay_up_bytes_per_s=0.0,
    day_bytes=0,
    month_bytes=0,
    cpu_percent=5.0,
    clients=3,
    owner_in_call=False,
    machine_busy=False,
    minute_of_day=12 * 60,
)


def run(ladder: DutyLadder, m: Measures, start: float, seconds: int) -> list[tuple[float, Step]]:
    """Feed `m` once a second for `seconds`; the (time, new step) of every change."""
    out = []
    for t in range(seconds):
        for change in ladder.update(m, start + t, serving=True):
            out.append((change.at, change.new))
    return out


def test_a_cap_reached_climbs_the_ladder_in_order_one_step_per_interval() -> None:
    ladder = DutyLadder(CAPS, 0.0)
    hot = dataclasses.replace(CALM, cpu_percent=80.0)
    changes = run(ladder, hot, 100.0, 30)
    assert [step for _, step in changes] == [
        Step.NO_NEW_CLIENTS,
        Step.REDIRECT,
        Step.NO_NEW_RELAY,
        Step.STEP_DOWN,
    ]
    times = [at for at, _ in changes]
    assert times[0] == 100.0
    assert all(b - a == CLIMB_INTERVAL_S for a, b in itertools.pairwise(times))
    assert ladder.counts == {s.label: 1 for s in list(Step)[1:]}
    assert ladder.changes[0].reason == "CPU: 80 % of a core, cap 50 %"
    assert ladder.changes[0].view()["to"] == "hand over and step down"


@pytest.mark.parametrize(
    ("change", "top"),
    [
        ({"clients": 10}, Step.NO_NEW_CLIENTS),  # full: only admission stops
        ({"relay_up_bytes_per_s": 20_000.0}, Step.NO_NEW_RELAY),  # 80 % of the relay cap
        ({"relay_up_bytes_per_s": 19_999.0}, Step.SERVING),
        ({"day_bytes": 1_000_000}, Step.STEP_DOWN),
        ({"month_bytes": 10_000_000}, Step.STEP_DOWN),
        ({"month_bytes": 9_999_999}, Step.SERVING),
        ({"cpu_percent": 50.0}, Step.STEP_DOWN),
        ({"cpu_percent": None}, Step.SERVING),  # not measured yet: no pressure
        ({"owner_in_call": True}, Step.SERVING),  # only_when_idle is off
    ],
)
def test_each_cap_climbs_as_far_as_it_asks(change: dict[str, object], top: Step) -> None:
    ladder = DutyLadder(CAPS, 0.0)
    run(ladder, dataclasses.replace(CALM, **change), 0.0, 60)  # type: ignore[arg-type]
    assert ladder.step is top


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"owner_in_call": True}, "only when idle: the owner is in a call"),
        ({"machine_busy": True}, "only when idle: the machine is busy"),
    ],
)
def test_only_when_idle_steps_down_and_declines_while_the_cause_lasts(
    change: dict[str, bool], why: str
) -> None:
    ladder = DutyLadder(dataclasses.replace(CAPS, only_when_idle=True), 0.0)
    busy = dataclasses.replace(CALM, **change)
    run(ladder, busy, 0.0, 30)
    assert ladder.step is Step.STEP_DOWN and ladder.reason == why
    # as a client, long after the hold: still declines while the cause lasts
    later = REJOIN_HOLD_S + 100
    assert ladder.update(busy, later, serving=False) == []
    assert ladder.may_serve(later) == why
    (back,) = ladder.update(CALM, later + 1, serving=False)
    assert back.new is Step.SERVING and ladder.may_serve(later + 1) == ""


def test_a_rate_cap_step_down_holds_promotion_off_then_lets_it_back() -> None:
    ladder = DutyLadder(CAPS, 0.0)
    run(ladder, dataclasses.replace(CALM, cpu_percent=99.0), 0.0, 20)
    assert ladder.step is Step.STEP_DOWN
    down_at = ladder.changes[0].at
    assert ladder.update(CALM, down_at + 1, serving=False) == []  # a client now, calm
    assert ladder.may_serve(down_at + 1).startswith("stepped down (CPU")
    assert ladder.update(CALM, down_at + REJOIN_HOLD_S - 1, serving=False) == []
    (back,) = ladder.update(CALM, down_at + REJOIN_HOLD_S, serving=False)
    assert back.new is Step.SERVING and ladder.may_serve(down_at + REJOIN_HOLD_S) == ""


def test_the_ladder_comes_down_one_step_per_calm_period() -> None:
    ladder = DutyLadder(CAPS, 0.0)
    run(ladder, dataclasses.replace(CALM, relay_up_bytes_per_s=24_000.0), 0.0, 11)
    assert ladder.step is Step.NO_NEW_RELAY
    changes = run(ladder, CALM, 11.0, int(3 * CALM_S) + 5)
    assert [step for _, step in changes] == [Step.REDIRECT, Step.NO_NEW_CLIENTS, Step.SERVING]
    assert [at for at, _ in changes] == [11.0 + CALM_S, 11.0 + 2 * CALM_S, 11.0 + 3 * CALM_S]
    assert ladder.counts["refuse new relay allocations"] == 1  # climbs are counted, not descents


def test_a_pressure_that_stays_holds_the_step_it_asks_for() -> None:
    ladder = DutyLadder(CAPS, 0.0)
    full = dataclasses.replace(CALM, clients=12)
    assert [s for _, s in run(ladder, full, 0.0, 200)] == [Step.NO_NEW_CLIENTS]


def test_a_client_leaves_the_ladder_at_once_unless_it_stepped_down() -> None:
    ladder = DutyLadder(CAPS, 0.0)
    run(ladder, dataclasses.replace(CALM, clients=12), 0.0, 2)
    (change,) = ladder.update(CALM, 3.0, serving=False)  # demoted by the election meanwhile
    assert (change.new, change.reason) == (Step.SERVING, "not a supernode")


def test_directory_bucket_allows_bursts_and_catches_a_sustained_excess() -> None:
    ladder = DutyLadder(CAPS, 0.0)
    burst = dataclasses.replace(CALM, directory_up_bytes=int(1_000 * DIRECTORY_BURST_S) - 1)
    assert ladder.update(burst, 0.0, serving=True) == []  # one burst of 10 s worth: fine
    at_cap = dataclasses.replace(CALM, directory_up_bytes=1_000)
    assert run(ladder, at_cap, 1.0, 30) == []  # exactly the cap, forever: fine
    over = dataclasses.replace(CALM, directory_up_bytes=1_100)
    changes = run(ladder, over, 31.0, 20)
    assert changes and changes[0][1] is Step.NO_NEW_CLIENTS
    assert ladder.pressures[0][1] == "directory and signaling: over its cap 8 kbit/s"
    # a client spends nothing: the bucket refills
    ladder.update(over, 100.0, serving=False)
    assert not ladder.directory.empty


def test_budget_is_a_token_bucket_spent_by_measurement() -> None:
    budget = Budget(100.0, 2.0, 0.0)
    budget.spend(200, 0.0)
    assert budget.tokens == 0 and budget.empty
    budget.spend(0, 0.5)
    assert budget.tokens == 50 and not budget.empty
    budget.spend(0, 100.0)
    assert budget.tokens == 200  # never above its burst


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("23:00-07:00", [23 * 60, 0, 6 * 60 + 59], [7 * 60, 22 * 60 + 59, 12 * 60]),
        ("09:30-17:00", [9 * 60 + 30, 16 * 60 + 59], [9 * 60 + 29, 17 * 60, 0]),
    ],
)
def test_quiet_hours(text: str, inside: list[int], outside: list[int]) -> None:
    quiet = parse_quiet_hours(text)
    assert quiet is not None and str(quiet) == text
    assert all(quiet.covers(m) for m in inside)
    assert not any(quiet.covers(m) for m in outside)
    ladder = DutyLadder(dataclasses.replace(CAPS, quiet_hours=quiet), 0.0)
    run(ladder, dataclasses.replace(CALM, minute_of_day=inside[0]), 0.0, 20)
    assert ladder.step is Step.STEP_DOWN and ladder.reason == f"quiet hours {text}"


@pytest.mark.parametrize("text", ["23:00", "7-8", "24:00-01:00", "10:60-11:00", "08:00-08:00"])
def test_bad_quiet_hours_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_quiet_hours(text)
    with pytest.raises(ValueError, match="the same minute"):
        QuietHours(0, 0)


def test_max_clients_zero_never_serves() -> None:
    ladder = DutyLadder(dataclasses.replace(CAPS, max_clients=0), 0.0)
    assert ladder.may_serve(0.0) == "max_clients = 0: never a supernode"
    assert pressures(ladder.caps, CALM, False) == []


# -- the supernode core's hooks -------------------------------------------------------------


def test_a_supernode_that_stops_admitting_redirects_attaches_with_hints() -> None:
    net = FakeNet(seed=11)
    tier = net.supernodes([f"sn{i}" for i in range(4)])
    closed = tier[0]
    closed.set_admitting(False)
    users = online_users(net, [closed], 2)  # they know only the closed one
    net.run_until(net.now + 10.0)
    assert closed.supernode is not None and closed.supernode.primary_count == 0
    assert closed.supernode.stats["refused_shedding"] >= 2
    refusals = [m for _, src, _, m in net.sent_log if src == closed.id]
    assert any(isinstance(m, AttachRedirect) and m.others for m in refusals)
    others = {c.id for c in tier[1:]}
    assert all(u.client.primary in others for u in users)  # attached through the hints


def test_redirect_newest_moves_the_most_recent_clients_and_step_down_hands_over() -> None:
    net = FakeNet(seed=12)
    tier = net.supernodes([f"sn{i}" for i in range(4)])
    sn = tier[0]
    assert sn.supernode is not None
    online_users(net, [sn], 5)
    net.run_until(net.now + 5.0)
    clients = sn.supernode.clients
    primaries = sorted((e.since, bytes(n)) for n, e in clients.items() if e.primary)
    newest = {n for _, n in primaries[-2:]}
    sends = sn.redirect_newest(2, "caps", net.now)
    assert {bytes(dest) for dest, _ in sends} == newest
    assert all(isinstance(m, Redirect) and m.reason == "caps" for _, m in sends)
    assert sn.supernode.stats["redirected_shedding"] == 2
    net.call(sn, sends)
    net.call(sn, sn.step_down(net.now, "stepped down: CPU"))
    assert sn.supernode is None
    assert any(
        isinstance(e, RoleChanged) and not e.supernode and e.reason == "stepped down: CPU"
        for e in net.events[sn.id]
    )
    assert sn.step_down(net.now, "again") == []
