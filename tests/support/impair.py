"""Packet loss on a lab router (netlab.py), per direction, counted exactly by nftables.

The kernel here has no netem, so loss is made by nftables in the forward hook of the
router of a host behind a NAT (``Host.router``), ahead of the router's own ruleset
(priority filter - 10). What is hit (the *selection*): UDP between the LAN host and
`peer` (an address on the lab's internet, e.g. the other party's NAT; None: any address)
except datagrams from or to the host's own `exclude_ports` (the node's overlay socket,
UDP 4433, so the overlay's signaling is never hit; it also runs over TCP, never hit).
For a direct call between two NATed users with `peer` = the other user's public address
that is exactly the call: ICE/STUN consent checks, DTLS, SRTP and SRTCP.

Directions, seen from the LAN host: ``up`` is what it sends (lan0 -> wan0), ``down`` what
it receives (wan0 -> lan0). Loss models (`LossModel`):

* ``random``: each packet is dropped with probability p. With a seed (the default in the
  helpers) the drop decisions are a seeded pseudo-random pattern over the packet index: a
  rule ``numgen inc mod N { i1, i2, ... } jump drop`` whose counter runs per rule, so the
  same seed drops the same packets of a direction (the n-th datagram of the selection)
  every run; without a seed, the kernel's ``numgen random mod 10000 < p * 10000``.
* ``bursty``: Gilbert–Elliott, a two-state Markov chain per packet (good: no loss, bad:
  loss; the chance to leave the bad state is 1/mean_burst, the chance to enter it is set
  so that the stationary loss is p), precomputed from the seed into the same kind of
  index pattern — so bursts are exact per packet, with no timing controller at all.

The pattern repeats after PATTERN_PACKETS packets of a direction (4 min of 20-ms packets).
Loss is switched on, changed or off while traffic flows (`set_loss`, one nftables
transaction; a new pattern starts at its index 0). Named counters (packets and IP bytes)
of what passed and what was dropped, per direction, also of RTP alone (RTP version 2, a
payload type outside 64-95, which RTCP uses under rtcp-mux), tell the applied loss
exactly: `counts()`; subtract two counts for an interval. RTP *first transmissions* are
counted apart: a set per direction remembers the sequence numbers seen (one RTP stream a
direction; `new_call()` forgets them), and a packet whose number is known is a
retransmission (a NACKed packet sent again) — the loss of first transmissions is what a
receiver's statistics count as lost before any recovery. The table is deleted by
`remove()` (or leaving the ``with`` block); the lab's teardown deletes the namespace anyway.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.support.netlab import Host, NetLab, NetLabError, list_namespaces

Direction = Literal["up", "down"]
DIRECTIONS: tuple[Direction, ...] = ("up", "down")
PATTERN_PACKETS = 12_000  # a loss pattern's period, in packets of one direction
PERMYRIAD = 10_000  # the kernel's random loss: numgen random mod 10000 < p * 10000
OVERLAY_PORT = 4433  # tests.support.netns_nodes.NODE_UDP_PORT
TABLE = "impair"
# RTP (version 2) and not RTCP: the first byte of the UDP payload is 10xxxxxx, the second's
# low seven bits (the payload type) are outside 64-95 (RFC 5761: RTCP's range under mux)
RTP_MATCH = "@th,64,2 2 @th,73,7 != 64-95"
RTP_SEQUENCE = "@th,80,16"  # the RTP header's sequence number
# a packet mark for "this RTP sequence number was seen before in this call": a
# retransmission (or a duplicate); nothing else in the lab marks packets
RESENT_MARK = "0x1"
FIRST = f"{RTP_MATCH} meta mark != {RESENT_MARK}"
_COUNTERS = ("passed", "dropped", "rtp_passed", "rtp_dropped", "first_passed", "first_dropped")


@dataclass(frozen=True)
class LossModel:
    """What to drop in one direction. Use `random_loss`, `bursty_loss` or `NO_LOSS`."""

    kind: Literal["none", "random", "bursty"]
    percent: float = 0.0
    seed: int | None = None  # None: the kernel's random (random only; not reproducible)
    mean_burst: float = 1.0  # bursty: mean length of a run of losses, in packets

    def describe(self) -> str:
        if self.kind == "none" or self.percent <= 0:
            return "no loss"
        source = "kernel random (no seed)" if self.seed is None else f"seed {self.seed}"
        burst = f", mean burst {self.mean_burst:g} packets" if self.kind == "bursty" else ""
        return f"{self.kind} {self.percent:g} %{burst}, {source}"

    def pattern(self, length: int = PATTERN_PACKETS) -> list[bool]:
        """Whether packet i (0 <= i < length) is dropped; needs a seed."""
        if self.kind == "none" or self.percent <= 0:
            return [False] * length
        if self.seed is None:
            raise ValueError(f"{self.describe()}: a pattern needs a seed")
        rng = random.Random(f"impair-{self.kind}-{self.seed}")
        loss = self.percent / 100
        if self.kind == "random":
            return [rng.random() < loss for _ in range(length)]
        leave = 1 / self.mean_burst  # bad -> good
        enter = loss * leave / (1 - loss)  # good -> bad: stationary share of bad = loss
        bad = rng.random() < loss
        out = []
        for _ in range(length):
            bad = rng.random() >= leave if bad else rng.random() < enter
            out.append(bad)
        return out


NO_LOSS = LossModel("none")


def random_loss(percent: float, seed: int | None) -> LossModel:
    """Independent loss of `percent` % of the packets (a seeded pattern, or kernel random)."""
    _check_percent(percent)
    return LossModel("random", percent, seed) if percent > 0 else NO_LOSS


def bursty_loss(percent: float, seed: int, mean_burst: float = 3.0) -> LossModel:
    """Gilbert–Elliott loss of `percent` % in bursts of `mean_burst` packets on average."""
    _check_percent(percent)
    if mean_burst < 1:
        raise ValueError(f"mean burst {mean_burst} < 1 packet")
    if percent > 0 and percent / 100 >= 1 - 1e-9:
        raise ValueError("bursty loss needs percent < 100")
    return LossModel("bursty", percent, seed, mean_burst) if percent > 0 else NO_LOSS


def _check_percent(percent: float) -> None:
    if not 0 <= percent <= 100:
        raise ValueError(f"loss {percent} % outside 0..100")


def set_elements(drops: Sequence[bool]) -> list[str]:
    """Set elements for the dropped indices: "i" or "i-j" for runs."""
    out: list[str] = []
    i = 0
    while i < len(drops):
        if not drops[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(drops) and drops[j + 1]:
            j += 1
        out.append(str(i) if i == j else f"{i}-{j}")
        i = j + 1
    return out


@dataclass(frozen=True)
class DirectionCount:
    """One direction's counters: packets and IP bytes passed and dropped (all the
    selection, and RTP alone)."""

    passed: int = 0
    dropped: int = 0
    passed_bytes: int = 0
    dropped_bytes: int = 0
    rtp_passed: int = 0
    rtp_dropped: int = 0
    first_passed: int = 0  # RTP first transmissions (a sequence number new in the call)
    first_dropped: int = 0

    @property
    def packets(self) -> int:
        return self.passed + self.dropped

    @property
    def ip_bytes(self) -> int:
        """Bytes of whole IP packets offered (passed + dropped): what the sender sent."""
        return self.passed_bytes + self.dropped_bytes

    @property
    def loss(self) -> float | None:
        """Dropped share of the selection's packets (None if none were seen)."""
        return self.dropped / self.packets if self.packets else None

    @property
    def rtp_loss(self) -> float | None:
        seen = self.rtp_passed + self.rtp_dropped
        return self.rtp_dropped / seen if seen else None

    @property
    def first_loss(self) -> float | None:
        """Dropped share of the first transmissions of RTP packets: the loss a receiver
        sees before any retransmission (what RTCP's cumulative loss counts)."""
        seen = self.first_passed + self.first_dropped
        return self.first_dropped / seen if seen else None

    @property
    def resent(self) -> int:
        """RTP packets with a sequence number seen before (retransmissions)."""
        return self.rtp_passed + self.rtp_dropped - self.first_passed - self.first_dropped

    def __sub__(self, other: DirectionCount) -> DirectionCount:
        return DirectionCount(
            self.passed - other.passed,
            self.dropped - other.dropped,
            self.passed_bytes - other.passed_bytes,
            self.dropped_bytes - other.dropped_bytes,
            self.rtp_passed - other.rtp_passed,
            self.rtp_dropped - other.rtp_dropped,
            self.first_passed - other.first_passed,
            self.first_dropped - other.first_dropped,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "packets": self.packets,
            "passed": self.passed,
            "dropped": self.dropped,
            "ip_bytes": self.ip_bytes,
            "loss": None if self.loss is None else round(self.loss, 5),
            "rtp_passed": self.rtp_passed,
            "rtp_dropped": self.rtp_dropped,
            "rtp_loss": None if self.rtp_loss is None else round(self.rtp_loss, 5),
            "first_passed": self.first_passed,
            "first_dropped": self.first_dropped,
            "first_loss": None if self.first_loss is None else round(self.first_loss, 5),
            "resent": self.resent,
        }


@dataclass(frozen=True)
class Counts:
    """Both directions' counters at one time (`at`, time.monotonic() of the caller)."""

    at: float
    up: DirectionCount = field(default_factory=DirectionCount)
    down: DirectionCount = field(default_factory=DirectionCount)

    def __sub__(self, other: Counts) -> Counts:
        return Counts(self.at - other.at, self.up - other.up, self.down - other.down)

    def direction(self, which: Direction) -> DirectionCount:
        return self.up if which == "up" else self.down

    def kbps(self, which: Direction) -> float | None:
        """Offered IP kbit/s of a direction over an interval (a difference of two counts)."""
        if self.at <= 0:
            return None
        return round(self.direction(which).ip_bytes * 8 / 1000 / self.at, 2)


class Impairment:
    """Loss on the router of `host` (behind a lab NAT) for UDP between it and `peer`.

    ``with Impairment(lab, host, peer) as imp: imp.set_loss(down=random_loss(5, 1))``.
    The rules are installed at construction (no loss yet, counters at 0)."""

    def __init__(
        self,
        lab: NetLab,
        host: Host,
        peer: str | None = None,
        *,
        exclude_ports: Iterable[int] = (OVERLAY_PORT,),
        table: str = TABLE,
        log: Callable[[str], None] | None = print,
    ) -> None:
        if host.router is None:
            raise NetLabError(f"{host.name!r} has no router: impairment needs a NATed host")
        self.lab = lab
        self.host = host
        self.router = host.router
        self.peer = peer
        self.exclude_ports = tuple(exclude_ports)
        self.table = table
        self.log = log
        self.models: dict[Direction, LossModel] = {"up": NO_LOSS, "down": NO_LOSS}
        self._installed = False
        self._nft(self._table_rules())
        self._installed = True

    def __enter__(self) -> Impairment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def selection(self, direction: Direction) -> str:
        """The nftables match of one direction's packets."""
        own, far = ("saddr", "daddr") if direction == "up" else ("daddr", "saddr")
        own_port = "sport" if direction == "up" else "dport"
        inside, outside = ("lan0", "wan0") if direction == "up" else ("wan0", "lan0")
        parts = [f'iifname "{inside}" oifname "{outside}"', f"ip {own} {self.host.addr}"]
        if self.peer is not None:
            parts.append(f"ip {far} {self.peer}")
        parts.append("meta l4proto udp")
        if self.exclude_ports:
            ports = ", ".join(str(p) for p in self.exclude_ports)
            parts.append(f"udp {own_port} != {{ {ports} }}")
        return " ".join(parts)

    def describe(self) -> str:
        peer = self.peer or "any address"
        return (
            f"{self.router.name}: UDP of {self.host.name} ({self.host.addr}) with {peer}"
            f" except its ports {list(self.exclude_ports)}: up {self.models['up'].describe()};"
            f" down {self.models['down'].describe()}"
        )

    def _table_rules(self) -> str:
        t = self.table
        counters = "".join(f"    counter {d}_{c} {{}}\n" for d in DIRECTIONS for c in _COUNTERS)
        counters += "".join(
            f"    set {d}_sequences {{ typeof {RTP_SEQUENCE}; size 65536; flags dynamic; }}\n"
            for d in DIRECTIONS
        )
        chains = ""
        for d in DIRECTIONS:
            chains += (
                f"    chain {d} {{\n"
                f"    }}\n"
                f"    chain {d}_drop {{\n"
                f'        counter name "{d}_dropped"\n'
                f'        {RTP_MATCH} counter name "{d}_rtp_dropped"\n'
                f'        {FIRST} counter name "{d}_first_dropped"\n'
                f"        drop\n"
                f"    }}\n"
            )
        hooks = "".join(f"        {self.selection(d)} jump {d}\n" for d in DIRECTIONS)
        return (
            f"table inet {t} {{\n{counters}{chains}"
            f"    chain forward {{\n"
            f"        type filter hook forward priority filter - 10; policy accept;\n"
            f"{hooks}    }}\n}}\n"
            + self._chain_rules("up", NO_LOSS)
            + self._chain_rules("down", NO_LOSS)
        )

    def _chain_rules(self, d: Direction, model: LossModel) -> str:
        """Replace the chain of direction `d` (one nftables transaction with the rest)."""
        t = self.table
        seen = f"@{d}_sequences"
        lines = [
            f"flush chain inet {t} {d}",
            f"add rule inet {t} {d} {RTP_MATCH} {RTP_SEQUENCE} {seen} meta mark set {RESENT_MARK}",
            f"add rule inet {t} {d} {FIRST} add {seen} {{ {RTP_SEQUENCE} }}",
        ]
        if model.kind != "none" and model.percent > 0:
            if model.seed is None:
                threshold = round(model.percent / 100 * PERMYRIAD)
                decide = f"numgen random mod {PERMYRIAD} < {threshold}"
            else:
                elements = set_elements(model.pattern())
                decide = f"numgen inc mod {PATTERN_PACKETS} {{ {', '.join(elements)} }}"
            lines.append(f"add rule inet {t} {d} {decide} jump {d}_drop")
        lines.append(f'add rule inet {t} {d} counter name "{d}_passed"')
        lines.append(f'add rule inet {t} {d} {RTP_MATCH} counter name "{d}_rtp_passed"')
        lines.append(f'add rule inet {t} {d} {FIRST} counter name "{d}_first_passed"')
        return "\n".join(lines) + "\n"

    def _nft(self, script: str) -> None:
        self.lab.exec(self.router, ["nft", "-f", "-"], input=script, timeout=10.0)

    def set_loss(
        self, up: LossModel | None = None, down: LossModel | None = None, *, quiet: bool = False
    ) -> None:
        """Switch loss per direction (None: leave that direction as it is); logs the models
        and their seeds unless `quiet`."""
        script = ""
        changes: list[tuple[Direction, LossModel | None]] = [("up", up), ("down", down)]
        for d, model in changes:
            if model is not None:
                script += self._chain_rules(d, model)
                self.models[d] = model
        if script:
            self._nft(script)
            if self.log is not None and not quiet:
                self.log(f"impair: {self.describe()}")

    def new_call(self) -> None:
        """Forget the RTP sequence numbers seen (call it before each call), so that the
        next call's first transmissions count as such."""
        flush = "".join(f"flush set inet {self.table} {d}_sequences\n" for d in DIRECTIONS)
        self._nft(flush)

    def clear(self) -> None:
        """No loss either way (the counters go on)."""
        self.set_loss(NO_LOSS, NO_LOSS, quiet=True)

    def counts(self, at: float | None = None) -> Counts:
        """The counters now (`at`: the time to stamp them with, default time.monotonic())."""
        listing = self.lab.exec(
            self.router, ["nft", "-j", "list", "counters", "table", "inet", self.table]
        )
        stamp = time.monotonic() if at is None else at
        found: dict[str, dict[str, Any]] = {}
        for item in json.loads(listing)["nftables"]:
            counter = item.get("counter")
            if counter is not None and counter.get("table") == self.table:
                found[counter["name"]] = counter

        def one(d: str) -> DirectionCount:
            def get(name: str, key: str = "packets") -> int:
                return int(found[f"{d}_{name}"][key])

            return DirectionCount(
                get("passed"),
                get("dropped"),
                get("passed", "bytes"),
                get("dropped", "bytes"),
                get("rtp_passed"),
                get("rtp_dropped"),
                get("first_passed"),
                get("first_dropped"),
            )

        return Counts(stamp, one("up"), one("down"))

    def remove(self) -> None:
        """Delete the table (no loss, no counters). Safe to call again."""
        if not self._installed:
            return
        self._installed = False
        try:
            self.lab.exec(self.router, ["nft", "delete", "table", "inet", self.table])
        except NetLabError:
            if self.router.ns in list_namespaces():
                raise  # else the lab is gone already, and the table with it
