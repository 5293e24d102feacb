"""A media probe process in a lab namespace, its UDP counted by nftables, and wire rates:
shared by the call tests and benchmarks/bench_media.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.media_probe import ProbeClient
from tests.support.netlab import Host, NetLab

IPV4_UDP_HEADER_BYTES = 28
# IPv6's header is 40 bytes, IPv4's 20: the same call costs this much more a packet over
# IPv6 (what Chromium picks whenever both ends have an IPv6 address)
IPV6_EXTRA_HEADER_BYTES = 20

NFT_COUNTERS = """
table inet media_test {
    counter sent {}
    counter received {}
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto udp counter name "sent";
    }
    chain in {
        type filter hook input priority 0; policy accept;
        meta l4proto udp counter name "received";
    }
}
"""


@dataclass(frozen=True, slots=True)
class WireCount:
    """UDP traffic of one namespace, from nftables: IP packets and bytes."""

    packets_sent: int
    ip_bytes_sent: int
    packets_received: int
    ip_bytes_received: int


@dataclass(frozen=True, slots=True)
class WireRate:
    """One direction's traffic over an interval (counted as IPv4), in kbit/s."""

    ip_kbps: float  # whole IPv4 packets
    udp_payload_kbps: float  # without the IPv4 and UDP headers
    packets_per_s: float

    @property
    def ipv6_kbps(self) -> float:
        """The same packets as whole IPv6 packets: the worst case of the voice budget."""
        extra = IPV6_EXTRA_HEADER_BYTES * self.packets_per_s * 8 / 1000
        return round(self.ip_kbps + extra, 2)


def rate_of(packets: int, ip_bytes: int, seconds: float) -> WireRate:
    """The rate of `packets` IPv4 packets of `ip_bytes` in all over `seconds`."""
    payload = ip_bytes - IPV4_UDP_HEADER_BYTES * packets
    return WireRate(
        round(ip_bytes * 8 / seconds / 1000, 2),
        round(payload * 8 / seconds / 1000, 2),
        round(packets / seconds, 1),
    )


def wire_rate(before: WireCount, after: WireCount, seconds: float) -> WireRate:
    packets = after.packets_sent - before.packets_sent
    return rate_of(packets, after.ip_bytes_sent - before.ip_bytes_sent, seconds)


class LabProbe(ProbeClient):
    """A `tests.support.media_probe` process in a lab host, with nftables counting its UDP."""

    def __init__(self, lab: NetLab, host: Host, args: list[str], log_path: Path) -> None:
        lab.exec(host, ["nft", "-f", "-"], input=NFT_COUNTERS)
        with log_path.open("wb") as log:
            proc = lab.run(
                host,
                [sys.executable, "-m", "tests.support.media_probe", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        super().__init__(proc, log_path)
        self.lab = lab
        self.host = host

    def wire(self) -> WireCount:
        counters = json.loads(self.lab.exec(self.host, ["nft", "-j", "list", "counters"]))
        found = {
            item["counter"]["name"]: item["counter"]
            for item in counters["nftables"]
            if "counter" in item and item["counter"]["table"] == "media_test"
        }
        sent, received = found["sent"], found["received"]
        return WireCount(sent["packets"], sent["bytes"], received["packets"], received["bytes"])
