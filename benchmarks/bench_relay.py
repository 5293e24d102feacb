"""Our TURN relay beside coturn's `turnserver`, same load, same machine, same run.

    .venv/bin/python -m benchmarks.bench_relay            # root: builds a netns lab (~1 min)
    .venv/bin/python -m benchmarks.bench_relay --seconds 5 --rounds 5 --rate 20000

Two namespaces of the lab (tests/support/netlab.py): the relay (ours under uvloop, or coturn with
one relay thread) pinned to CPU 0, and the load generator pinned to CPU 1. The generator
(`loadgen`, this module) allocates through the relay with the same REST-style
credentials for both (coturn's ``static-auth-secret``), binds channel 0x4000 to a peer
socket of its own, and then sends 200-byte payloads as ChannelData from the client
socket (client -> relay -> peer) and as datagrams from the peer socket to the relayed
address (peer -> relay -> client, arriving as ChannelData). Two measurements per relay:

* *paced*: a fixed offered rate each way; the relay's CPU time from /proc gives packets
  per second per core (= relayed packets / CPU seconds). This is the number that
  predicts capacity, whatever the generator can offer.
* *blast*: client -> peer as fast as the generator can send; packets delivered per
  second. If the relay is faster than a Python generator, this is a floor (reported).

A voice call relayed by one allocation is ~50 packets/s each way (24-40 kbit/s Opus at
20 ms), i.e. 100 relayed packets/s: calls per core = packets/s per core / 100.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

from aioice import stun as aiostun
from aioice.turn import make_integrity_key

PAYLOAD_BYTES = 200
CHANNEL = 0x4000
CALL_PACKETS_PER_S = 100  # 50 packets/s each way through one allocation
SECRET = "bench-secret"
TURN_PORT = 3478
LAB_NET = "10.99.0.0/24"
RELAY_CPU, LOADGEN_CPU = "0", "1"
START_TIMEOUT_S = 15.0
TICK_S = 0.001  # the paced generator sends a batch every millisecond
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- the load generator (runs in the client namespace) --------------------------------------


def _transact(sock: socket.socket, message: aiostun.Message) -> aiostun.Message:
    for _ in range(10):
        sock.send(bytes(message))
        sock.settimeout(0.5)
        try:
            while True:
                reply = aiostun.parse_message(sock.recv(4096))
                if reply.transaction_id == message.transaction_id:
                    return reply
        except TimeoutError:
            continue
    raise RuntimeError(f"no answer to {message}")


def _allocate(
    sock: socket.socket, username: str, password: str, peer: tuple[str, int]
) -> tuple[str, int]:
    """Allocate (401 round trip, then signed) and bind CHANNEL to `peer`."""
    request = aiostun.Message(aiostun.Method.ALLOCATE, aiostun.Class.REQUEST)
    request.attributes["REQUESTED-TRANSPORT"] = 17 << 24
    challenge = _transact(sock, request)
    realm, nonce = challenge.attributes["REALM"], challenge.attributes["NONCE"]
    key = make_integrity_key(username, realm, password)

    def signed(method: aiostun.Method, attributes: dict[str, Any]) -> aiostun.Message:
        message = aiostun.Message(method, aiostun.Class.REQUEST, attributes=attributes)
        message.attributes.update(USERNAME=username, REALM=realm, NONCE=nonce)
        message.add_message_integrity(key)
        reply = _transact(sock, message)
        if reply.message_class != aiostun.Class.RESPONSE:
            raise RuntimeError(f"{method.name} refused: {reply}")
        return reply

    reply = signed(aiostun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24, "LIFETIME": 600})
    relayed: tuple[str, int] = reply.attributes["XOR-RELAYED-ADDRESS"]
    signed(aiostun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": CHANNEL, "XOR-PEER-ADDRESS": peer})
    return relayed


def _drain(sock: socket.socket) -> int:
    count = 0
    try:
        while True:
            sock.recv(2048)
            count += 1
    except BlockingIOError:
        return count


def loadgen(
    host: str, server: str, username: str, password: str, mode: str, rate: int, seconds: float
) -> dict[str, Any]:
    """Drive one allocation; counts of packets sent and delivered each way."""
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (client, peer):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((host, 0))
    client.connect((server, TURN_PORT))
    relayed = _allocate(client, username, password, peer.getsockname())
    peer.connect(relayed)
    client.setblocking(False)
    peer.setblocking(False)
    payload = os.urandom(PAYLOAD_BYTES)
    frame = CHANNEL.to_bytes(2, "big") + PAYLOAD_BYTES.to_bytes(2, "big") + payload
    sent_c2p = sent_p2c = got_c2p = got_p2c = 0
    start = time.perf_counter()
    end = start + seconds
    if mode == "paced":
        per_tick = rate * TICK_S
        owed = 0.0
        next_tick = start
        while (now := time.perf_counter()) < end:
            if now >= next_tick:
                owed += per_tick
                batch = int(owed)
                owed -= batch
                for _ in range(batch):
                    try:
                        client.send(frame)
                        sent_c2p += 1
                    except BlockingIOError:
                        pass
                    try:
                        peer.send(payload)
                        sent_p2c += 1
                    except BlockingIOError:
                        pass
                next_tick += TICK_S
            got_c2p += _drain(peer)
            got_p2c += _drain(client)
    else:  # blast: client -> peer only, as fast as we can
        while time.perf_counter() < end:
            for _ in range(64):
                try:
                    client.send(frame)
                    sent_c2p += 1
                except BlockingIOError:
                    break
            got_c2p += _drain(peer)
    elapsed = time.perf_counter() - start
    time.sleep(0.2)  # the last packets in flight
    got_c2p += _drain(peer)
    got_p2c += _drain(client)
    return {
        "elapsed_s": elapsed,
        "sent_c2p": sent_c2p,
        "got_c2p": got_c2p,
        "sent_p2c": sent_p2c,
        "got_p2c": got_p2c,
    }


# -- the driver ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_loadgen(
    lab: Any, host: Any, server: str, mode: str, rate: int, seconds: float, who: str, relay_pid: int
) -> dict[str, Any]:
    from peerphone.nat.credentials import issue_credentials

    creds = issue_credentials(SECRET.encode(), who, 600, time.time())
    code = (
        "import json; from benchmarks.bench_relay import loadgen; "
        f"print(json.dumps(loadgen({host.addr!r}, {server!r}, {creds.username!r}, "
        f"{creds.password!r}, {mode!r}, {rate}, {seconds})))"
    )
    argv = ["taskset", "-c", LOADGEN_CPU, sys.executable, "-c", code]
    proc = lab.run(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=_root())
    cpu_before = cpu_seconds(relay_pid)
    out, err = proc.communicate(timeout=seconds + 30)
    cpu = cpu_seconds(relay_pid) - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["relay_cpu_s"] = cpu
    return result


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_for_stun(lab: Any, host: Any, server: str, deadline: float) -> None:
    probe = ["timeout", "2", "turnutils_stunclient", "-p", str(TURN_PORT), server]
    while True:
        try:
            lab.exec(host, probe, timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def summarize(
    name: str, paced: list[dict[str, Any]], blast: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians over the rounds (a shared machine is noisy: other processes steal the core)."""

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def relayed(r: dict[str, Any]) -> int:
        return int(r["got_c2p"] + r["got_p2c"])

    def offered(r: dict[str, Any]) -> int:
        return int(r["sent_c2p"] + r["sent_p2c"])

    return {
        "relay": name,
        "rounds": len(paced),
        "paced_offered_pps": round(median([offered(r) / r["elapsed_s"] for r in paced])),
        "paced_delivered_pps": round(median([relayed(r) / r["elapsed_s"] for r in paced])),
        "paced_loss": median([1 - relayed(r) / max(1, offered(r)) for r in paced]),
        "paced_relay_cpu": median([r["relay_cpu_s"] / r["elapsed_s"] for r in paced]),
        "pps_per_core": median([relayed(r) / max(r["relay_cpu_s"], 1e-9) for r in paced]),
        "blast_offered_pps": round(median([r["sent_c2p"] / r["elapsed_s"] for r in blast])),
        "blast_delivered_pps": round(median([r["got_c2p"] / r["elapsed_s"] for r in blast])),
        "blast_relay_cpu": median([r["relay_cpu_s"] / r["elapsed_s"] for r in blast]),
        "raw": {"paced": paced, "blast": blast},
    }


def measure(relays: dict[str, list[str]], rate: int, seconds: float, rounds: int) -> list[Any]:
    """Start every relay in a host of its own, then load them in turn, `rounds` times."""
    from tests.support.netlab import NetLab

    with NetLab() as lab:
        client = lab.public_host("client")
        started = {}
        for name, argv in relays.items():
            host = lab.public_host(name)
            argv = [a.replace("{HOST}", host.addr) for a in argv]
            proc = lab.run(
                host,
                ["taskset", "-c", RELAY_CPU, *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=_root(),
            )
            _wait_for_stun(lab, client, host.addr, time.monotonic() + START_TIMEOUT_S)
            started[name] = (host.addr, proc.pid)
        paced: dict[str, list[dict[str, Any]]] = {name: [] for name in relays}
        blast: dict[str, list[dict[str, Any]]] = {name: [] for name in relays}
        for i in range(rounds):
            for name, (addr, pid) in started.items():
                paced[name].append(
                    run_loadgen(lab, client, addr, "paced", rate, seconds, f"paced{i}", pid)
                )
                blast[name].append(
                    run_loadgen(lab, client, addr, "blast", 0, seconds, f"blast{i}", pid)
                )
    return [summarize(name, paced[name], blast[name]) for name in relays]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per relay")
    parser.add_argument("--rate", type=int, default=10_000, help="paced packets/s each way")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    ours = [sys.executable, "-m", "peerphone.nat.cli", "--host", "{HOST}"]
    ours += ["--port", str(TURN_PORT), "--secret", SECRET, "--relay-allow", LAB_NET]
    ours += ["--bandwidth", "1e10", "--uvloop"]
    coturn = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--log-file=/dev/null"]
    coturn += ["--no-stdout-log", "--listening-ip={HOST}", "--relay-ip={HOST}"]
    coturn += [f"--listening-port={TURN_PORT}", "--use-auth-secret", "--realm=bench"]
    coturn += [f"--static-auth-secret={SECRET}", "--allowed-peer-ip=10.99.0.0-10.99.0.255"]
    coturn += ["--relay-threads=1"]
    with open("/proc/loadavg", encoding="ascii") as f:
        load_before = f.read().split()[0]
    results = measure({"peerphone": ours, "coturn": coturn}, args.rate, args.seconds, args.rounds)
    with open("/proc/loadavg", encoding="ascii") as f:
        load_after = f.read().split()[0]
    print(f"TURN relay, {PAYLOAD_BYTES}-byte payloads as ChannelData, relay pinned to one core")
    print(f"paced load: {args.rate} packets/s each way; blast: client->peer flat out")
    print(
        f"medians of {args.rounds} rounds of {args.seconds} s, alternating relays;"
        f" load average {load_before} before, {load_after} after ({os.cpu_count()} CPUs)"
    )
    header = (
        f"{'relay':<10} {'paced pps':>10} {'loss':>6} {'relay CPU':>9} {'pps/core':>9}"
        f" {'blast sent':>10} {'blast got':>10} {'CPU':>5} {'calls/core':>10}"
    )
    print(header)
    for r in results:
        print(
            f"{r['relay']:<10} {r['paced_delivered_pps']:>10} {r['paced_loss']:>6.1%}"
            f" {r['paced_relay_cpu']:>9.0%} {r['pps_per_core']:>9.0f}"
            f" {r['blast_offered_pps']:>10} {r['blast_delivered_pps']:>10}"
            f" {r['blast_relay_cpu']:>5.0%} {r['pps_per_core'] / CALL_PACKETS_PER_S:>10.0f}"
        )
    ours_r, coturn_r = results
    print(
        f"ratio peerphone/coturn: pps/core {ours_r['pps_per_core'] / coturn_r['pps_per_core']:.2f},"
        f" blast delivered {ours_r['blast_delivered_pps'] / coturn_r['blast_delivered_pps']:.2f}"
    )
    print(
        f"voice calls per core (one allocation, {CALL_PACKETS_PER_S} packets/s):"
        f" peerphone {ours_r['pps_per_core'] / CALL_PACKETS_PER_S:.0f},"
        f" coturn {coturn_r['pps_per_core'] / CALL_PACKETS_PER_S:.0f}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
