"""Issue 8, break 3, in the NAT lab: the relay must not reach the supernode's own services.

A supernode on a public lab host (10.99.0.x; the lab's "internet" is a private range, so
its relay is opened to it with ``--relay-allow 10.99.0.0/24``, as in test_netns_calls)
runs a victim UDP service beside the node (an echo). An attacker on another public host,
a stock node patched to attack once attached (`tests/support/attackers/turn_attacker.py inward`),
gets relay credentials the normal way and tries, through CreatePermission + Send and
ChannelBind + ChannelData: the echo service, the node's own TURN port (a STUN Binding
answered from inside), its QUIC port (an Initial). From one allocation to a second one's
relayed address, data is handed over inside the relay (two firewalled users of one
supernode have no other path), never sent to the node's own socket.

Variants: the node bound to its address; bound to 0.0.0.0 (the own-address set used to
hold only 0.0.0.0:PORT); and the owner explicitly allowing the node's own address
(``--relay-allow IP/32``): then the echo service is reachable, the node's own ports
still are not.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.netlab import INTERNET_NET, NetLab, read_line, require_available
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    NODE_TCP_PORT,
    NODE_UDP_PORT,
    PY,
    Node,
    logs,
    spawn,
    wait_all_ready,
    wait_for,
)

TURN_PORT = 3478
ATTACK_TIMEOUT_S = 60.0
REPO = str(Path(__file__).resolve().parents[2])
VARIANTS = {
    "bound": (),
    # bound to 0.0.0.0, a node advertises the address routed towards its first bootstrap
    # host: one that never answers, on the lab's internet
    "wildcard": (
        *("--listen", f"0.0.0.0:{NODE_UDP_PORT}", "--tcp-listen", f"0.0.0.0:{NODE_TCP_PORT}"),
        *("--bootstrap", f"{INTERNET_NET}.250:{NODE_UDP_PORT}"),
    ),
    "own-ip-allowed": ("--relay-allow", "{sn}/32"),
}


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_available()
    with NetLab() as lab:
        yield lab


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_relay_does_not_reach_the_supernodes_own_services(
    lab: NetLab, tmp_path: Path, variant: str
) -> None:
    sn_host = lab.public_host("sn1")
    options = ["--turn-port", str(TURN_PORT), "--relay-allow", f"{INTERNET_NET}.0/24"]
    options += [o.format(sn=sn_host.addr) for o in VARIANTS[variant]]
    sn = spawn(lab, sn_host, "sn1", tmp_path, "supernode", tcp=True, extra=options)
    wait_all_ready([sn], ATTACH_TIMEOUT_S)
    echo = lab.run(
        sn_host,
        [PY, "-m", "tests.support.attackers.turn_attacker", "udp-echo", "--bind", sn_host.addr],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    echo_port = json.loads(read_line(echo, 10))["listening"]
    mallory = lab.public_host("mallory")
    report = tmp_path / "mallory.json"
    data_dir = tmp_path / "mallory"
    data_dir.mkdir()
    sn_ip = sn_host.addr
    argv = [PY, "-m", "tests.support.attackers.turn_attacker", "node", "inward", str(report)]
    argv += ["--bind", mallory.addr]
    argv += ["--target", f"echo={sn_ip}:{echo_port}", "--target", f"turn={sn_ip}:{TURN_PORT}"]
    argv += ["--target", f"quic={sn_ip}:{NODE_UDP_PORT}"]
    argv += ["--", "node", "--data-dir", str(data_dir), "--name", "mallory", "--role", "client"]
    argv += ["--listen", f"{mallory.addr}:{NODE_UDP_PORT}"]
    argv += ["--bootstrap", f"{sn_ip}:{NODE_UDP_PORT}"]
    with (data_dir / "stderr.log").open("wb") as err:
        proc = lab.run(mallory, argv, stdout=err, stderr=subprocess.STDOUT, cwd=REPO)
    attacker = Node("mallory", mallory, data_dir, proc, 0.0)

    def done() -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(report.read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("done") else None

    result = wait_for("the attack", done, ATTACK_TIMEOUT_S, [sn, attacker])
    status = sn.status() or {}
    echo.terminate()
    heard = [json.loads(line) for line in echo.communicate(timeout=10)[0].splitlines()]
    from_sn = [h for h in heard if h["from"][0] == sn_ip]
    relay = (status.get("sharing") or {}).get("relay") or {}
    refusals = {k: v for k, v in (relay.get("drops") or {}).items() if "own" in k or "between" in k}
    targets = result.get("targets", {})
    print(f"\nbreak 3, {variant}: relayed {result.get('relayed')}")
    for name, t in targets.items():
        print(f"  {name:16} {t}")
    print(f"  echo service heard {len(from_sn)} datagrams from the supernode's address")
    print(f"  relay refusals: {refusals}")
    assert "other_allocation" in targets, logs([sn, attacker])
    for name in ("turn", "quic"):
        t = targets[name]
        assert t["permission"] == 403, (name, t)
        assert t["send_replies"] == 0 and t["channel_replies"] == 0, (name, t)
    # two allocations of this relay (two firewalled users' only path) still reach each
    # other, handed over inside the relay: no packet to our own relayed socket
    assert targets["other_allocation"]["send_replies"] >= 1, targets["other_allocation"]
    assert relay["drops"].get("relayed_between_allocations", 0) >= 1, relay["drops"]
    if variant == "own-ip-allowed":
        assert targets["echo"]["permission"] == 0 and targets["echo"]["send_replies"] >= 1
    else:
        assert targets["echo"]["permission"] == 403, targets["echo"]
        assert from_sn == [], from_sn
        assert targets["echo"]["send_replies"] == targets["echo"]["channel_replies"] == 0
    assert sum(refusals.values()) >= 3, relay
