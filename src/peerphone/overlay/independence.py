"""Which supernodes count as independent: one vote per address range.

An attacker who runs several supernodes usually runs them from one network. Votes (who owns
a name) and tier admission therefore count address ranges, not node ids: an IPv4 /24 or an
IPv6 /48 is one group. Loopback addresses (every test and the demo run on 127.0.0.1) and
records without a parsable address count per node, since they cannot be told apart by
address at all; whether an address is really the node's is proven by dial-back at
admission, not here.
"""

from __future__ import annotations

import ipaddress

from peerphone.errors import DecodeError
from peerphone.identity import NodeId
from peerphone.records import MemberBody, Record, decode_body

IPV4_GROUP_PREFIX = 24  # one /24 is one operator's network, as far as votes go
IPV6_GROUP_PREFIX = 48  # a site's allocation


def host_of(address: str) -> str:
    """The host of "HOST:PORT", "[V6]:PORT" or "tcp://HOST:PORT" ("" if none)."""
    address = address.removeprefix("tcp://").removeprefix("udp://")
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else ""
    host, sep, _ = address.rpartition(":")
    return host if sep else address


def address_group(address: str) -> bytes | None:
    """The range an address belongs to, or None for loopback and unparsable addresses."""
    try:
        ip = ipaddress.ip_address(host_of(address))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return None
    prefix = IPV4_GROUP_PREFIX if ip.version == 4 else IPV6_GROUP_PREFIX
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return b"net:" + network.network_address.packed + bytes([prefix])


def member_group(node: NodeId, record: Record | None) -> bytes:
    """The group a supernode's vote counts for: the range of its first address that has
    one, else the node itself."""
    if record is not None:
        try:
            body = decode_body(record)
        except DecodeError:
            body = None
        if isinstance(body, MemberBody):
            for address in body.addresses:
                group = address_group(address)
                if group is not None:
                    return group
    return b"node:" + bytes(node)
