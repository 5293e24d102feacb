"""What a node measured it could give the tier: the `Capacity` it reports, and its veto.

    DIR/sessions.json   the node's recent sessions: [[start, last seen], ...] (Unix s),
                        and the highest upload rate it measured (kbit/s, 10-s windows)

Uptime is the median length of the node's recent sessions (the client core adds how long it
has been up now); upload is the best 10-s rate of the bytes the node really sent (its QUIC
links over UDP and TCP, and its relay); spare CPU is the machine's cores minus its load
average, not counting the node's own CPU time (what it already gives is not the owner's
load). Each is capped by what the owner agreed to give (`[share]`), so a declaration never
raises a measurement. While the owner is in a call the node vetoes a promotion and reports
no spare CPU (the tier does not even ask); stepping down when busy is `[share]`'s job.

None of it is trusted by the tier for promotion (docs/decisions/0019): reachability is
proven by dial-backs and the rank is what the promoter saw; these numbers can only keep
a node out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerphone.daemon.config import ShareConfig
from peerphone.daemon.datadir import write_atomic
from peerphone.identity import NodeId, short
from peerphone.overlay.events import PromotionChecked
from peerphone.records import Capacity
from peerphone.runtime.node_runtime import NodeRuntime

log = logging.getLogger(__name__)

SESSIONS_FILE = "sessions.json"
MAX_SESSIONS = 50  # sessions remembered (the oldest is forgotten first)
MAX_SESSIONS_BYTES = 64 * 1024  # a larger file is damaged: set aside and started afresh
UPTIME_SESSIONS = 20  # the median of the last this many sessions is the uptime
SAVE_EVERY_S = 60.0  # how often the current session's "last seen" is written
RATE_WINDOW_S = 10.0  # upload is measured over windows this long
MAX_SESSION_S = 366 * 86_400.0  # a longer session in the file is damage, not history


@dataclass(slots=True)
class Sessions:
    """The node's session history (DIR/sessions.json)."""

    spans: list[list[float]] = field(default_factory=list)  # [start, last seen]
    peak_up_kbps: int = 0

    @classmethod
    def load(cls, path: Path) -> Sessions:
        """The history, or an empty one (a damaged file is set aside with a warning)."""
        if not path.exists():
            return cls()
        try:
            if path.stat().st_size > MAX_SESSIONS_BYTES:
                raise ValueError(f"larger than {MAX_SESSIONS_BYTES} bytes")
            data = json.loads(path.read_bytes())
            spans = [
                [float(a), float(b)]
                for a, b in data["sessions"]
                if 0 <= float(a) <= float(b) <= float(a) + MAX_SESSION_S
            ]
            peak = int(data["peak_up_kbps"])
            if not 0 <= peak <= 10**8:
                raise ValueError("peak_up_kbps out of range")
            return cls(spans[-MAX_SESSIONS:], peak)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("%s is damaged (%s): session history starts afresh", path, exc)
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + ".damaged"))
            return cls()

    def save(self, path: Path) -> None:
        data = {"sessions": self.spans[-MAX_SESSIONS:], "peak_up_kbps": self.peak_up_kbps}
        write_atomic(path, json.dumps(data).encode(), private=True)

    def begin(self, now: float) -> None:
        self.spans = [*self.spans, [now, now]][-MAX_SESSIONS:]

    def touch(self, now: float) -> None:
        if self.spans:
            self.spans[-1][1] = max(self.spans[-1][1], now)

    def typical_uptime_s(self) -> int:
        """The median length of the last completed sessions (0 without history)."""
        done = [end - start for start, end in self.spans[:-1][-UPTIME_SESSIONS:]]
        return int(statistics.median(done)) if done else 0


class UploadMeter:
    """The best upload rate over `RATE_WINDOW_S` windows, from a cumulative byte counter."""

    def __init__(self, peak_kbps: int = 0) -> None:
        self.peak_kbps = peak_kbps
        self._start: tuple[float, int] | None = None

    def sample(self, now: float, bytes_out: int) -> None:
        if self._start is None or bytes_out < self._start[1]:
            self._start = (now, bytes_out)
            return
        elapsed = now - self._start[0]
        if elapsed >= RATE_WINDOW_S:
            kbps = int((bytes_out - self._start[1]) * 8 / elapsed / 1000)
            self.peak_kbps = max(self.peak_kbps, kbps)
            self._start = (now, bytes_out)


def spare_cpu_score(own_cores: float = 0.0) -> int:
    """Spare CPU in hundredths of a core: the cores minus the 1-minute load average, whose
    share that is our own (`own_cores`) is not counted."""
    cores = os.cpu_count() or 1
    others = max(0.0, os.getloadavg()[0] - own_cores)
    return max(0, int((cores - others) * 100))


class Measurements:
    """The node's own measurements, kept in its data directory."""

    def __init__(self, data_dir: Path, in_call: Callable[[], bool], now: float) -> None:
        """A session begins now (the node starts): remembered at once."""
        self.path = data_dir / SESSIONS_FILE
        self.in_call = in_call
        self.sessions = Sessions.load(self.path)
        self.upload = UploadMeter(self.sessions.peak_up_kbps)
        self._saved_at = float("-inf")
        self.sessions.begin(now)
        self.save(now)
        self._cpu_at: tuple[float, float] | None = None  # (now, our process CPU time)
        self.own_cores = 0.0  # the node's own CPU use, in cores, over the last tick

    def tick(self, now: float, bytes_out: int) -> None:
        """Called every few seconds: upload sampled, the session's end moved on."""
        self.upload.sample(now, bytes_out)
        cpu = time.process_time()
        if self._cpu_at is not None and now > self._cpu_at[0]:
            self.own_cores = max(0.0, (cpu - self._cpu_at[1]) / (now - self._cpu_at[0]))
        self._cpu_at = (now, cpu)
        self.sessions.touch(now)
        if now - self._saved_at >= SAVE_EVERY_S:
            self.save(now)

    def save(self, now: float) -> None:
        self.sessions.peak_up_kbps = self.upload.peak_kbps
        self._saved_at = now
        try:
            self.sessions.save(self.path)
        except OSError as exc:
            log.warning("could not save the session history: %s", exc)

    def veto(self) -> str:
        """Why the node would not serve now ("" if it would)."""
        return "the owner is in a call" if self.in_call() else ""

    def report(self, runtime: NodeRuntime | None, share: ShareConfig) -> Capacity:
        """`capacity` with the owner's caps and the ports the runtime listens on."""
        udp = runtime.address[1] if runtime and runtime.address else 0
        tcp = runtime.tcp_address[1] if runtime and runtime.tcp_address else 0
        return self.capacity(share.up_kbps, share.cpu_percent, udp, tcp)

    def capacity(self, up_kbps_cap: int, cpu_percent_cap: int, udp: int, tcp: int) -> Capacity:
        """What we report: each measurement capped by what the owner agreed to give."""
        cpu = 0 if self.veto() else min(spare_cpu_score(self.own_cores), cpu_percent_cap)
        up = min(self.upload.peak_kbps, up_kbps_cap)
        return Capacity(
            reachable=False,  # never claimed: the tier dials us back
            uptime_s=self.sessions.typical_uptime_s(),
            up_kbps=up,
            down_kbps=up,
            cpu_score=cpu,
            udp_port=udp,
            tcp_port=tcp,
        )


def log_promotion_check(event: PromotionChecked, out: dict[str, Any]) -> None:
    """Our supernode role dialled a candidate back: say whom, and what came of it."""
    out.update(node=event.node.hex(), promoted=event.promoted, reason=event.reason)
    log.info(
        "candidate %s %s (%s)",
        short(NodeId(event.node)),
        "promoted: reachability proven" if event.promoted else "not promoted",
        event.reason,
        extra={"fields": {"candidate": event.node.hex(), "promoted": event.promoted}},
    )
