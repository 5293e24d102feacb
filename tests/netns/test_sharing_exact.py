"""Issue 12, item 3: `peerphone sharing --json` against what nftables counted on the wire.

A supernode on a public lab host (overlay on UDP 4433 and the TCP carrier on 443, STUN/TURN
on UDP 3478, its relay opened to the lab's internet as in test_netns_calls) serves four
clients: two behind symmetric NATs (sym1, sym2: their call can only go through the relay)
and two behind cone NATs (dir1, dir2: directory traffic, lookups of present, absent and
unknown names, contacts watched). nftables in the supernode's namespace counts every IP
packet on its interface, by category (tests/support/nft_counters.py): UDP to or from port
4433 is the overlay (the node's ``directory_signaling``); any other UDP is the relay's (its
port 3478 and its relayed ports: nothing else in that namespace speaks UDP); TCP is printed
apart (the carrier: the clients have UDP, so it stays idle).

The comparison is honest at the IP level: nftables counts whole IP packets, and the node
counts each UDP datagram's payload plus 28 bytes of IPv4 and UDP header (sharing.py says
so in its output). Over an interval that holds the directory traffic and a relayed call
from set-up to hang-up, the difference of two `sharing --json` readings must agree with the
difference of nftables' counts, per category and direction, within 2 %. Each reading is
bracketed by two nftables readings (before and after the CLI), and compared with their
midpoint; the bracket's width is printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peerphone.media import reference_signal
from tests.support.audio import write_wav
from tests.support.netlab import INTERNET_NET, NatKind, NetLab, require_available
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    Node,
    bootstrap_list,
    logs,
    spawn,
    start_supernodes,
    wait_all_ready,
)
from tests.support.nft_counters import install, nft_bytes

TABLE = "sharing_exact"
TOLERANCE = 0.02  # the acceptance: within 2 %
RATE = 48_000
SIGNAL_S = 5.0
CALL_S = 12.0  # the relayed call stays up this long once connected
CALL_CLI_TIMEOUT_S = 90.0
QUIET_S = 2.0  # before each reading: the call's last packets have arrived
LOOKUP_ROUNDS = 3
# relayed both ways by the end: half of two ~25 kbit/s streams for CALL_S (seen: ~100 kB)
MIN_RELAYED_BYTES = int(2 * 25_000 / 8 * CALL_S / 2)
SUPERNODE_OPTIONS = ("--turn-port", "3478", "--relay-allow", f"{INTERNET_NET}.0/24")
# the node's (category, direction) for each pair of nftables counters
COMPARED = {
    ("directory_signaling", "down_bytes"): "overlay_in",
    ("directory_signaling", "up_bytes"): "overlay_out",
    ("relay", "down_bytes"): "relay_in",
    ("relay", "up_bytes"): "relay_out",
}


@pytest.fixture
def lab() -> Iterator[NetLab]:
    require_available()
    with NetLab() as lab:
        yield lab


@dataclass(frozen=True, slots=True)
class Reading:
    """One `sharing --json` of the supernode, between two nftables readings."""

    before: dict[str, int]
    sharing: dict[str, Any]
    after: dict[str, int]

    def nft(self, counter: str) -> float:
        return (self.before[counter] + self.after[counter]) / 2


def read(lab: NetLab, sn: Node) -> Reading:
    before = nft_bytes(lab, sn.host, TABLE)
    code, out, err = sn.cli("sharing")
    after = nft_bytes(lab, sn.host, TABLE)
    assert code == 0 and isinstance(out, dict), f"sharing: exit {code}: {err}\n{sn.log_tail()}"
    return Reading(before, out, after)


def node_total(reading: Reading, category: str, direction: str) -> int:
    return int(reading.sharing["categories"][category]["since_start"][direction])


def cli_ok(node: Node, *args: str, timeout_s: float = 20.0, json_out: bool = True) -> Any:
    code, out, err = node.cli(*args, json_out=json_out, timeout_s=timeout_s)
    assert code == 0, f"{args} on {node.name}: exit {code}: {err}\n{node.log_tail()}"
    return out


def test_sharing_totals_agree_with_nftables(lab: NetLab, tmp_path: Path) -> None:
    (sn,) = start_supernodes(lab, tmp_path, 1, SUPERNODE_OPTIONS)
    bootstrap = bootstrap_list(sn)
    play = tmp_path / "signal.wav"
    write_wav(play, reference_signal(7, SIGNAL_S), RATE, 1)
    answer = ("--auto-answer", "--answer-play", str(play))
    kinds: tuple[tuple[str, NatKind, tuple[str, ...]], ...] = (
        ("sym1", "symmetric", ()),
        ("sym2", "symmetric", answer),
        ("dir1", "cone", ()),
        ("dir2", "cone", ()),
    )
    users = {
        name: spawn(lab, lab.nat_host(name, kind), name, tmp_path, "client", bootstrap, extra=extra)
        for name, kind, extra in kinds
    }
    nodes = [sn, *users.values()]
    wait_all_ready(list(users.values()), ATTACH_TIMEOUT_S)
    install(lab, sn.host, TABLE)
    time.sleep(QUIET_S)
    start = read(lab, sn)

    # directory traffic: lookups of users online, of a name never registered, contacts
    dir1, dir2 = users["dir1"], users["dir2"]
    for _ in range(LOOKUP_ROUNDS):
        for node, names in ((dir1, ("sym1", "dir2", "nobody")), (dir2, ("sym2", "dir1"))):
            for name in names:
                node.cli("lookup", name)  # "nobody" exits 1: not found
    cli_ok(dir1, "contacts", "add", "dir2")
    cli_ok(dir2, "contacts", "add", "sym1")
    cli_ok(dir2, "set-status", "away", json_out=False)

    # a relayed call from set-up to hang-up (symmetric NATs on both sides)
    call = cli_ok(
        users["sym1"],
        *("call", "sym2", "--play", str(play), "--duration", str(CALL_S)),
        timeout_s=CALL_CLI_TIMEOUT_S,
    )
    assert call["path"] == "relay", f"{call}\n{logs(nodes)}"
    time.sleep(QUIET_S)
    end = read(lab, sn)

    shown = {k: call.get(k) for k in ("path", "connected_s", "bitrate_kbps")}
    print(f"\ncall: {json.dumps(shown)}")
    head = ("category", "dir", "node B", "nftables B", "bracket B", "diff")
    print("{:<20} {:<5} {:>10} {:>12} {:>10} {:>8}".format(*head))
    failures = []
    for (category, direction), counter in COMPARED.items():
        counted = node_total(end, category, direction) - node_total(start, category, direction)
        wire = end.nft(counter) - start.nft(counter)
        bracket = (end.after[counter] - end.before[counter]) + (
            start.after[counter] - start.before[counter]
        )
        diff = (counted - wire) / wire if wire else float("inf")
        way = direction.split("_")[0]
        print(f"{category:<20} {way:<5} {counted:>10} {wire:>12.0f} {bracket:>10} {diff:>+8.2%}")
        if not wire or abs(diff) > TOLERANCE:
            failures.append(
                f"{category} {way}: node {counted} B, nftables {wire:.0f} B ({diff:+.2%})"
            )
    tcp = {c: end.nft(c) - start.nft(c) for c in ("tcp_in", "tcp_out")}
    print(f"TCP on the supernode's interface meanwhile (not compared): {tcp}")
    relayed = end.sharing["categories"]["relay"]["since_start"]
    assert relayed["up_bytes"] > MIN_RELAYED_BYTES, f"the call hardly used the relay: {relayed}"
    assert not failures, "\n".join(failures) + "\n" + logs(nodes)
