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

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .netlab import NAT_KINDS, Host, NatKind, NetLab, require_available

PY = sys.executable
T = TypeVar("T")

NODE_UDP_PORT = 4433  # fixed ports: only inside the lab's namespaces
NODE_TCP_PORT = 443
CLI_TIMEOUT_S = 20.0  # one CLI call (a lookup waits up to 10 s inside the node)
ATTACH_TIMEOUT_S = 30.0  # spawn until online, attached and registered (seen: 2.5-4.5 s)
FAILOVER_TIMEOUT_S = 30.0  # SIGKILL of the primary until attached elsewhere / found again
FAILOVER_LIMIT_S = 10.0  # what the issue asks for (reported, asserted with a margin)
POLL_S = 0.2
LOG_TAIL_LINES = 40


@dataclass
class Node:
    """One `peerphone node` process in a lab host, and the CLI to drive it."""

    name: str
    host: Host
    data_dir: Path
    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic() at spawn
    ready_s: float | None = None  # seconds from spawn to first seen ready (wait_ready)

    def cli(self, *args: str) -> tuple[int, Any, str]:
        """Run `peerphone ARGS --data-dir DIR --json` in the node's namespace.

        Returns the exit status, stdout decoded as JSON (None if it is not JSON), stderr.
        """
        argv = ["ip", "netns", "exec", self.host.ns, PY, "-m", "peerphone", *args]
        argv += ["--data-dir", str(self.data_dir), "--json"]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return -1, None, f"timed out after {CLI_TIMEOUT_S} s"
        try:
            out = json.loads(done.stdout)
        except ValueError:
            out = None
        return done.returncode, out, done.stderr.strip()

    def status(self) -> dict[str, Any] | None:
        code, out, _ = self.cli("status")
        return out if code == 0 and isinstance(out, dict) else None

    def lookup(self, name: str) -> dict[str, Any]:
        code, out, err = self.cli("lookup", name)
        if not isinstance(out, dict):
            return {"found": False, "cli_error": f"exit {code}: {err}"}
        return out

    def log_entries(self) -> list[dict[str, Any]]:
        path = self.data_dir / "node.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        entries = []
        for line in text.splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def log_seconds(self, first: str, then: str, since: float = 0.0) -> float:
        """Seconds between the first log line (at or after the epoch time `since`) that
        contains `first` and the next one that contains `then` (nan if there is none)."""
        start = None
        for entry in self.log_entries():
            msg, ts = str(entry.get("msg", "")), float(entry.get("ts", 0.0))
            if start is None and ts >= since and first in msg:
                start = ts
            elif start is not None and then in msg:
                return ts - start
        return float("nan")

    def log_tail(self) -> str:
        parts = []
        for file in ("node.log", "stderr.log"):
            path = self.data_dir / file
            text = path.read_text(errors="replace") if path.exists() else "(none)\n"
            tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
            parts.append(f"--- {self.name} ({self.host.name}) {file}:\n{tail}")
        return "\n".join(parts)


def logs(nodes: Sequence[Node]) -> str:
    return "\n".join(node.log_tail() for node in nodes)


def spawn(
    lab: NetLab,
    host: Host,
    name: str,
    root: Path,
    role: str,
    bootstrap: Sequence[str] = (),
    tcp: bool = False,
) -> Node:
    """Start `peerphone node` on `host` (UDP on 4433, and TCP 443 when `tcp`)."""
    data_dir = root / name
    data_dir.mkdir(parents=True)
    argv = [PY, "-m", "peerphone", "node", "--data-dir", str(data_dir), "--name", name]
    argv += ["--listen", f"{host.addr}:{NODE_UDP_PORT}", "--role", role]
    if tcp:
        argv += ["--tcp-listen", f"{host.addr}:{NODE_TCP_PORT}"]
    for address in bootstrap:
        argv += ["--bootstrap", address]
    with (data_dir / "stderr.log").open("wb") as err:
        proc: subprocess.Popen[bytes] = lab.run(
            host, argv, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT
        )
    return Node(name, host, data_dir, proc, time.monotonic())


def wait_for(
    what: str, check: Callable[[], T | None], timeout_s: float, nodes: Sequence[Node]
) -> T:
    """Poll `check` until it returns something other than None; fail with logs after
    `timeout_s` or as soon as one of `nodes` exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        dead = [n for n in nodes if n.proc.poll() is not None]
        if dead:
            names = ", ".join(f"{n.name} (exit {n.proc.returncode})" for n in dead)
            pytest.fail(f"{what}: {names} exited\n{logs(nodes)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s\n{logs(nodes)}", pytrace=False)
        time.sleep(POLL_S)


def ready(node: Node) -> dict[str, Any] | None:
    """The node's status once it is online, registered and attached to a primary."""
    st = node.status()
    if st is None or st["state"] != "online" or not st["registered"]:
        return None
    return st if st["attached"]["primary"] is not None else None


def wait_ready(nodes: Sequence[Node], timeout_s: float) -> dict[str, float]:
    """Wait (at most `timeout_s`) until the nodes are ready; return the seconds from spawn to
    ready of those that got there, by name. Fails early only if a node exits."""
    took: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)

    def progress() -> bool | None:
        for node in list(pending):
            if ready(node) is not None:
                took[node.name] = node.ready_s = time.monotonic() - node.started
                pending.remove(node)
        return True if not pending or time.monotonic() > deadline else None

    wait_for(f"{[n.name for n in pending]} ready", progress, 2 * timeout_s, nodes)
    return took


def wait_all_ready(nodes: Sequence[Node], timeout_s: float) -> dict[str, float]:
    """As `wait_ready`, but fail (with the logs) unless every node got ready."""
    took = wait_ready(nodes, timeout_s)
    late = [n.name for n in nodes if n.name not in took]
    if late:
        pytest.fail(f"{late} not ready within {timeout_s} s\n{logs(nodes)}", pytrace=False)
    return took


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


def start_supernodes(lab: NetLab, root: Path, count: int) -> list[Node]:
    """`count` supernodes on public hosts sn1…snN, each bootstrapped from sn1; all ready."""
    first = spawn(lab, lab.public_host("sn1"), "sn1", root, "supernode", tcp=True)
    wait_all_ready([first], ATTACH_TIMEOUT_S)
    seed = [f"{first.host.addr}:{NODE_UDP_PORT}"]
    rest = [
        spawn(lab, lab.public_host(f"sn{i}"), f"sn{i}", root, "supernode", seed, tcp=True)
        for i in range(2, count + 1)
    ]
    nodes = [first, *rest]
    wait_all_ready(rest, ATTACH_TIMEOUT_S)

    def tier_complete() -> bool | None:
        sizes = [(n.status() or {}).get("supernode") or {} for n in nodes]
        return True if all(s.get("membership_size") == count for s in sizes) else None

    wait_for(f"a tier of {count} supernodes", tier_complete, ATTACH_TIMEOUT_S, nodes)
    return nodes


def bootstrap_list(seed: Node) -> list[str]:
    """The one bootstrap list every client gets: the seed's UDP and TCP addresses."""
    return [f"{seed.host.addr}:{NODE_UDP_PORT}", f"tcp://{seed.host.addr}:{NODE_TCP_PORT}"]


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
