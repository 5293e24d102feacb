"""How many QUIC links a node keeps, and which one goes when the table is full (sans-I/O).

Completing a QUIC handshake with a throwaway node key costs an attacker a few ms of CPU
and costs the node ~40 KiB that stays until the link ends, so one address could fill the
whole link table (`LinkLimitsConfig.max_links`) and lock out clients and supernodes alike.
`LinkLimits` bounds inbound links (handshaking and established) per source address and per
prefix (/24 IPv4, /48 IPv6), and when a bound or the table is full it names an *evictable*
link to close (the caller decides what evictable means: inbound, authenticated, and the peer
neither attached to us, nor in the supernode tier, nor dialled by us), the one idle longest
first, instead of refusing every newcomer. A share of the table (`tier_reserve`) is kept for
members of the supernode tier. Established links that stay evictable for
`unattached_idle_s` are named by `expired`. Why loopback is exempt from the per-address
and per-prefix bounds by default: docs/decisions/0013-link-limits.md.

No clock and no I/O here: the caller passes `now` and closes what it is told to close.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from peerphone.errors import LocalProtocolError
from peerphone.ranges import parse_ip, range_of

K = TypeVar("K", bound=Hashable)

MAX_LINKS = 4096  # QUIC connections (handshaking or up, in or out) per node
# Inbound links from one source IP: a household or office NAT puts a few nodes behind one
# address; 16 leaves room for them, while a flood from it holds 16 links (~0.6 MiB).
MAX_LINKS_PER_ADDRESS = 16
# Inbound links from one /24 (IPv4) or /48 (IPv6): one operator's block, 4 addresses' worth
MAX_LINKS_PER_PREFIX = 64
# Room in the table only members of the supernode tier may take: a newcomer that turns out
# not to be a member is closed if it would eat into it (membership gossip needs links).
TIER_RESERVE_LINKS = 256
# An inbound link whose peer does not attach (or is not in the tier) within this long after
# the handshake, or after it was last so, is closed: an Attach comes right after the
# handshake, and a detached client dials its new supernode, not us.
UNATTACHED_IDLE_S = 10.0


@dataclass(frozen=True, slots=True)
class LinkLimitsConfig:
    """The bounds `LinkLimits` applies (defaults: a node with a public address)."""

    max_links: int = MAX_LINKS
    per_address: int = MAX_LINKS_PER_ADDRESS
    per_prefix: int = MAX_LINKS_PER_PREFIX
    tier_reserve: int = TIER_RESERVE_LINKS
    unattached_idle_s: float = UNATTACHED_IDLE_S
    # loopback sources (127.0.0.0/8, ::1) skip the per-address and per-prefix bounds (not
    # the table size, the reserve or the idle rule): only processes on this host use them
    loopback_exempt: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.tier_reserve < self.max_links:
            raise LocalProtocolError("tier_reserve must be below max_links")
        if self.per_address < 1 or self.per_prefix < self.per_address:
            raise LocalProtocolError("need 1 <= per_address <= per_prefix")
        if self.unattached_idle_s <= 0:
            raise LocalProtocolError("unattached_idle_s must be positive")


@dataclass(frozen=True, slots=True)
class Admission(Generic[K]):
    """The answer to a new inbound link: admit it (after closing `evict`) or refuse why."""

    admitted: bool
    evict: tuple[K, ...] = ()
    refused: str = ""  # a counter name: links_per_address, links_per_prefix, too_many_links


@dataclass(slots=True)
class _Entry:
    inbound: bool
    groups: tuple[str, ...]  # the address and prefix groups it counts in (none: exempt)
    last_active_s: float  # opened, came up, or last heard from while not evictable
    up: bool = False
    tier: bool = False


def source_groups(host: str, loopback_exempt: bool) -> tuple[str, ...]:
    """The groups an inbound link from `host` counts in: its address and its prefix.

    An IPv4-mapped IPv6 address counts as the IPv4 address it maps; an exempt loopback
    address counts in none."""
    ip = parse_ip(host)
    if ip is None:
        return ("addr:" + host,)  # never happens for sockets; bounded as an address anyway
    if loopback_exempt and ip.is_loopback:
        return ()
    return (f"addr:{ip}", f"net:{range_of(ip)}")


@dataclass(slots=True)
class LinkLimits(Generic[K]):
    """Counts a node's links by source and picks which to close (see the module docstring).

    The caller reports every link: `opened` (in or out), `up` (authenticated), `active`
    (heard from while not evictable), `closed`; and asks `admit` before accepting an
    inbound connection whose address is proven (after Retry), `settle` once an inbound link
    knows its peer, and `expired` now and then. `evictable(key)` answers for its links.
    """

    config: LinkLimitsConfig = field(default_factory=LinkLimitsConfig)
    _entries: dict[K, _Entry] = field(default_factory=dict)
    _groups: dict[str, set[K]] = field(default_factory=dict)
    _tier_count: int = 0

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, host: str) -> tuple[int, int]:
        """Inbound links from `host`'s address and from its prefix (0, 0 if exempt)."""
        groups = source_groups(host, self.config.loopback_exempt)
        sizes = [len(self._groups.get(group, ())) for group in groups]
        return (sizes[0], sizes[1]) if len(sizes) == 2 else (0, 0)

    # -- what the caller reports ----------------------------------------------------------

    def opened(self, key: K, host: str, inbound: bool, now: float) -> None:
        if key in self._entries:
            raise LocalProtocolError("link reported opened twice")
        groups = source_groups(host, self.config.loopback_exempt) if inbound else ()
        self._entries[key] = _Entry(inbound, groups, now)
        for group in groups:
            self._groups.setdefault(group, set()).add(key)

    def up(self, key: K, tier: bool, now: float) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.up, entry.last_active_s = True, now
            if tier and not entry.tier:
                entry.tier = True
                self._tier_count += 1

    def active(self, key: K, now: float) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_active_s = now

    def closed(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._tier_count -= entry.tier
        for group in entry.groups:
            members = self._groups[group]
            members.discard(key)
            if not members:
                del self._groups[group]

    # -- decisions ------------------------------------------------------------------------

    def admit(self, host: str, evictable: Callable[[K], bool]) -> Admission[K]:
        """May a new inbound link from `host` open, and what must be closed first?"""
        config = self.config
        evict: list[K] = []
        groups = source_groups(host, config.loopback_exempt)
        for group, limit in zip(groups, (config.per_address, config.per_prefix), strict=False):
            members = self._groups.get(group, set())
            if len(members - set(evict)) >= limit:
                victim = self.idlest(evictable, members, evict)
                if victim is None:
                    return Admission(False, refused="links_per_" + group.split(":")[0])
                evict.append(victim)
        if len(self._entries) - len(evict) >= config.max_links:
            victim = self.idlest(evictable, taken=evict)
            if victim is None:
                return Admission(False, refused="too_many_links")
            evict.append(victim)
        return Admission(True, tuple(evict))

    def settle(self, key: K, evictable: Callable[[K], bool]) -> tuple[K, ...]:
        """After `up`: what to close so that links outside the tier leave the reserve free
        (`key` itself when nothing else may go; nothing when it is in the tier)."""
        entry = self._entries.get(key)
        if entry is None or entry.tier:
            return ()
        room = self.config.max_links - self.config.tier_reserve
        if len(self._entries) - self._tier_count <= room:
            return ()
        victim = self.idlest(evictable, taken=[key])
        return (key,) if victim is None else (victim,)

    def expired(self, now: float, evictable: Callable[[K], bool]) -> list[K]:
        """Established inbound links evictable and not active for `unattached_idle_s`, idlest
        first."""
        limit = now - self.config.unattached_idle_s
        stale = [
            (entry.last_active_s, key)
            for key, entry in self._entries.items()
            if entry.inbound and entry.up and entry.last_active_s <= limit and evictable(key)
        ]
        stale.sort(key=lambda item: item[0])
        return [key for _, key in stale]

    def idlest(
        self,
        evictable: Callable[[K], bool],
        among: Iterable[K] | None = None,
        taken: Collection[K] = (),
    ) -> K | None:
        """The established inbound link outside the tier (among `among`, default all) idle
        longest that `evictable` lets go, `taken` aside; None if there is none."""
        best: K | None = None
        best_at = float("inf")
        for key in self._entries if among is None else among:
            entry = self._entries[key]
            if (
                entry.inbound
                and entry.up
                and not entry.tier
                and entry.last_active_s < best_at
                and key not in taken
                and evictable(key)
            ):
                best, best_at = key, entry.last_active_s
        return best
