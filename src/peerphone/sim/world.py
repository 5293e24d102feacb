"""A simulated population: users with sessions, a workload, scenarios and a report.

Everything random comes from `random.Random` instances derived from the one seed; nothing is
iterated in hash order, so the same seed and arguments give the same run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

from peerphone.identity import KeyPair, SignatureVerifier, short
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
from peerphone.records import Capacity, MemberBody, Record, Status, user_key
from peerphone.sim.adversary import RANGES_TRIED, HostileSupernode, choose_range, ring_of
from peerphone.sim.callload import CallLoad
from peerphone.sim.config import SCENARIOS, SimConfig
from peerphone.sim.engine import Engine, SimNode
from peerphone.sim.invariants import InvariantChecker
from peerphone.sim.ledger import LookupLedger, PresenceLedger
from peerphone.sim.metrics import Metrics, report
from peerphone.sim.network import Network
from peerphone.sim.population import Population, User, address_of

__all__ = ["SCENARIOS", "SimConfig", "World", "simulate"]


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
        self.population = Population(config.users, config.buddies)
        self.users = self.population.users
        self.by_node = self.population.by_node
        self.online = self.population.online  # logged in and published: lookup issuers
        self.lookups = LookupLedger(self.population, self.metrics)
        self.presence = PresenceLedger(self.population, self.metrics)
        self.calls = CallLoad(
            self.engine, self.population, random.Random(f"{seed}:calls"), config.call_interval_s
        )
        self.checker = InvariantChecker(seed, lambda: self.engine.now, config.verify_every)
        self.supernodes: dict[int, SimNode] = {}
        self.seed_nodes: set[int] = set()
        self.initial_tier_nodes: set[int] = set()
        self._bootstrap: list[Record] = []
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
            addresses=[address_of(user_index)],
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
            self.population.add(User(i, core.username, is_eligible, node))
        self.true_keys = {u.name: u.node.core.user_keys.public for u in self.users}
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
        members = [r for u in tier if (r := u.node.core.member_record()) is not None]
        for user in tier:
            user.node.core.seed_tier(members, 0.0)
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
            (c.id, view.ring_position)
            for c in self._tier_cores()
            if (view := c.snapshot().supernode) is not None
        )
        clusters = max(1, tier_size // cfg.hostile_every // cfg.hostile_cluster)
        added: list[User] = []
        for c in range(clusters):
            target = f"user{rng.randrange(cfg.users)}"
            self.hostile_targets.append(target)
            self.lookups.attacked.add(self.population.by_name[target])
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
                core.become_supernode(0.0, "hostile", role=sn)
                self.hostiles.append(sn)
                node = SimNode(index, core, self.network.place())
                self.engine.add(node)
                user = User(index, core.username, True, node)
                self.population.add(user)
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
                    self.lookups.attacked.add(victim.index)
        return added

    def _tier_cores(self) -> list[NodeCore]:
        return [n.core for n in self.supernodes.values() if n.core.is_supernode]

    def _forged(self, username: str, key: bytes) -> None:
        """Count a record a client accepted for `username` under a key not its own."""
        true_key = self.true_keys.get(username)
        if true_key is not None and key != true_key:
            self.forged_accepted += 1

    def _watch_supernode(self, node: SimNode) -> None:
        node.core.set_store_observer(self.checker.on_accept)
        self.supernodes[node.index] = node

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
        user.status = Status.ONLINE
        self.population.logged_in.add(user.index)
        node = user.node
        if not node.alive:
            node.alive = True
        core = node.core
        out = core.login(now)
        out.extend(core.watch([b for b in self.population.buddies_of(user) if b != user.name], now))
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
        self.population.logged_in.discard(user.index)
        if user.published_seq is None:
            self.metrics.ended_unfindable.append((user.login_at, now))
        if crash:
            self.engine.crash(node)
        else:
            self.engine.send(node, node.core.logout(now))
            node.alive = False
            node.timer_at = None
        self.lookups.asker_gone(user, crash)
        self.supernodes.pop(node.index, None)
        # a machine that comes back starts a fresh process with its saved keys and host cache
        old = node.core
        core = self._make_core(user.index, old.node_keys, old.user_keys, user.eligible)
        core.learn_supernodes(old.host_cache_records(), now)
        core.pin(old.pins())
        node.core = core
        node.timer_at = None

    # -- workload ---------------------------------------------------------------------------

    def _lookup_tick(self) -> None:
        """A findable user looks up another logged-in user, findable yet or not."""
        now = self.engine.now
        cfg = self.config
        if len(self.online) >= 2:
            issuer = self.users[self.online.choice(self.work_rng)]
            target = self.users[self.population.logged_in.choice(self.work_rng)]
            if issuer is not target:
                req, out = issuer.node.core.lookup(target.name, now)
                self.lookups.started(issuer, req, target)
                self.engine.send(issuer.node, out)
        rate = max(len(self.online), 1) / cfg.lookup_interval_s
        self.engine.schedule(now + self.work_rng.expovariate(rate), self._lookup_tick)

    def _status_tick(self) -> None:
        now = self.engine.now
        if len(self.online):
            user = self.users[self.online.choice(self.work_rng)]
            status = self.work_rng.choice([Status.ONLINE, Status.AWAY, Status.BUSY])
            if status is not user.status:  # the same status again tells a watcher nothing
                self.presence.changed(user, now)
                user.status = status
            self.engine.send(user.node, user.node.core.set_status(status, now))
        rate = max(len(self.online), 1) / self.config.status_interval_s
        self.engine.schedule(now + self.work_rng.expovariate(rate), self._status_tick)

    def _audit(self) -> None:
        now = self.engine.now
        for index in sorted(self.supernodes):
            sn = self.supernodes[index].core.snapshot().supernode
            if sn is None:
                continue
            self.metrics.max_clients_seen = max(
                self.metrics.max_clients_seen, self.checker.check_admission(sn)
            )
        online_nodes = len(self.population.logged_in)
        self.metrics.samples.append((now, len(self.supernodes), online_nodes))
        self.presence.judge(now)
        self.engine.schedule(now + 10.0, self._audit)

    def _on_events(self, node: SimNode) -> None:
        user = self.by_node[node.index]
        now = self.engine.now
        for event in node.core.pop_events():
            if isinstance(event, Published):
                if user.online and user.published_seq is None:
                    user.published_seq = event.seq
                    self.online.add(user.index)
                    self.metrics.findable.append((user.login_at, now - user.login_at))
            elif isinstance(event, LookupDone):
                if event.presence is not None:
                    self._forged(event.username, event.presence.owner)
                self.lookups.done(user, event)
            elif isinstance(event, KeyPinned):
                self._forged(event.username, event.key)
            elif isinstance(event, PresenceChanged):
                self._forged(event.username, event.record.owner)
                created = event.record.expires() - self.config.client.presence_ttl_s
                if created >= user.login_at + 1.0:
                    self.metrics.propagation_s.append(now - created)
                self.presence.heard(user, event.username, created)
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
        self.metrics.victims += 1
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
        adversary = None
        if cfg.hostile_every:
            adversary = {
                "hostile_supernodes": len(self.hostiles),
                "per_24": cfg.hostile_cluster,
                "targets": sorted(self.hostile_targets),
                "forged_sent": sum(h.forged_sent for h in self.hostiles),
                "forged_accepted": self.forged_accepted,
                "lookups_of_forged_names": {  # judged ones, included in `lookups`
                    "attempted": m.attacked_lookups,
                    "failed": sum(m.attacked_failures.values()),
                    "failures": dict(sorted(m.attacked_failures.items())),
                },
            }
        return report(
            cfg,
            self.metrics,
            online=len(self.population.logged_in),
            supernodes=len(self.supernodes),
            tier_loads=[
                view.clients_served
                for sn in self.supernodes.values()
                if (view := sn.core.snapshot().supernode) is not None
            ],
            unfindable_at_end=[
                u.login_at for u in self.users if u.online and u.published_seq is None
            ],
            lookups_unfinished=self.lookups.unfinished(),
            presence_unjudged=self.presence.unjudged(),
            calls=self.calls.metrics.report(),
            network=self.network,
            checker=self.checker,
            events=self.engine.events,
            wall_s=wall_s,
            adversary=adversary,
        )


def simulate(config: SimConfig, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run one simulation and return its report (see the README for the fields)."""
    return World(config, progress).run()
