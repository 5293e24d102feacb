"""TURN allocations and the table that holds them: lookups by id and by client, counts per
user and per client address range, the relayed ports in use, expiry in time order, and the
purge of expired permissions and channels."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from peerphone.endpoints import Address
from peerphone.nat.events import AllocationSnapshot, Client
from peerphone.nat.limits import CHANNEL_QUARANTINE_S, HOUSEKEEPING_INTERVAL_S, address_prefix


@dataclass(frozen=True, slots=True)
class Auth:
    """The credentials a request was authenticated with."""

    username: str
    key: bytes  # the long-term key: signs our responses
    algorithm: str  # "sha1" or "sha256", as the request was signed
    user: str = ""  # the "<who>" inside the username: whom the credential was issued to


@dataclass(slots=True)
class Channel:
    """A channel binding; after `expires` its number and peer stay reserved a while."""

    peer: Address
    expires: float


@dataclass(slots=True, eq=False)
class Allocation:
    """One client's relayed transport address and everything hanging off it."""

    id: int
    client: Client
    username: str
    user: str  # whom its credential was issued to: the quota's key
    prefix: str  # the client's address range (/24, /48): the range cap's key
    key: bytes  # the long-term key of the Allocate: signs what we send unasked
    algorithm: str
    family: int  # 4 or 6
    expires: float
    allocate_transaction: bytes
    relayed: Address | None = None  # None until the adapter opened its socket
    allocate_response: bytes = b""  # resent to a retransmitted Allocate
    permissions: dict[str, float] = field(default_factory=dict)  # peer IP -> expiry
    channels: dict[int, Channel] = field(default_factory=dict)
    peer_channels: dict[Address, int] = field(default_factory=dict)
    bytes_to_peers: int = 0
    bytes_from_peers: int = 0
    packets_to_peers: int = 0
    packets_from_peers: int = 0
    packets_dropped: int = 0

    def snapshot(self, now: float) -> AllocationSnapshot:
        return AllocationSnapshot(
            allocation=self.id,
            username=self.username,
            transport=self.client.transport,
            client=self.client.address,
            relayed=self.relayed,
            expires_in_s=max(0.0, self.expires - now),
            permissions=tuple(sorted(ip for ip, t in self.permissions.items() if t > now)),
            channels=tuple(
                sorted((n, c.peer) for n, c in self.channels.items() if c.expires > now)
            ),
            bytes_to_peers=self.bytes_to_peers,
            bytes_from_peers=self.bytes_from_peers,
            packets_to_peers=self.packets_to_peers,
            packets_from_peers=self.packets_from_peers,
            packets_dropped=self.packets_dropped,
        )


class AllocationTable:
    """Every allocation of a server, by id and by client, with one expiry timer each."""

    def __init__(self, now: float, relayed_ports: Counter[int] | None = None) -> None:
        self.by_id: dict[int, Allocation] = {}
        self.by_client: dict[Client, Allocation] = {}
        self.per_user: Counter[str] = Counter()
        self.per_prefix: Counter[str] = Counter()
        # relayed port -> allocations on it (shared with `OwnAddresses`: never a peer)
        # and relayed address -> its allocation (sent to, it is handed over inside)
        self.by_relayed: dict[Address, Allocation] = {}
        self.relayed_ports: Counter[int] = Counter() if relayed_ports is None else relayed_ports
        self._expiries: list[tuple[float, int]] = []  # (expiry, id); lazily updated
        self._ids = itertools.count(1)
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S

    def add(
        self, client: Client, auth: Auth, family: int, expires: float, transaction: bytes
    ) -> Allocation:
        alloc = Allocation(
            id=next(self._ids),
            client=client,
            username=auth.username,
            user=auth.user or auth.username,
            prefix=address_prefix(client.address[0]),
            key=auth.key,
            algorithm=auth.algorithm,
            family=family,
            expires=expires,
            allocate_transaction=transaction,
        )
        self.by_id[alloc.id] = alloc
        self.by_client[client] = alloc
        self.per_user[alloc.user] += 1
        self.per_prefix[alloc.prefix] += 1
        heapq.heappush(self._expiries, (expires, alloc.id))
        if len(self._expiries) > 2 * len(self.by_id) + 64:  # deleted ones linger: rebuild
            self._expiries = [(a.expires, a.id) for a in self.by_id.values()]
            heapq.heapify(self._expiries)
        return alloc

    def opened(self, alloc: Allocation, relayed: Address) -> None:
        """`alloc`'s relayed socket is open at `relayed`."""
        self._closed(alloc)
        alloc.relayed = relayed
        self.relayed_ports[relayed[1]] += 1
        self.by_relayed[relayed] = alloc

    def forget(self, alloc: Allocation) -> None:
        del self.by_id[alloc.id]
        if self.by_client.get(alloc.client) is alloc:
            del self.by_client[alloc.client]
        _decrement(self.per_user, alloc.user)
        _decrement(self.per_prefix, alloc.prefix)
        self._closed(alloc)

    def _closed(self, alloc: Allocation) -> None:
        if alloc.relayed is not None:
            _decrement(self.relayed_ports, alloc.relayed[1])
            if self.by_relayed.get(alloc.relayed) is alloc:
                del self.by_relayed[alloc.relayed]

    def expire(self, now: float) -> list[Allocation]:
        """Forget and return the allocations that expired by `now`; purge expired
        permissions and channels (after their quarantine) every few seconds."""
        expired = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, allocation = heapq.heappop(heap)
            alloc = self.by_id.get(allocation)
            if alloc is None:
                continue
            if alloc.expires <= now:
                self.forget(alloc)
                expired.append(alloc)
            else:  # refreshed since: one heap entry per allocation, at its new expiry
                heapq.heappush(heap, (alloc.expires, allocation))
        if now >= self._next_housekeeping:
            self._purge(now)
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
        return expired

    def next_timer(self) -> float:
        if self._expiries:
            return min(self._expiries[0][0], self._next_housekeeping)
        return self._next_housekeeping

    def _purge(self, now: float) -> None:
        reserved_until = now - CHANNEL_QUARANTINE_S
        for alloc in self.by_id.values():
            for ip in [ip for ip, expiry in alloc.permissions.items() if expiry <= now]:
                del alloc.permissions[ip]
            for number in [n for n, c in alloc.channels.items() if c.expires <= reserved_until]:
                channel = alloc.channels.pop(number)
                if alloc.peer_channels.get(channel.peer) == number:
                    del alloc.peer_channels[channel.peer]

    def snapshot(self, now: float) -> tuple[AllocationSnapshot, ...]:
        return tuple(self.by_id[i].snapshot(now) for i in sorted(self.by_id))


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
