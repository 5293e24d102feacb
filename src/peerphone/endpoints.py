"""Addresses and endpoints as text: one parser and one formatter for the whole project.

An *address* is a literal IP and a port, ``(host, port)``: what a socket reports and what
the cores keep. An *endpoint* adds the transport, ``("udp" | "tcp", (host, port))``, and is
written as in member records and in the configuration:

    HOST:PORT            UDP (HOST an IPv4 literal)
    [V6]:PORT            UDP (an IPv6 literal, always in brackets)
    udp://HOST:PORT      UDP, spelled out
    tcp://HOST:PORT      the TCP carrier of the same QUIC links (runtime/tcp_carrier.py)

Literal addresses only: no DNS in the data path (member records carry what the node bound)
and none in the configuration (a name would be resolved once, silently, at start).

`parse_endpoint` raises `EndpointError` saying what is wrong (the configuration turns it
into its own error, daemon/config.py); `endpoint_or_none` is for text from the network,
where a bad entry is skipped, not reported. Pure functions: the lowest layer, imported by
the NAT cores as well as by the runtime and the daemon.
"""

from __future__ import annotations

import ipaddress
import socket

from peerphone.errors import PeerphoneError

Address = tuple[str, int]  # (literal IP, port)
Endpoint = tuple[str, Address]  # (UDP | TCP, address)
UDP = "udp"
TCP = "tcp"
TRANSPORTS = (UDP, TCP)
MAX_PORT = 65_535


class EndpointError(PeerphoneError):
    """A text is not an address or endpoint; the message quotes it and says why."""


def parse_address(text: str, *, any_port: bool = False) -> Address:
    """'HOST:PORT' (IPv4) or '[V6]:PORT' as (host, port).

    Port 0 ("any free port") only with `any_port`: it is fine to listen on, never to dial.
    """
    return _address(text, text, any_port)


def _address(text: str, quoted: str, any_port: bool) -> Address:
    """`text` as an address; errors quote `quoted` (the whole endpoint the caller gave)."""
    host, sep, port = text.rpartition(":")
    lowest = 0 if any_port else 1
    if not sep or not port.isdigit() or not lowest <= int(port) <= MAX_PORT:
        raise EndpointError(f"{quoted!r}: expected HOST:PORT with a port number")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if bracketed != (":" in host):
        raise EndpointError(f"{quoted!r}: expected [IPv6]:PORT with brackets, IPv4:PORT without")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise EndpointError(f"{quoted!r}: HOST must be an IP address, not {host!r}") from None
    return host, int(port)


def format_address(addr: Address) -> str:
    """The inverse of `parse_address`: 'HOST:PORT' or '[V6]:PORT'."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str, default: str = UDP, *, any_port: bool = False) -> Endpoint:
    """'[udp://|tcp://]HOST:PORT' as (transport, (host, port)); without a scheme the
    transport is `default`. `any_port` as in `parse_address`."""
    transport, sep, rest = text.partition("://")
    if not sep:
        transport, rest = default, text
    if transport not in TRANSPORTS:
        raise EndpointError(f"{text!r}: transport must be udp:// or tcp://")
    return transport, _address(rest, text, any_port)


def endpoint_or_none(text: str) -> Endpoint | None:
    """`parse_endpoint` for text from the network (member records): None if it is not a
    dialable endpoint."""
    try:
        return parse_endpoint(text)
    except EndpointError:
        return None


def format_endpoint(endpoint: Endpoint) -> str:
    """The inverse of `parse_endpoint`: 'HOST:PORT' for UDP, 'tcp://HOST:PORT' for TCP."""
    transport, addr = endpoint
    text = format_address(addr)
    return text if transport == UDP else f"{transport}://{text}"


def route_source(endpoints: list[Endpoint]) -> str | None:
    """The local address the kernel would send from toward the first bootstrap host.

    A UDP `connect` only picks a route; nothing is sent.
    """
    for _, (host, port) in endpoints:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, port or 9))
                address: str = probe.getsockname()[0]
                return address
        except OSError:
            continue
    return None
