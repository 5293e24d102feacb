"""What each simulated machine can give, what its owner consents to give, and what a
measurement of it finds.

Ground truth per machine, drawn from the run's seed (a stream of its own, in user order):
- reachability: most machines sit behind a NAT (cone or symmetric); only `public_fraction`
  are publicly reachable, and only a dial-back proves it;
- upstream bandwidth: log-normal; spare CPU: uniform;
- a diurnal busy pattern: the owner uses the machine part of the day (office or evening
  hours in its own time zone), or never (a machine left alone);
- uptime history (the node's session history in its data dir): machines left on run for
  days, the others for hours; machines left on also have longer sessions in the run;
- the owner's consent, `[share]`: caps on signaling + directory bandwidth, relay bandwidth,
  bytes per day and clients, and `only_when_idle`; `max_clients = 0` means never a supernode.

`Machine.measured()` is what the node announces when it attaches: reachability as the
dial-back proved it, the bandwidth a probe measured (never more than the real one) bounded
by what the owner consents to give, the uptime history and the spare CPU. A liar's
`declared()` claims much more; the election never sees it unless the run sets
`trust_declared` (a what-if that shows what measuring is worth).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from peerphone.overlay.election import ElectionConfig, eligible
from peerphone.records import Capacity

PUBLIC, CONE, SYMMETRIC = "public", "cone", "symmetric"
DAY_S = 86_400.0
HOUR_S = 3600.0

# (value, weight): what owners consent to ([share]); signaling + directory and relay in
# kbit/s of upload, bytes per day of both, primary clients (0: never a supernode)
SIGNALING_KBPS = ((256, 0.2), (512, 0.25), (1024, 0.3), (2048, 0.15), (4096, 0.1))
RELAY_KBPS = ((0, 0.15), (200, 0.3), (500, 0.3), (2000, 0.25))
BYTES_PER_DAY = ((200_000_000, 0.2), (1_000_000_000, 0.4), (5_000_000_000, 0.4))
MAX_CLIENTS = ((0, 0.05), (150, 0.2), (300, 0.35), (600, 0.4))
# when the owner uses the machine: (pattern, weight, local start hour, spread h, hours busy)
BUSY_PATTERNS = (
    ("never", 0.25, 0.0, 0.0, (0.0, 0.0)),
    ("office", 0.4, 8.0, 2.0, (8.0, 10.0)),
    ("evening", 0.35, 18.0, 2.0, (3.0, 5.0)),
)
LIAR_CLAIM = Capacity(True, 30 * 86_400, 100_000, 100_000, 400)  # what a liar declares


@dataclass(frozen=True, slots=True)
class Caps:
    """The owner's consent: what this machine gives as a supernode, at most."""

    signaling_kbps: int  # signaling + directory upload
    relay_kbps: int  # relayed media upload (0: never relays)
    bytes_per_day: int  # both together, per day (persisted across restarts)
    max_clients: int  # primary clients (0: never a supernode)
    only_when_idle: bool  # step down while the owner is in a call or uses the machine


# the bootstrap supernodes are the project's own machines, not a user's spare capacity
INFRASTRUCTURE_CAPS = Caps(10_000, 10_000, 10**12, 600, False)


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    """The distributions the population's machines are drawn from."""

    public_fraction: float = 0.2  # publicly reachable; the rest sit behind a NAT
    symmetric_fraction: float = 0.15  # behind a symmetric NAT (of all machines)
    up_kbps_median: float = 4000.0  # upstream bandwidth, log-normal
    up_kbps_sigma: float = 1.0
    cpu_score: tuple[int, int] = (20, 300)  # spare CPU, hundredths of a core (uniform)
    always_on_fraction: float = 0.35  # machines left on: long sessions, days of history
    only_when_idle_fraction: float = 0.5
    # the owners' caps, (value, weight) each
    signaling_kbps: tuple[tuple[int, float], ...] = SIGNALING_KBPS
    relay_kbps: tuple[tuple[int, float], ...] = RELAY_KBPS
    bytes_per_day: tuple[tuple[int, float], ...] = BYTES_PER_DAY
    max_clients: tuple[tuple[int, float], ...] = MAX_CLIENTS
    liar_fraction: float = 0.0  # machines that declare far more than they have
    trust_declared: bool = False  # what-if: nodes announce their declarations, unmeasured

    def __post_init__(self) -> None:
        for name in (
            "public_fraction",
            "symmetric_fraction",
            "always_on_fraction",
            "only_when_idle_fraction",
            "liar_fraction",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.public_fraction + self.symmetric_fraction > 1.0:
            raise ValueError("public_fraction + symmetric_fraction must be <= 1")
        if self.up_kbps_median <= 0 or self.up_kbps_sigma < 0:
            raise ValueError("up_kbps_median must be positive and up_kbps_sigma >= 0")
        for name in ("signaling_kbps", "relay_kbps", "bytes_per_day", "max_clients"):
            choices = getattr(self, name)
            if not choices or any(v < 0 or w <= 0 for v, w in choices):
                raise ValueError(f"{name}: (value >= 0, weight > 0) pairs, at least one")
        if any(v <= 0 for v, _ in self.signaling_kbps + self.bytes_per_day):
            raise ValueError("signaling_kbps and bytes_per_day caps must be positive")


@dataclass(slots=True)
class Machine:
    """One user's machine: ground truth, consent, and the state a run changes."""

    index: int
    nat: str
    up_kbps: int  # real upstream
    probe_factor: float  # a bandwidth probe finds this share of it (<= 1)
    cpu_score: int
    tz_s: float  # local time = (t + tz_s) mod one day
    busy_from_s: float  # local time the owner starts using the machine
    busy_s: float  # how long, each day (0: never busy)
    always_on: bool
    history_uptime_s: int  # the node's own session history (data dir)
    caps: Caps
    liar: bool = False
    trust_declared: bool = False
    in_calls: int = 0  # the owner's calls in progress (kept by the call load)
    resting_until: float = 0.0  # stepped down for a cap: not a candidate before then

    @property
    def public(self) -> bool:
        return self.nat == PUBLIC

    def busy_at(self, t: float) -> bool:
        """Whether the owner uses the machine at run time `t` (its diurnal pattern)."""
        if self.busy_s <= 0.0:
            return False
        since = (t + self.tz_s - self.busy_from_s) % DAY_S
        return since < self.busy_s

    def busy_changes(self, start: float, end: float) -> list[float]:
        """The run times in [start, end) at which the owner starts or stops using it."""
        if self.busy_s <= 0.0:
            return []
        first = (self.busy_from_s - self.tz_s) % DAY_S  # a start, in run time, in [0, day)
        times: list[float] = []
        day = math.floor((start - first) / DAY_S) - 1
        while first + day * DAY_S < end:
            for t in (first + day * DAY_S, first + day * DAY_S + self.busy_s):
                if start <= t < end:
                    times.append(t)
            day += 1
        return sorted(times)

    def idle(self, t: float) -> bool:
        return not self.busy_at(t) and self.in_calls == 0

    def consents(self) -> bool:
        return self.caps.max_clients > 0

    def may_serve(self, t: float) -> bool:
        """Whether the node accepts a promotion now: the owner consents, it is not resting
        after a cap, and, if only when idle, the owner neither uses it nor is in a call."""
        if not self.consents() or t < self.resting_until:
            return False
        return not self.caps.only_when_idle or self.idle(t)

    def true_capacity(self) -> Capacity:
        """What the machine really has (and its owner consents to give)."""
        up = min(self.up_kbps, self.consented_kbps())
        return Capacity(self.public, self.history_uptime_s, up, up, self.cpu_score)

    def consented_kbps(self) -> int:
        """The upload the tier's work may use: the signaling + directory cap (relaying
        calls is extra, and not what the directory needs)."""
        return self.caps.signaling_kbps if self.consents() else 0

    def measured(self) -> Capacity:
        """What the node announces: reachable only as a dial-back proved it, the probed
        bandwidth (never above the real one) within the consent, its uptime history."""
        probed = int(self.up_kbps * self.probe_factor)
        up = min(probed, self.consented_kbps())
        return Capacity(self.public, self.history_uptime_s, up, up, self.cpu_score)

    def declared(self) -> Capacity:
        """What the node claims: a liar claims the moon, an honest node what it measured."""
        return LIAR_CLAIM if self.liar else self.measured()

    def announced(self) -> Capacity:
        """What goes into the node's Attach: the measurement, unless the run trusts
        declarations (the what-if)."""
        return self.declared() if self.trust_declared else self.measured()

    def eligible(self, config: ElectionConfig) -> bool:
        """Ground truth: could this machine serve, by what it really has and consents to?"""
        return self.consents() and eligible(self.true_capacity(), config)


def rented_host(index: int) -> Machine:
    """A host an attacker rents (the simulator's hostile supernodes): public, well
    connected, always on, never busy."""
    return Machine(
        index, PUBLIC, 100_000, 1.0, 300, 0.0, 0.0, 0.0, True, 30 * 86_400, INFRASTRUCTURE_CAPS
    )


def needs_relay(a: Machine, b: Machine) -> bool:
    """Hole punching fails between a symmetric NAT and anything but a public host."""
    return (a.nat == SYMMETRIC and not b.public) or (b.nat == SYMMETRIC and not a.public)


def _weighted(rng: random.Random, choices: tuple[tuple[int, float], ...]) -> int:
    x = rng.random() * sum(w for _, w in choices)
    for value, weight in choices:
        x -= weight
        if x < 0:
            return value
    return choices[-1][0]


def draw_machines(users: int, seed: int, config: CapacityConfig) -> list[Machine]:
    """Every user's machine, from the run's seed (liars from a stream of their own, so
    the same seed gives the same machines with or without liars)."""
    rng = random.Random(f"{seed}:capacity")
    liars = random.Random(f"{seed}:liars")
    machines: list[Machine] = []
    mu = math.log(config.up_kbps_median)
    for i in range(users):
        x = rng.random()
        nat = (
            PUBLIC
            if x < config.public_fraction
            else SYMMETRIC
            if x < config.public_fraction + config.symmetric_fraction
            else CONE
        )
        up = max(64, int(rng.lognormvariate(mu, config.up_kbps_sigma)))
        probe = rng.uniform(0.85, 1.0)
        cpu = rng.randint(*config.cpu_score)
        tz = rng.uniform(0.0, DAY_S)
        y = rng.random() * sum(p[1] for p in BUSY_PATTERNS)
        pattern = BUSY_PATTERNS[-1]
        for candidate in BUSY_PATTERNS:
            y -= candidate[1]
            if y < 0:
                pattern = candidate
                break
        _, _, start_h, spread_h, (lo_h, hi_h) = pattern
        busy_from = (start_h + rng.uniform(0.0, spread_h)) * HOUR_S
        busy = rng.uniform(lo_h, hi_h) * HOUR_S
        always_on = rng.random() < config.always_on_fraction
        history = (
            int(rng.uniform(1.0, 30.0) * DAY_S)
            if always_on
            else int(rng.uniform(0.2, 4.0) * HOUR_S)
        )
        caps = Caps(
            _weighted(rng, config.signaling_kbps),
            _weighted(rng, config.relay_kbps),
            _weighted(rng, config.bytes_per_day),
            _weighted(rng, config.max_clients),
            rng.random() < config.only_when_idle_fraction,
        )
        machines.append(
            Machine(
                i,
                nat,
                up,
                probe,
                cpu,
                tz,
                busy_from,
                busy,
                always_on,
                history,
                caps,
                liar=liars.random() < config.liar_fraction,
                trust_declared=config.trust_declared,
            )
        )
    return machines
