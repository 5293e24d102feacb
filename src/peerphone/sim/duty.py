"""The supernode role as the simulator runs it: the real `SupernodeCore`, with the owner's
caps enforced around it (see sim.sharing for the ladder).

`DutySupernode` changes nothing in the protocol; it adds what the owner's consent asks for:
at step 1 and beyond a new client's Attach is redirected (AttachRedirect with hints, as a
full supernode does), from step 2 the most recently admitted clients are moved (Redirect
with hints, as load shedding does), at step 4 the role leaves the tier (`leave`: records
and clients handed over). It also steps down at once when its owner wants the machine
(only_when_idle: busy, or in a call), and when the tier never admitted it (a promotion
whose dial-back failed: no membership page came). Relay allocations (step 3) are the
simulator's (`Duty.allocate`): media is modelled as flows.

`SimNodeCore` is a `NodeCore` whose supernode role is a `DutySupernode` for its machine's
`Duty`, whether it is promoted or starts as one. It passes an Attach to the role's
admission check and tells it of membership pages (NodeCore dispatches both to the base
class's handlers); nothing else differs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from peerphone.identity import KeyPair, NodeId, SignatureVerifier
from peerphone.overlay.client import ClientConfig
from peerphone.overlay.node import NodeCore
from peerphone.overlay.supernode import SupernodeConfig, SupernodeCore
from peerphone.records import Capacity, MemberBody, Record
from peerphone.sim.sharing import REDIRECT_NEW, SHED_REASON, STEP_DOWN, Duty
from peerphone.wire import Attach, AttachRedirect, MembershipPage, Message, Redirect, Send

CHECK_S = 1.0  # how often the role weighs its caps
REDIRECT_EVERY_S = 5.0  # at step 2, a tenth of the clients is moved this often
REDIRECT_SHARE = 10  # ... one in this many
REFUSAL_HINTS = 2  # other supernodes named in a refused attach (a full answer names 8)


class DutySupernode(SupernodeCore):
    """A supernode that keeps within its owner's caps (see module doc)."""

    def __init__(
        self,
        keys: KeyPair,
        body: MemberBody,
        now: float,
        rng: random.Random,
        verifier: SignatureVerifier,
        config: SupernodeConfig,
        seed: bool,
        duty: Duty,
    ) -> None:
        super().__init__(keys, body, now, rng, verifier, config, seed)
        self.duty = duty
        self.admitted = False  # until a member's membership page comes (see admit)
        self._next_check = now + CHECK_S
        self._next_redirect = now

    def refuse_attach(self, msg: Attach, src: NodeId, now: float) -> list[Send] | None:
        """From step 1 on, a new client is sent elsewhere (None: admission as usual)."""
        if self.retired or src in self.clients:
            return None
        if self.duty.level or self.duty.congested(now):
            self.duty.actions["attaches_refused"] += 1
            hints = self._hints(src)[:REFUSAL_HINTS]  # a refusal costs little of the cap
            return [(src, AttachRedirect(msg.req, SHED_REASON, hints))]
        return None

    def page_from(self, src: NodeId) -> None:
        """A membership page came: from a member, it means the tier admitted us."""
        if src in self.membership.members:
            self.admit()

    def admit(self) -> None:
        """The tier took us in (a membership page from a member, or the warm start)."""
        if not self.admitted:
            self.admitted = True
            self.duty.admissions += 1

    def next_timer(self) -> float:
        t = super().next_timer()
        return t if self.retired else min(t, self._next_check)

    def handle_timer(self, now: float) -> list[Send]:
        out = super().handle_timer(now)
        if not self.retired and now >= self._next_check:
            self._next_check = now + CHECK_S
            out.extend(self._weigh(now))
        return out

    def _weigh(self, now: float) -> list[Send]:
        duty = self.duty
        duty.clients_max = max(duty.clients_max, self.primary_count)
        reason = duty.must_leave(now, self.admitted, self.started)
        if reason:
            return self.leave(now, reason)
        level = duty.check(now)
        if level >= STEP_DOWN:
            return self.leave(now, duty.step_down_reason(now))
        if level >= REDIRECT_NEW and now >= self._next_redirect:
            self._next_redirect = now + REDIRECT_EVERY_S
            return self._redirect_newest()
        return []

    def _redirect_newest(self) -> list[Send]:
        """Move the most recently admitted tenth of our primary clients elsewhere."""
        newest = sorted(
            ((e.since, bytes(n)) for n, e in self.clients.items() if e.primary and n != self.me),
            reverse=True,
        )
        out: list[Send] = []
        for _, raw in newest[: max(1, len(newest) // REDIRECT_SHARE)]:
            node = NodeId(raw)
            self._drop_client(node)
            out.append((node, Redirect(SHED_REASON, self._hints(node))))
        self.duty.actions["clients_redirected"] += len(out)
        return out


class SimNodeCore(NodeCore):
    """A NodeCore whose supernode role keeps its owner's caps (see module doc)."""

    def __init__(
        self,
        node_keys: KeyPair,
        user_keys: KeyPair,
        username: str,
        rng: random.Random,
        verifier: SignatureVerifier,
        duty: Callable[[], Duty],
        capacity: Capacity,
        addresses: list[str],
        client_config: ClientConfig,
        supernode_config: SupernodeConfig,
        may_serve: bool,
    ) -> None:
        super().__init__(
            node_keys,
            user_keys,
            username,
            rng,
            verifier,
            capacity=capacity,
            addresses=addresses,
            client_config=client_config,
            supernode_config=supernode_config,
            may_serve=may_serve,
        )
        self.duty = duty  # the machine's duty, made when first needed

    def receive(self, msg: Message, src: NodeId, now: float) -> list[Send]:
        role = self.supernode
        if isinstance(role, DutySupernode):
            if isinstance(msg, Attach):
                refused = role.refuse_attach(msg, src, now)
                if refused is not None:
                    return refused
            elif isinstance(msg, MembershipPage):
                role.page_from(src)
        return super().receive(msg, src, now)

    def become_supernode(
        self, now: float, reason: str, seed: bool = False, role: SupernodeCore | None = None
    ) -> SupernodeCore:
        if role is None:
            cfg = self.supernode_config
            body = MemberBody(self.addresses, self.snapshot().capacity, cfg.max_clients)
            role = DutySupernode(
                self.node_keys, body, now, self.rng, self.verifier, cfg, seed, self.duty()
            )
        return super().become_supernode(now, reason, seed, role)

    def seed_tier(self, records: list[Record], now: float) -> None:
        """A tier that has been running (the warm start): we are one of its members."""
        super().seed_tier(records, now)
        if isinstance(self.supernode, DutySupernode):
            self.supernode.admit()
