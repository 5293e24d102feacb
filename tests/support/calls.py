"""Call-signaling helpers for tests on the fake network."""

from __future__ import annotations

from peerphone.overlay.events import (
    Event,
)
from peerphone.overlay.node import NodeCore
from tests.support.fakenet import FakeNet

OFFER = "v=0\r\na=fingerprint:sha-256 AA:BB:CC\r\n"


def of(net: FakeNet, core: NodeCore, kind: type[Event]) -> list[Event]:
    return [e for e in net.events[core.id] if isinstance(e, kind)]
