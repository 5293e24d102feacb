"""Our TURN relay against other implementations, over real sockets in the netns lab.

* coturn's `turnutils_uclient` (Debian package `coturn`) completes its client-to-client
  test through our relay over UDP with channels, with Send indications, over TCP on our
  own listener, and over TCP on port 443 shared with the overlay's `TcpCarrier`;
* aiortc (aioice) with our relay as its only ICE server and a relay-only policy connects
  to another aiortc peer and exchanges data-channel messages;
* aiortc relayed by coturn's `turnserver` talks to aiortc relayed by ours (both relays
  use the same REST-style credentials: coturn's `static-auth-secret` matches ours).

Loopback is never a permitted peer, so nothing here runs on 127.0.0.1: the relay, its
clients and coturn sit on the lab's "internet" (10.99.0.0/24), which the relay is told
to allow (`--relay-allow`), as an operator would allow a private network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from peerphone.nat.credentials import issue_credentials
from tests.support.interop_procs import (
    AIORTC_TIMEOUT_S,
    CARRIER_PORT,
    TURN_PORT,
    UCLIENT_TIMEOUT_S,
)
from tests.support.netlab import Host, NetLab, read_line, require_available

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "interop-secret"
LAB_NET = "10.99.0.0/24"
COTURN_PORT = 3479
START_TIMEOUT_S = 15.0


def require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} missing under CI (apt-get install -y coturn)")
            pytest.skip(f"{tool} not installed (apt-get install -y coturn)")


class Lab:
    """A lab with our relay on one public host and clients on another."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.relay = lab.public_host("relay")
        self.client = lab.public_host("client")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], host: Host | None = None) -> str:
        """Start a process in `host` (the relay's by default); return its first line."""
        proc = self.lab.run(
            host or self.relay, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )
        self.procs.append(proc)
        try:
            return read_line(proc, START_TIMEOUT_S)
        except Exception:
            proc.kill()
            raise AssertionError(f"{argv} did not start: {proc.communicate()[1]!r}") from None

    def start_relay(self) -> None:
        argv = [PY, "-m", "peerphone.nat.cli", "--host", self.relay.addr, "--tcp"]
        argv += ["--port", str(TURN_PORT), "--secret", SECRET, "--relay-allow", LAB_NET]
        line = self.start(argv)
        assert line.startswith("listening udp="), line

    def uclient(self, *flags: str, who: str, port: int = TURN_PORT) -> str:
        """Run coturn's uclient in the client host; its output (asserting success)."""
        creds = issue_credentials(SECRET.encode(), who, 600, time.time())
        argv = ["timeout", str(UCLIENT_TIMEOUT_S), "turnutils_uclient", *flags, "-y", "-c"]
        argv += ["-n", "20", "-p", str(port), "-u", creds.username, "-w", creds.password]
        done = subprocess.run(
            ["ip", "netns", "exec", self.client.ns, *argv, self.relay.addr],
            capture_output=True,
            text=True,
            timeout=UCLIENT_TIMEOUT_S + 10,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-3000:]
        assert "tot_send_msgs=40, tot_recv_msgs=40" in out, out[-3000:]
        assert "Total lost packets 0 (" in out, out[-3000:]
        return out


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_available()
    require_tools("turnutils_uclient")
    with NetLab() as netlab:
        yield Lab(netlab)


@pytest.mark.parametrize(
    ("flags", "transport"),
    [
        ((), "udp, channels"),
        (("-s",), "udp, send indications"),
        (("-t",), "tcp"),
        (("-t", "-s"), "tcp, send indications"),
    ],
)
def test_coturn_uclient_through_our_relay(lab: Lab, flags: tuple[str, ...], transport: str) -> None:
    lab.start_relay()
    out = lab.uclient(*flags, who="uclient")
    print(transport, [line for line in out.splitlines() if "Total" in line])


def start_carrier_relay(lab: Lab) -> None:
    code = (
        "from tests.support.interop_procs import carrier_relay_main; "
        f"carrier_relay_main({lab.relay.addr!r}, {SECRET!r}, {LAB_NET!r})"
    )
    assert lab.start([PY, "-c", code]) == "ready"


def test_coturn_uclient_over_the_tcp_carrier_port(lab: Lab) -> None:
    start_carrier_relay(lab)
    lab.uclient("-t", who="carrier", port=CARRIER_PORT)


# -- aiortc ---------------------------------------------------------------------------------


def run_pair(lab: Lab, turn_a: list[str], turn_b: list[str]) -> dict[str, Any]:
    code = (
        "from tests.support.interop_procs import aiortc_pair_main; "
        f"aiortc_pair_main({turn_a!r}, {turn_b!r})"
    )
    proc = lab.lab.run(
        lab.client, [PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    try:
        out, err = proc.communicate(timeout=AIORTC_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    assert result["replies"] == [f"pong ping {i}" for i in range(5)]
    # each peer's nominated pair runs from its own relay to the other's
    relay_a, relay_b = turn_a[0].split(":")[1], turn_b[0].split(":")[1]
    assert result["pairs"] == [
        ["relay", relay_a, "relay", relay_b],
        ["relay", relay_b, "relay", relay_a],
    ]
    return result


def turn_entry(host: Host, port: int, who: str, transport: str = "udp") -> list[str]:
    creds = issue_credentials(SECRET.encode(), who, 600, time.time())
    return [f"turn:{host.addr}:{port}?transport={transport}", creds.username, creds.password]


def test_aiortc_peers_relayed_by_our_turn(lab: Lab) -> None:
    lab.start_relay()
    result = run_pair(
        lab, turn_entry(lab.relay, TURN_PORT, "alice"), turn_entry(lab.relay, TURN_PORT, "bob")
    )
    print("aiortc via ours <-> aiortc via ours:", result)


def test_aiortc_over_tcp_443_shared_with_the_overlay(lab: Lab) -> None:
    """A peer whose firewall lets only TCP 443 out reaches the relay on the overlay's port."""
    start_carrier_relay(lab)
    result = run_pair(
        lab,
        turn_entry(lab.relay, CARRIER_PORT, "alice", transport="tcp"),
        turn_entry(lab.relay, TURN_PORT, "bob"),
    )
    print("aiortc via ours over TCP 443 <-> aiortc via ours over UDP:", result)


def test_aiortc_via_coturn_talks_to_aiortc_via_ours(lab: Lab) -> None:
    require_tools("turnserver")
    lab.start_relay()
    coturn_host = lab.lab.public_host("coturn")
    argv = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--log-file=stdout"]
    argv += [f"--listening-ip={coturn_host.addr}", f"--relay-ip={coturn_host.addr}"]
    argv += [f"--listening-port={COTURN_PORT}", "--use-auth-secret"]
    argv += [f"--static-auth-secret={SECRET}", "--realm=coturn"]
    argv += ["--allowed-peer-ip=10.99.0.0-10.99.0.255", "--no-stdout-log"]
    proc = lab.lab.run(coturn_host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    probe = ["timeout", "2", "turnutils_stunclient", "-p", str(COTURN_PORT), coturn_host.addr]
    while True:  # until coturn answers a Binding request
        assert proc.poll() is None, "coturn exited"
        try:
            lab.lab.exec(lab.client, probe, timeout=5)
            break
        except Exception:
            assert time.monotonic() < deadline, "coturn did not answer"
            time.sleep(0.1)
    result = run_pair(
        lab,
        turn_entry(coturn_host, COTURN_PORT, "alice"),
        turn_entry(lab.relay, TURN_PORT, "bob"),
    )
    print("aiortc via coturn <-> aiortc via ours:", result)
