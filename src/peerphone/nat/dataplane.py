"""The relay's data plane: ChannelData and Send indications from clients, datagrams from
peers — each checked against its allocation's channels and permissions, the node's own
addresses (`own.py`: permissions are per IP, so every packet), its byte quota and the
owner's bandwidth cap (charged with the whole IP packet that leaves; when the allocations
ask for more than it, the oldest go first: `OldestFirst`), then framed for the other side.
This is the hot path: no STUN decoding for ChannelData, one dict lookup per check, counters
only for drops."""

from __future__ import annotations

import random
from collections import Counter

from peerphone.endpoints import Address
from peerphone.nat import stun
from peerphone.nat.allocation import Allocation, AllocationTable
from peerphone.nat.events import TCP, Client, Output, ToClient, ToPeer
from peerphone.nat.limits import OldestFirst, RateMeter, TokenBucket, TurnLimits, wire_bytes
from peerphone.nat.own import OWN_RELAYED_PORT, OwnAddresses


class DataPlane:
    """Relays payloads between clients and peers for the allocations in `table`."""

    def __init__(
        self,
        table: AllocationTable,
        limits: TurnLimits,
        stats: Counter[str],
        bucket: TokenBucket,
        rng: random.Random,
        own: OwnAddresses,
    ) -> None:
        self.table = table
        self.limits = limits
        self.stats = stats
        self.bucket = bucket  # the owner's cap, shared by every allocation
        self.oldest_first = OldestFirst(bucket.rate)  # under it, calls in progress go first
        self.meter = RateMeter()
        self.rng = rng  # transaction ids of Data indications
        self.own = own  # the node itself: never sent to, never heard from
        self.total_bytes_relayed = 0

    def channel_data(self, data: bytes, client: Client, now: float) -> list[Output]:
        """ChannelData from a client: to the peer bound to its channel."""
        alloc = self.table.by_client.get(client)
        if alloc is None:
            self.stats["drop_channel_no_allocation"] += 1
            return []
        size = len(data)
        length = (data[2] << 8) | data[3] if size >= 4 else size
        if 4 + length > size:  # UDP may carry padding after it, never less
            self.stats["drop_malformed"] += 1
            return []
        channel = alloc.channels.get((data[0] << 8) | data[1])
        if channel is None or channel.expires <= now:
            self.stats["drop_channel_unbound"] += 1
            return []
        return self._to_peer(alloc, channel.peer, data[4 : 4 + length], now)

    def send_indication(
        self, message: stun.StunMessage, client: Client, now: float
    ) -> list[Output]:
        """A Send indication from a client (unauthenticated, like ChannelData: the
        5-tuple names the allocation, and only permitted peers are reached)."""
        alloc = self.table.by_client.get(client)
        if alloc is None:
            self.stats["drop_indication_no_allocation"] += 1
            return []
        payload = message.attributes.get("DATA")
        if payload is None or len(message.peers) != 1 or message.unknown_required:
            self.stats["drop_malformed_indication"] += 1
            return []
        return self._to_peer(alloc, message.peers[0], payload, now)

    def from_peer(self, allocation: int, data: bytes, peer: Address, now: float) -> list[Output]:
        """A datagram from `peer` at a relayed socket: ChannelData if a channel is bound
        to the peer, else a Data indication."""
        alloc = self.table.by_id.get(allocation)
        if alloc is None:
            self.stats["drop_peer_no_allocation"] += 1
            return []
        own = self.own.refusal(peer)
        if own is not None:  # our own sockets and services never talk to a client
            self.stats["drop_from_own_" + own] += 1
            return []
        return self._to_client(alloc, data, peer, now)

    def _to_client(self, alloc: Allocation, data: bytes, peer: Address, now: float) -> list[Output]:
        expiry = alloc.permissions.get(peer[0])
        if expiry is None or expiry <= now:
            self.stats["drop_peer_no_permission"] += 1
            return []
        size = len(data)
        if size > self.limits.max_payload_bytes:
            self.stats["drop_oversized"] += 1
            return []
        number = alloc.peer_channels.get(peer)
        if number is not None and alloc.channels[number].expires > now:
            frame = bytes((number >> 8, number & 0xFF, size >> 8, size & 0xFF)) + data
            if alloc.client.transport == TCP and size % 4:
                frame += b"\x00" * (-size % 4)  # ChannelData is padded on streams
        else:
            frame = stun.data_indication(self.rng.randbytes(12), peer, data)
        if not self._account(alloc, size, wire_bytes(frame, alloc.client.address), now):
            return []
        alloc.bytes_from_peers += size
        alloc.packets_from_peers += 1
        return [ToClient(alloc.client, frame)]

    def _to_peer(
        self, alloc: Allocation, peer: Address, payload: bytes, now: float
    ) -> list[Output]:
        if alloc.relayed is None:
            self.stats["drop_relay_not_open"] += 1
            return []
        expiry = alloc.permissions.get(peer[0])
        if expiry is None or expiry <= now:
            self.stats["drop_no_permission"] += 1
            return []
        own = self.own.refusal(peer)
        target = None
        if own is not None:
            target = self.table.by_relayed.get(peer) if own == OWN_RELAYED_PORT else None
            if target is None or target is alloc:
                self.stats["drop_to_own_" + own] += 1
                return []
        size = len(payload)
        if size > self.limits.max_payload_bytes:
            self.stats["drop_oversized"] += 1
            return []
        # handed over inside the relay: the bucket is charged for what leaves to the client
        wire = 0 if target is not None else wire_bytes(payload, peer)
        if not self._account(alloc, size, wire, now):
            return []
        alloc.bytes_to_peers += size
        alloc.packets_to_peers += 1
        if target is not None:
            # another allocation's relayed address: handed over inside the relay, as if
            # it came from ours (two clients of this relay, both relayed: a firewalled
            # pair's only path); no packet goes to our own socket
            self.stats["relayed_between_allocations"] += 1
            return self._to_client(target, payload, alloc.relayed, now)
        return [ToPeer(alloc.id, peer, payload)]

    def _account(self, alloc: Allocation, size: int, wire: int, now: float) -> bool:
        """Charge `size` relayed payload bytes to `alloc`'s quota, and the `wire` bytes
        (the whole IP packet that leaves; 0: none leaves) to the owner's cap."""
        if alloc.bytes_to_peers + alloc.bytes_from_peers + size > self.limits.max_allocation_bytes:
            alloc.packets_dropped += 1
            self.stats["drop_allocation_quota"] += 1
            return False
        if (
            wire
            and not self.oldest_first.admits(alloc.id, wire, now)
            and self.bucket.level(now) < self.bucket.capacity / 2
        ):
            alloc.packets_dropped += 1
            self.stats["drop_bandwidth_newest_first"] += 1
            return False
        if wire and not self.bucket.take(wire, now):
            alloc.packets_dropped += 1
            self.stats["drop_bandwidth_cap"] += 1
            return False
        self.meter.add(size, now)
        self.total_bytes_relayed += size
        return True
