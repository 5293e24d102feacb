"""Issue 8 acceptance in the simulator: hostile supernodes (one per 20, ground next to chosen
names, alone or two from one /24) forge name and presence records; no client accepts one and
lookups of online users keep succeeding."""

from __future__ import annotations

import pytest

from peerphone.sim.world import SimConfig, simulate
from peerphone.wire import ReasonCode


# (users, hostile per /24): the tier has one hostile supernode per ~8 and per ~10 honest
# ones (stricter than one per 20: at least one cluster is always placed)
@pytest.mark.parametrize(("users", "per_24"), [(2000, 1), (5000, 2)])
def test_hostile_supernodes_forge_and_no_client_accepts(users: int, per_24: int) -> None:
    seed = 3
    report = simulate(
        SimConfig(
            users=users, duration_s=900.0, seed=seed, hostile_every=20, hostile_cluster=per_24
        )
    )
    adversary = report["adversary"]
    lookups = report["lookups"]
    print(f"seed {seed}, {per_24} per /24: {adversary}, lookups {lookups['success_rate']}")
    assert adversary["hostile_supernodes"] == per_24
    assert adversary["forged_sent"] > 100, f"the attack barely ran (seed {seed})"
    assert adversary["forged_accepted"] == 0, f"forged record accepted (seed {seed})"
    assert lookups["attempted"] > 1000
    # a client whose lookup reaches a hostile replica may get the conflict, never the forgery:
    # that is the attack's whole effect on the names the hostile nodes serve; every other
    # name is found as in a network without them
    forged_names = adversary["lookups_of_forged_names"]
    assert forged_names["attempted"] > 50, f"seed {seed}: {forged_names}"
    assert set(forged_names["failures"]) <= {ReasonCode.CONFLICT}, f"seed {seed}: {forged_names}"
    others = lookups["attempted"] - forged_names["attempted"]
    others_failed = lookups["attempted"] - lookups["succeeded"] - forged_names["failed"]
    assert others_failed <= 0.001 * others, f"seed {seed}: {lookups}"
