"""A simulated population: users with sessions, a workload, scenarios and a report.

Everything random comes from `random.Random` instances derived from the one seed; nothing is
iterated in hash order, so the same seed and arguments give the same run.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.election import score
from peerphone.overlay.events import (
    DialBack,
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
from peerphone.sim.capacity import INFRASTRUCTURE_CAPS, draw_machines, rented_host
from peerphone.sim.config import FLASH_FACTOR, FLASH_S, SCENARIOS, SimConfig
from peerphone.sim.duty import SimNodeCore
from peerphone.sim.engine import Engine, SimNode
from peerphone.sim.invariants import InvariantChecker
from peerphone.sim.ledger import LookupLedger, PresenceLedger
from peerphone.sim.metrics import Metrics, report
from peerphone.sim.network import Network
from peerphone.sim.population import IndexedSet, Population, User, address_of
from peerphone.sim.tier import Tier

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
        self.machines = draw_machines(config.users, seed, config.capacity)
        self.tier = Tier(
            self.engine,
            self.population,
            self.machines,
            self.checker,
            self.metrics,
            config.capacity.trust_declared,
        )
        self.calls.relays_for = self.tier.relays_for
        self.calls.machines = self.machines
        self.supernodes = self.tier.supernodes  # node index -> node, while it serves
        self.seed_nodes = self.tier.seed_nodes
        self.initial_tier_nodes = self.tier.initial
        self._bootstrap: list[Record] = []
        self.hostiles: list[HostileSupernode] = []
        self.hostile_targets: list[str] = []
        self.forged_accepted = 0  # records of a target accepted under a key not its own
        self.true_keys: dict[str, bytes] = {}  # username -> its real user key
        self.offline = IndexedSet()  # users logged out (a flash crowd brings them back)
        self.login_times: list[float] = []
        self.flash: dict[str, Any] | None = None
        base = config.supernode
        if config.dial_back:
            base = replace(base, membership=replace(base.membership, dial_back=True))
        self._configs: dict[int, SupernodeConfig] = {}
        self._base_config = base

    # -- population -------------------------------------------------------------------------

    def _config_for(self, max_clients: int) -> SupernodeConfig:
        """The supernode settings of an owner who admits at most `max_clients`."""
        config = self._configs.get(max_clients)
        if config is None:
            base = self._base_config
            m = max(1, min(max_clients, base.max_clients))
            config = replace(base, max_clients=m, max_backups=min(base.max_backups, 2 * m))
            self._configs[max_clients] = config
        return config

    def _make_core(self, user_index: int, node_keys: KeyPair, user_keys: KeyPair) -> NodeCore:
        machine = self.machines[user_index]
        return SimNodeCore(
            node_keys,
            user_keys,
            f"user{user_index}",
            self.core_rng,
            self.verifier,
            lambda: self.tier.duty_of(user_index),
            machine.announced(),
            [address_of(user_index)],
            self.config.client,
            self._config_for(machine.caps.max_clients),
            machine.may_serve(self.engine.now),
        )

    def build(self) -> None:
        cfg = self.config
        rng = self.work_rng
        election = self._base_config.election
        eligible = [m.eligible(election) for m in self.machines]
        # a warm start: the network has been running, so a tier of eligible nodes exists
        # (idle ones: an owner who wants the machine would have it step down); the first
        # few are bootstrap supernodes, the project's own machines, up for the whole run
        starters = [m.index for m in self.machines if eligible[m.index] and m.may_serve(0.0)]
        # the best candidates by the election's own order (measured values)
        starters.sort(key=lambda i: (-score(self.machines[i].announced()), i))
        starters = starters[: cfg.initial_tier()]
        for index in starters[: cfg.bootstrap_count()]:
            self.machines[index].caps = INFRASTRUCTURE_CAPS
            self.seed_nodes.add(index)
        for i in range(cfg.users):
            node_keys = KeyPair.from_rng(self.key_rng)
            user_keys = KeyPair.from_rng(self.key_rng)
            core = self._make_core(i, node_keys, user_keys)
            node = SimNode(i, core, self.network.place(), host=address_of(i).rpartition(":")[0])
            self.engine.add(node)
            self.population.add(User(i, core.username, eligible[i], node))
        self.true_keys = {u.name: u.node.core.user_keys.public for u in self.users}
        for index in starters:
            user = self.users[index]
            is_seed = index in self.seed_nodes
            reason = "bootstrap supernode" if is_seed else "supernode at start"
            sn = user.node.core.become_supernode(0.0, reason, seed=is_seed)
            self.initial_tier_nodes.add(index)
            self._bootstrap.append(sn.record)
            self._serves(user.node)
        tier = [self.users[i] for i in starters]
        if cfg.hostile_every:
            tier.extend(self._add_hostiles(len(starters)))
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
        # owners who share only when idle: the node follows their busy hours
        for machine in self.machines:
            if machine.caps.only_when_idle and machine.consents():
                for t in machine.busy_changes(0.0, cfg.duration_s):
                    self.engine.schedule(t, self._busy_changed, self.users[machine.index])

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
                node = SimNode(index, core, self.network.place(), host=f"{prefix}.{j + 1}")
                self.engine.add(node)
                user = User(index, core.username, True, node)
                self.population.add(user)
                self.machines.append(rented_host(index))
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

    def _serves(self, node: SimNode) -> None:
        node.core.set_store_observer(self.checker.on_accept)
        self.tier.serves(node, self.engine.now)

    def _busy_changed(self, user: User) -> None:
        """The owner starts or stops using the machine: only-when-idle nodes follow (a
        supernode steps down by itself, see sim.duty)."""
        if user.node.alive:
            user.node.core.may_serve = self.machines[user.index].may_serve(self.engine.now)

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
        self.offline.discard(user.index)
        self.login_times.append(now)
        node = user.node
        if not node.alive:
            node.alive = True
        core = node.core
        machine = self.machines[user.index]
        core.may_serve = machine.may_serve(now)
        out = core.login(now)
        out.extend(core.watch([b for b in self.population.buddies_of(user) if b != user.name], now))
        self.engine.send(node, out)
        mean = cfg.session_mean_s * (cfg.always_on_session_factor if machine.always_on else 1.0)
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
        self.tier.gone(node, crash, now)
        self.calls.session_ended(user, now)
        self.offline.add(user.index)
        # a machine that comes back starts a fresh process with its saved keys and host cache
        old = node.core
        core = self._make_core(user.index, old.node_keys, old.user_keys)
        core.learn_supernodes(old.host_cache_records(), now)
        core.pin(old.pins())
        node.core = core
        node.timer_at = None
        node.told.clear()

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
        rate = max(len(self.online), 1) / cfg.lookup_interval_s * self._crowd(now)
        self.engine.schedule(now + self.work_rng.expovariate(rate), self._lookup_tick)

    def _crowd(self, now: float) -> float:
        """How many times the normal rate users log in and look up now (a flash crowd)."""
        flash = self.flash
        if flash is not None and flash["from_s"] <= now < flash["until_s"]:
            return FLASH_FACTOR
        return 1.0

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
                    self.metrics.promotions += 1
                    self._serves(node)
                else:
                    self.metrics.demotions += 1
                    self.tier.leaves(node, event.reason, now)
            elif isinstance(event, DialBack):
                self.tier.dial_back(node, event)
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

    def _flash_crowd(self) -> None:
        """For FLASH_S, FLASH_FACTOR times the normal rate of logins (the rate of the
        FLASH_S before) and of lookups: logged-out users come back at once, and when
        none is left, online clients log in again."""
        now = self.engine.now
        before = sum(1 for t in self.login_times if now - FLASH_S <= t < now)
        normal = max(before / FLASH_S, 1.0 / FLASH_S)
        self.flash = {
            "from_s": now,
            "until_s": now + FLASH_S,
            "factor": FLASH_FACTOR,
            "normal_logins_per_s": round(normal, 4),
            "logins_added": 0,
            "of_logged_out": 0,
            "relogins": 0,
        }
        rng = random.Random(f"{self.config.seed}:flash")
        self.engine.schedule(now, self._flash_login, rng, (FLASH_FACTOR - 1.0) * normal)

    def _flash_login(self, rng: random.Random, rate: float) -> None:
        now = self.engine.now
        flash = self.flash
        assert flash is not None
        if now >= flash["until_s"]:
            return
        genuine = [i for i in self.offline.items if i < self.config.users]
        if genuine:
            user = self.users[genuine[int(rng.random() * len(genuine))]]
            flash["of_logged_out"] += 1
            self._login(user, user.session + 1)
        else:
            index = self.online.choice(rng) if len(self.online) else -1
            user = self.users[index] if index >= 0 else self.users[0]
            if user.online and user.index not in self.supernodes:
                session = user.session
                flash["relogins"] += 1
                self._go_offline(user, crash=False)
                self._login(user, session + 1)
        flash["logins_added"] += 1
        self.engine.schedule(now + rng.expovariate(rate), self._flash_login, rng, rate)

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
        elif cfg.scenario == "flash-crowd":
            self.engine.schedule(cfg.disaster_time(), self._flash_crowd)
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
        result = report(
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
        tier = self.tier
        result["supernodes"]["all_publicly_reachable"] = tier.all_public()
        result["supernodes"]["step_downs"] = dict(sorted(tier.step_downs.items()))
        result["lookups"]["around_role_changes"] = tier.around_role_changes()
        eligible = sum(1 for u in self.users[: cfg.users] if u.eligible)
        result["eligibility"] = tier.eligibility(eligible)
        result["sharing"] = tier.sharing(cfg.duration_s)
        if self.flash is not None:
            result["flash_crowd"] = self.flash
        return result


def simulate(config: SimConfig, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run one simulation and return its report (see the README for the fields)."""
    return World(config, progress).run()
