"""Real `peerphone node` processes behind real NATs (the network-namespace lab, netlab.py).

Two supernodes on public hosts (UDP 4433 and the TCP carrier on 443, the second one
bootstrapped from the first) and one client behind each kind of NAT: a port-restricted
cone, a symmetric NAT and a firewall that lets only outbound TCP 443 out. Every client gets
the same bootstrap list (the first supernode's UDP and TCP addresses); the firewalled one
has to fall back to TCP by itself. The tests drive the nodes only through the CLI
(`status`, `lookup`), run inside each node's namespace, since the control API listens on
that namespace's loopback.

A separate lab SIGKILLs the supernode a cone client is attached to and measures how long
the client takes to attach to another one and to be found again.

Every wait has a deadline and prints the node logs when it runs out; the processes are
started through the lab, which kills them by PID and deletes its namespaces on teardown.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.netlab import NAT_KINDS, NatKind, NetLab, require_available
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    NODE_TCP_PORT,
    NODE_UDP_PORT,
    Node,
    bootstrap_list,
    logs,
    ready,
    spawn,
    start_supernodes,
    wait_all_ready,
    wait_for,
    wait_ready,
)

FAILOVER_TIMEOUT_S = 30.0  # SIGKILL of the primary until attached elsewhere / found again
FAILOVER_LIMIT_S = 10.0  # what the issue asks for (reported, asserted with a margin)


def lookup_problems(result: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """What is wrong with a lookup of the user whose status is `target` (empty: nothing)."""
    if not result.get("found"):
        return [f"not found: {result.get('reason') or result.get('cli_error')}"]
    problems = []
    if not result["online"] or not result["verified"]:
        problems.append(f"online={result['online']} verified={result['verified']}")
    record = result["record"] or {}
    if record.get("owner") != target["user_key"]:
        problems.append(f"owner {record.get('owner')} is not the user key {target['user_key']}")
    if record.get("addresses") != target["addresses"]:
        problems.append(f"addresses {record.get('addresses')} != {target['addresses']}")
    primary = target["attached"]["primary"]
    if primary is not None and primary["node_id"] not in record.get("supernodes", []):
        problems.append(f"the primary {primary['node_id'][:16]} not in {record.get('supernodes')}")
    return problems


def run_lookups(
    pairs: Sequence[tuple[Node, str]], statuses: dict[str, dict[str, Any]]
) -> dict[tuple[str, str], list[str]]:
    """Run the lookups (source node, target name) in parallel; the problems of each."""
    latency: dict[str, float] = {}

    def one(pair: tuple[Node, str]) -> list[str]:
        source, target = pair
        result = source.lookup(target)
        latency[f"{source.name}->{target}"] = result.get("latency_ms", float("nan"))
        return lookup_problems(result, statuses[target])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, pairs))
    slowest = sorted(latency.items(), key=lambda item: -item[1])[:3]
    print("slowest lookups (ms, inside the node):", ", ".join(f"{k} {v:.1f}" for k, v in slowest))
    return {(s.name, t): r for (s, t), r in zip(pairs, results, strict=True)}


# -- the lab: two supernodes, a client behind each kind of NAT ------------------------------

SUPERNODES = ("sn1", "sn2")
CLIENTS: dict[NatKind, str] = {kind: f"user-{kind}" for kind in NAT_KINDS}
LOOKUPS = [
    *(
        (source, target)
        for source in CLIENTS.values()
        for target in (*SUPERNODES, *CLIENTS.values())
        if source != target
    ),
    *((source, target) for source in SUPERNODES for target in CLIENTS.values()),
]


@dataclass
class Network:
    """The module's lab and its nodes."""

    lab: NetLab
    nodes: dict[str, Node]

    @property
    def supernodes(self) -> list[Node]:
        return [self.nodes[name] for name in SUPERNODES]

    def require_ready(self, name: str) -> dict[str, Any]:
        """The node's status; fail the test if it never got ready."""
        node = self.nodes[name]
        st = node.status()
        if node.ready_s is None or st is None:
            pytest.fail(
                f"{name} never got online, attached and registered within "
                f"{ATTACH_TIMEOUT_S} s of its start\n{node.log_tail()}",
                pytrace=False,
            )
        return st

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, node in self.nodes.items():
            st = node.status()
            assert st is not None, f"{name} has no status\n{node.log_tail()}"
            out[name] = st
        return out


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    require_available()
    root = tmp_path_factory.mktemp("netns-nodes")
    with NetLab() as lab:
        supernodes = start_supernodes(lab, root, len(SUPERNODES))
        bootstrap = bootstrap_list(supernodes[0])
        clients = [
            spawn(lab, lab.nat_host(kind, kind), name, root, "client", bootstrap)
            for kind, name in CLIENTS.items()
        ]
        network = Network(lab, {n.name: n for n in [*supernodes, *clients]})
        for name, seconds in wait_ready(clients, ATTACH_TIMEOUT_S).items():
            print(f"{name}: online, attached and registered {seconds:.2f} s after spawn")
        yield network


@pytest.fixture(scope="module")
def lookups(net: Network) -> dict[tuple[str, str], list[str]]:
    """Every lookup of LOOKUPS, run once, in parallel: the problems of each."""
    statuses = net.statuses()
    started = time.monotonic()
    problems = run_lookups([(net.nodes[s], t) for s, t in LOOKUPS], statuses)
    print(f"{len(LOOKUPS)} lookups in {time.monotonic() - started:.2f} s")
    return problems


def test_supernodes_form_one_tier(net: Network) -> None:
    for sn in net.supernodes:
        st = net.require_ready(sn.name)
        assert st["role"] == "supernode", st
        assert st["supernode"]["membership_size"] == len(SUPERNODES), st


def test_supernodes_listen_and_advertise_udp_and_tcp_443(net: Network) -> None:
    for sn in net.supernodes:
        st = net.require_ready(sn.name)
        udp, tcp = f"{sn.host.addr}:{NODE_UDP_PORT}", f"{sn.host.addr}:{NODE_TCP_PORT}"
        assert st["listen"] == {"udp": udp, "tcp": tcp}, st
        assert st["addresses"] == [udp, f"tcp://{tcp}"], st


@pytest.mark.parametrize("kind", NAT_KINDS)
def test_client_behind_nat_attaches_and_registers(net: Network, kind: NatKind) -> None:
    node = net.nodes[CLIENTS[kind]]
    st = net.require_ready(node.name)
    assert st["role"] == "client" and st["state"] == "online" and st["registered"], st
    assert st["name"] == node.name and st["status"] == "online", st
    supernode_ids = {net.require_ready(sn.name)["node_id"] for sn in net.supernodes}
    primary, backup = st["attached"]["primary"], st["attached"]["backup"]
    assert primary["node_id"] in supernode_ids, st
    if backup is not None:
        assert backup["node_id"] in supernode_ids - {primary["node_id"]}, st
    internal = node.log_seconds("started as", "registered")
    print(
        f"{kind}: ready {node.ready_s:.2f} s after spawn (Python start and polling included), "
        f"registered {internal:.3f} s after the node's start line; errors {st['errors']}"
    )


def attached_links(st: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for link in st["attached"].values() if link is not None]


@pytest.mark.parametrize("kind", ["cone", "symmetric"])
def test_client_behind_udp_nat_reaches_its_supernodes_over_udp(net: Network, kind: NatKind) -> None:
    st = net.require_ready(CLIENTS[kind])
    udp = {f"{sn.host.addr}:{NODE_UDP_PORT}" for sn in net.supernodes}
    for link in attached_links(st):
        assert link["transport"] == "udp" and link["address"] in udp, st
    assert st["links_over_tcp"] == 0, st


def test_firewalled_client_reaches_its_supernodes_over_tcp_443(net: Network) -> None:
    node = net.nodes[CLIENTS["firewall443"]]
    st = net.require_ready(node.name)
    tcp = {f"{sn.host.addr}:{NODE_TCP_PORT}": sn for sn in net.supernodes}
    for link in attached_links(st):
        assert link["transport"] == "tcp" and link["address"] in tcp, f"{st}\n{node.log_tail()}"
    assert st["links_over_tcp"] == st["links"] >= 1, st
    # The other end agrees: the primary holds at least one link over TCP (this client's).
    primary = tcp[st["attached"]["primary"]["address"]]
    assert net.require_ready(primary.name)["links_over_tcp"] >= 1
    print(
        f"firewall443: fell back to TCP {node.log_seconds('started as', 'tcp:'):.3f} s after start"
    )


@pytest.mark.parametrize(("source", "target"), LOOKUPS, ids=[f"{s}->{t}" for s, t in LOOKUPS])
def test_lookup(
    net: Network, lookups: dict[tuple[str, str], list[str]], source: str, target: str
) -> None:
    problems = lookups[(source, target)]
    if problems:
        involved = [net.nodes[source], net.nodes[target]]
        pytest.fail(f"{source} looking up {target}: {problems}\n{logs(involved)}", pytrace=False)


# -- failover: SIGKILL the primary ---------------------------------------------------------


def test_client_moves_to_another_supernode_when_its_primary_is_killed(tmp_path: Path) -> None:
    require_available()
    with NetLab() as lab:
        supernodes = start_supernodes(lab, tmp_path, 3)
        bootstrap = bootstrap_list(supernodes[0])
        roamer = spawn(lab, lab.nat_host("cone", "cone"), "roamer", tmp_path, "client", bootstrap)
        watcher = spawn(
            lab, lab.nat_host("cone2", "cone"), "watcher", tmp_path, "client", bootstrap
        )
        nodes = [*supernodes, roamer, watcher]
        wait_all_ready([roamer, watcher], ATTACH_TIMEOUT_S)
        by_id: dict[str, Node] = {}
        for sn in supernodes:
            st = sn.status()
            assert st is not None
            by_id[st["node_id"]] = sn
        before = ready(roamer)
        assert before is not None
        victim_id = before["attached"]["primary"]["node_id"]
        victim = by_id[victim_id]
        backup = before["attached"]["backup"]
        print(
            f"roamer: primary {victim.name}, backup "
            f"{by_id[backup['node_id']].name if backup else None}"
        )

        killed_at, killed_epoch = time.monotonic(), time.time()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=5)
        survivors = [n for n in nodes if n is not victim]

        def moved() -> dict[str, Any] | None:
            st = ready(roamer)
            return None if st is None or st["attached"]["primary"]["node_id"] == victim_id else st

        after = wait_for("roamer attached elsewhere", moved, FAILOVER_TIMEOUT_S, survivors)
        reattach_s = time.monotonic() - killed_at
        new_primary = by_id.get(after["attached"]["primary"]["node_id"])
        assert new_primary is not None and new_primary in survivors, after

        def findable() -> dict[str, Any] | None:
            res = watcher.lookup("roamer")
            st = roamer.status()
            if st is None or lookup_problems(res, st):
                return None
            # A record that still names the dead supernode would send callers there.
            return None if victim_id in res["record"]["supernodes"] else res

        found = wait_for("roamer findable again", findable, FAILOVER_TIMEOUT_S, survivors)
        findable_s = time.monotonic() - killed_at
        attached_at = [
            float(e["ts"])
            for e in roamer.log_entries()
            if float(e.get("ts", 0.0)) >= killed_epoch and "attached to" in str(e.get("msg"))
        ]
        # The loss is logged first ("lost primary supernode ..."), then the new attachment.
        logged_s = attached_at[0] - killed_epoch if attached_at else float("nan")
        print(
            f"failover: SIGKILL {victim.name}; the roamer logged its attachment to "
            f"{new_primary.name} {logged_s:.2f} s after the kill, its status showed it after "
            f"{reattach_s:.2f} s; the watcher found the new record (via "
            f"{found['hops']} hops) {findable_s:.2f} s after the kill "
            f"(issue limit {FAILOVER_LIMIT_S:.0f} s)"
        )
        assert reattach_s < 2 * FAILOVER_LIMIT_S, f"{reattach_s:.1f} s\n{logs(nodes)}"
