"""The settings of one simulation run."""

from __future__ import annotations

from dataclasses import dataclass, field

from peerphone.overlay.client import ClientConfig
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.sim.capacity import CapacityConfig
from peerphone.sim.network import NetworkConfig

SCENARIOS = ("steady", "mass-reboot", "login-storm", "flash-crowd")
DISASTERS = ("mass-reboot", "login-storm", "flash-crowd")
WATCH_AFTER_EVENT_S = 120.0  # a disaster run watches this long at least (the recovery bound)
FLASH_S = 300.0  # a flash crowd lasts this long ...
FLASH_FACTOR = 10.0  # ... at this many times the normal login and lookup rate


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation run: population, workload, scenario and seed."""

    users: int = 1000
    duration_s: float = 3600.0
    scenario: str = "steady"
    seed: int = 1
    network: NetworkConfig = field(default_factory=NetworkConfig)
    supernode: SupernodeConfig = field(default_factory=SupernodeConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    seeds: int = 0  # bootstrap supernodes that never leave; 0 = max(4, users // 25000)
    initial_supernodes: int = 0  # warm start: tier at t=0 (incl. seeds); 0 = users // 250
    host_cache_seed: int = 20  # supernode records a client knows when it first starts
    # the machines: NAT, bandwidth, CPU, busy hours, uptime history, the owners' caps
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    dial_back: bool = True  # the tier admits a joiner only once it was dialled back
    ramp_s: float = 300.0  # first logins spread over this time
    session_shape: float = 0.8  # Weibull shape of session lengths
    session_mean_s: float = 3 * 3600.0
    always_on_session_factor: float = 4.0  # machines left on stay up longer
    offline_mean_s: float = 1800.0
    crash_fraction: float = 0.2  # sessions that end without a logout
    lookup_interval_s: float = 600.0  # mean time between lookups of one online user
    status_interval_s: float = 3600.0  # mean time between status changes of one user
    call_interval_s: float = 8 * 3600.0  # mean time between calls placed by one user; 0: none
    buddies: int = 5
    event_at: float = 0.0  # disaster time; 0 = a third into the run (at least ramp + 300 s)
    disaster_fraction: float = 0.0  # 0 = the scenario's own (30 % or 50 %)
    link_timeout_s: tuple[float, float] = (5.0, 15.0)  # QUIC idle detection of a dead peer
    encode_messages: bool = False
    verify_every: int = 50
    # adversary: one hostile supernode per `hostile_every` honest ones at start (0: none),
    # in groups of `hostile_cluster` from one /24 that grind their ring positions next to
    # the same chosen user name and forge its name and presence records
    hostile_every: int = 0
    hostile_cluster: int = 1

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(
                f"unknown scenario {self.scenario!r}; choose from {', '.join(SCENARIOS)}"
            )
        if self.users < 10:
            raise ValueError("need at least 10 users")
        if self.duration_s <= 0:
            raise ValueError("duration must be positive")
        if self.hostile_every < 0 or self.hostile_cluster < 1:
            raise ValueError("hostile_every must be >= 0 and hostile_cluster >= 1")
        if self.event_at < 0:
            raise ValueError("event_at must be >= 0")
        at = self.disaster_time()
        lasts = FLASH_S if self.scenario == "flash-crowd" else 0.0
        if self.scenario in DISASTERS and at + lasts + WATCH_AFTER_EVENT_S > self.duration_s:
            # an event at (or past) the end would be a steady run that says it was not
            need = at + lasts + WATCH_AFTER_EVENT_S
            raise ValueError(
                f"{self.scenario}: the event comes at {at:.0f} s"
                + (
                    ""
                    if self.event_at
                    else f" (a third into the run, and not before the"
                    f" {self.ramp_s:.0f} s ramp plus 300 s of steady running)"
                )
                + (f", lasts {lasts:.0f} s" if lasts else "")
                + f" and recovery is watched for {WATCH_AFTER_EVENT_S:.0f} s after it:"
                f" the run needs a duration of at least {need:.0f} s"
            )

    def bootstrap_count(self) -> int:
        return self.seeds or max(self.supernode.replication, self.users // 25_000)

    def initial_tier(self) -> int:
        return max(self.initial_supernodes or self.users // 250, self.bootstrap_count())

    def disaster_time(self) -> float:
        return self.event_at or max(self.ramp_s + 300.0, self.duration_s / 3)
