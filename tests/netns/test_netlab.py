"""The network-namespace NAT lab (tests/support/netlab.py) behaves as it claims.

Small Python programs (``sys.executable -c``) run inside the lab's namespaces as UDP/TCP
echo servers and clients; every one of them ends itself with ``signal.alarm`` and is
read with a timeout, so no test can hang. Traffic never leaves the lab's namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from peerphone.procs import pid_alive
from tests.support.netlab import (
    PREFIX,
    Host,
    NatKind,
    NetLab,
    list_namespaces,
    namespace_pids,
    read_line,
    require_available,
)

PY = sys.executable

# Replies to every datagram with the sender's address as it saw it: "IP PORT".
UDP_ECHO = """
import signal, socket
signal.alarm(60)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(f"{addr[0]} {addr[1]}".encode(), addr)
"""

# Listens on the given TCP ports; tells each client "IP PORT LOCALPORT" and hangs up.
TCP_SERVER = """
import selectors, signal, socket, sys
signal.alarm(60)
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    sel.register(socket.create_server(("0.0.0.0", int(port))), selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, addr = key.fileobj.accept()
        with conn:
            conn.sendall(f"{addr[0]} {addr[1]} {conn.getsockname()[1]}".encode())
"""

# From ONE socket, pings each "IP:PORT" target until it answers or TIMEOUT passes.
UDP_PROBE = """
import json, signal, socket, sys, time
signal.alarm(20)
timeout = float(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
replies = {}
for target in sys.argv[2:]:
    ip, port = target.split(":")
    dst = (ip, int(port))
    deadline = time.monotonic() + timeout
    reply = None
    while reply is None and time.monotonic() < deadline:
        s.sendto(b"ping", dst)
        s.settimeout(min(0.2, max(0.01, deadline - time.monotonic())))
        try:
            data, addr = s.recvfrom(2048)
        except TimeoutError:
            continue
        if addr == dst:
            reply = data.decode()
    replies[target] = reply
print(json.dumps({"port": s.getsockname()[1], "replies": replies}))
"""

# Connects to each "IP:PORT" target; reports what the server said or the error.
TCP_PROBE = """
import json, signal, socket, sys
signal.alarm(20)
timeout = float(sys.argv[1])
results = {}
for target in sys.argv[2:]:
    ip, port = target.split(":")
    try:
        with socket.create_connection((ip, int(port)), timeout=timeout) as c:
            results[target] = c.recv(200).decode()
    except OSError as exc:
        results[target] = "error: " + type(exc).__name__
print(json.dumps(results))
"""

# Says hello to an echo server (opening a mapping, if the NAT allows), prints its port and
# the mapping, then records every datagram it receives for LISTEN seconds.
LISTENER = """
import json, signal, socket, sys, time
signal.alarm(20)
echo = (sys.argv[1], int(sys.argv[2]))
listen_s = float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
mapped = None
deadline = time.monotonic() + 0.5
while mapped is None and time.monotonic() < deadline:
    s.sendto(b"hello", echo)
    s.settimeout(0.05)
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    if addr == echo:
        mapped = data.decode()
print(json.dumps({"port": s.getsockname()[1], "mapped": mapped}), flush=True)
got = []
end = time.monotonic() + listen_s
while (left := end - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        break
    got.append([addr[0], addr[1], data.decode()])
print(json.dumps(got))
"""

# Sends "unsolicited" to each "IP:PORT" from a fresh connected socket, three times, and
# reports which targets answered with ICMP port unreachable (a REJECT, not a DROP).
SENDER = """
import json, signal, socket, sys, time
signal.alarm(20)
socks = []
for target in sys.argv[1:]:
    ip, port = target.split(":")
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect((ip, int(port)))
    c.setblocking(False)
    socks.append((target, c))
refused = set()
for _ in range(3):
    for target, c in socks:
        try:
            c.send(b"unsolicited")
        except ConnectionRefusedError:
            refused.add(target)
    time.sleep(0.1)
for target, c in socks:
    try:
        c.recv(2048)
    except BlockingIOError:
        pass
    except ConnectionRefusedError:
        refused.add(target)
print(json.dumps({"refused": sorted(refused)}))
"""

# Hole punching: learn our mapping from a rendezvous echo server, print it, read the
# peer's mapping from stdin, then send to the peer every 20 ms for up to WINDOW seconds.
# Success: a punch from the peer arrives (then keep sending 0.3 s so the peer hears us).
PUNCH = """
import json, select, signal, socket, sys, time
signal.alarm(20)
rendezvous = (sys.argv[1], int(sys.argv[2]))
window = float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
mapped = None
deadline = time.monotonic() + 1.0
while mapped is None and time.monotonic() < deadline:
    s.sendto(b"who", rendezvous)
    s.settimeout(0.05)
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    if addr == rendezvous:
        mapped = data.decode()
print(json.dumps(mapped), flush=True)
if not select.select([sys.stdin], [], [], 5)[0]:
    sys.exit("no peer address on stdin")
ip, port = sys.stdin.readline().split()
peer = (ip, int(port))
start = time.monotonic()
end = start + window
elapsed = source = None
while time.monotonic() < end:
    s.sendto(b"punch", peer)
    s.settimeout(0.02)
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    if data == b"punch" and elapsed is None:
        elapsed = time.monotonic() - start
        source = list(addr)
        end = min(end, time.monotonic() + 0.3)
print(json.dumps({"elapsed": elapsed, "from": source}))
"""

NAT_HOSTS: dict[str, NatKind] = {
    "cone1": "cone",
    "cone2": "cone",
    "sym1": "symmetric",
    "sym2": "symmetric",
    "fw": "firewall443",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    require_available()
    with NetLab() as built:
        built.public_host("pub1")
        built.public_host("pub2")
        for name, kind in NAT_HOSTS.items():
            built.nat_host(name, kind)
        yield built


def start(lab: NetLab, host: Host, code: str, *args: object) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = lab.run(
        host,
        [PY, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 5.0) -> Any:
    """Wait for a helper program; return its last stdout line, decoded as JSON."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args!r} failed: {err}"
    return json.loads(out.strip().splitlines()[-1])


def udp_echo(lab: NetLab, host: Host) -> str:
    """Start a UDP echo server on ``host``; return "IP:PORT"."""
    port = int(read_line(start(lab, host, UDP_ECHO), timeout=5))
    return f"{host.addr}:{port}"


def observed(reply: str | None) -> tuple[str, int] | None:
    if reply is None:
        return None
    ip, port = reply.split()
    return ip, int(port)


def test_public_udp_echo_is_reachable_from_behind_every_nat_but_the_firewall(
    lab: NetLab,
) -> None:
    echo = udp_echo(lab, lab.hosts["pub1"])
    probes = {n: start(lab, lab.hosts[n], UDP_PROBE, 1.0, echo) for n in ("cone1", "sym1", "fw")}
    results = {n: finish(p) for n, p in probes.items()}
    for name in ("cone1", "sym1"):
        seen = observed(results[name]["replies"][echo])
        assert seen is not None, f"{name}: no UDP reply"
        assert seen[0] == lab.hosts[name].public_addr, f"{name}: not NATed to the router"
    assert results["fw"]["replies"][echo] is None, "firewall443 let UDP through"


def test_cone_keeps_one_external_port_and_symmetric_picks_one_per_destination(
    lab: NetLab,
) -> None:
    echoes = [udp_echo(lab, lab.hosts["pub1"]), udp_echo(lab, lab.hosts["pub2"])]
    probes = {n: start(lab, lab.hosts[n], UDP_PROBE, 1.0, *echoes) for n in ("cone1", "sym1")}
    for name, proc in probes.items():
        result = finish(proc)
        first, second = (observed(result["replies"][echo]) for echo in echoes)
        assert first is not None and second is not None, f"{name}: {result}"
        (ip1, port1), (ip2, port2) = seen = first, second
        assert ip1 == ip2 == lab.hosts[name].public_addr
        if lab.hosts[name].nat == "cone":
            assert port1 == port2, f"cone NAT changed the external port: {seen}"
        else:
            assert port1 != port2, f"symmetric NAT kept the external port: {seen}"


def test_firewall443_allows_only_outbound_tcp_443(lab: NetLab) -> None:
    pub = lab.hosts["pub1"]
    server = start(lab, pub, TCP_SERVER, 443, 80)  # fixed ports: only inside the lab
    assert read_line(server, timeout=5) == "ready"
    echo = udp_echo(lab, pub)
    tcp = [f"{pub.addr}:443", f"{pub.addr}:80"]
    fw_tcp = start(lab, lab.hosts["fw"], TCP_PROBE, 1.0, *tcp)
    fw_udp = start(lab, lab.hosts["fw"], UDP_PROBE, 1.0, echo)
    control = start(lab, lab.hosts["cone1"], TCP_PROBE, 1.0, *tcp)

    fw = finish(fw_tcp)
    assert fw[tcp[0]].split()[0] == lab.hosts["fw"].public_addr, fw  # reached, NATed
    assert fw[tcp[1]] == "error: TimeoutError", fw  # dropped, not refused
    assert finish(fw_udp)["replies"][echo] is None
    assert all(not r.startswith("error") for r in finish(control).values())  # port 80 is up


def test_routers_drop_unsolicited_inbound_udp(lab: NetLab) -> None:
    pub1, pub2 = lab.hosts["pub1"], lab.hosts["pub2"]
    echo = udp_echo(lab, pub2)
    echo_ip, echo_port = echo.split(":")
    names = ("cone1", "sym1", "fw")
    listeners = {n: start(lab, lab.hosts[n], LISTENER, echo_ip, echo_port, 1.0) for n in names}
    senders = []
    for name, proc in listeners.items():
        first = json.loads(read_line(proc, timeout=5))
        host = lab.hosts[name]
        ports = {first["port"]}  # where a cone NAT would map the host's port…
        if first["mapped"] is not None:  # …and where the NAT actually did
            ip, port = first["mapped"].split()
            assert ip == host.public_addr
            ports.add(int(port))
        elif host.nat != "firewall443":
            pytest.fail(f"{name}: no reply from the echo server")
        targets = [f"{host.public_addr}:{port}" for port in sorted(ports)]
        # pub1 never talked to the host; pub2 did, but from the echo server's port.
        senders.append(start(lab, pub1, SENDER, *targets, f"{pub2.addr}:9"))
        senders.append(start(lab, pub2, SENDER, *targets))
    refused = [finish(s)["refused"] for s in senders]
    for name, proc in listeners.items():
        got = finish(proc)
        unsolicited = [g for g in got if g[2] == "unsolicited"]
        assert not unsolicited, f"{name} received unsolicited traffic: {unsolicited}"
        assert all(f"{g[0]}:{g[1]}" == echo for g in got), got  # only echo replies
    # The routers drop (no ICMP back); the control target, a closed port on a public host
    # without a firewall, shows that a REJECT would have been noticed.
    assert all(r == [f"{pub2.addr}:9"] for r in refused[0::2]), refused
    assert all(r == [] for r in refused[1::2]), refused


def punch(
    lab: NetLab, a: str, b: str, window: float, stagger: float = 0.0
) -> tuple[Any, Any, list[str]]:
    """Two hosts try to punch a hole to each other; return both results and mappings.

    ``b`` starts ``stagger`` seconds after ``a``, so ``a``'s first packets hit ``b``'s NAT
    before ``b`` has sent anything (and must be dropped without spoiling ``b``'s mapping).
    """
    echo_ip, echo_port = udp_echo(lab, lab.hosts["pub1"]).split(":")
    procs = [start(lab, lab.hosts[n], PUNCH, echo_ip, echo_port, window) for n in (a, b)]
    mapped: list[str] = [json.loads(read_line(p, timeout=5)) for p in procs]
    assert None not in mapped, mapped
    for proc, peer in zip(procs, reversed(mapped), strict=True):
        assert proc.stdin is not None
        proc.stdin.write(peer + "\n")
        proc.stdin.flush()
        time.sleep(stagger)
    return finish(procs[0]), finish(procs[1]), mapped


@pytest.mark.parametrize("stagger", [0.0, 0.2])
def test_hole_punching_works_cone_to_cone(lab: NetLab, stagger: float) -> None:
    ra, rb, mapped = punch(lab, "cone1", "cone2", window=2.0, stagger=stagger)
    assert ra["elapsed"] is not None and rb["elapsed"] is not None, (ra, rb)
    # Each side hears the other from exactly the mapping the rendezvous server saw.
    assert " ".join(map(str, ra["from"])) == mapped[1]
    assert " ".join(map(str, rb["from"])) == mapped[0]
    print(
        f"cone<->cone hole punch (stagger {stagger}): {ra['elapsed']:.3f} / {rb['elapsed']:.3f} s"
    )
    # how fast (one round trip once both have sent) is printed above; that it happened
    # within the 2 s window is what `elapsed` not being None says


@pytest.mark.parametrize(("a", "b"), [("sym1", "sym2"), ("cone1", "sym1")])
def test_hole_punching_fails_with_a_symmetric_nat(lab: NetLab, a: str, b: str) -> None:
    ra, rb, _ = punch(lab, a, b, window=1.0)
    assert ra["elapsed"] is None and rb["elapsed"] is None, (ra, rb)


def test_no_route_leaves_the_lab(lab: NetLab) -> None:
    lab_nets = [ipaddress.IPv4Network(n) for n in ("10.99.0.0/24", "192.168.0.0/16")]
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    for host in [*lab.hosts.values(), *(h.router for h in lab.hosts.values() if h.router)]:
        routes = lab.exec(host, ["ip", "-4", "route", "show"]).splitlines()
        assert routes, host.name
        for route in routes:
            dst = route.split()[0]
            assert dst != "default", f"{host.name}: {route}"
            assert any(ipaddress.IPv4Network(dst).subnet_of(n) for n in lab_nets), route
        for line in lab.exec(host, ["ip", "-4", "-o", "addr", "show"]).splitlines():
            addr = ipaddress.IPv4Interface(line.split()[3]).ip
            assert any(addr in n for n in [*lab_nets, loopback]), f"{host.name}: {line}"
        assert lab.exec(host, ["ip", "-6", "-o", "addr", "show"]).strip() == "", host.name
    # Nothing outside the lab can be reached: the kernel has no route for it.
    code = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    code += "try:\n    s.connect(('192.0.2.1', 9))\nexcept OSError as e:\n    print(e.errno)"
    for name in ("pub1", "cone1"):
        assert lab.exec(lab.hosts[name], [PY, "-c", code]).strip() == "101", name  # ENETUNREACH


def ip(args: list[str]) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=5, check=True)
    return done.stdout


def root_links() -> set[str]:
    out = ip(["-o", "link", "show"])
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_teardown_leaves_no_namespaces_links_or_processes() -> None:
    require_available()
    links_before = root_links()
    with NetLab() as lab:
        pub = lab.public_host("a")
        nat = lab.nat_host("b", "cone")
        tracked = lab.run(nat, [PY, "-c", "import time; time.sleep(30)"])
        # A process the lab did not start itself: only `ip netns pids` can find it.
        sleeper = shlex.quote(PY) + " -c 'import time; time.sleep(30)'"
        escaped = int(lab.exec(pub, ["sh", "-c", f"{sleeper} >/dev/null 2>&1 & echo $!"]))
        assert escaped in namespace_pids(pub.ns)
        assert set(lab.namespaces()) <= set(list_namespaces())
        assert len(lab.namespaces()) == 4  # internet, a, b and b's router
    assert not [ns for ns in list_namespaces() if ns.startswith(lab.prefix)]
    assert root_links() - links_before == set()
    assert tracked.returncode is not None
    assert not pid_alive(escaped)
    lab.close()  # idempotent


def test_two_labs_coexist_and_teardown_survives_a_failing_test() -> None:
    require_available()
    prefixes: list[str] = []

    def failing_test() -> None:
        with NetLab() as one, NetLab() as two:
            prefixes.extend([one.prefix, two.prefix])
            a1, a2 = one.public_host("a"), two.public_host("a")
            assert a1.ns != a2.ns and a1.addr == a2.addr  # separate internets
            for lab, host in ((one, a1), (two, a2)):
                client = lab.public_host("client")
                probe = finish(start(lab, client, UDP_PROBE, 1.0, udp_echo(lab, host)))
                assert None not in probe["replies"].values()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_test()
    assert len(prefixes) == 2
    assert not [ns for ns in list_namespaces() if ns.startswith(tuple(prefixes))]


def test_a_new_lab_removes_what_a_dead_process_left_behind() -> None:
    require_available()
    with open("/proc/sys/kernel/pid_max") as f:
        dead_pid = int(f.read()) + 1  # no process can have this PID
    stale = f"{PREFIX}{dead_pid}-1-h-ghost"
    ip(["netns", "add", stale])
    orphan = subprocess.Popen(
        ["ip", "netns", "exec", stale, PY, "-c", "import time; time.sleep(30)"]
    )
    try:
        deadline = time.monotonic() + 5
        while orphan.pid not in namespace_pids(stale) and time.monotonic() < deadline:
            time.sleep(0.01)
        with NetLab():
            assert stale not in list_namespaces()
        assert orphan.wait(timeout=5) == -9  # SIGKILLed by the clean-up
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(timeout=5)
        if stale in list_namespaces():
            ip(["netns", "del", stale])
