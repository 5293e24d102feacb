"""The relay's limits: per-allocation lifetimes and quotas, table sizes, the owner's
bandwidth cap (a token bucket) and the rate meter behind "what am I sharing right now".

coturn's defaults are unlimited; ours are not. A voice call relays ~50 packets/s each
way at 24-40 kbit/s, i.e. ~15-25 MB per direction per hour: 64 MiB per allocation covers
an hour-long call both ways, and the lifetime cap makes a client come back (with fresh
credentials, see `credentials.py`) at least once an hour.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerphone.endpoints import Address
from peerphone.errors import LocalProtocolError
from peerphone.ranges import parse_ip, range_of

DEFAULT_LIFETIME_S = 600  # RFC 8656's default allocation lifetime
MAX_LIFETIME_S = 3600  # a longer LIFETIME is cut down to this
PERMISSION_LIFETIME_S = 300  # RFC 8656 section 9 (not negotiable)
CHANNEL_LIFETIME_S = 600  # RFC 8656 section 12
CHANNEL_QUARANTINE_S = 300  # an expired channel's number/peer stay reserved this long
MAX_ALLOCATION_BYTES = 64 * 1024 * 1024  # relayed payload per allocation, both ways
# per user: the "<who>" inside the credential (the node id the supernode issued it to,
# bound by the relay's HMAC), not the username string, which changes with every grant
MAX_ALLOCATIONS_PER_USER = 4  # a call needs 1-2 (one per ICE transport)
MAX_ALLOCATIONS = 1000  # on this node, in total
# from one client address range (/24 IPv4, /48 IPv6): throwaway node keys are free, so
# the per-user quota alone lets one range fill the table. A tenth: ten ranges must join
# to fill it, and a range of 25 users each in a relayed call at once still fits.
MAX_ALLOCATIONS_PER_PREFIX = MAX_ALLOCATIONS // 10
MAX_PERMISSIONS_PER_ALLOCATION = 32  # peer IPs (a call's remote candidates: a handful)
MAX_CHANNELS_PER_ALLOCATION = 32
MAX_PAYLOAD_BYTES = 1500  # a relayed UDP payload above this is dropped (voice: ~60-160)
BUCKET_BURST_S = 0.2  # the bandwidth bucket holds this many seconds of the cap (any 10 s
# window then carries at most 102 % of the cap)
ALLOWANCE_SLACK = 0.25  # a call in progress may send this much more than the second before
IPV4_UDP_HEADER_BYTES = 20 + 8  # what the cap charges per datagram, besides its payload
IPV6_UDP_HEADER_BYTES = 40 + 8
RATE_WINDOW_S = 5  # the snapshot's rate averages the last this many whole seconds
HOUSEKEEPING_INTERVAL_S = 30.0  # expired permissions and channels are purged this often
# RFC 8656 narrowed channel numbers to 0x4000-0x4FFF, but RFC 5766 clients (coturn's own
# uclient among them) still pick them up to 0x7FFE; on the server's port nothing else
# starts with 0x50-0x7F (RFC 7983 leaves it unassigned), so both ranges are accepted.
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFE
CHANNEL_FIRST_BYTES = range(CHANNEL_MIN >> 8, (CHANNEL_MAX >> 8) + 1)  # 0x40..0x7F


@dataclass(frozen=True, slots=True)
class TurnLimits:
    """Every limit of one relay; the defaults are the named constants above."""

    default_lifetime_s: int = DEFAULT_LIFETIME_S
    max_lifetime_s: int = MAX_LIFETIME_S
    max_allocation_bytes: int = MAX_ALLOCATION_BYTES
    max_allocations_per_user: int = MAX_ALLOCATIONS_PER_USER
    max_allocations: int = MAX_ALLOCATIONS
    max_allocations_per_prefix: int = MAX_ALLOCATIONS_PER_PREFIX
    max_permissions_per_allocation: int = MAX_PERMISSIONS_PER_ALLOCATION
    max_channels_per_allocation: int = MAX_CHANNELS_PER_ALLOCATION
    max_payload_bytes: int = MAX_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        if not 0 < self.default_lifetime_s <= self.max_lifetime_s:
            raise LocalProtocolError("need 0 < default_lifetime_s <= max_lifetime_s")
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise LocalProtocolError(f"{name} must be positive")


def wire_bytes(data: bytes, to: Address) -> int:
    """What a UDP datagram of `data` to `to` is on the wire, as the cap counts it: the
    whole IP packet (a TCP client's frame: counted the same, without TCP's own headers)."""
    return len(data) + (IPV6_UDP_HEADER_BYTES if ":" in to[0] else IPV4_UDP_HEADER_BYTES)


def address_prefix(ip: str) -> str:
    """The client range `ip` belongs to for `max_allocations_per_prefix`: its /24 (IPv4,
    also inside ::ffff:0:0/96) or its /48 (IPv6)."""
    address = parse_ip(ip)
    return ip if address is None else str(range_of(address))


class TokenBucket:
    """Bytes per second with a burst; `take` answers whether `size` bytes may go now."""

    def __init__(self, rate_bytes_per_s: float, now: float, burst_s: float = BUCKET_BURST_S):
        if rate_bytes_per_s <= 0:
            raise LocalProtocolError("the bandwidth cap must be positive (bytes/s)")
        self.rate = rate_bytes_per_s
        self.capacity = max(rate_bytes_per_s * burst_s, float(MAX_PAYLOAD_BYTES))
        self.tokens = self.capacity
        self.updated = now

    def take(self, size: int, now: float) -> bool:
        tokens = self.tokens
        if now > self.updated:
            tokens = min(self.capacity, tokens + (now - self.updated) * self.rate)
            self.updated = now
        if tokens < size:
            self.tokens = tokens
            return False
        self.tokens = tokens - size
        return True

    def level(self, now: float) -> float:
        """The bytes the bucket holds at `now`."""
        self.take(0, now)
        return self.tokens

    def charge(self, size: int, now: float) -> None:
        """`size` bytes that go whatever the bucket holds (answers to requests): the bucket
        may run into debt, which the packets that `take` asks for then wait out."""
        self.take(0, now)
        self.tokens -= size


class OldestFirst:
    """Who goes first when the allocations ask to send more than the cap: the calls in
    progress. Each whole second, if what they asked for in the second before (the bytes
    that reached the bucket) was more than the cap's rate, the second's allowance is handed
    out by age, oldest allocation first, each up to its own demand (plus
    `ALLOWANCE_SLACK`), until the rate is spent; the newest get what is left, often
    nothing. So a flood of new calls cuts the newcomers, never a call in progress; while
    the demand fits, nobody is held back (the bucket alone decides). Beyond its allowance
    an allocation may still use the top half of the bucket (`DataPlane`): what the older
    ones leave unused is not lost."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        self.rate = rate_bytes_per_s
        self.second = 0
        self.demand: dict[int, int] = {}  # allocation id -> bytes asked for this second
        self.used: dict[int, int] = {}  # ... and granted by the allowance
        self.allowance: dict[int, float] | None = None  # None: not congested

    def admits(self, allocation: int, size: int, now: float) -> bool:
        second = int(now)
        if second != self.second:
            self._roll(second)
        self.demand[allocation] = self.demand.get(allocation, 0) + size
        if self.allowance is None:
            return True
        used = self.used.get(allocation, 0) + size
        if used > self.allowance.get(allocation, 0.0):
            return False
        self.used[allocation] = used
        return True

    def _roll(self, second: int) -> None:
        demand = self.demand if second == self.second + 1 else {}
        self.second, self.demand, self.used = second, {}, {}
        if sum(demand.values()) <= self.rate:
            self.allowance = None
            return
        left, allowance = self.rate, {}
        for allocation in sorted(demand):  # ids grow with creation: oldest first
            allowance[allocation] = share = min(demand[allocation] * (1 + ALLOWANCE_SLACK), left)
            left -= share
        self.allowance = allowance


class RateMeter:
    """Bytes per whole second, kept for `RATE_WINDOW_S` seconds."""

    def __init__(self, window_s: int = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.second = 0  # the second `current` counts
        self.current = 0
        self.past: dict[int, int] = {}  # second -> bytes, the last `window_s` seconds

    def add(self, size: int, now: float) -> None:
        second = int(now)
        if second != self.second:
            self._roll(second)
        self.current += size

    def _roll(self, second: int) -> None:
        if self.current:
            self.past[self.second] = self.current
        self.second, self.current = second, 0
        for old in [s for s in self.past if s < second - self.window_s]:
            del self.past[old]

    def rate(self, now: float) -> float:
        """Average bytes/s over the last `window_s` whole seconds before `now`."""
        second = int(now)
        if second != self.second:
            self._roll(second)
        since = second - self.window_s
        return sum(b for s, b in self.past.items() if s >= since) / self.window_s


class WireCount:
    """What the relay's sockets moved, as they saw it (for `peerphone sharing`): UDP
    datagrams and their payload bytes, both ways (the IP and UDP headers are the reader's to
    add), and TCP stream bytes (framing included; TCP/IP headers and ACKs not). Kept by the
    node across relay restarts: it only grows. Every relayed packet passes here twice."""

    __slots__ = ("tcp_in", "tcp_out", "udp_in", "udp_in_datagrams", "udp_out", "udp_out_datagrams")

    def __init__(self) -> None:
        self.udp_in = self.udp_in_datagrams = self.udp_out = self.udp_out_datagrams = 0
        self.tcp_in = self.tcp_out = 0

    def udp_received(self, size: int) -> None:
        self.udp_in += size
        self.udp_in_datagrams += 1

    def udp_sent(self, size: int) -> None:
        self.udp_out += size
        self.udp_out_datagrams += 1
