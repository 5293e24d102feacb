"""The daemon's side of supernode duty: measure every second, ask the ladder, act.

`DutyKeeper.tick` runs right after each sharing sample (`sharing.py`): it turns what the
node measured into `duty.Measures`, feeds `duty.DutyLadder`, and applies its step to the
core and the relay — stop admitting clients, redirect the newest, refuse new relay
allocations, hand over and step down — each change logged, counted, broadcast as a
`DutyStep` event and shown by `peerphone sharing` (``duty``). It also keeps the node from
taking the supernode role while the ladder declines it, stops a draining relay once its
last allocation ended, and lets a node configured `--role supernode` serve again once the
caps allow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from peerphone.daemon.calls import CallManager
from peerphone.daemon.config import NodeConfig, ShareConfig
from peerphone.daemon.duty import (
    MIN_REDIRECT,
    REDIRECT_SHARE,
    Caps,
    DutyLadder,
    Measures,
    Step,
    StepChange,
    parse_quiet_hours,
)
from peerphone.daemon.policy import Policy
from peerphone.daemon.relay import Relay
from peerphone.daemon.sharing import CATEGORIES, CPU_CAP_WINDOW_S, DIRECTORY, RELAY, Sharing
from peerphone.overlay.node import NodeCore
from peerphone.runtime.node_runtime import NodeRuntime

log = logging.getLogger("peerphone.duty")

BUSY_LOAD_PER_CPU = 0.75  # 1-min load average per CPU above which the machine is busy


def caps_of(share: ShareConfig) -> Caps:
    """The ladder's caps from the owner's `[share]` (already checked)."""
    return Caps(
        max_clients=share.max_clients,
        relay_bytes_per_s=share.up_kbps * 1000 / 8,
        directory_bytes_per_s=share.directory_kbps * 1000 / 8,
        day_bytes=share.day_mb * 1_000_000,
        month_bytes=share.month_mb * 1_000_000,
        cpu_percent=float(share.cpu_percent),
        only_when_idle=share.only_when_idle,
        quiet_hours=parse_quiet_hours(share.quiet_hours),
    )


def consents(config: NodeConfig, policy: Policy | None) -> bool:
    """Whether the owner consents to supernode duty at all: not `role = client`, not
    `max_clients = 0`, not managed by an organisation's policy."""
    return config.role != "client" and config.share.max_clients > 0 and policy is None


def client_reason(config: NodeConfig, policy: Policy | None) -> str:
    """Why a node that does not start as a supernode is a client."""
    if policy is not None:
        return f"client: managed by {policy.path} (never serves)"
    if config.role == "client":
        return "client: --role client (never serves)"
    if not config.share.max_clients:
        return "client: share.max_clients = 0 (never serves)"
    return "client: not elected (role auto: serves only when the tier asks)"


def machine_busy() -> bool:
    """Whether the machine's 1-minute load average says it is busy (per CPU)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return False
    return load / (os.cpu_count() or 1) >= BUSY_LOAD_PER_CPU


class DutySource(Protocol):
    """What the keeper reads and drives of the node's service (the daemon's NodeService)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def runtime(self) -> NodeRuntime: ...
    @property
    def core(self) -> NodeCore: ...
    @property
    def sharing(self) -> Sharing: ...
    @property
    def relay(self) -> Relay: ...
    @property
    def calls(self) -> CallManager: ...
    @property
    def policy(self) -> Policy | None: ...
    def broadcast(self, event: dict[str, Any]) -> None: ...


class DutyKeeper:
    """Applies the owner's caps to one running node (see the module docstring)."""

    def __init__(self, service: DutySource, busy: Callable[[], bool] = machine_busy) -> None:
        self.service = service
        self.busy = busy
        self.ladder = DutyLadder(caps_of(service.config.share), time.time())
        self._directory_up = 0  # the sharing meter's directory bytes up at the last tick
        self._stepped_down = False  # by the ladder, since the node last served
        self._stopping: asyncio.Task[None] | None = None  # a drained relay's stop

    def tick(self, now: float) -> None:
        """One sample's worth of duty: measure, ask the ladder, act."""
        service = self.service
        core = service.core
        meter = service.sharing.meter
        ledger = meter.ledger
        directory_up = meter.since_start[DIRECTORY].up
        snapshot = core.snapshot().supernode
        measures = Measures(
            directory_up_bytes=directory_up - self._directory_up,
            relay_up_bytes_per_s=meter.rate(RELAY, now)[0],
            day_bytes=sum(ledger.today[c].up + ledger.today[c].down for c in CATEGORIES),
            month_bytes=sum(
                ledger.this_month[c].up + ledger.this_month[c].down for c in CATEGORIES
            ),
            cpu_percent=service.sharing.cpu_percent(CPU_CAP_WINDOW_S),
            clients=snapshot.clients_served if snapshot is not None else 0,
            owner_in_call=any(not r.end_reason for r in service.calls.calls.values()),
            machine_busy=self.busy() if self.ladder.caps.only_when_idle else False,
            minute_of_day=_local_minute(now),
        )
        self._directory_up = directory_up
        for change in self.ladder.update(measures, now, core.is_supernode):
            self._apply(change, now)
        step = self.ladder.step
        core.set_admitting(step < Step.NO_NEW_CLIENTS)
        service.relay.refuse_allocations(step >= Step.NO_NEW_RELAY)
        declined = self.ladder.may_serve(now)
        core.may_serve = consents(service.config, service.policy) and not declined
        if service.relay.drained() and self._stopping is None:
            log.info("relay drained: its last allocation ended")
            self._stopping = asyncio.get_running_loop().create_task(service.relay.stop())
            self._stopping.add_done_callback(self._stopped)
        if self._stepped_down and not declined and not core.is_supernode:
            self._stepped_down = False
            if service.config.role == "supernode":  # configured to serve: serve again
                self.serve("configured: --role supernode; the caps allow it again")

    def serve(self, reason: str) -> None:
        """Take the supernode role as configured (`--role supernode`): at the start, and
        again once the caps allow it after a step-down."""
        core, runtime = self.service.core, self.service.runtime
        now = runtime.now()
        sn = core.become_supernode(now, reason, seed=True)
        runtime.drive(core.join_known_tier(now))
        core.learn_supernodes([sn.record], now)  # our own user may attach to us

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping = None
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping the drained relay failed", exc_info=task.exception())

    def _apply(self, change: StepChange, now: float) -> None:
        service = self.service
        runtime = service.runtime
        up = change.new > change.old
        (log.warning if up else log.info)(
            "supernode duty: %s -> %s (%s)", change.old.label, change.new.label, change.reason
        )
        service.broadcast({"type": "DutyStep", "ts": now, **change.view()})
        if up and change.new is Step.REDIRECT:
            snapshot = service.core.snapshot().supernode
            served = snapshot.clients_served if snapshot is not None else 0
            count = max(MIN_REDIRECT, int(served * REDIRECT_SHARE)) if served else 0
            reason = f"the supernode sheds duty: {change.reason}"
            runtime.drive(service.core.redirect_newest(count, reason, runtime.now()))
            log.info("redirected the %d newest of %d client(s) to other supernodes", count, served)
        if up and change.new is Step.STEP_DOWN:
            self._stepped_down = True
            reason = f"stepped down: {change.reason}"
            runtime.drive(service.core.step_down(runtime.now(), reason))

    def view(self, now: float) -> dict[str, Any]:
        """The owner's consent and the ladder, for `peerphone sharing` (``duty``)."""
        return {"consent": asdict(self.service.config.share), **self.ladder.view(now)}


def _local_minute(now: float) -> int:
    local = time.localtime(now)
    return local.tm_hour * 60 + local.tm_min
