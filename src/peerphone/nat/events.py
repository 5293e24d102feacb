"""What the TURN core hands its adapter (datagrams to send, relay sockets to open or close)
and the snapshots it reports for `status`.

The two per-packet outputs (`ToClient`, `ToPeer`) are NamedTuples rather than dataclasses:
they are made once per relayed packet, and a tuple costs a third of a frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from peerphone.endpoints import TCP as TCP
from peerphone.endpoints import UDP as UDP
from peerphone.endpoints import Address
from peerphone.errors import LocalProtocolError


class Client(NamedTuple):
    """Where a TURN client talks to us from: the transport, its address and, on TCP, the
    adapter's id of the connection (two connections may come from one address)."""

    transport: str  # UDP or TCP
    address: Address
    connection: int = 0  # 0 on UDP


class ToClient(NamedTuple):
    """Send `data` to a client (over its UDP address or its TCP connection)."""

    client: Client
    data: bytes


class ToPeer(NamedTuple):
    """Send `data` to `peer` from the relayed socket of `allocation`."""

    allocation: int
    peer: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class OpenRelay:
    """Open a relayed UDP socket for `allocation` (IPv4 or IPv6), then call the core's
    `relay_opened` with its address, or `relay_failed`."""

    allocation: int
    family: int  # 4 or 6
    even_port: bool = False  # the client asked for an even port (EVEN-PORT, R bit clear)

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise LocalProtocolError(f"address family must be 4 or 6, not {self.family}")


@dataclass(frozen=True, slots=True)
class CloseRelay:
    """Close the relayed socket of `allocation` (it was deleted or expired)."""

    allocation: int


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the TCP connection of `client` (its allocation ended, RFC 8656 section 5)."""

    client: Client


Output = ToClient | ToPeer | OpenRelay | CloseRelay | CloseClient


@dataclass(frozen=True, slots=True)
class AllocationSnapshot:
    """One allocation as `status` shows it: who, where, what it may reach, what it moved."""

    allocation: int
    username: str
    transport: str
    client: Address
    relayed: Address | None  # None while its socket is being opened
    expires_in_s: float
    permissions: tuple[str, ...]  # peer IPs, sorted
    channels: tuple[tuple[int, Address], ...]  # (number, peer), sorted
    bytes_to_peers: int  # relayed out: client -> peers (payload bytes)
    bytes_from_peers: int  # relayed in: peers -> client (payload bytes)
    packets_to_peers: int
    packets_from_peers: int
    packets_dropped: int  # over its byte quota or the owner's bandwidth cap


@dataclass(frozen=True, slots=True)
class SharingSnapshot:
    """Exactly what this node shares right now: allocations, rate against the cap, drops."""

    allocations: tuple[AllocationSnapshot, ...]
    rate_bytes_per_s: float  # relayed payload bytes per second, over the last few seconds
    cap_bytes_per_s: float  # the owner's bandwidth cap
    total_bytes_relayed: int  # since start, both directions
    # every counter (not only drops), sorted by name: drop_* (packets dropped), refused_*
    # and error_* (requests refused), auth_* (failed authentications), allocations_*, tcp_*
    drops: dict[str, int]
