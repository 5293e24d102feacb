"""The simulated machines (sim.capacity) and the token bucket on a supernode's upload
(sim.shaping): the distributions come from the seed, a measurement never exceeds the truth,
and what leaves a shaper in any 10 s window stays within 105 % of its cap."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import pytest

from peerphone.overlay.election import ElectionConfig
from peerphone.sim.capacity import (
    CONE,
    DAY_S,
    LIAR_CLAIM,
    PUBLIC,
    SYMMETRIC,
    CapacityConfig,
    draw_machines,
    needs_relay,
)
from peerphone.sim.shaping import DEPTH_S, MAX_QUEUE_S, WINDOW_S, Bins, RelayFlows, Shaper
from peerphone.stats import percentile

# -- machines -----------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_machines_and_liars_change_nothing_else() -> None:
    config = CapacityConfig()
    first = draw_machines(2000, 7, config)
    assert first == draw_machines(2000, 7, config)
    assert first != draw_machines(2000, 8, config)
    lying = draw_machines(2000, 7, replace(config, liar_fraction=0.5))
    assert 800 < sum(m.liar for m in lying) < 1200
    # the liars are drawn from a stream of their own: the machines are the same machines
    assert [replace(m, liar=False) for m in lying] == first


def test_most_machines_sit_behind_a_nat_and_bandwidth_is_log_normal() -> None:
    seed = 3
    machines = draw_machines(20_000, seed, CapacityConfig())
    share = {
        kind: sum(m.nat == kind for m in machines) / len(machines)
        for kind in (PUBLIC, CONE, SYMMETRIC)
    }
    assert abs(share[PUBLIC] - 0.2) < 0.02, (seed, share)
    assert abs(share[SYMMETRIC] - 0.15) < 0.02, (seed, share)
    assert share[CONE] > 0.6, (seed, share)
    ups = [float(m.up_kbps) for m in machines]
    assert 3600 < percentile(ups, 50) < 4400, seed  # the median, 4000
    logs = [math.log(u) for u in ups]
    mean = sum(logs) / len(logs)
    sigma = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    assert 0.9 < sigma < 1.1, (seed, sigma)
    busy_share = sum(m.busy_at(12 * 3600.0) for m in machines) / len(machines)
    assert 0.1 < busy_share < 0.4, (seed, busy_share)  # part of the day, not all of it


def test_busy_changes_are_where_busy_at_flips() -> None:
    seed = 11
    for machine in draw_machines(300, seed, CapacityConfig()):
        changes = machine.busy_changes(0.0, 2 * DAY_S)
        if machine.busy_s == 0.0:
            assert changes == [] and not machine.busy_at(1234.0)
            continue
        assert len(changes) in (3, 4, 5), (seed, machine.index, changes)
        for t in changes:
            assert machine.busy_at(t - 1.0) != machine.busy_at(t + 1.0), (seed, machine.index, t)
        # and nothing flips between two changes
        edges = [0.0, *changes, 2 * DAY_S]
        for a, b in itertools.pairwise(edges):
            if b - a > 4.0:
                states = {machine.busy_at(a + 2.0 + (b - a - 4.0) * k / 10) for k in range(11)}
                assert len(states) == 1, (seed, machine.index, a, b)


def test_a_measurement_never_exceeds_the_truth_and_a_liar_claims_the_moon() -> None:
    seed = 5
    election = ElectionConfig()
    machines = draw_machines(3000, seed, CapacityConfig(liar_fraction=0.3))
    for m in machines:
        measured, true = m.measured(), m.true_capacity()
        assert measured.reachable == m.public  # only a dial-back says so
        assert measured.up_kbps <= true.up_kbps <= m.caps.signaling_kbps
        assert measured.up_kbps <= m.up_kbps
        assert m.announced() == measured  # the election sees the measurement
        assert m.declared() == (LIAR_CLAIM if m.liar else measured)
        if m.eligible(election):
            assert m.public and m.consents()
    # the what-if: nodes announce what they declare
    trusting = draw_machines(3000, seed, CapacityConfig(liar_fraction=0.3, trust_declared=True))
    assert all(m.announced() == m.declared() for m in trusting)


def test_may_serve_follows_consent_idleness_and_rest() -> None:
    machine = next(
        m
        for m in draw_machines(500, 2, CapacityConfig(only_when_idle_fraction=1.0))
        if m.busy_s > 0 and m.consents()
    )
    busy = next(t for t in range(0, 86_400, 600) if machine.busy_at(float(t)))
    idle = next(t for t in range(0, 86_400, 600) if not machine.busy_at(float(t)))
    assert machine.may_serve(float(idle)) and not machine.may_serve(float(busy))
    machine.in_calls = 1
    assert not machine.may_serve(float(idle))  # the owner is in a call
    machine.in_calls = 0
    machine.resting_until = idle + 100.0
    assert not machine.may_serve(float(idle))
    never = replace(machine, caps=replace(machine.caps, max_clients=0), resting_until=0.0)
    assert not never.may_serve(float(idle))  # max_clients = 0: never a supernode


def test_a_relay_is_needed_only_where_hole_punching_fails() -> None:
    machines = draw_machines(400, 1, CapacityConfig())
    by_nat = {
        kind: next(m for m in machines if m.nat == kind) for kind in (PUBLIC, CONE, SYMMETRIC)
    }
    pub, cone, sym = by_nat[PUBLIC], by_nat[CONE], by_nat[SYMMETRIC]
    assert not needs_relay(pub, sym) and not needs_relay(sym, pub)
    assert not needs_relay(cone, cone) and not needs_relay(pub, cone)
    assert needs_relay(sym, cone) and needs_relay(cone, sym) and needs_relay(sym, sym)


def test_bad_capacity_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="public_fraction"):
        CapacityConfig(public_fraction=1.5)
    with pytest.raises(ValueError, match="<= 1"):
        CapacityConfig(public_fraction=0.9, symmetric_fraction=0.2)
    with pytest.raises(ValueError, match="signaling_kbps"):
        CapacityConfig(signaling_kbps=((0, 1.0),))
    with pytest.raises(ValueError, match="max_clients"):
        CapacityConfig(max_clients=())


# -- the token bucket -----------------------------------------------------------------------


def offer(shaper: Shaper, rng: random.Random, seconds: float, per_s: float) -> list[float]:
    """Offer messages at random (Poisson, sizes 40-1400 B, a tenth of them bulk of up to
    30 kB) for `seconds`; drain the bulk as the engine would. Returns the departure times."""
    t = 0.0
    left: list[float] = []
    next_drain: float | None = None
    while t < seconds:
        t += rng.expovariate(per_s)
        while next_drain is not None and next_drain <= t:
            released, next_drain = shaper.drain(next_drain)
            left.extend([next_drain or 0.0] * len(released))
        if rng.random() < 0.1:
            if shaper.enqueue(rng.uniform(2000, 30_000), None):
                next_drain = t
        else:
            leaves = shaper.send(rng.uniform(40, 1400), t)
            if leaves is not None:
                assert leaves - t <= MAX_QUEUE_S + 1e-9
                left.append(leaves)
    return left


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("load", [0.5, 1.0, 3.0])
def test_no_10_s_window_carries_more_than_105_percent_of_the_cap(seed: int, load: float) -> None:
    kbps = 256
    shaper = Shaper(kbps)
    rate = kbps * 125.0
    per_s = load * rate / (0.9 * 720)  # answers at `load` times the cap, bulk on top
    offer(shaper, random.Random(seed), 600.0, per_s)
    budget = rate * WINDOW_S
    worst = shaper.bins.max_window() / budget
    assert worst <= 1.0 + DEPTH_S / WINDOW_S + 1e-9, (seed, load, worst)
    if load >= 1.0:
        assert worst > 0.95, (seed, load, worst)  # the cap is used, not wasted
        assert shaper.waited > 0, seed
    if load > 1.0:
        assert shaper.dropped > 0, seed  # what cannot go within MAX_QUEUE_S is dropped
    if load < 1.0:
        assert shaper.dropped == 0, (seed, load)
    # every byte charged is in the bins, once
    assert sum(shaper.bins.bytes.values()) == pytest.approx(shaper.sent_total)


def test_bulk_waits_behind_answers_and_is_never_dropped() -> None:
    shaper = Shaper(80)  # 10 000 B/s, depth 5000 B
    assert shaper.enqueue(20_000, "hand-over")
    released, again = shaper.drain(0.0)
    assert released == [] and again == pytest.approx(0.1)
    assert shaper.send(1000, 0.05) == 0.05  # an answer goes at once, ahead of the bulk
    t, done = 0.0, list[object]()
    while not done:
        t += 0.1
        done, _ = shaper.drain(t)
    assert done == ["hand-over"]
    assert 1.5 < t < 3.0  # 20 kB at 10 kB/s, after the tokens it started with
    assert shaper.dropped == 0 and shaper.bulk_sent == 1 and shaper.idle(t + 10)


def test_a_redirect_goes_ahead_of_queued_data_behind_the_message_being_paid() -> None:
    """A supernode handing records over still tells a client it moved it within moments:
    the redirect passes the queued hand-overs (it waited 13 s behind them before)."""
    shaper = Shaper(80)  # 10 000 B/s, depth 5000 B
    assert shaper.enqueue(4000, "store 1")
    assert not shaper.enqueue(4000, "store 2")
    assert not shaper.enqueue(4000, "store 3")
    shaper.drain(0.0)  # store 1 is being paid for
    assert not shaper.enqueue(1000, "redirect", urgent=True)
    order: list[object] = []
    t = 0.0
    while shaper.queued():
        t += 0.1
        released, _ = shaper.drain(t)
        order.extend(released)
    assert order == ["store 1", "redirect", "store 2", "store 3"]
    assert shaper.bulk_sent == 4 and shaper.idle(t + 10)


def test_bins_spread_a_span_over_whole_seconds() -> None:
    bins = Bins()
    bins.add_span(0.5, 2.5, 200.0)
    assert bins.bytes == {0: 50.0, 1: 100.0, 2: 50.0}
    assert bins.window_sums(0, 3, width=2) == [150.0, 150.0]
    assert bins.last(3.2, seconds=2) == 150.0
    assert bins.max_window(width=2) == 150.0


def test_relay_flows_fit_the_cap_and_count_their_bytes() -> None:
    relay = RelayFlows(200)  # 25 000 B/s
    relay.open(1, 10_000, 0.0)
    relay.open(2, 10_000, 0.0)
    assert not relay.fits(10_000) and relay.fits(5000)
    assert relay.close(1, 10.0) and not relay.close(1, 10.0)
    relay.settle(20.0)
    assert relay.sent_total == pytest.approx(20_000 * 10 + 10_000 * 10)
    assert relay.bins.max_window() == pytest.approx(200_000)
    assert relay.pressure() == pytest.approx(0.4)
