"""nftables counters of a supernode's traffic by sharing category, in its lab namespace.

Every IP packet on the host's interface, whole, as `peerphone sharing` counts it: UDP to or
from the overlay port (`NODE_UDP_PORT`) is ``directory_signaling`` (overlay_*); any other
UDP is the relay's (its TURN port and relayed ports: nothing else in that namespace speaks
UDP; relay_*); TCP is counted apart (tcp_*: the carrier, and TURN over TCP). Used by
tests/netns/test_sharing_exact.py and test_duty_caps.py.
"""

from __future__ import annotations

import json

from tests.support.netlab import Host, NetLab
from tests.support.netns_nodes import NODE_UDP_PORT

IFACE = "eth0"
COUNTERS = ("overlay_in", "overlay_out", "relay_in", "relay_out", "tcp_in", "tcp_out")


def rules(table: str) -> str:
    """An nftables table `table` of the counters above (load with `nft -f -`)."""
    return f"""
table inet {table} {{
    {"; ".join(f"counter {name} {{}}" for name in COUNTERS)}
    chain in {{
        type filter hook input priority 0; policy accept;
        iifname "{IFACE}" udp dport {NODE_UDP_PORT} counter name "overlay_in" accept
        iifname "{IFACE}" meta l4proto udp counter name "relay_in" accept
        iifname "{IFACE}" meta l4proto tcp counter name "tcp_in" accept
    }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname "{IFACE}" udp sport {NODE_UDP_PORT} counter name "overlay_out" accept
        oifname "{IFACE}" meta l4proto udp counter name "relay_out" accept
        oifname "{IFACE}" meta l4proto tcp counter name "tcp_out" accept
    }}
}}
"""


def install(lab: NetLab, host: Host, table: str) -> None:
    lab.exec(host, ["nft", "-f", "-"], input=rules(table))


def nft_bytes(lab: NetLab, host: Host, table: str) -> dict[str, int]:
    """Bytes counted so far, by counter name."""
    listing = lab.exec(host, ["nft", "-j", "list", "counters", "table", "inet", table])
    return {
        item["counter"]["name"]: int(item["counter"]["bytes"])
        for item in json.loads(listing)["nftables"]
        if "counter" in item
    }
