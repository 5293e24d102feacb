"""The relay's peer address filter: every special range, in every encoding."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerphone.errors import LocalProtocolError
from peerphone.nat.addrfilter import (
    IPV4_SPECIAL,
    IPV6_SPECIAL,
    NEVER,
    SPECIAL,
    AddressFilter,
    SpecialRange,
    embedded_ipv4,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
PUBLIC_V4 = "8.8.8.8"
GLOBAL_PREFIX = 0x2A00_1450_4001_0800  # a global /64 (ISATAP needs one)


# -- the IPv6 encodings of an IPv4 address ------------------------------------------------


def mapped(v4: str) -> str:
    return str(V6((0xFFFF << 32) | int(V4(v4))))


def compatible(v4: str) -> str:
    return str(V6(int(V4(v4))))


def translated(v4: str) -> str:
    return str(V6((0xFFFF << 48) | int(V4(v4))))


def nat64(v4: str) -> str:
    return str(V6((0x0064_FF9B << 96) | int(V4(v4))))


def sixtofour(v4: str, subnet: int = 1, iid: int = 1) -> str:
    return str(V6((0x2002 << 112) | (int(V4(v4)) << 80) | (subnet << 64) | iid))


def teredo_client(v4: str, server: str = PUBLIC_V4, port: int = 0x1234) -> str:
    obfuscated = int(V4(v4)) ^ 0xFFFF_FFFF
    return str(
        V6((0x2001_0000 << 96) | (int(V4(server)) << 64) | ((port ^ 0xFFFF) << 32) | obfuscated)
    )


def teredo_server(v4: str, client: str = PUBLIC_V4) -> str:
    obfuscated = int(V4(client)) ^ 0xFFFF_FFFF
    return str(V6((0x2001_0000 << 96) | (int(V4(v4)) << 64) | obfuscated))


def isatap(v4: str, prefix: int = GLOBAL_PREFIX, marker: int = 0x5EFE) -> str:
    return str(V6((prefix << 64) | (marker << 32) | int(V4(v4))))


ENCODINGS: dict[str, Callable[[str], str]] = {
    "bare": lambda v4: v4,
    "mapped": mapped,
    "compatible": compatible,
    "translated": translated,
    "nat64": nat64,
    "6to4": sixtofour,
    "teredo-client": teredo_client,
    "teredo-server": teredo_server,
    "isatap": isatap,
    "isatap-u": lambda v4: isatap(v4, marker=0x0200_5EFE),
}


def samples(cidr: str) -> list[str]:
    """First, second, middle and last address of a network."""
    net = ipaddress.ip_network(cidr)
    picks = {0, 1, net.num_addresses // 2, net.num_addresses - 1}
    return [str(net[i]) for i in sorted(p for p in picks if p < net.num_addresses)]


# -- tables -------------------------------------------------------------------------------

V4_ROWS = [(row.cidr, row.reason, row.kind) for row in IPV4_SPECIAL]


@pytest.mark.parametrize(("cidr", "reason", "kind"), V4_ROWS)
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_special_ipv4_range_is_refused_in_every_encoding(
    cidr: str, reason: str, kind: str, encoding: str
) -> None:
    default = AddressFilter()
    operator = AddressFilter(allow=[cidr])
    everything = AddressFilter(allow=["0.0.0.0/0", "::/0"])
    for v4 in samples(cidr):
        address = ENCODINGS[encoding](v4)
        verdict = default.verdict(address)
        assert not verdict.allowed, (address, verdict)
        bare = default.verdict(v4).reason  # the most specific row: `reason` or inside it
        assert bare == reason or reason == "reserved", (v4, bare)
        # ::0.0.0.0 and ::0.0.0.1 are the IPv6 unspecified and loopback addresses
        assert verdict.reason.endswith(bare) or verdict.reason in ("unspecified", "loopback")
        # the operator may open a special range, never loopback/unspecified/this-network
        assert operator.allows(address) == (kind != NEVER), address
        assert everything.allows(address) == (kind != NEVER), address


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("v4", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "223.255.255.254"])
def test_public_ipv4_passes_in_every_encoding(encoding: str, v4: str) -> None:
    assert AddressFilter().allows(ENCODINGS[encoding](v4))


V6_CASES = [
    # (address, allowed by default, reason)
    ("::", False, "unspecified"),
    ("::1", False, "loopback"),
    ("0:0:0:0:0:0:0:0", False, "unspecified"),
    ("::ffff:127.0.0.1", False, "v4-mapped/loopback"),
    ("::ffff:0.0.0.0", False, "v4-mapped/this-network"),
    ("::127.0.0.1", False, "v4-compatible/loopback"),
    ("::0.0.0.2", False, "v4-compatible/this-network"),
    ("::ffff:0:7f00:1", False, "v4-translated/loopback"),
    ("64:ff9b::7f00:1", False, "nat64/loopback"),
    ("64:ff9b::a9fe:a9fe", False, "nat64/link-local"),
    ("64:ff9b::808:808", True, "public"),
    ("64:ff9b:1::", False, "nat64-local"),
    ("64:ff9b:1:ffff:ffff:ffff:808:808", False, "nat64-local"),
    ("2002:7f00:1::", False, "6to4/loopback"),
    ("2002:0:0::1", False, "6to4/this-network"),
    ("2002:c0a8:101::1", False, "6to4/private"),
    ("2002:808:808::1", True, "public"),
    # RFC 4380's example: server 65.54.227.120, client 192.0.2.45 (a documentation address)
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False, "teredo/documentation"),
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True, "public"),  # client 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False, "teredo/loopback"),  # client 127.0.0.1
    ("2001:0:0a00:1::808:808", False, "teredo/private"),  # server 10.0.0.1
    ("2001:1::1", False, "ietf-protocol"),
    ("2001:1ff:ffff::1", False, "ietf-protocol"),
    ("2001:200::1", True, "public"),
    ("2001:db8::1", False, "documentation"),
    ("3fff::1", False, "documentation"),
    ("3fff:fff:ffff::1", False, "documentation"),
    ("100::1", False, "discard-only"),
    ("5f00::1", False, "srv6-sid"),
    ("fc00::1", False, "unique-local"),
    ("fdff:ffff::1", False, "unique-local"),
    ("fe80::1", False, "link-local"),
    ("fe80::1%eth0", False, "link-local"),
    ("febf::1", False, "link-local"),
    ("fec0::1", False, "site-local"),
    ("feff::1", False, "site-local"),
    ("ff02::1", False, "multicast"),
    ("ff0e::1", False, "multicast"),
    ("4000::1", False, "reserved"),
    ("::2:0:0:1", False, "reserved"),
    ("1::1", False, "reserved"),
    ("2a00:1450:4001:800::200e", True, "public"),
    ("2a00:1450:4001:800:0:5efe:a00:1", False, "isatap/private"),
    ("2a00:1450:4001:800:200:5efe:7f00:1", False, "isatap/loopback"),
    ("2a00:1450:4001:800:200:5efe:808:808", True, "public"),
    ("not an address", False, "unparseable"),
    ("1.2.3", False, "unparseable"),
]


@pytest.mark.parametrize(("address", "allowed", "reason"), V6_CASES)
def test_ipv6_table(address: str, allowed: bool, reason: str) -> None:
    verdict = AddressFilter().verdict(address)
    assert (verdict.allowed, verdict.reason) == (allowed, reason)


@pytest.mark.parametrize(
    "row", [row for row in IPV6_SPECIAL if row.kind != "container"], ids=lambda r: r.cidr
)
def test_every_special_ipv6_range(row: SpecialRange) -> None:
    cidr, kind = row.cidr, row.kind
    for address in samples(cidr):
        if address.startswith("2001::"):  # Teredo, with server 0.0.0.0: tested above
            continue
        assert not AddressFilter().allows(address), address
        # an allow range of its own opens a special range, never loopback/unspecified
        assert AddressFilter(allow=[cidr]).allows(address) == (kind == SPECIAL), address
        assert AddressFilter(allow=["::/0"]).allows(address) == (kind == SPECIAL), address


def test_embedded_ipv4() -> None:
    assert embedded_ipv4(V6("::ffff:1.2.3.4")) == [0x01020304]
    assert embedded_ipv4(V6("2002:102:304::5")) == [0x01020304]
    assert embedded_ipv4(V6(teredo_client("1.2.3.4", server="5.6.7.8"))) == [
        0x05060708,
        0x01020304,
    ]
    assert embedded_ipv4(V6("2a00::1")) == []


def test_allow_ranges() -> None:
    lab = AddressFilter(allow=["10.99.0.0/24", "fd00:99::/64"])
    assert lab.allows("10.99.0.11")
    assert lab.allows(mapped("10.99.0.11"))
    assert lab.allows(sixtofour("10.99.0.11"))
    assert not lab.allows("10.99.1.1")
    assert not lab.allows("192.168.1.1")
    assert lab.allows("fd00:99::5")
    assert not lab.allows("fd00:98::5")
    assert lab.verdict("10.99.0.11").reason == "allowed"
    assert lab.allow == [ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_network("fd00:99::/64")]
    # loopback and unspecified are never allowed, whatever the list says
    wide = AddressFilter(allow=["0.0.0.0/0", "::/0", "127.0.0.0/8", "::1/128", "::/128"])
    for address in ["127.0.0.1", "0.0.0.0", "::", "::1", "::ffff:127.0.0.1", "2002:7f00:1::"]:
        assert not wide.allows(address), address
    # an allowed IPv6 range does not let an embedded loopback through
    assert not AddressFilter(allow=["2002::/16"]).allows("2002:7f00:1::1")
    # but it does allow an embedded private address (the operator said so)
    assert AddressFilter(allow=["2002::/16"]).allows("2002:a00:1::1")


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "nonsense", "", "fe80::/200"])
def test_bad_allow_range_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(LocalProtocolError, match="relay-allow"):
        AddressFilter(allow=[bad])


# -- property: an IPv4 address gets one verdict, however it is encoded --------------------

ALLOW_LISTS = [
    [],
    ["10.0.0.0/8"],
    ["192.168.0.0/16", "100.64.0.0/10"],
    ["127.0.0.0/8", "0.0.0.0/8"],  # never has an effect
    ["0.0.0.0/0"],
]

ipv4s = st.one_of(
    st.integers(0, 0xFFFF_FFFF),
    st.sampled_from([int(ipaddress.ip_network(r.cidr)[0]) for r in IPV4_SPECIAL]),
    st.sampled_from([int(ipaddress.ip_network(r.cidr)[-1]) for r in IPV4_SPECIAL]),
).map(lambda value: str(V4(value)))

# 6to4 subnets and interface ids that are not ISATAP's (which would embed a second IPv4)
subnets = st.integers(0, 0xFFFF)
iids = st.integers(0, (1 << 64) - 1).filter(lambda iid: (iid >> 32) not in (0x5EFE, 0x02005EFE))
global_prefixes = st.integers(0x2000_0000_0000_0000, 0x3FFF_FFFF_FFFF_FFFF).filter(
    lambda p: AddressFilter().allows(str(V6(p << 64 | 1)))
)


@settings(max_examples=400)
@given(
    v4=ipv4s,
    allow=st.sampled_from(ALLOW_LISTS),
    subnet=subnets,
    iid=iids,
    prefix=global_prefixes,
    port=st.integers(0, 0xFFFF),
)
def test_any_ipv4_gets_the_same_verdict_in_every_encoding(
    v4: str, allow: list[str], subnet: int, iid: int, prefix: int, port: int
) -> None:
    f = AddressFilter(allow=allow)
    expected = f.allows(v4)
    encoded = {
        "mapped": mapped(v4),
        "compatible": compatible(v4),
        "translated": translated(v4),
        "nat64": nat64(v4),
        "6to4": sixtofour(v4, subnet, iid),
        "teredo-client": teredo_client(v4, port=port),
        "teredo-server": teredo_server(v4),
        "isatap": isatap(v4, prefix),
    }
    for name, address in encoded.items():
        assert f.allows(address) == expected, (name, v4, address, f.verdict(address))
    # and ISATAP behind a 6to4 prefix is judged by both embedded addresses
    both = sixtofour(PUBLIC_V4, subnet, (0x5EFE << 32) | int(V4(v4)))
    assert f.allows(both) == expected


@given(st.integers(0, (1 << 128) - 1))
def test_any_ipv6_gets_a_verdict_and_local_ranges_never_pass(value: int) -> None:
    address = V6(value)
    verdict = AddressFilter().verdict(address)
    if verdict.allowed:
        assert address.is_global or address in ipaddress.ip_network("2002::/16")
        assert address not in ipaddress.ip_network("fc00::/7")
