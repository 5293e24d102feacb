"""Address ranges: what one holder of addresses usually has, for limits and for votes.

The relay's quotas, the link limits and the directory's count of independent replicas all
treat an IPv4 /24 or an IPv6 /48 as one holder's range, and an IPv4-mapped IPv6 address as
the IPv4 address it maps. Each caller keeps its own policy on top (which addresses are
exempt); the arithmetic is here, once.
"""

from __future__ import annotations

import ipaddress

IPV4_RANGE_BITS = 24  # what one holder (a host, an operator's subnet) usually has
IPV6_RANGE_BITS = 48  # one site's allocation: its holder has 2^80 addresses

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(host: str) -> IPAddress | None:
    """An IP literal (an IPv4-mapped IPv6 address as its IPv4 address), or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def range_of(ip: IPAddress) -> IPNetwork:
    """The /24 (IPv4) or /48 (IPv6) that `ip` lies in."""
    bits = IPV4_RANGE_BITS if ip.version == 4 else IPV6_RANGE_BITS
    return ipaddress.ip_network((ip, bits), strict=False)
