"""The node's own addresses, which the relay must never send to (issue 8, break 3).

A relay that sends where its clients say is a way *into* the host that runs it: to the
node's own TURN port (a STUN Binding answered from inside), its QUIC port, another
allocation's relayed port, or any other UDP service on the host, with the host's own
address as the source. Permissions are per IP (RFC 8656), so refusing one exact
(ip, port) at permission time is not enough: every packet is checked.

`OwnAddresses` knows the node's own IPs (every local interface address, the addresses it
is bound to and the ones it advertises) and its own ports (its listening sockets and
every relayed port). A peer at an own IP is refused:

* always, at an own port or a relayed port;
* at any other port too, unless the owner named that very address in an allow range of
  its own (``--relay-allow 203.0.113.7/32``): a wider allowed range, such as the lab's
  10.99.0.0/24, does not open the host itself.

An IPv6 peer is judged by every IPv4 address it may stand for as well (mapped, 6to4,
NAT64 ...; see `addrfilter.embedded_ipv4`). Sans-I/O: the adapter enumerates the
interfaces (`local_interface_addresses`) and tells this object.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from peerphone.endpoints import Address
from peerphone.nat.addrfilter import AddressFilter, embedded_ipv4

OWN_PORT = "port"  # reason: one of the node's listening ports
OWN_RELAYED_PORT = "relayed_port"  # reason: one of the relay's allocated ports
OWN_HOST = "host"  # reason: another port of the node's own address


def canonical(ip: str) -> str | None:
    """The canonical text of an IP address (as STUN decoding gives it), None if not one."""
    try:
        return str(ipaddress.ip_address(ip.split("%", 1)[0]))
    except ValueError:
        return None


class OwnAddresses:
    """The node's own IPs and ports; `refusal(peer)` says why a peer is one of them."""

    def __init__(self, address_filter: AddressFilter) -> None:
        self._filter = address_filter
        self.hosts: set[str] = set()  # canonical text of every own IP (both kinds below)
        self._configured: set[str] = set()  # bound and advertised addresses
        self._interfaces: set[str] = set()  # the interface table's, as last read
        self.ports: set[int] = set()  # own listening ports (on every own IP)
        self.relayed_ports: Counter[int] = Counter()  # port -> allocations using it
        self._explicit: set[str] = set()  # own IPs the owner allowed by name (/32, /128)

    # -- what the node tells us -------------------------------------------------------------

    def add_host(self, ip: str) -> None:
        """An address of this host. Wildcards are no address: the adapter enumerates the
        interfaces instead (`local_interface_addresses`)."""
        text = canonical(ip)
        if text is not None and not ipaddress.ip_address(text).is_unspecified:
            self._configured.add(text)
            self._update()

    def set_interfaces(self, ips: Iterable[str]) -> None:
        """The addresses of the host's interfaces now (they replace the last ones)."""
        found = {canonical(ip) for ip in ips}
        self._interfaces = {ip for ip in found if ip is not None}
        self._update()

    def _update(self) -> None:
        self.hosts = self._configured | self._interfaces
        named = {str(net.network_address) for net in self._filter.allow if net.num_addresses == 1}
        self._explicit = self.hosts & named

    def add_socket(self, address: Address) -> None:
        """A socket of the node: its port is never a peer on any own IP, and its host
        (unless a wildcard) is an own IP."""
        self.add_host(address[0])
        if address[1]:
            self.ports.add(address[1])

    def relayed_opened(self, port: int) -> None:
        self.relayed_ports[port] += 1

    def relayed_closed(self, port: int) -> None:
        self.relayed_ports[port] -= 1
        if self.relayed_ports[port] <= 0:
            del self.relayed_ports[port]

    # -- the check ----------------------------------------------------------------------------

    def refusal(self, peer: Address) -> str | None:
        """Why `peer` is the node itself (OWN_PORT, OWN_RELAYED_PORT, OWN_HOST), or None.
        The hot path: one set lookup for an IPv4 peer that is not ours."""
        ip, port = peer
        own: str | None = ip
        if ip not in self.hosts:
            if ":" not in ip:
                return None
            own = self._own_inside_v6(ip)
            if own is None:
                return None
        if port in self.ports:
            return OWN_PORT
        if port in self.relayed_ports:
            return OWN_RELAYED_PORT
        if own not in self._explicit:
            return OWN_HOST
        return None

    def _own_inside_v6(self, ip: str) -> str | None:
        """The own IP an IPv6 peer stands for (itself or an embedded IPv4), if any."""
        try:
            address = ipaddress.IPv6Address(ip.split("%", 1)[0])
        except ValueError:
            return None
        text = str(address)
        if text in self.hosts:
            return text
        for value in embedded_ipv4(address):
            inner = str(ipaddress.IPv4Address(value))
            if inner in self.hosts:
                return inner
        return None


def local_interface_addresses() -> list[str]:
    """Every IP address of this host's interfaces (I/O: reads the interface table)."""
    import ifaddr  # aioice's dependency; read only here, in the adapter's call

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            ip = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            text = canonical(ip)
            if text is not None:
                found.append(text)
    return sorted(set(found))
