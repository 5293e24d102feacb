"""Which supernodes count as independent: one vote per address range.

An attacker who runs several supernodes usually runs them from one network. Votes (who owns
a name) and tier admission therefore count address ranges, not node ids: an IPv4 /24 or an
IPv6 /48 of the public internet is one group. Other addresses — loopback (every test and the
demo run on 127.0.0.1), private and lab ranges (an organisation's own tier, the NAT lab) —
and records without a parsable address count per node: they cannot be told apart by
address. That a supernode's range is really its own is checked at admission: its member
record's group must be the group of the address its link comes from (`overlay.membership`).
"""

from __future__ import annotations

from peerphone.errors import DecodeError
from peerphone.identity import NodeId
from peerphone.ranges import parse_ip, range_of
from peerphone.records import MemberBody, Record, decode_body


def host_of(address: str) -> str:
    """The host of "HOST:PORT", "[V6]:PORT" or "tcp://HOST:PORT" ("" if none)."""
    address = address.removeprefix("tcp://").removeprefix("udp://")
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else ""
    host, sep, _ = address.rpartition(":")
    return host if sep else address


def address_group(address: str) -> bytes | None:
    """The public range of "HOST:PORT" (any form host_of reads), or None (not a global
    address, unparsable)."""
    return host_group(host_of(address))


def host_group(host: str) -> bytes | None:
    """The public range of a bare IP literal, or None (not a global address, unparsable)."""
    ip = parse_ip(host)
    if ip is None or not ip.is_global:
        return None
    network = range_of(ip)
    return b"net:" + network.network_address.packed + bytes([network.prefixlen])


def record_group(record: Record) -> bytes | None:
    """The public range of a member record's first address that has one, else None."""
    try:
        body = decode_body(record)
    except DecodeError:
        return None
    if isinstance(body, MemberBody):
        for address in body.addresses:
            group = address_group(address)
            if group is not None:
                return group
    return None


def member_group(node: NodeId, record: Record | None) -> bytes:
    """The group a supernode's vote counts for: the range of its first address that has
    one, else the node itself."""
    group = record_group(record) if record is not None else None
    return group if group is not None else b"node:" + bytes(node)
