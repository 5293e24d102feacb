"""The duty keeper (daemon/duty_keeper.py) on a real supernode core over the fake network:
each step of the ladder acts on the core and the relay, is broadcast, and a configured
supernode serves again once the caps allow it."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from peerphone.daemon.config import NodeConfig
from peerphone.daemon.duty import CLIMB_INTERVAL_S, REJOIN_HOLD_S, Step
from peerphone.daemon.duty_keeper import DutyKeeper, DutySource, client_reason, consents
from peerphone.daemon.sharing import RELAY, Ledger, SharingMeter
from peerphone.overlay.events import RoleChanged
from peerphone.overlay.node import NodeCore
from peerphone.wire import Redirect, Send
from tests.support.fakenet import FakeNet
from tests.unit.test_supernode import online_users


class FakeRuntime:
    def __init__(self, net: FakeNet, core: NodeCore) -> None:
        self.net, self.core = net, core

    def now(self) -> float:
        return self.net.now

    def drive(self, sends: list[Send]) -> None:
        self.net.call(self.core, sends)


class FakeSharing:
    def __init__(self, now: float) -> None:
        self.meter = SharingMeter(Ledger(now))
        self.cpu = 5.0

    def cpu_percent(self, window_s: int = 5) -> float:
        return self.cpu


class FakeRelay:
    def __init__(self) -> None:
        self.refusing = False

    def refuse_allocations(self, refuse: bool) -> None:
        self.refusing = refuse

    def drained(self) -> bool:
        return False


class FakeCalls:
    def __init__(self) -> None:
        self.calls: dict[bytes, Any] = {}


class FakeService:
    def __init__(self, net: FakeNet, core: NodeCore, config: NodeConfig) -> None:
        self.config = config
        self.core = core
        self.runtime = FakeRuntime(net, core)
        self.sharing = FakeSharing(net.now)
        self.relay = FakeRelay()
        self.calls = FakeCalls()
        self.policy = None
        self.events: list[dict[str, Any]] = []

    def broadcast(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def test_each_step_acts_on_the_core_and_the_relay_and_a_configured_node_serves_again() -> None:
    net = FakeNet(seed=21)
    tier = net.supernodes([f"sn{i}" for i in range(3)])
    sn = tier[0]
    online_users(net, [sn], 4)  # attached to sn
    assert sn.supernode is not None and sn.supernode.primary_count == 4
    config = NodeConfig(name="sn0", role="supernode")
    service = FakeService(net, sn, config)
    keeper = DutyKeeper(cast(DutySource, service), busy=lambda: False)
    service.sharing.cpu = 90.0  # over cpu_percent = 50
    seen: dict[Step, float] = {}
    start = net.now
    for second in range(int(4 * CLIMB_INTERVAL_S) + 2):
        net.run_until(start + second)
        keeper.tick(net.now)
        seen.setdefault(keeper.ladder.step, net.now)
        step = keeper.ladder.step
        if step is Step.NO_NEW_CLIENTS:
            assert sn.supernode is not None and not sn.supernode.admitting
            assert not service.relay.refusing
        if step is Step.REDIRECT:
            assert sn.supernode is not None and sn.supernode.primary_count == 3  # 1 moved
        if step is Step.NO_NEW_RELAY:
            assert service.relay.refusing
    assert sn.supernode is None and not sn.may_serve
    assert list(seen) == list(Step)[1:]  # one step a tick at most, in order
    assert [e["to"] for e in service.events if e["type"] == "DutyStep"] == [
        s.label for s in list(Step)[1:]
    ]
    redirects = [m for _, src, _, m in net.sent_log if src == sn.id and isinstance(m, Redirect)]
    assert redirects[0].reason == "the supernode sheds duty: CPU: 90 % of a core, cap 50 %"
    role = [e for e in net.events[sn.id] if isinstance(e, RoleChanged)][-1]
    assert not role.supernode and role.reason == "stepped down: CPU: 90 % of a core, cap 50 %"
    view = keeper.view(net.now)
    assert view["consent"]["cpu_percent"] == 50 and view["step"] == "hand over and step down"
    # calm, but held off; then, configured --role supernode, it serves by itself again
    service.sharing.cpu = 5.0
    down_at = seen[Step.STEP_DOWN]
    keeper.tick(down_at + REJOIN_HOLD_S - 1)
    assert sn.supernode is None and not sn.may_serve
    keeper.tick(down_at + REJOIN_HOLD_S)
    assert sn.supernode is not None and sn.may_serve and sn.supernode.admitting
    assert keeper.ladder.step is Step.SERVING


def test_a_lasting_cause_keeps_a_client_from_serving() -> None:
    net = FakeNet(seed=22)
    (sn,) = net.supernodes(["sn0"])
    config = NodeConfig(name="sn0", role="auto")
    config.share.day_mb = 1
    service = FakeService(net, sn, config)
    service.sharing.meter.ledger.add(RELAY, 600_000, 500_000, net.now)  # 1.1 MB today
    keeper = DutyKeeper(cast(DutySource, service), busy=lambda: False)
    for second in range(int(4 * CLIMB_INTERVAL_S) + 2):
        keeper.tick(net.now + second)
    assert sn.supernode is None
    keeper.tick(net.now + REJOIN_HOLD_S * 10)
    assert not sn.may_serve and sn.supernode is None  # elected nodes wait, and here decline
    assert keeper.ladder.may_serve(net.now) == "volume today: 1.1 MB of 1.0 MB"


def test_consent_and_the_reason_of_a_client() -> None:
    auto = NodeConfig(name="a")
    assert consents(auto, None)
    assert client_reason(auto, None).startswith("client: not elected")
    never = dataclasses.replace(auto, share=dataclasses.replace(auto.share, max_clients=0))
    assert not consents(never, None)
    assert client_reason(never, None) == "client: share.max_clients = 0 (never serves)"
    client = dataclasses.replace(auto, role="client")
    assert not consents(client, None)
    assert client_reason(client, None) == "client: --role client (never serves)"
