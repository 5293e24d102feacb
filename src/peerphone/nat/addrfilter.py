"""Which peer addresses the TURN relay may send to: public unicast only, in every encoding.

A relay that forwards to any address a client names is a door into the networks behind
it (the supernode's LAN, its loopback services, a cloud metadata endpoint). coturn's
CVE-2020-26262 was such a door: its loopback filter did not see ``0.0.0.0`` and ``[::]``;
later fixes added ``::ffff:127.0.0.1``, 6to4, NAT64, 169.254/16, fe80::/10 and fc00::/7.
So the filter here judges an address by *every* IPv4 address it may stand for:

* a bare IPv4 address by the table `IPV4_SPECIAL`;
* an IPv6 address in a *container* range (IPv4-mapped, IPv4-compatible, IPv4-translated,
  NAT64 well-known prefix, 6to4, Teredo) by the IPv4 addresses embedded in it — all of
  them must pass (Teredo embeds two: its server and its obfuscated client);
* an ISATAP interface identifier (``…:0:5efe:a.b.c.d`` / ``…:200:5efe:a.b.c.d``) in any
  global prefix likewise by its embedded IPv4 address;
* any other IPv6 address by the table `IPV6_SPECIAL`, and it must lie in global unicast
  space (2000::/3); everything else there is reserved, unassigned or local.

An operator can allow ranges (``--relay-allow CIDR``, e.g. the lab's private network): an
allowed IPv4 range also covers its addresses inside IPv6 encodings, an allowed IPv6 range
covers those addresses themselves. Loopback, unspecified and "this network" (0.0.0.0/8,
which Linux routes to the host itself) are *never* allowed, in any encoding, whatever the
allow list says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from peerphone.errors import LocalProtocolError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NEVER = "never"  # kind: refused even when an allow range covers it
SPECIAL = "special"  # kind: refused unless an allow range covers it
CONTAINER = "container"  # kind: judged by the IPv4 address(es) embedded in it


@dataclass(frozen=True, slots=True)
class SpecialRange:
    """A row of the tables: a network, why it is special, and how it is judged."""

    cidr: str
    reason: str
    kind: str = SPECIAL

    def __post_init__(self) -> None:
        if self.kind not in (NEVER, SPECIAL, CONTAINER):
            raise LocalProtocolError(f"unknown range kind {self.kind!r}")
        ipaddress.ip_network(self.cidr)  # raises on a typo in the table


# IANA IPv4 Special-Purpose Address Registry, plus multicast, reserved and broadcast. Some
# rows are globally reachable anycast services (AS112, AMT, the TURN anycast address in
# 192.0.0.0/24): no voice peer lives there, so they are refused as well.
IPV4_SPECIAL: tuple[SpecialRange, ...] = (
    SpecialRange("0.0.0.0/8", "this-network", NEVER),  # 0.0.0.0 reaches the host itself
    SpecialRange("10.0.0.0/8", "private"),
    SpecialRange("100.64.0.0/10", "cgnat"),
    SpecialRange("127.0.0.0/8", "loopback", NEVER),
    SpecialRange("169.254.0.0/16", "link-local"),  # also cloud metadata (169.254.169.254)
    SpecialRange("172.16.0.0/12", "private"),
    SpecialRange("192.0.0.0/24", "ietf-protocol"),
    SpecialRange("192.0.2.0/24", "documentation"),
    SpecialRange("192.31.196.0/24", "as112"),
    SpecialRange("192.52.193.0/24", "amt"),
    SpecialRange("192.88.99.0/24", "6to4-relay-anycast"),
    SpecialRange("192.168.0.0/16", "private"),
    SpecialRange("192.175.48.0/24", "as112"),
    SpecialRange("198.18.0.0/15", "benchmarking"),
    SpecialRange("198.51.100.0/24", "documentation"),
    SpecialRange("203.0.113.0/24", "documentation"),
    SpecialRange("224.0.0.0/4", "multicast"),
    SpecialRange("240.0.0.0/4", "reserved"),
    SpecialRange("255.255.255.255/32", "broadcast"),
)

# IANA IPv6 Special-Purpose Address Registry and address architecture. The longest match
# decides, so 2001::/32 (Teredo) wins over 2001::/23 and ::1 over ::/96.
IPV6_SPECIAL: tuple[SpecialRange, ...] = (
    SpecialRange("::/128", "unspecified", NEVER),
    SpecialRange("::1/128", "loopback", NEVER),
    SpecialRange("::ffff:0:0/96", "v4-mapped", CONTAINER),
    SpecialRange("::/96", "v4-compatible", CONTAINER),
    SpecialRange("::ffff:0:0:0/96", "v4-translated", CONTAINER),
    SpecialRange("64:ff9b::/96", "nat64", CONTAINER),
    # RFC 8215 local-use translation prefix: not globally reachable, and its operator
    # chooses where the IPv4 address sits (/48 … /96), so it is not decoded but refused.
    SpecialRange("64:ff9b:1::/48", "nat64-local"),
    SpecialRange("100::/64", "discard-only"),
    SpecialRange("2001::/32", "teredo", CONTAINER),
    SpecialRange("2001::/23", "ietf-protocol"),
    SpecialRange("2001:db8::/32", "documentation"),
    SpecialRange("2002::/16", "6to4", CONTAINER),
    SpecialRange("3fff::/20", "documentation"),
    SpecialRange("5f00::/16", "srv6-sid"),
    SpecialRange("fc00::/7", "unique-local"),
    SpecialRange("fe80::/10", "link-local"),
    SpecialRange("fec0::/10", "site-local"),
    SpecialRange("ff00::/8", "multicast"),
)

GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
ISATAP_MARKERS = (0x00005EFE, 0x02005EFE)  # bits 64..95 of an ISATAP interface id
_LOW32 = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the relay may send to an address, and why (for logs and 403 counters)."""

    allowed: bool
    reason: str  # "public", "allowed", or the refused range, e.g. "6to4/private"


_PUBLIC = Verdict(True, "public")
_ALLOWED = Verdict(True, "allowed")


class _Table:
    """A range table compiled to (network int, mask, prefix, row), longest prefix first."""

    def __init__(self, rows: Sequence[SpecialRange], bits: int) -> None:
        compiled = []
        for row in rows:
            net = ipaddress.ip_network(row.cidr)
            if net.max_prefixlen != bits:
                raise LocalProtocolError(f"{row.cidr} is in the wrong table")
            compiled.append((int(net.network_address), int(net.netmask), net.prefixlen, row))
        compiled.sort(key=lambda entry: -entry[2])
        self._rows = [(value, mask, row) for value, mask, _, row in compiled]

    def match(self, value: int) -> SpecialRange | None:
        for network, mask, row in self._rows:
            if value & mask == network:
                return row
        return None


_V4 = _Table(IPV4_SPECIAL, 32)
_NEVER_V4 = frozenset(row.reason for row in IPV4_SPECIAL if row.kind == NEVER)
_V6 = _Table(IPV6_SPECIAL, 128)


def parse_allow(ranges: Iterable[str | IPNetwork]) -> list[IPNetwork]:
    """Parse operator allow ranges (CIDR); a malformed one is a configuration error."""
    networks: list[IPNetwork] = []
    for item in ranges:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(item)
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise LocalProtocolError(f"bad --relay-allow range {item!r}: {exc}") from exc
    return networks


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[int]:
    """The IPv4 addresses (as ints) an IPv6 address stands for in a container encoding or
    an ISATAP interface id; empty for an address that embeds none."""
    value = int(address)
    row = _V6.match(value)
    found: list[int] = []
    if row is not None and row.kind == CONTAINER:
        if row.reason == "6to4":
            found.append((value >> 80) & _LOW32)
        elif row.reason == "teredo":
            found.append((value >> 64) & _LOW32)  # the Teredo server
            found.append((value & _LOW32) ^ _LOW32)  # the client, obfuscated
        else:  # mapped, compatible, translated, NAT64: the low 32 bits
            found.append(value & _LOW32)
    if value >> 125 == 0b001 and (value >> 32) & _LOW32 in ISATAP_MARKERS:
        found.append(value & _LOW32)
    return found


class AddressFilter:
    """The relay's peer address filter: `verdict(ip)` for CreatePermission, ChannelBind
    and Send; public unicast passes, special ranges only where the operator allowed them."""

    def __init__(self, allow: Iterable[str | IPNetwork] = ()) -> None:
        self.allow = parse_allow(allow)
        self._allow_v4 = [
            (int(n.network_address), int(n.netmask))
            for n in self.allow
            if isinstance(n, ipaddress.IPv4Network)
        ]
        self._allow_v6 = [
            (int(n.network_address), int(n.netmask))
            for n in self.allow
            if isinstance(n, ipaddress.IPv6Network)
        ]

    def allows(self, address: str | IPAddress) -> bool:
        return self.verdict(address).allowed

    def verdict(self, address: str | IPAddress) -> Verdict:
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return Verdict(False, "unparseable")
        if isinstance(address, ipaddress.IPv4Address):
            return self._judge_v4(int(address))
        return self._judge_v6(address)

    def _judge_v4(self, value: int) -> Verdict:
        row = _V4.match(value)
        if row is not None and row.kind == NEVER:
            return Verdict(False, row.reason)
        if any(value & mask == network for network, mask in self._allow_v4):
            return _ALLOWED
        if row is not None:
            return Verdict(False, row.reason)
        return _PUBLIC

    def _judge_v6(self, address: ipaddress.IPv6Address) -> Verdict:
        value = int(address)
        row = _V6.match(value)
        if row is not None and row.kind == NEVER:
            return Verdict(False, row.reason)
        inner = [self._judge_v4(v4) for v4 in embedded_ipv4(address)]
        outer = row.reason if row is not None and row.kind == CONTAINER else "isatap"
        for verdict in inner:  # an embedded loopback is never allowed, whatever the list
            if not verdict.allowed and verdict.reason in _NEVER_V4:
                return Verdict(False, f"{outer}/{verdict.reason}")
        if any(value & mask == network for network, mask in self._allow_v6):
            return _ALLOWED
        for verdict in inner:
            if not verdict.allowed:
                return Verdict(False, f"{outer}/{verdict.reason}")
        if row is not None and row.kind == SPECIAL:
            return Verdict(False, row.reason)
        if row is None and address not in GLOBAL_UNICAST_V6:
            return Verdict(False, "reserved")
        if inner and all(verdict is _ALLOWED for verdict in inner):
            return _ALLOWED
        return _PUBLIC
