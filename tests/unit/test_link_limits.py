"""The link limits on their own: per-address and per-prefix bounds, eviction, the reserve."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest

from peerphone.errors import LocalProtocolError
from peerphone.identity import KeyPair, NodeId
from peerphone.runtime.link_limits import (
    LinkLimits,
    LinkLimitsConfig,
    source_groups,
)
from peerphone.runtime.links import LinkManager

SMALL = LinkLimitsConfig(max_links=10, per_address=2, per_prefix=3, tier_reserve=2)


def everyone(key: str) -> bool:
    return True


def no_one(key: str) -> bool:
    return False


def fill(limits: LinkLimits[str], host: str, count: int, start: float = 0.0) -> list[str]:
    """`count` established inbound links from `host`, opened at start, start + 1, ..."""
    keys = []
    for i in range(count):
        key = f"{host}#{i}"
        assert limits.admit(host, no_one).admitted
        limits.opened(key, host, inbound=True, now=start + i)
        limits.up(key, tier=False, now=start + i)
        keys.append(key)
    return keys


def test_groups_are_the_address_and_its_prefix() -> None:
    assert source_groups("203.0.113.7", True) == ("addr:203.0.113.7", "net:203.0.113.0/24")
    assert source_groups("::ffff:203.0.113.7", True) == source_groups("203.0.113.7", True)
    assert source_groups("2001:db8:1:2::5", True) == (
        "addr:2001:db8:1:2::5",
        "net:2001:db8:1::/48",
    )
    assert source_groups("127.0.0.1", True) == ()
    assert source_groups("::1", True) == ()
    assert source_groups("127.0.0.1", False) == ("addr:127.0.0.1", "net:127.0.0.0/24")


def test_one_address_gets_its_bound_then_is_refused_when_nothing_may_go() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)
    fill(limits, "198.51.100.1", 2)
    assert limits.count("198.51.100.1") == (2, 2)
    refused = limits.admit("198.51.100.1", no_one)
    assert not refused.admitted and refused.refused == "links_per_addr"
    assert limits.admit("198.51.100.2", no_one).admitted  # another address of the /24


def test_a_full_address_gives_up_its_link_idle_longest() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)
    old, new = fill(limits, "198.51.100.1", 2)
    limits.active(old, now=5.0)  # heard from since: now `new` is idle longest
    admission = limits.admit("198.51.100.1", everyone)
    assert admission.admitted and admission.evict == (new,)


def test_a_prefix_is_bounded_across_its_addresses() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)
    fill(limits, "198.51.100.1", 2)
    fill(limits, "198.51.100.2", 1, start=10)
    refused = limits.admit("198.51.100.3", no_one)
    assert refused.refused == "links_per_net"
    assert limits.admit("198.51.101.3", no_one).admitted  # the next /24
    admission = limits.admit("198.51.100.3", everyone)
    assert admission.evict == ("198.51.100.1#0",)


def test_handshaking_links_count_but_are_never_evicted() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)
    for key in ("a", "b"):
        limits.opened(key, "198.51.100.1", inbound=True, now=0.0)
    assert limits.admit("198.51.100.1", everyone).refused == "links_per_addr"


def test_outbound_links_are_not_bounded_per_address_nor_evicted() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)
    for key in ("a", "b", "c"):
        limits.opened(key, "198.51.100.1", inbound=False, now=0.0)
        limits.up(key, tier=False, now=0.0)
    assert limits.count("198.51.100.1") == (0, 0)
    assert limits.admit("198.51.100.1", everyone).admitted
    assert limits.idlest(everyone) is None


def test_loopback_is_exempt_from_the_source_bounds_only_by_choice() -> None:
    exempt: LinkLimits[str] = LinkLimits(SMALL)
    fill(exempt, "127.0.0.1", 5)
    assert exempt.admit("127.0.0.1", no_one).admitted
    bounded: LinkLimits[str] = LinkLimits(dataclasses.replace(SMALL, loopback_exempt=False))
    fill(bounded, "127.0.0.1", 2)
    assert bounded.admit("127.0.0.1", no_one).refused == "links_per_addr"


def test_a_full_table_evicts_the_idlest_evictable_link_anywhere() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)
    keys = fill(limits, "127.0.0.1", 10)  # exempt from the source bounds, not the table
    assert limits.admit("127.0.0.2", no_one).refused == "too_many_links"
    protected = set(keys[:3])
    admission = limits.admit("127.0.0.2", lambda key: key not in protected)
    assert admission.admitted and admission.evict == (keys[3],)


def test_the_reserve_is_for_the_tier() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)  # 10 links, 2 kept for the tier
    keys = fill(limits, "127.0.0.1", 8)
    limits.opened("member", "127.0.0.9", inbound=True, now=20.0)
    limits.up("member", tier=True, now=20.0)
    assert limits.settle("member", everyone) == ()
    limits.opened("stranger", "127.0.0.9", inbound=True, now=21.0)
    limits.up("stranger", tier=False, now=21.0)
    assert limits.settle("stranger", no_one) == ("stranger",)  # nothing else may go
    assert limits.settle("stranger", everyone) == (keys[0],)
    assert limits.idlest(everyone, taken=keys) == "stranger"  # members are never picked


def test_links_that_never_attach_expire() -> None:
    limits: LinkLimits[str] = LinkLimits(SMALL)  # unattached_idle_s 10
    a, b = fill(limits, "198.51.100.1", 2)
    limits.opened("shaking", "198.51.100.7", inbound=True, now=0.0)
    assert limits.expired(9.0, everyone) == []
    assert limits.expired(11.0, everyone) == [a, b]
    limits.active(a, now=10.5)
    assert limits.expired(11.0, everyone) == [b]
    assert limits.expired(11.0, lambda key: key != b) == []
    limits.closed(b)
    limits.closed(b)  # twice is harmless
    assert limits.count("198.51.100.1") == (1, 2) and len(limits) == 2


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        LinkLimitsConfig(max_links=10, tier_reserve=10)
    with pytest.raises(LocalProtocolError):
        LinkLimitsConfig(per_address=8, per_prefix=4)
    with pytest.raises(LocalProtocolError):
        LinkLimitsConfig(unattached_idle_s=0)
    limits: LinkLimits[str] = LinkLimits(SMALL)
    limits.opened("a", "198.51.100.1", inbound=True, now=0.0)
    with pytest.raises(LocalProtocolError):
        limits.opened("a", "198.51.100.1", inbound=True, now=0.0)


# -- the link manager applying them, on real sockets ------------------------------------

WAIT_S = 5.0


class Side:
    """A `LinkManager` on 127.0.0.1 with its own throwaway key."""

    def __init__(self, limits: LinkLimitsConfig, protected: Callable[[NodeId], bool]) -> None:
        self.keys = KeyPair.generate()
        self.lost: list[NodeId] = []
        self.links = LinkManager(
            self.keys,
            lambda peer, msg: None,
            self.lost.append,
            Counter(),
            limits=limits,
            protected=protected,
        )

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self.links, local_addr=("127.0.0.1", 0)
        )
        host, port = transport.get_extra_info("sockname")[:2]
        return host, port


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (on counters: nothing to await) until it holds, or TimeoutError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


def test_the_manager_closes_unattached_links_and_evicts_for_newcomers() -> None:
    limits = LinkLimitsConfig(
        max_links=64, tier_reserve=8, per_address=2, loopback_exempt=False, unattached_idle_s=0.4
    )
    attached: set[NodeId] = set()

    async def scenario() -> None:
        server = Side(limits, attached.__contains__)
        clients = [Side(LinkLimitsConfig(), lambda peer: True) for _ in range(3)]
        try:
            addr = await server.start()
            for client in clients:
                await client.start()
            clients[0].links.dial_address(addr)
            clients[1].links.dial_address(addr)
            await until(lambda: len(server.links.links) == 2)
            attached.add(clients[0].keys.node_id)  # as if it attached
            clients[2].links.dial_address(addr)  # the address is full: the idlest goes
            await until(lambda: clients[2].keys.node_id in server.links.links)
            assert clients[1].keys.node_id not in server.links.links
            assert clients[0].keys.node_id in server.links.links
            assert server.links.stats["links_evicted"] == 1
            # clients[2] never attaches: closed after unattached_idle_s; clients[0] stays
            await until(lambda: server.links.stats["links_unattached_closed"] == 1)
            assert sorted(server.links.links) == [clients[0].keys.node_id]
        finally:
            for side in (server, *clients):
                side.links.close()

    asyncio.run(scenario())
