"""The simulator: determinism, invariants and the three scenarios at small size."""

from __future__ import annotations

from typing import Any

import pytest

from peerphone.records import make_record
from peerphone.sim.invariants import InvariantViolation
from peerphone.sim.world import SimConfig, World, simulate


def without_wall(report: dict[str, Any]) -> dict[str, Any]:
    copy = dict(report)
    copy["sim"] = {k: v for k, v in report["sim"].items() if k != "wall_s"}
    return copy


def test_same_seed_same_report_and_other_seed_differs() -> None:
    config = SimConfig(users=200, duration_s=400.0, ramp_s=100.0, seed=11)
    first = simulate(config)
    second = simulate(config)
    assert without_wall(first) == without_wall(second)
    other = simulate(SimConfig(users=200, duration_s=400.0, ramp_s=100.0, seed=12))
    assert without_wall(other) != without_wall(first)


def test_steady_small_network_finds_online_users() -> None:
    report = simulate(SimConfig(users=600, duration_s=1200.0, seed=3))
    lookups = report["lookups"]
    assert lookups["attempted"] > 500
    assert lookups["success_rate"] >= 0.99, (report["seed"], lookups)
    assert lookups["hops"]["p99"] <= 2
    # every lookup started is judged or lost with a reason; none vanishes
    assert lookups["issued"] == lookups["attempted"] + sum(lookups["lost"].values()), lookups
    sn = report["supernodes"]
    assert sn["clients_per_supernode"]["max_seen"] <= sn["clients_per_supernode"]["admission_limit"]
    # every login is findable within seconds: its presence stored on the replicas
    findable = report["findable"]
    assert findable["logins"] >= 600 and findable["unfindable_at_end"] == 0, findable
    assert findable["findable"] == findable["logins"] - findable["ended_unfindable"], findable
    assert 0 < findable["login_to_findable_ms"]["p50"] < 1000, findable
    assert findable["login_to_findable_ms"]["p100"] < 30_000, findable
    # watchers hear of status changes: nearly all that were due, the rest counted as missing
    presence = report["presence"]
    assert presence["propagations"] > 0
    assert presence["expected"] > 100, presence
    judged = presence["delivered"] + presence["missing"]
    assert judged + presence["unjudged"] == presence["expected"], presence
    assert presence["delivered"] >= 0.98 * judged, presence
    assert report["invariants"]["records_checked"] > 1000


def test_calls_between_online_users_are_answered_through_the_signaling_cores() -> None:
    config = SimConfig(users=600, duration_s=1500.0, seed=5, call_interval_s=900.0)
    calls = simulate(config)["calls"]
    assert calls["attempted"] > 200, calls
    assert calls["success_rate"] >= 0.98, (config.seed, calls)
    # virtual time: the invite, the caller-key lookup at the callee and the ringing back
    assert 0 < calls["ringing_ms"]["p50"] < 1000, calls
    assert calls["setup_ms"]["p50"] > calls["ringing_ms"]["p50"]  # the ring comes on top


def test_every_message_survives_the_wire_codec() -> None:
    report = simulate(
        SimConfig(users=120, duration_s=400.0, ramp_s=60.0, encode_messages=True, seed=4)
    )
    assert report["lookups"]["success_rate"] >= 0.98
    assert report["network"]["messages"] > 1000


def test_growth_promotes_only_eligible_nodes() -> None:
    # many users, few seeds and a low high-water mark force promotions
    from peerphone.overlay.election import ElectionConfig
    from peerphone.overlay.supernode import SupernodeConfig

    config = SimConfig(
        users=800,
        duration_s=900.0,
        seed=5,
        seeds=4,
        supernode=SupernodeConfig(
            max_clients=300, election=ElectionConfig(high_water=100, low_water=30)
        ),
    )
    world = World(config)
    report = world.run()
    assert report["supernodes"]["promotions"] > 0
    for index in world.supernodes:
        assert world.by_node[index].eligible
    assert report["supernodes"]["clients_per_supernode"]["max_seen"] <= 300


# Each disaster is sized so that it measurably hurts at 800 users: lookups every 60 s per
# user (ten times the default) so that a 10 s window holds about a hundred and one stray
# failure does not decide it; half the tier or half the clients taken down. A test first
# proves the harm (victims, failed lookups, a window below 99 %), then the recovery.
DISASTERS = [
    # (scenario, seed): seeds whose event hurts (a harmless event would fail the harm check
    # rather than pass the recovery check unexercised). Mass reboot: 7, found by trying
    # 6, 7, 8. Login storm: since the supernode-duty model (issue 12) the storm hurts at
    # this size less often (6 no longer does); trying seeds 1-30, it fails one lookup in a
    # window under 99 % with 2, 3, 15, 16, 21, 23 and 30 (all recover within 50 s), and
    # 15 is the first of them whose storm also crashes an asker mid-lookup
    ("mass-reboot", 7),
    ("login-storm", 15),
]


@pytest.mark.parametrize(("scenario", "seed"), DISASTERS)
def test_disaster_scenarios_hurt_and_recover(scenario: str, seed: int) -> None:
    config = SimConfig(
        users=800,
        duration_s=1200.0,
        scenario=scenario,
        seed=seed,
        event_at=600.0,
        lookup_interval_s=60.0,
        disaster_fraction=0.5,
    )
    report = simulate(config)
    harm = report["harm"]
    rerun = f"{scenario}, seed {seed}: {harm}, recovery {report['recovery_s']}"
    assert report["event_at_s"] == 600.0
    # the event happened and hurt
    victims = 2 if scenario == "mass-reboot" else 300  # half the tier / half the clients
    assert harm["victims"] >= victims, rerun
    assert harm["lookups_failed"] > 0, rerun
    assert harm["worst_window_success_rate"] < 0.99, rerun
    assert harm["windows_without_lookups"] == 0, rerun
    if scenario == "login-storm":
        assert report["lookups"]["lost"].get("asker crashed", 0) > 0, rerun
        assert harm["logins"]["logins"] >= harm["victims"], rerun  # they all came back
        assert harm["logins"]["unfindable_max"] > 0, rerun
    # and the overlay recovered from it within two minutes
    assert report["recovery_s"] is not None, rerun
    assert 0.0 < report["recovery_s"] <= 120.0, rerun
    sn = report["supernodes"]["clients_per_supernode"]
    assert sn["max_seen"] <= sn["admission_limit"]


def test_login_storm_at_the_default_size_is_measured_honestly() -> None:
    """A storm that does little harm to lookups still shows its victims, their way back to
    being findable, and every lookup accounted for."""
    config = SimConfig(users=800, duration_s=1200.0, scenario="login-storm", seed=6)
    report = simulate(config)
    harm, lookups, findable = report["harm"], report["lookups"], report["findable"]
    assert 300 <= harm["victims"] <= 400, harm  # half of ~740 clients
    assert harm["logins"]["logins"] >= harm["victims"], harm
    assert 0 < harm["logins"]["login_to_findable_ms"]["p50"] < 1000, harm
    assert lookups["issued"] == lookups["attempted"] + sum(lookups["lost"].values()), lookups
    assert findable["logins"] == (
        findable["findable"] + findable["ended_unfindable"] + findable["unfindable_at_end"]
    )


def test_invariant_violation_names_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the acceptance rule on purpose: the checker must stop the run with the seed."""
    from peerphone.overlay import directory

    original = directory.RecordStore.accept
    calls = {"n": 0}

    def buggy_accept(self: directory.RecordStore, record: Any, now: float) -> Any:
        result = original(self, record, now)
        calls["n"] += 1
        if calls["n"] == 200 and self.observer is not None:
            # pretend the store took an older copy over the current one
            older = make_record.__globals__["Record"](
                record.kind,
                record.owner,
                max(record.seq - 1, 0),
                record.expires_ms,
                record.body,
                record.sig,
            )
            self.observer(result[1], record, older)
        return result

    monkeypatch.setattr(directory.RecordStore, "accept", buggy_accept)
    with pytest.raises(InvariantViolation, match=r"--seed 77"):
        simulate(SimConfig(users=100, duration_s=300.0, ramp_s=50.0, seed=77))


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="scenario"):
        SimConfig(scenario="meteor")
    with pytest.raises(ValueError, match="users"):
        SimConfig(users=3)


def test_partition_heals_and_lookups_recover() -> None:
    """Cut the network in two halves for two minutes; after the heal lookups succeed again."""
    config = SimConfig(users=400, duration_s=1200.0, ramp_s=100.0, seed=8)
    world = World(config)
    cut_at, heal_at = 500.0, 620.0

    def cut() -> None:
        world.network.partition = {
            n.index: int(n.coord[0] < 0.5) for n in world.engine.nodes.values()
        }

    def heal() -> None:
        world.network.partition = None

    world.engine.schedule(cut_at, cut)
    world.engine.schedule(heal_at, heal)
    report = world.run()
    m = world.metrics
    during = [
        ok for s, ok in zip(m.lookup_started, m.lookup_ok, strict=True) if cut_at + 30 < s < heal_at
    ]
    after = [ok for s, ok in zip(m.lookup_started, m.lookup_ok, strict=True) if s > heal_at + 120]
    assert world.network.lost > 0
    assert during and sum(during) < len(during)  # the cut really hurt
    assert after and sum(after) / len(after) >= 0.99, report["lookups"]
    # the two halves' membership merged again: every supernode knows every other one
    supernodes = [n.core.supernode for n in world.supernodes.values() if n.core.supernode]
    everyone = sorted(n.core.id for n in world.supernodes.values())
    for sn in supernodes:
        assert sorted(sn.membership.ring.ids()) == everyone
