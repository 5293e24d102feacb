"""The shedding ladder of a supernode's duty (sim.sharing): one step at a time, in the
stated order (stop admitting -> redirect new clients -> refuse new relays -> hand over and
step down), each step counted, down again when the pressure goes, the relay cap held by
admission without shedding clients, the daily cap, and the owner's only_when_idle."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from peerphone.sim.capacity import CapacityConfig, Caps, Machine, draw_machines
from peerphone.sim.sharing import (
    BUSY_REASON,
    CALL_REASON,
    CALM_S,
    CAP_REASON,
    DAY_REASON,
    NOT_ADMITTED_REASON,
    REFUSE_RELAY,
    REST_S,
    STEP_DOWN,
    STEP_DOWN_AFTER_S,
    STEPS,
    Duty,
)

CAP_KBPS = 80  # 10 000 bytes per second


def machine(**caps: int) -> Machine:
    base = draw_machines(1, 1, CapacityConfig())[0]
    fields = {"signaling_kbps": CAP_KBPS, "relay_kbps": 200, "bytes_per_day": 10**12}
    fields.update(caps)
    only_when_idle = bool(fields.pop("only_when_idle", False))
    return replace(
        base, caps=Caps(**fields, max_clients=300, only_when_idle=only_when_idle), busy_s=0.0
    )


def load(duty: Duty, share: float, start: int, end: int) -> list[int]:
    """Offer `share` of the signaling cap, second by second, checking the ladder each
    second as the role does; the level after each check."""
    levels = []
    rate = duty.shaper.rate
    for t in range(start, end):
        duty.shaper.send(rate * share, t + 0.5)
        levels.append(duty.check(t + 0.9))
    return levels


def escalations_are_single_steps(duty: Duty) -> None:
    level = 0
    for t, new in duty.log:
        assert new in (level + 1, level - 1) or new == 0, (t, level, new, duty.log)
        level = new


def test_the_ladder_climbs_one_step_at_a_time_in_order_and_counts_each() -> None:
    duty = Duty(machine(), "user1")
    duty.start(0.0)
    assert max(load(duty, 0.5, 0, 30)) == 0  # below 60 % of the cap: nothing to shed
    levels = load(duty, 0.75, 30, 60)  # 70-80 %: stop admitting, then redirect new clients
    assert max(levels) == 2 and levels[-1] == 2
    first = levels.index(1)
    assert levels.index(2) > first  # never straight to 2
    levels = load(duty, 0.97, 60, 120)  # at the cap: refuse relays, then step down
    assert REFUSE_RELAY in levels and levels[-1] == STEP_DOWN
    at3 = next(t for t, level in duty.log if level == REFUSE_RELAY)
    at4 = next(t for t, level in duty.log if level == STEP_DOWN)
    assert at4 - at3 >= STEP_DOWN_AFTER_S
    assert duty.steps == dict.fromkeys(STEPS, 1)  # each step entered once, counted
    escalations_are_single_steps(duty)
    assert duty.step_down_reason(120.0) == CAP_REASON
    assert duty.machine.resting_until == 120.0 + REST_S
    assert not duty.machine.may_serve(200.0) and duty.machine.may_serve(120.0 + REST_S)


def test_the_ladder_comes_down_a_step_per_calm_period() -> None:
    duty = Duty(machine(), "user1")
    duty.start(0.0)
    assert load(duty, 0.85, 0, 40)[-1] == REFUSE_RELAY  # 80-90 %: up to refusing relays
    levels = load(duty, 0.0, 40, 40 + int(4 * CALM_S))
    # down one step each CALM_S once the last 10 s are quiet, never a jump
    assert levels[-1] == 0 and sorted(set(levels)) == [0, 1, 2, 3]
    downs = [t for t, level in duty.log if t >= 40]
    assert all(b - a >= CALM_S for a, b in itertools.pairwise(downs))
    escalations_are_single_steps(duty)
    assert duty.steps == {
        "stop_admitting": 1,
        "redirect_new": 1,
        "refuse_relay": 1,
        "step_down": 0,
    }


def test_the_relay_cap_is_held_by_admission_and_sheds_no_client() -> None:
    """Relayed calls fill the relay cap: new allocations are refused (counted), the call
    in progress keeps its relay, and no client is turned away or moved for it (that would
    not lower the relayed rate, only cost lookups)."""
    duty = Duty(machine(relay_kbps=200), "user1")
    duty.start(0.0)
    flow = 25_000 * 0.95
    assert duty.allocate(1, flow, 0.0)
    assert not duty.allocate(2, 2000.0, 0.0)  # over the cap: refused, counted
    assert duty.actions["relays_refused_full"] == 1
    levels = [duty.check(float(t)) for t in range(1, 60)]
    assert max(levels) == 0 and duty.steps == dict.fromkeys(STEPS, 0)
    assert duty.relay.flows == {1: flow}  # the call in progress keeps its relay
    assert duty.relay.rate <= duty.relay.cap
    # at step 3, reached through the signaling cap, no new relay at all, even one that fits
    duty.relay.close(1, 60.0)
    load(duty, 0.85, 60, 100)
    assert duty.level == REFUSE_RELAY
    assert not duty.allocate(3, 100.0, 100.0)
    assert duty.actions["relays_refused_at_step"] == 1


def test_the_daily_cap_steps_down_until_the_next_day() -> None:
    duty = Duty(machine(bytes_per_day=1_000_000), "user1")
    duty.start(0.0)
    levels = load(duty, 0.5, 0, 150)  # 5 kB/s: 50 % of the rate cap presses nothing
    assert max(levels) == 0
    t = 150
    while duty.level < STEP_DOWN:  # from 80 % of the day's bytes on, a step each 2 s
        load(duty, 0.5, t, t + 1)
        t += 1
    assert t < 200 and 0.8 < duty.day_share(float(t)) <= 0.95
    assert duty.step_down_reason(200.0) == DAY_REASON
    assert duty.machine.resting_until == 86_400.0
    escalations_are_single_steps(duty)


@pytest.mark.parametrize("busy", [True, False])
def test_only_when_idle_steps_down_while_the_owner_wants_the_machine(busy: bool) -> None:
    m = replace(machine(only_when_idle=1), busy_from_s=0.0, busy_s=3600.0, tz_s=0.0)
    duty = Duty(m, "user1")
    duty.start(0.0)
    if busy:
        assert duty.must_leave(100.0, True, 0.0) == BUSY_REASON
    else:
        assert duty.must_leave(4000.0, True, 0.0) == ""
        m.in_calls = 1
        assert duty.must_leave(4000.0, True, 0.0) == CALL_REASON
    owner_agnostic = Duty(machine(only_when_idle=0), "user2")
    owner_agnostic.machine.in_calls = 1
    assert owner_agnostic.must_leave(100.0, True, 0.0) == ""


def test_a_promotion_the_tier_never_admitted_steps_down() -> None:
    duty = Duty(machine(), "user1")
    assert duty.must_leave(50.0, False, 0.0) == ""
    assert duty.must_leave(61.0, False, 0.0) == NOT_ADMITTED_REASON
    assert duty.must_leave(61.0, True, 0.0) == ""
