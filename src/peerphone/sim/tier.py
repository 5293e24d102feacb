"""The supernode tier as the simulator keeps its books: who serves, each machine's duty,
the dial-backs that prove reachability, every role change and why, and the report's
`eligibility` and `sharing` sections.

A node is promoted by the real election (overlay.election, on the capacity its Attach
announced: `Machine.announced`) and admitted to the tier by the real membership only
after a dial-back: the simulator is the runtime that dials, and a machine behind a NAT
never answers. Nothing here sends a message or draws a random number.
"""

from __future__ import annotations

from typing import Any

from peerphone.identity import NodeId
from peerphone.overlay.events import DialBack
from peerphone.sim.capacity import Machine
from peerphone.sim.engine import Engine, SimNode
from peerphone.sim.invariants import InvariantChecker
from peerphone.sim.metrics import Metrics
from peerphone.sim.population import Population, User
from peerphone.sim.sharing import Duty, sharing_report

GONE_REASON = "machine went offline"
AROUND_ROLE_CHANGE_S = 60.0  # lookups started this long after a supernode left


class Tier:
    """The books of the supernode tier (see module doc)."""

    def __init__(
        self,
        engine: Engine,
        population: Population,
        machines: list[Machine],
        checker: InvariantChecker,
        metrics: Metrics,
        trust_declared: bool,
    ) -> None:
        self.engine = engine
        self.population = population
        self.machines = machines
        self.checker = checker
        self.metrics = metrics
        self.trust_declared = trust_declared
        self.supernodes: dict[int, SimNode] = {}  # node index -> node, while it serves
        self.seed_nodes: set[int] = set()
        self.initial: set[int] = set()
        self.duties: dict[int, Duty] = {}
        self.elected: dict[int, int] = {}  # user index -> times it took the role
        self.left_at: list[float] = []  # when a supernode left the tier (a hand-over)
        self.step_downs: dict[str, int] = {}  # why supernodes left, by reason
        self.dial_backs = {"reached": 0, "failed": 0}
        self.relays_lost = 0  # relayed calls whose relay machine went offline

    def duty_of(self, index: int) -> Duty:
        duty = self.duties.get(index)
        if duty is None:
            duty = Duty(self.machines[index], self.population.users[index].name)
            self.duties[index] = duty
        return duty

    def public(self, index: int) -> bool:
        """Ground truth; the hostile supernodes rent public hosts."""
        return index >= len(self.machines) or self.machines[index].public

    # -- role changes ----------------------------------------------------------------------

    def serves(self, node: SimNode, now: float) -> None:
        """`node` took the supernode role (promoted, or in the tier at start)."""
        index = node.index
        user = self.population.by_node[index]
        name = user.name
        if not self.trust_declared:  # the what-if lets liars in on purpose, to count them
            self.checker.check_promotion(user.eligible, index in self.seed_nodes, name)
            if not self.public(index):
                self.checker.fail(f"node {name} behind a NAT became a supernode")
        self.elected[index] = self.elected.get(index, 0) + 1
        self.supernodes[index] = node
        if index < len(self.machines):
            duty = self.duty_of(index)
            duty.start(now)
            node.shaper = duty.shaper

    def leaves(self, node: SimNode, reason: str, now: float) -> None:
        """`node` left the supernode role (stepped down, demoted, went offline)."""
        if self.supernodes.pop(node.index, None) is None:
            return
        self.step_downs[reason] = self.step_downs.get(reason, 0) + 1
        self.left_at.append(now)
        duty = self.duties.get(node.index)
        if duty is not None:
            duty.stop(now)

    def gone(self, node: SimNode, crash: bool, now: float) -> None:
        """The machine went offline: it serves no more, its relays end with it, and what
        it had queued is lost in a crash (a graceful exit finishes its hand-over)."""
        self.leaves(node, GONE_REASON, now)
        node.shaper = None
        duty = self.duties.get(node.index)
        if duty is None:
            return
        if crash:
            duty.shaper.clear()
        for flow in sorted(duty.relay.flows):
            duty.relay.close(flow, now)
            self.relays_lost += 1

    def relays_for(self, *users: User) -> list[Duty]:
        """Where a call between `users` may be relayed, in order: each one's primary
        supernode, then each one's backup (those that serve)."""
        found: list[Duty] = []
        attached = [u.node.core.attached() for u in users]
        for node_id in [a[0] for a in attached] + [a[1] for a in attached]:
            node = self.engine.nodes.get(node_id) if node_id is not None else None
            if node is None or node.index not in self.supernodes:
                continue
            duty = self.duties.get(node.index)
            if duty is not None and duty not in found:
                found.append(duty)
        return found

    # -- dial-backs ------------------------------------------------------------------------

    def dial_back(self, node: SimNode, event: DialBack) -> None:
        """A member asks its runtime to dial a joiner back at its advertised address: the
        answer comes one round trip later, from a node that is up, public and there."""
        engine = self.engine
        target = engine.nodes.get(NodeId(event.node))
        rtt = 0.0 if target is None else 2 * engine.network.delay(node.coord, target.coord)
        engine.schedule(engine.now + rtt, self._dialled, node, node.core, event)

    def _dialled(self, node: SimNode, core: object, event: DialBack) -> None:
        if not node.alive or node.core is not core:
            return  # the member went away meanwhile
        peer = NodeId(event.node)
        target = self.engine.nodes.get(peer)
        reached = (
            target is not None
            and target.alive
            and self.public(target.index)
            and event.address.rpartition(":")[0] == target.host
        )
        self.dial_backs["reached" if reached else "failed"] += 1
        self.engine.send(node, node.core.dial_back_done(peer, reached, self.engine.now))

    # -- the report ------------------------------------------------------------------------

    def eligibility(self, eligible_count: int) -> dict[str, Any]:
        users = self.population.genuine_users
        machines = self.machines[:users]  # the hostile supernodes' rented hosts aside
        liars = [m.index for m in machines if m.liar]
        liar_set = set(liars)
        elected = sorted(i for i in self.elected if i < users)
        return {
            "measured": not self.trust_declared,
            "public_machines": sum(1 for m in machines if m.public),
            "eligible_machines": eligible_count,
            "elected": len(elected),
            # took the role (the what-if lets NAT'd liars be asked) / admitted by the tier
            "elected_behind_nat": sum(1 for i in elected if not machines[i].public),
            "admitted_behind_nat": sum(
                1
                for i in elected
                if not machines[i].public and i in self.duties and self.duties[i].admissions
            ),
            "liars": len(liars),
            "liars_elected": sum(1 for i in elected if i in liar_set),
            "honest_elected": sum(1 for i in elected if i not in liar_set),
            "dial_backs": dict(self.dial_backs),
        }

    def around_role_changes(self) -> dict[str, Any]:
        """Lookups started within AROUND_ROLE_CHANGE_S after a supernode left the tier."""
        m = self.metrics
        times = sorted(self.left_at)
        attempted = succeeded = 0
        j = 0
        for started, ok in sorted(zip(m.lookup_started, m.lookup_ok, strict=True)):
            while j < len(times) and times[j] + AROUND_ROLE_CHANGE_S <= started:
                j += 1
            if j < len(times) and times[j] <= started:
                attempted += 1
                succeeded += ok
        return {
            "window_s": AROUND_ROLE_CHANGE_S,
            "role_changes": len(times),
            "attempted": attempted,
            "succeeded": succeeded,
            "success_rate": round(succeeded / attempted, 6) if attempted else None,
        }

    def sharing(self, end: float) -> dict[str, Any]:
        duties = [self.duties[i] for i in sorted(self.duties)]
        return sharing_report(duties, end, self.step_downs)

    def all_public(self) -> bool:
        return all(self.public(i) for i in self.elected)
