"""A simulated population: users with sessions, a workload, scenarios and a report.

Everything random comes from `random.Random` instances derived from the one seed; nothing is
iterated in hash order, so the same seed and arguments give the same run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peerphone.identity import KeyPair, SignatureVerifier, short
from peerphone.overlay.client import ClientConfig
from peerphone.overlay.events import (
    KeyPinned,
    LookupDone,
    PresenceChanged,
    Published,
    RoleChanged,
)
from peerphone.overlay.independence import address_group
from peerphone.overlay.node import NodeCore
from peerphone.overlay.ring import position_of
from peerphone.overlay.supernode import SupernodeConfig
from peerphone.records import Capacity, MemberBody, Record, Status, user_key
from peerphone.sim.adversary import RANGES_TRIED, HostileSupernode, choose_range, ring_of
from peerphone.sim.callload import CallLoad
from peerphone.sim.engine import Engine, SimNode
from peerphone.sim.invariants import InvariantChecker
from peerphone.sim.metrics import Metrics, percentile
from peerphone.sim.network import Network, NetworkConfig

SCENARIOS = ("steady", "mass-reboot", "login-storm")


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
    eligible_fraction: float = 0.08  # reachable, well-connected machines
    ramp_s: float = 300.0  # first logins spread over this time
    session_shape: float = 0.8  # Weibull shape of session lengths
    session_mean_s: float = 3 * 3600.0
    eligible_session_factor: float = 4.0  # eligible machines stay up longer
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

    def bootstrap_count(self) -> int:
        return self.seeds or max(self.supernode.replication, self.users // 25_000)

    def initial_tier(self) -> int:
        return max(self.initial_supernodes or self.users // 250, self.bootstrap_count())

    def disaster_time(self) -> float:
        return self.event_at or max(self.ramp_s + 300.0, self.duration_s / 3)


def _address(user_index: int) -> str:
    """A distinct address per user, scattered over /24s as real hosts are (consecutive users
    in one /24 would make the first supernodes one address range: see overlay.independence)."""
    a = (user_index * 2654435761) % (1 << 24)  # odd multiplier: a bijection on 24 bits
    return f"44.{a >> 16}.{a >> 8 & 255}.{a & 255}:4433"  # a global range (overlay.independence)


class IndexedSet:
    """A set of ints with O(1) add, remove and uniform random choice."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, x: int) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: int) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if last != x:
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rng: random.Random) -> int:
        return self.items[int(rng.random() * len(self.items))]


@dataclass(slots=True)
class User:
    """Simulation-side facts about one user (the ground truth the overlay is judged by)."""

    index: int
    name: str
    eligible: bool
    node: SimNode
    online: bool = False
    session: int = 0
    published_seq: int | None = None
    login_at: float = 0.0


class World:
    """Builds the population and runs one scenario."""

    def __init__(self, config: SimConfig, progress: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.progress = progress
        seed = config.seed
        self.net_rng = random.Random(f"{seed}:network")
        self.work_rng = random.Random(f"{seed}:workload")
        self.core_rng = random.Random(f"{seed}:cores")
        self.key_rng = random.Random(f"{seed}:keys")
        # every live record must fit the memo, or evictions turn into re-verifications
        self.verifier = SignatureVerifier(max_entries=max(200_000, 10 * config.users))
        self.network = Network(config.network, self.net_rng)
        self.engine = Engine(self.network, config.encode_messages)
        lo, hi = config.link_timeout_s
        self.engine.link_timeout = lambda: self.net_rng.uniform(lo, hi)
        self.engine.on_events = self._on_events
        self.metrics = Metrics()
        self.calls = CallLoad(self, random.Random(f"{seed}:calls"), config.call_interval_s)
        self.checker = InvariantChecker(seed, lambda: self.engine.now, config.verify_every)
        self.users: list[User] = []
        self.by_node: dict[int, User] = {}
        self.online = IndexedSet()  # users online and published: lookup targets and issuers
        self.supernodes: dict[int, SimNode] = {}
        self.seed_nodes: set[int] = set()
        self.initial_tier_nodes: set[int] = set()
        self._pending: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._bootstrap: list[Record] = []
        self.samples: list[tuple[float, int, int]] = []  # (t, supernodes, online)
        self.hostiles: list[HostileSupernode] = []
        self.hostile_targets: list[str] = []
        self.forged_accepted = 0  # records of a target accepted under a key not its own
        self.true_keys: dict[str, bytes] = {}  # username -> its real user key

    # -- population -------------------------------------------------------------------------

    def _make_core(
        self, user_index: int, node_keys: KeyPair, user_keys: KeyPair, is_eligible: bool
    ) -> NodeCore:
        if is_eligible:
            capacity = Capacity(True, 6 * 3600 + user_index % 3600, 10_000, 50_000, 150)
        else:
            capacity = Capacity(False, user_index % 7200, 800, 8_000, 40)
        return NodeCore(
            node_keys,
            user_keys,
            f"user{user_index}",
            self.core_rng,
            self.verifier,
            capacity=capacity,
            addresses=[_address(user_index)],
            client_config=self.config.client,
            supernode_config=self.config.supernode,
        )

    def build(self) -> None:
        cfg = self.config
        rng = self.work_rng
        for i in range(cfg.users):
            node_keys = KeyPair.from_rng(self.key_rng)
            user_keys = KeyPair.from_rng(self.key_rng)
            is_eligible = rng.random() < cfg.eligible_fraction
            core = self._make_core(i, node_keys, user_keys, is_eligible)
            node = SimNode(i, core, self.network.place())
            self.engine.add(node)
            user = User(i, core.client.username, is_eligible, node)
            self.users.append(user)
            self.by_node[i] = user
        self.true_keys = {u.name: u.node.core.client.user_keys.public for u in self.users}
        eligible_users = [u for u in self.users if u.eligible]
        # a warm start: the network has been running, so a tier of eligible nodes exists;
        # the first few are bootstrap supernodes that stay up for the whole run
        seeds = eligible_users[: cfg.initial_tier()]
        for rank, user in enumerate(seeds):
            is_seed = rank < cfg.bootstrap_count()
            reason = "bootstrap supernode" if is_seed else "supernode at start"
            sn = user.node.core.become_supernode(0.0, reason, seed=is_seed)
            self._watch_supernode(user.node)
            if is_seed:
                self.seed_nodes.add(user.index)
            self.initial_tier_nodes.add(user.index)
            self._bootstrap.append(sn.record)
        tier = list(seeds)
        if cfg.hostile_every:
            tier.extend(self._add_hostiles(len(seeds)))
        members = [u.node.core.supernode.record for u in tier if u.node.core.supernode]
        for user in tier:
            sn_core = user.node.core.supernode
            assert sn_core is not None
            for record in members:
                sn_core.membership.add_record(record, 0.0)
            sn_core.membership.changes.clear()
            user.node.core.pop_events()
            user.node.alive = True
            self.engine.rearm(user.node)
        count = min(cfg.host_cache_seed, len(self._bootstrap))
        for user in self.users:
            known = rng.sample(self._bootstrap, count)
            user.node.core.learn_supernodes(known, 0.0)
            in_tier = user.index in self.initial_tier_nodes
            delay = 0.0 if in_tier else rng.uniform(0.0, cfg.ramp_s)
            self.engine.schedule(delay, self._login, user, user.session + 1)

    def _add_hostiles(self, tier_size: int) -> list[User]:
        """Hostile supernodes placed as near chosen names as their /24 lets them (see
        sim.adversary); they join the tier at start but are in no client's host cache."""
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:hostile")
        ring = ring_of(
            (c.id, c.supernode.membership.position(c.id))
            for c in self._tier_cores()
            if c.supernode is not None
        )
        clusters = max(1, tier_size // cfg.hostile_every // cfg.hostile_cluster)
        added: list[User] = []
        for c in range(clusters):
            target = f"user{rng.randrange(cfg.users)}"
            self.hostile_targets.append(target)
            key = user_key(target)
            prefix = choose_range(ring, key, cfg.hostile_cluster, RANGES_TRIED, c * RANGES_TRIED)
            for j in range(cfg.hostile_cluster):
                keys = KeyPair.from_rng(rng)
                attacker = KeyPair.from_rng(rng)
                index = len(self.users)
                core = NodeCore(keys, attacker, f"hostile{c}-{j}", self.core_rng, self.verifier)
                address = f"{prefix}.{j + 1}:4433"  # the cluster shares one public /24
                body = MemberBody([address], Capacity(True, 86_400, 10_000, 50_000, 150), 600)
                sn = HostileSupernode(
                    keys, body, 0.0, self.core_rng, self.verifier, cfg.supernode, [target], attacker
                )
                core.supernode = sn
                self.hostiles.append(sn)
                node = SimNode(index, core, self.network.place())
                self.engine.add(node)
                user = User(index, core.client.username, True, node)
                self.users.append(user)
                self.by_node[index] = user
                added.append(user)
            group = address_group(f"{prefix}.1:4433")
            cluster = sorted(self.hostiles[-cfg.hostile_cluster :], key=lambda h: h.me)
            for rank, member in enumerate(cluster):
                ring.add(member.me, position_of(member.me, group, rank))
        # each also forges every other name it became a replica of
        by_id = {h.me: h for h in self.hostiles}
        r = cfg.supernode.replication
        for victim in self.users[: cfg.users]:
            key = user_key(victim.name)
            for replica in ring.replicas(key, r):
                hostile = by_id.get(replica)
                if hostile is not None:
                    hostile.targets[key] = victim.name
        return added

    def _tier_cores(self) -> list[NodeCore]:
        return [n.core for n in self.supernodes.values() if n.core.supernode is not None]

    def _forged(self, username: str, key: bytes) -> None:
        """Count a record a client accepted for `username` under a key not its own."""
        true_key = self.true_keys.get(username)
        if true_key is not None and key != true_key:
            self.forged_accepted += 1

    def _watch_supernode(self, node: SimNode) -> None:
        sn = node.core.supernode
        assert sn is not None
        sn.store.observer = self.checker.on_accept
        self.supernodes[node.index] = node

    def buddies_of(self, user: User) -> list[str]:
        n = self.config.users
        return [
            f"user{(user.index * 2654435761 + (j + 1) * 40503) % n}"
            for j in range(self.config.buddies)
        ]

    # -- sessions ---------------------------------------------------------------------------

    def _login(self, user: User, session: int) -> None:
        if user.online or session != user.session + 1:
            return
        now = self.engine.now
        cfg = self.config
        user.online = True
        user.session = session
        user.published_seq = None
        user.login_at = now
        node = user.node
        if not node.alive:
            node.alive = True
        core = node.core
        out = core.login(now)
        out.extend(core.watch([b for b in self.buddies_of(user) if b != user.name], now))
        self.engine.send(node, out)
        mean = cfg.session_mean_s * (cfg.eligible_session_factor if user.eligible else 1.0)
        if user.index in self.seed_nodes:
            return  # bootstrap supernodes stay up
        scale = mean / math.gamma(1.0 + 1.0 / cfg.session_shape)
        length = self.work_rng.weibullvariate(scale, cfg.session_shape)
        self.engine.schedule(now + length, self._end_session, user, session)

    def _end_session(self, user: User, session: int, crash: bool | None = None) -> None:
        if not user.online or user.session != session:
            return
        now = self.engine.now
        if crash is None:
            crash = self.work_rng.random() < self.config.crash_fraction
        self._go_offline(user, crash)
        gap = self.work_rng.expovariate(1.0 / self.config.offline_mean_s)
        self.engine.schedule(now + gap, self._login, user, session + 1)

    def _go_offline(self, user: User, crash: bool) -> None:
        now = self.engine.now
        node = user.node
        user.online = False
        self.online.discard(user.index)
        if crash:
            self.engine.crash(node)
        else:
            self.engine.send(node, node.core.logout(now))
            node.alive = False
            node.timer_at = None
        self.supernodes.pop(node.index, None)
        # a machine that comes back starts a fresh process with its saved keys and host cache
        old = node.core
        core = self._make_core(user.index, old.node_keys, old.client.user_keys, user.eligible)
        core.learn_supernodes(list(old.client.host_cache.values()), now)
        core.client.pinned = old.client.pinned
        node.core = core
        node.timer_at = None

    # -- workload ---------------------------------------------------------------------------

    def _lookup_tick(self) -> None:
        now = self.engine.now
        cfg = self.config
        if len(self.online) >= 2:
            issuer = self.users[self.online.choice(self.work_rng)]
            target = self.users[self.online.choice(self.work_rng)]
            if issuer is not target and target.published_seq is not None:
                req, out = issuer.node.core.lookup(target.name, now)
                self._pending[(issuer.index, req)] = (
                    target.index,
                    target.session,
                    target.published_seq,
                )
                self.engine.send(issuer.node, out)
        rate = max(len(self.online), 1) / cfg.lookup_interval_s
        self.engine.schedule(now + self.work_rng.expovariate(rate), self._lookup_tick)

    def _status_tick(self) -> None:
        now = self.engine.now
        if len(self.online):
            user = self.users[self.online.choice(self.work_rng)]
            status = self.work_rng.choice([Status.ONLINE, Status.AWAY, Status.BUSY])
            self.engine.send(user.node, user.node.core.set_status(status, now))
        rate = max(len(self.online), 1) / self.config.status_interval_s
        self.engine.schedule(now + self.work_rng.expovariate(rate), self._status_tick)

    def _audit(self) -> None:
        now = self.engine.now
        for index in sorted(self.supernodes):
            sn = self.supernodes[index].core.supernode
            if sn is None:
                continue
            self.metrics.max_clients_seen = max(
                self.metrics.max_clients_seen, self.checker.check_admission(sn)
            )
        online_nodes = (
            sum(1 for u in self.users if u.online)
            if len(self.users) < 20_000
            else (len(self.online))
        )
        self.samples.append((now, len(self.supernodes), online_nodes))
        self.engine.schedule(now + 10.0, self._audit)

    def _on_events(self, node: SimNode) -> None:
        user = self.by_node[node.index]
        now = self.engine.now
        for event in node.core.pop_events():
            if isinstance(event, Published):
                if user.online and user.published_seq is None:
                    user.published_seq = event.seq
                    self.online.add(user.index)
            elif isinstance(event, LookupDone):
                if event.presence is not None:
                    self._forged(event.username, event.presence.owner)
                self._lookup_done(user, event)
            elif isinstance(event, KeyPinned):
                self._forged(event.username, event.key)
            elif isinstance(event, PresenceChanged):
                self._forged(event.username, event.record.owner)
                created = event.record.expires() - self.config.client.presence_ttl_s
                if created >= user.login_at + 1.0:
                    self.metrics.propagation_s.append(now - created)
            elif isinstance(event, RoleChanged):
                if event.supernode:
                    self.checker.check_promotion(
                        user.eligible, user.index in self.seed_nodes, short(node.core.id)
                    )
                    self.metrics.promotions += 1
                    self._watch_supernode(node)
                else:
                    self.metrics.demotions += 1
                    self.supernodes.pop(node.index, None)
            else:
                self.calls.on_event(user, event)

    def _lookup_done(self, issuer: User, event: LookupDone) -> None:
        info = self._pending.pop((issuer.index, event.req), None)
        if info is None or event.reason == "logged out":
            return
        target_index, session, seq = info
        target = self.users[target_index]
        if not target.online or target.session != session:
            return  # the target left meanwhile: not a lookup of an online user
        ok = (
            event.presence is not None
            and event.status is not Status.OFFLINE
            and (event.presence.seq >= seq)
        )
        reason = event.reason or ("stale record" if event.presence is not None else "not found")
        self.metrics.record_lookup(
            event.started, ok, event.finished - event.started, event.hops, "" if ok else reason
        )

    # -- scenarios --------------------------------------------------------------------------

    def _mass_reboot(self) -> None:
        now = self.engine.now
        cfg = self.config
        victims = sorted(self.supernodes)
        count = round(len(victims) * (cfg.disaster_fraction or 0.30))
        for index in self.work_rng.sample(victims, count):
            user = self.by_node[index]
            at = now + self.work_rng.uniform(0.0, 60.0)
            self.engine.schedule(at, self._reboot, user, self.work_rng.uniform(120.0, 600.0))

    def _reboot(self, user: User, down_s: float) -> None:
        if not user.online:
            return
        session = user.session
        self.seed_nodes.discard(user.index)
        self._go_offline(user, crash=True)
        self.engine.schedule(self.engine.now + down_s, self._login, user, session + 1)

    def _login_storm(self) -> None:
        now = self.engine.now
        cfg = self.config
        clients = [u.index for u in self.users if u.online and u.node.index not in self.supernodes]
        count = round(len(clients) * (cfg.disaster_fraction or 0.50))
        for index in self.work_rng.sample(clients, count):
            user = self.users[index]
            self.engine.schedule(
                now + self.work_rng.uniform(0.0, 5.0),
                self._reboot,
                user,
                self.work_rng.uniform(0.0, 55.0),
            )

    # -- running ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.config
        wall0 = time.perf_counter()
        self.build()
        self.engine.schedule(cfg.ramp_s / 2, self._lookup_tick)
        self.engine.schedule(cfg.ramp_s / 2, self._status_tick)
        self.engine.schedule(10.0, self._audit)
        self.calls.start(cfg.ramp_s / 2)
        if cfg.scenario == "mass-reboot":
            self.engine.schedule(cfg.disaster_time(), self._mass_reboot)
        elif cfg.scenario == "login-storm":
            self.engine.schedule(cfg.disaster_time(), self._login_storm)
        self.engine.run(cfg.duration_s, self.progress)
        return self.report(time.perf_counter() - wall0)

    def report(self, wall_s: float) -> dict[str, Any]:
        cfg = self.config
        m = self.metrics
        loads = sorted(
            sn.core.supernode.primary_count
            for sn in self.supernodes.values()
            if sn.core.supernode is not None
        )
        online = sum(1 for u in self.users if u.online)
        count = len(self.supernodes)
        attempted = len(m.lookup_ok)
        succeeded = sum(m.lookup_ok)
        after_ramp = [(s, o) for t, s, o in self.samples if t >= cfg.ramp_s and o]
        report: dict[str, Any] = {
            "seed": cfg.seed,
            "users": cfg.users,
            "scenario": cfg.scenario,
            "duration_s": cfg.duration_s,
            "online": online,
            "supernodes": {
                "count": count,
                "fraction": round(count / max(online, 1), 5),
                "fraction_max": round(max((s / o for s, o in after_ramp), default=0.0), 5),
                "clients_per_supernode": {
                    "p50": percentile([float(x) for x in loads], 50),
                    "max": max(loads, default=0),
                    "max_seen": m.max_clients_seen,
                    "admission_limit": cfg.supernode.max_clients,
                },
                "promotions": m.promotions,
                "demotions": m.demotions,
                "all_eligible": True,  # an ineligible promotion raises InvariantViolation
            },
            "lookups": {
                "attempted": attempted,
                "succeeded": succeeded,
                "success_rate": round(succeeded / attempted, 6) if attempted else 0.0,
                "latency_ms": {
                    q: round(percentile(m.lookup_latency_s, float(q[1:])) * 1000, 1)
                    for q in ("p50", "p95", "p99")
                },
                "hops": {
                    "p50": percentile([float(h) for h in m.lookup_hops], 50),
                    "p99": percentile([float(h) for h in m.lookup_hops], 99),
                    "max": max(m.lookup_hops, default=0),
                },
                "failures": dict(sorted(m.failure_reasons.items())),
            },
            "presence": {
                "propagations": len(m.propagation_s),
                "propagation_ms": {
                    q: round(percentile(m.propagation_s, float(q[1:])) * 1000, 1)
                    for q in ("p50", "p95")
                },
            },
            "calls": self.calls.metrics.report(),
            "network": {"messages": self.network.sent, "lost": self.network.lost},
            "invariants": {
                "records_checked": self.checker.accepts,
                "signatures_reverified": self.checker.checked_signatures,
            },
            "sim": {
                "virtual_s": cfg.duration_s,
                "wall_s": round(wall_s, 2),
                "events": self.engine.events,
            },
        }
        if cfg.hostile_every:
            report["adversary"] = {
                "hostile_supernodes": len(self.hostiles),
                "per_24": cfg.hostile_cluster,
                "targets": sorted(self.hostile_targets),
                "forged_sent": sum(h.forged_sent for h in self.hostiles),
                "forged_accepted": self.forged_accepted,
            }
        if cfg.scenario != "steady":
            event_at = cfg.disaster_time()
            report["event_at_s"] = event_at
            report["recovery_s"] = m.recovery_s(event_at, cfg.duration_s)
        return report


def simulate(config: SimConfig, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run one simulation and return its report (see the README for the fields)."""
    return World(config, progress).run()
