"""Issue 8, ring positions, against real node processes with public-range addresses.

A supernode on the public internet sits on the ring where its /24 and its rank in it put it
(`overlay.ring.position_of`), not where its node id would: grinding keys no longer lands it
next to a name. Nor can it claim a /24 it does not sit in to get that range's position: its
links show the range it really comes from (`Membership.check_link`).

The lab (tests/support/netlab.py): five honest supernodes, each in its own /24 of 44.0.0.0/8 (the
lab's globally routable-looking addresses, inside network namespaces, no route out), alice
and bob as clients, and an attacker (tests/support/attackers/directory_attacker.py, mode forge)
whose node key was ground to lie right after alice's directory key — where the old rule
(position = node id) made it her first replica — in a /24 whose position is not one of
alice's replicas. Once it has been a member for a while it re-signs its record claiming
first an address in another /24, one whose position would be alice's first replica.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from peerphone.identity import NodeId
from peerphone.overlay.independence import host_group
from peerphone.overlay.ring import Ring, position_of
from peerphone.records import user_key
from tests.support.grind import grind_after
from tests.support.netlab import NetLab, require_available
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    NODE_UDP_PORT,
    Node,
    spawn,
    wait_all_ready,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
HONEST = 5
REPLICATION = 4  # SupernodeConfig.replication
MOVE_DELAY_S = 15.0  # by then every honest member has probed the attacker (links up)
LOOKUPS = 5
REFUSED = "address not the one its link comes from"


def _position(host: str) -> bytes:
    """The ring position of the only supernode in `host`'s /24."""
    return position_of(NodeId(bytes(32)), host_group(host), 0)


def _ring(positions: list[bytes]) -> Ring:
    ring = Ring()
    for i, position in enumerate(positions):
        ring.add(NodeId(i.to_bytes(32, "big")), position)
    return ring


def _is_replica(position: bytes, honest: list[bytes], key: bytes, first: bool) -> bool:
    """Whether a supernode at `position` is one of `key`'s replicas (its first, with
    `first`) on the ring of the honest positions and it."""
    ring = _ring([*honest, position])
    me = NodeId(len(honest).to_bytes(32, "big"))
    replicas = ring.replicas(key, REPLICATION)
    return replicas[0] == me if first else me in replicas


def _pick_range(honest: list[bytes], key: bytes, first: bool, want: bool, skip: int) -> str:
    """A 44.x.y prefix whose position is (want) or is not (not want) a replica of key."""
    for n in range(skip, skip + 60_000):
        prefix = f"44.{1 + n // 250}.{n % 250 + 1}"
        if _is_replica(_position(f"{prefix}.10"), honest, key, first) == want:
            return prefix
    raise AssertionError("no /24 found")


def _status(node: Node) -> dict[str, Any]:
    st = node.status()
    return st if st is not None else {}


def _supernode(node: Node) -> dict[str, Any]:
    sn = _status(node).get("supernode")
    return sn if isinstance(sn, dict) else {}


def test_a_public_supernode_can_neither_grind_nor_claim_its_way_next_to_a_name(
    tmp_path: Path,
) -> None:
    require_available()
    alice_key = user_key("alice")
    honest_hosts = [f"44.0.{i + 1}.10" for i in range(HONEST)]
    honest = [_position(h) for h in honest_hosts]
    home = _pick_range(honest, alice_key, first=False, want=False, skip=0)
    claimed = _pick_range(honest, alice_key, first=True, want=True, skip=5_000)
    keys = grind_after(alice_key, [*honest, _position(f"{home}.10")])
    old_rule = _ring([*honest, bytes(keys.node_id)])
    assert old_rule.replicas(alice_key, 1) == [NodeId(HONEST.to_bytes(32, "big"))]
    print(
        f"attacker: key ground in {keys.node_id.hex()[:8]} (by id: alice's first replica),"
        f" home {home}.0/24 (not a replica of alice), claims {claimed}.0/24 later"
        " (would be her first replica)"
    )
    with NetLab() as lab:
        sns: list[Node] = []
        for i, host in enumerate(honest_hosts):
            seed = [f"{honest_hosts[0]}:{NODE_UDP_PORT}"] if i else []
            node = spawn(
                lab, lab.public_host(f"sn{i + 1}", host), f"sn{i + 1}", tmp_path, "supernode", seed
            )
            sns.append(node)
            wait_all_ready([node], ATTACH_TIMEOUT_S)
        seed = [f"{honest_hosts[0]}:{NODE_UDP_PORT}"]
        alice = spawn(
            lab, lab.public_host("alice", "44.0.20.10"), "alice", tmp_path, "client", seed
        )
        bob = spawn(lab, lab.public_host("bob", "44.0.21.10"), "bob", tmp_path, "client", seed)
        everyone = [*sns, alice, bob]
        wait_all_ready([alice, bob], ATTACH_TIMEOUT_S)
        # the attacker: a stock node with patches, its ground key in its data dir
        evil_dir = tmp_path / "evil"
        evil_dir.mkdir()
        (evil_dir / "node.key").write_bytes(keys.private_bytes())
        (evil_dir / "node.key").chmod(0o600)
        report = evil_dir / "attack.json"
        evil_host = lab.public_host("evil", f"{home}.10")
        argv = [
            sys.executable,
            "-m",
            "tests.support.attackers.directory_attacker",
            "forge",
            str(report),
        ]
        argv += ["node", "--data-dir", str(evil_dir), "--name", "evil", "--role", "supernode"]
        argv += ["--listen", f"{evil_host.addr}:{NODE_UDP_PORT}", "--bootstrap", seed[0]]
        env = {
            **os.environ,
            "PEERPHONE_FORGE": "alice",
            "PEERPHONE_MOVE_TO": f"{claimed}.10:{NODE_UDP_PORT}",
            "PEERPHONE_MOVE_AFTER": str(HONEST),
            "PEERPHONE_MOVE_DELAY_S": str(MOVE_DELAY_S),
        }
        with (evil_dir / "stderr.log").open("wb") as log:
            proc = lab.run(
                evil_host,
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        evil = Node("evil", evil_host, evil_dir, proc, time.monotonic())
        everyone.append(evil)

        def tier_of_six() -> bool | None:
            sizes = [_supernode(sn).get("membership_size") for sn in sns]
            return True if sizes == [HONEST + 1] * HONEST else None

        wait_for(
            "the attacker admitted by every honest supernode",
            tier_of_six,
            ATTACH_TIMEOUT_S,
            everyone,
        )

        def counts() -> dict[str, Any]:
            data: dict[str, Any] = json.loads(report.read_text())
            return data

        def moved_and_refused() -> list[int] | None:
            if not counts().get("moved"):
                return None
            refused = [
                int(_supernode(sn).get("membership_refused", {}).get(REFUSED, 0)) for sn in sns
            ]
            return refused if all(refused) else None

        refused = wait_for(
            "the attacker's claimed range refused",
            moved_and_refused,
            MOVE_DELAY_S + 2 * ATTACH_TIMEOUT_S,
            everyone,
        )
        # alice's records are refreshed and looked up: none of it may reach the attacker
        owners = []
        for _ in range(LOOKUPS):
            found = bob.lookup("alice")
            owners.append((found.get("record") or {}).get("owner"))
        alice_key_hex = _status(alice).get("user_key")
        seen = counts()
        print(
            f"honest supernodes refusing the claimed range: {refused};"
            f" attacker handed {seen['target_stores']} of alice's records,"
            f" asked {seen['forged']} times for her (forged answers);"
            f" bob's lookups of alice: {owners.count(alice_key_hex)}/{LOOKUPS} her key"
        )
        assert seen["target_stores"] == 0 and seen["forged"] == 0, seen
        assert owners == [alice_key_hex] * LOOKUPS, owners
        assert all(_supernode(sn).get("membership_size") in (HONEST, HONEST + 1) for sn in sns)
        if any(node.proc.poll() is not None for node in everyone):
            pytest.fail("a node exited during the attack")
