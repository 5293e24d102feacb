"""What this node gives the network, exactly: `peerphone sharing` and `GET /v1/sharing`.

Two categories of traffic, each up (sent by this node) and down (received):

* ``directory_signaling``: every datagram of the overlay's QUIC links (the UDP port of
  `--listen`, and the TCP carrier of `--tcp-listen`) sent or received while this node is a
  supernode: membership and hand-overs with the other supernodes, its clients' attach,
  publish, lookup and watch traffic, the lookups and stores of other supernodes' clients on
  the replicas it holds, call signaling and messages it routes, keep-alives. The node's own
  user's share (its presence and lookups, the signaling of its own calls) rides the same
  QUIC packets and cannot be told apart on the wire: it is included. While the node is a
  client nothing is counted here (its overlay traffic is its own).
* ``relay``: everything the STUN/TURN relay's sockets move: its UDP port (`--turn-port`:
  Binding, Allocate, Refresh, permissions, ChannelData and Send/Data indications from and to
  clients), every relayed socket's datagrams to and from peers, and TURN over TCP.

Bytes are whole IP packets, as a firewall or nftables counts them: each UDP datagram's
payload plus its IP and UDP headers (`IPV4_UDP_HEADER_BYTES`, `IPV6_UDP_HEADER_BYTES`, by
the family of the node's address). Over TCP (carrier, TURN over TCP) the bytes written to
and read from the stream, framing included, without TCP/IP headers and ACKs (a few percent
more on the wire). Not counted anywhere: the control API (loopback), the media of this
node's own calls (its user's, not shared), DNS. `tests/netns/test_sharing_exact.py`
compares both categories with nftables' counts at the supernode (within 2 %).

"Now" is the average of the last `RATE_WINDOW_S` whole seconds. Today and this month are
UTC days and months, kept in ``DIR/sharing.json`` with the last role changes, saved every
`SAVE_INTERVAL_S` and at shutdown (a crash loses at most that much). Counters are sampled
every `SAMPLE_INTERVAL_S` and on every read, so two reads bracket exactly what the sockets
moved in between; a role change is attributed to the second it was noticed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peerphone.daemon.datadir import DataDir, write_atomic
from peerphone.daemon.views import StatusSource
from peerphone.nat.limits import RATE_WINDOW_S, RateMeter

log = logging.getLogger("peerphone.sharing")

DIRECTORY = "directory_signaling"
RELAY = "relay"
CATEGORIES = (DIRECTORY, RELAY)
IPV4_UDP_HEADER_BYTES = 20 + 8
IPV6_UDP_HEADER_BYTES = 40 + 8
SAMPLE_INTERVAL_S = 1.0  # counters are read this often (and on every read of the view)
SAVE_INTERVAL_S = 30.0  # DIR/sharing.json is written this often, and at shutdown
# the CPU cap is judged over a minute: a burst (a flood of handshakes, which shedding
# clients would not stop) must not make the node turn honest clients away
CPU_CAP_WINDOW_S = 60
EVENT_INTERVAL_S = 5.0  # a "Sharing" event to the event stream's listeners, this often
MAX_ROLE_CHANGES = 10  # kept (and shown), newest first
MAX_REASON_CHARS = 200  # of a role change's reason, as kept
LEDGER_FILE = "sharing.json"
MAX_LEDGER_BYTES = 64 * 1024
LEDGER_VERSION = 1
COUNTED = {
    DIRECTORY: "every overlay datagram (QUIC over UDP, and over the TCP carrier) sent or "
    "received while this node is a supernode: membership, hand-overs, clients' attach, "
    "publish, lookups and watches, replicas' stores, call signaling, messages, keep-alives "
    "(this node's own user's share rides the same packets and is included)",
    RELAY: "everything the STUN/TURN relay's sockets move: its UDP port (requests, answers, "
    "ChannelData and Send/Data to and from clients), the relayed sockets' datagrams to and "
    "from peers, TURN over TCP",
}
CAP_COUNTS = {  # what each bandwidth cap counts and how it holds (daemon/duty.py)
    DIRECTORY: "what the overlay sends (over a 10-s budget: shed duty)",
    RELAY: "what the relay sends (packets over it dropped; new calls refused at 80 %)",
}
BYTES = (
    "whole IP packets: UDP payload plus IP and UDP headers (28 bytes per IPv4 datagram, 48 "
    "per IPv6), as a firewall counts them; over TCP the stream bytes (no TCP/IP headers)"
)


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def utc_month(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


@dataclass(slots=True)
class Flow:
    """Bytes up (sent by this node) and down (received)."""

    up: int = 0
    down: int = 0

    def view(self) -> dict[str, int]:
        return {"up_bytes": self.up, "down_bytes": self.down}


@dataclass(frozen=True, slots=True)
class RoleChange:
    """This node became a supernode or a client at `at` (unix seconds), and why."""

    at: float
    supernode: bool
    reason: str

    def view(self) -> dict[str, Any]:
        role = "supernode" if self.supernode else "client"
        return {"at": self.at, "role": role, "reason": self.reason}


class Ledger:
    """Bytes shared per category today and this month (UTC), and the last role changes:
    the part of sharing that survives a restart. Every method takes `now` (unix seconds)."""

    def __init__(self, now: float) -> None:
        self.day = utc_day(now)
        self.month = utc_month(now)
        self.today = {c: Flow() for c in CATEGORIES}
        self.this_month = {c: Flow() for c in CATEGORIES}
        self.roles: deque[RoleChange] = deque(maxlen=MAX_ROLE_CHANGES)  # newest first

    def roll(self, now: float) -> None:
        """Start a new day (and month) when `now` is in another one than the totals."""
        day, month = utc_day(now), utc_month(now)
        if day != self.day:
            self.day, self.today = day, {c: Flow() for c in CATEGORIES}
        if month != self.month:
            self.month, self.this_month = month, {c: Flow() for c in CATEGORIES}

    def add(self, category: str, up: int, down: int, now: float) -> None:
        self.roll(now)
        for flows in (self.today, self.this_month):
            flows[category].up += up
            flows[category].down += down

    def role_changed(self, change: RoleChange) -> None:
        self.roles.appendleft(change)

    def to_json(self) -> dict[str, Any]:
        def flows(table: dict[str, Flow]) -> dict[str, list[int]]:
            return {c: [f.up, f.down] for c, f in table.items()}

        return {
            "version": LEDGER_VERSION,
            "day": self.day,
            "month": self.month,
            "today": flows(self.today),
            "this_month": flows(self.this_month),
            "roles": [[r.at, r.supernode, r.reason] for r in self.roles],
        }

    @classmethod
    def from_json(cls, data: object, now: float) -> Ledger:
        """A saved ledger, rolled over to `now`; `ValueError` if it is not one."""
        if not isinstance(data, dict) or data.get("version") != LEDGER_VERSION:
            raise ValueError(f"not a version {LEDGER_VERSION} sharing ledger")
        ledger = cls(now)
        day, month = data.get("day"), data.get("month")
        if not isinstance(day, str) or not isinstance(month, str):
            raise ValueError("day and month must be strings")
        ledger.day, ledger.month = day, month
        for key, table in (("today", ledger.today), ("this_month", ledger.this_month)):
            saved = data.get(key)
            if not isinstance(saved, dict):
                raise ValueError(f"{key}: an object expected")
            for category in CATEGORIES:
                pair = saved.get(category, [0, 0])
                if not _counts(pair):
                    raise ValueError(f"{key}.{category}: two byte counts expected")
                table[category] = Flow(pair[0], pair[1])
        roles = data.get("roles", [])
        if not isinstance(roles, list):
            raise ValueError("roles: a list expected")
        for item in roles[:MAX_ROLE_CHANGES]:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], int | float)):
                raise ValueError("roles: [at, supernode, reason] expected")
            ledger.roles.append(RoleChange(float(item[0]), bool(item[1]), str(item[2])))
        ledger.roll(now)
        return ledger


def _counts(pair: object) -> bool:
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)
    )


def load_ledger(path: Path, now: float) -> Ledger:
    """The ledger saved at `path`; a fresh one if there is none. A damaged file is set
    aside (``.bad``) and said in the log: the node starts counting from zero."""
    try:
        if path.stat().st_size > MAX_LEDGER_BYTES:
            raise ValueError(f"larger than {MAX_LEDGER_BYTES} bytes")
        return Ledger.from_json(json.loads(path.read_bytes()), now)
    except FileNotFoundError:
        return Ledger(now)
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            path.replace(path.with_suffix(".bad"))
        log.warning("sharing totals %s unreadable (%s): set aside, counting from zero", path, exc)
        return Ledger(now)


def save_ledger(path: Path, ledger: Ledger) -> None:
    write_atomic(path, json.dumps(ledger.to_json()).encode(), private=False)


class SharingMeter:
    """Turns cumulative counter readings (IP bytes per category, `Flow`) into what was
    shared: the ledger's today and month, totals since start, and the rate now. A reading's
    growth since the last one is counted when its category counts at that moment."""

    def __init__(self, ledger: Ledger, window_s: int = RATE_WINDOW_S) -> None:
        self.ledger = ledger
        self.window_s = window_s
        self.last = {c: Flow() for c in CATEGORIES}  # the counters start at zero with us
        self.since_start = {c: Flow() for c in CATEGORIES}
        self.rates = {c: (RateMeter(window_s), RateMeter(window_s)) for c in CATEGORIES}

    def update(
        self, readings: Mapping[str, Flow], counting: Mapping[str, bool], now: float
    ) -> None:
        for category, reading in readings.items():
            last = self.last[category]
            # a counter that went back (cannot happen: ours only grow) restarts from zero
            up = reading.up - last.up if reading.up >= last.up else reading.up
            down = reading.down - last.down if reading.down >= last.down else reading.down
            self.last[category] = Flow(reading.up, reading.down)
            if not counting.get(category, False) or not (up or down):
                continue
            self.ledger.add(category, up, down, now)
            total = self.since_start[category]
            total.up += up
            total.down += down
            up_meter, down_meter = self.rates[category]
            up_meter.add(up, now)
            down_meter.add(down, now)

    def rate(self, category: str, now: float) -> tuple[float, float]:
        """Bytes/s up and down over the last `window_s` whole seconds."""
        up_meter, down_meter = self.rates[category]
        return up_meter.rate(now), down_meter.rate(now)


class SharingSource(StatusSource, Protocol):
    """What the sharing view reads of the node's service (the daemon's NodeService): what
    status reads, its data directory and its event stream's listeners."""

    @property
    def data(self) -> DataDir: ...
    @property
    def listeners(self) -> set[asyncio.Queue[dict[str, Any]]]: ...
    def broadcast(self, event: dict[str, Any]) -> None: ...


def header_bytes(host: str) -> int:
    """IP + UDP header bytes of one datagram from a socket bound to `host`."""
    return IPV6_UDP_HEADER_BYTES if ":" in host else IPV4_UDP_HEADER_BYTES


def cpu_seconds() -> float:
    """CPU time this process has used, user and system, all threads (from the kernel)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Sharing:
    """One node's sharing: its meter and ledger, sampled every second while `run` runs,
    the view, and the role changes (`role_changed`)."""

    def __init__(
        self,
        service: SharingSource,
        clock: Callable[[], float] = time.time,
        cpu: Callable[[], float] = cpu_seconds,
    ) -> None:
        self.service = service
        self.clock = clock
        self.cpu = cpu
        self._meter: SharingMeter | None = None  # once the ledger is loaded
        self._cpu_samples: deque[tuple[float, float]] = deque(maxlen=CPU_CAP_WINDOW_S + 1)
        self._roles_seen = False  # a role change recorded by this run (older ones: saved)
        # called with the time after each second's sample (the duty keeper: the caps)
        self.after_sample: Callable[[float], None] = lambda now: None
        self.duty_view: Callable[[float], dict[str, Any] | None] = lambda now: None

    @property
    def path(self) -> Path:
        return self.service.data.path / LEDGER_FILE

    @property
    def meter(self) -> SharingMeter:
        if self._meter is None:
            self._meter = SharingMeter(load_ledger(self.path, self.clock()))
        return self._meter

    def role_changed(self, supernode: bool, reason: str) -> None:
        """Keep a role change (the first one of this run, even if the same as the last
        one saved: it says when this run began)."""
        roles = self.meter.ledger.roles
        change = RoleChange(self.clock(), supernode, reason[:MAX_REASON_CHARS])
        last = (roles[0].supernode, roles[0].reason) if roles else None
        if self._roles_seen and last == (change.supernode, change.reason):
            return
        self._roles_seen = True
        self.meter.ledger.role_changed(change)

    def readings(self) -> dict[str, Flow]:
        """Cumulative IP bytes per category, from the runtime's and the relay's counters."""
        runtime = self.service.runtime
        stats, wire = runtime.stats, self.service.relay.wire
        header = header_bytes(runtime.address[0] if runtime.address else "0.0.0.0")
        overlay = Flow(
            stats["udp_bytes_out"] + header * stats["udp_datagrams_out"] + stats["tcp_bytes_out"],
            stats["udp_bytes_in"] + header * stats["udp_datagrams_in"] + stats["tcp_bytes_in"],
        )
        relay = Flow(
            wire.udp_out + header * wire.udp_out_datagrams + wire.tcp_out,
            wire.udp_in + header * wire.udp_in_datagrams + wire.tcp_in,
        )
        return {DIRECTORY: overlay, RELAY: relay}

    def sample(self) -> float:
        """Fold what the counters moved since the last sample in; returns the time."""
        now = self.clock()
        counting = {DIRECTORY: self.service.runtime.core.is_supernode, RELAY: True}
        self.meter.update(self.readings(), counting, now)
        return now

    def save(self) -> None:
        try:
            save_ledger(self.path, self.meter.ledger)
        except OSError as exc:
            log.warning("could not save the sharing totals: %s", exc)

    async def run(self) -> None:
        """Sample every second, save now and then, tell the event stream's listeners;
        sample and save once more when cancelled (the node stops)."""
        service = self.service
        if not service.runtime.core.is_supernode:  # a supernode's RoleChanged is on its way
            self.role_changed(False, service.role_reason)
        next_save = next_event = time.monotonic()
        try:
            while True:
                await asyncio.sleep(SAMPLE_INTERVAL_S)
                now = self.sample()
                mono = time.monotonic()
                self._cpu_samples.append((mono, self.cpu()))
                try:
                    self.after_sample(now)
                except Exception:  # a bug in the caps' bookkeeping must not stop sharing
                    service.runtime.stats["internal_errors"] += 1
                    log.exception("supernode duty failed")
                if mono >= next_event and service.listeners:
                    next_event = mono + EVENT_INTERVAL_S
                    service.broadcast({"type": "Sharing", **self.view()})
                if mono >= next_save:
                    next_save = mono + SAVE_INTERVAL_S
                    self.save()
        finally:
            self.sample()
            self.save()

    def cpu_percent(self, window_s: int = RATE_WINDOW_S) -> float | None:
        """CPU the node process used, in percent of one core, over the last `window_s`
        seconds (from getrusage: user and system, all threads); None before two samples."""
        samples = list(self._cpu_samples)[-(window_s + 1) :]
        if len(samples) < 2 or (window_s > RATE_WINDOW_S and len(samples) < window_s + 1):
            return None  # a long window judges only once it is full (not the start-up)
        (then, before), (last, used) = samples[0], samples[-1]
        return 100 * (used - before) / (last - then) if last > then else None

    def _cpu_view(self) -> dict[str, Any]:
        percent = self.cpu_percent()
        return {
            "process_s": round(self.cpu(), 2),
            "now_percent": None if percent is None else round(percent, 1),  # of one core
            "cap_percent": self.service.config.share.cpu_percent,
            "cap_enforced": True,  # by the shedding ladder (daemon/duty.py)
        }

    def view(self) -> dict[str, Any]:
        """Everything `peerphone sharing --json` shows (see the module docstring)."""
        now = self.sample()
        service = self.service
        meter = self.meter
        ledger = meter.ledger
        node = service.runtime.core.snapshot()
        sn = node.supernode
        relay = service.relay.sharing()
        share = service.config.share
        categories = {}
        for category in CATEGORIES:
            up, down = meter.rate(category, now)
            cap_kbps = share.up_kbps if category == RELAY else share.directory_kbps
            categories[category] = {
                "counted": COUNTED[category],
                "now": {"up_bytes_per_s": round(up, 1), "down_bytes_per_s": round(down, 1)},
                "cap": {
                    "bytes_per_s": cap_kbps * 1000 / 8,
                    "counts": CAP_COUNTS[category],
                    "now_bytes_per_s": round(up, 1),
                },
                # the volume caps count both categories together: see "volume"
                "today": {**ledger.today[category].view(), "cap_bytes": None},
                "month": {**ledger.this_month[category].view(), "cap_bytes": None},
                "since_start": meter.since_start[category].view(),
            }
        policy = service.policy
        return {
            "ts": now,
            "role": "supernode" if sn is not None else "client",
            "role_reason": service.role_reason,
            "role_changes": [change.view() for change in ledger.roles],
            "consented": service.config.role != "client"
            and share.max_clients > 0
            and policy is None,
            "managed": policy.view() if policy is not None else None,
            "bytes": BYTES,
            "window_s": meter.window_s,
            "day": ledger.day,
            "month": ledger.month,
            "categories": categories,
            "volume": {  # both categories, both ways, against the day's and month's caps
                "today_bytes": sum(f.up + f.down for f in ledger.today.values()),
                "today_cap_bytes": share.day_mb * 1_000_000 or None,
                "month_bytes": sum(f.up + f.down for f in ledger.this_month.values()),
                "month_cap_bytes": share.month_mb * 1_000_000 or None,
            },
            "duty": self.duty_view(now),
            "clients_served": sn.clients_served if sn is not None else 0,
            "backup_for": sn.backup_for if sn is not None else 0,
            "max_clients": service.config.share.max_clients,
            "records_held": sn.records_held if sn is not None else 0,
            "relay": {
                "running": relay is not None,
                "draining": relay is not None and relay["draining"],  # calls in progress only
                "problem": service.relay.failure or None,
                "urls": relay["urls"] if relay is not None else [],
                "sessions": relay["per_allocation"] if relay is not None else [],
            },
            "cpu": self._cpu_view(),
        }
