"""The STUN/TURN relay a supernode runs beside its overlay role, and its credentials.

Started when the node becomes a supernode, stopped when it stops being one. STUN and TURN
over UDP listen on their own port (`turn_port`, 3478 by default); TURN over TCP shares
the overlay's TCP carrier port (443 on a public supernode): the carrier hands every
connection that does not start with its magic to the relay. Credentials are short-lived
(TURN REST style, a secret that lives as long as the process), issued only to our own
attached clients over the authenticated overlay (`TurnRequest`/`TurnGrant`), to each
client node at most one fresh credential a minute (`CredentialIssuer`: asking sooner gets
the one it has); the relay's quotas count per client node, not per credential. The relay
refuses special address ranges unless the owner allowed them (`relay_allow`), never
reaches this node itself (its sockets, addresses and relayed ports: `nat/own.py`), and
its bandwidth is capped at the `share.up_kbps` the owner agreed to (whole IP packets it
sends; `up_kbps = 0`: no relay). When the node stops being a supernode (except when it
stops altogether) the relay *drains*: no new credentials, new allocations refused, the
granted ones relayed until they end, at most `MAX_DRAIN_S`; then it stops.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from peerphone.daemon.config import NodeConfig
from peerphone.endpoints import Endpoint, endpoint_or_none, format_address
from peerphone.identity import NodeId
from peerphone.nat.addrfilter import AddressFilter
from peerphone.nat.credentials import CredentialIssuer
from peerphone.nat.events import AllocationSnapshot
from peerphone.nat.limits import MAX_LIFETIME_S, WireCount
from peerphone.nat.server import TurnService
from peerphone.nat.turn import TurnServer
from peerphone.runtime.node_runtime import NodeRuntime
from peerphone.runtime.tcp_carrier import refuse_other

log = logging.getLogger("peerphone.relay")

MAX_DRAIN_S = float(MAX_LIFETIME_S)  # one allocation's longest lifetime
CREDENTIAL_TTL_S = 600.0  # what a TurnGrant is valid for; clients ask again before expiry
CREDENTIAL_USER_HEX_CHARS = 32  # the client's node id in its username: 128 bits of it
SECRET_BYTES = 32


class Relay:
    """One supernode's relay (see the module docstring)."""

    def __init__(self, config: NodeConfig, runtime: Callable[[], NodeRuntime]) -> None:
        """`runtime`: the node's runtime once it has started (the relay starts after)."""
        self.config = config
        self._runtime = runtime
        self.turn: TurnService | None = None
        self.urls: list[str] = []
        self._issuer: CredentialIssuer | None = None
        self._stats: Counter[str] = Counter()
        self.wire = WireCount()  # what its sockets moved, over every start (`sharing.py`)
        self.failure = ""  # why the relay could not start (shown by status), "" if it did
        self.draining_since: float | None = None  # runtime clock: when draining began
        self.shedding = False  # the owner's caps refuse new allocations (daemon/duty.py)

    @property
    def running(self) -> bool:
        return self.turn is not None

    async def start(self) -> None:
        if self.turn is not None and self.draining_since is not None:
            self.draining_since = None  # a supernode again before the last calls ended
            self._runtime().core.set_turn_issuer(self._issue)
            self.refuse_allocations(self.shedding)
            log.info("relay: granting again")
        if self.turn is not None or self.failure:
            return  # running, or known not to run (its port is taken)
        runtime = self._runtime()
        cfg = self.config
        if not cfg.share.up_kbps:
            self.failure = "share.up_kbps = 0: the owner shares no relay"
            log.info("not running a relay: %s", self.failure)
            return
        advertised = self._advertised_host()
        bound = runtime.address
        if advertised is None or bound is None:
            self.failure = "no routable address to advertise (see --listen)"
            log.warning("not running a relay: %s", self.failure)
            return
        secret = os.urandom(SECRET_BYTES)
        core = TurnServer(
            secret,
            bandwidth_bytes_per_s=cfg.share.up_kbps * 1000 / 8,
            now=runtime.now(),
            rng=random.SystemRandom(),
            address_filter=AddressFilter(cfg.relay_allow),
        )
        # never a peer: our own sockets (a client must not reach our QUIC socket through us)
        # and addresses; the relay adds its own sockets and the interface addresses
        for own in (bound, runtime.tcp_address):
            if own is not None:
                core.own.add_socket(own)
        for text in runtime.core.addresses:
            endpoint = endpoint_or_none(text)
            if endpoint is not None:
                core.own.add_host(endpoint[1][0])
        self._issuer = CredentialIssuer(secret, CREDENTIAL_TTL_S, stats=core.stats)
        turn = TurnService(core, bound[0], advertised, self.wire)
        try:
            udp = await turn.listen_udp(bound[0], cfg.turn_port)
        except OSError as exc:
            turn.close()
            await turn.wait_closed()
            self.failure = port_problem(("udp", (bound[0], cfg.turn_port)), "--turn-port", exc)
            log.error("not running a relay: %s", self.failure)
            return
        self.failure = ""
        urls = [
            f"stun:{_host(advertised)}:{udp[1]}",
            f"turn:{_host(advertised)}:{udp[1]}?transport=udp",
        ]
        if runtime.tcp_address is not None:
            runtime.links.tcp.on_other = turn.on_other
            urls.append(f"turn:{_host(advertised)}:{runtime.tcp_address[1]}?transport=tcp")
        self.turn, self.urls = turn, urls
        self.refuse_allocations(self.shedding)
        runtime.core.set_turn_issuer(self._issue)
        log.info(
            "relay on %s (TURN over TCP: %s)",
            format_address(udp),
            "the carrier's port" if runtime.tcp_address else "no",
        )

    def _issue(self, client: NodeId, now: float) -> tuple[list[str], str, str, float]:
        assert self._issuer is not None  # set before this is handed to the supernode core
        grant = self._issuer.issue(client.hex()[:CREDENTIAL_USER_HEX_CHARS], now)
        return list(self.urls), grant.username, grant.password, float(grant.expires_at)

    def refuse_allocations(self, refuse: bool) -> None:
        """Refuse new allocations (the owner's caps) or take them again (unless draining)."""
        self.shedding = refuse
        if self.turn is not None:
            self.turn.core.refusing_allocations = refuse or self.draining_since is not None

    def drain(self) -> None:
        """Stop granting, keep relaying the allocations granted (calls in progress)."""
        if self.turn is None or self.draining_since is not None:
            return
        runtime = self._runtime()
        self.draining_since = runtime.now()
        runtime.core.set_turn_issuer(None)
        self.turn.core.refusing_allocations = True
        log.info("relay draining: %d allocation(s) relayed until they end", self.allocations())

    def drained(self) -> bool:
        """Whether a draining relay may stop now: nothing left to relay, or too long."""
        if self.turn is None or self.draining_since is None:
            return False
        return not self.allocations() or self._runtime().now() - self.draining_since > MAX_DRAIN_S

    def allocations(self) -> int:
        return len(self.turn.core.table.by_id) if self.turn is not None else 0

    async def stop(self) -> None:
        self.draining_since = None
        turn, self.turn = self.turn, None
        if turn is None:
            return
        runtime = self._runtime()
        runtime.core.set_turn_issuer(None)  # a later supernode role has no relay until start
        if runtime.tcp_address is not None:
            runtime.links.tcp.on_other = refuse_other
        turn.close()
        await turn.wait_closed()
        log.info("relay stopped")

    def stats(self) -> Counter[str]:
        """The relay's counters, kept after it stops (they are the node's history)."""
        if self.turn is not None:
            self._stats = self.turn.stats
        return self._stats

    def _advertised_host(self) -> str | None:
        """The host of our first advertised UDP endpoint (what clients can reach)."""
        for text in self._runtime().core.snapshot().addresses:
            endpoint = endpoint_or_none(text)
            if endpoint is not None and endpoint[0] == "udp":
                return endpoint[1][0]
        return None

    def sharing(self) -> dict[str, Any] | None:
        """Exactly what the relay shares right now (None when it does not run)."""
        if self.turn is None:
            return None
        snap = self.turn.snapshot()
        return {
            "urls": self.urls,
            "allocations": len(snap.allocations),
            "rate_kbps": round(snap.rate_bytes_per_s * 8 / 1000, 2),
            "cap_kbps": round(snap.cap_bytes_per_s * 8 / 1000, 2),
            "draining": self.draining_since is not None,
            "refusing_allocations": self.turn.core.refusing_allocations,
            "total_bytes_relayed": snap.total_bytes_relayed,
            "per_allocation": [_allocation(a) for a in snap.allocations],
            "drops": {k: v for k, v in snap.drops.items() if v},
        }


def port_problem(endpoint: Endpoint, option: str, exc: OSError) -> str:
    """Why a port could not be opened, naming the option that chooses another."""
    kind, address = endpoint
    what = "in use by another program" if exc.errno == errno.EADDRINUSE else exc.strerror
    return (
        f"{kind.upper()} port {address[1]} on {address[0]} is {what}"
        if exc.errno == errno.EADDRINUSE
        else f"cannot open {kind.upper()} {format_address(address)}: {what}"
    ) + f"; choose another with {option}"


def _host(host: str) -> str:
    return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host


def _allocation(a: AllocationSnapshot) -> dict[str, Any]:
    return {
        "client": format_address(a.client),
        "transport": a.transport,
        "relayed": format_address(a.relayed) if a.relayed else None,
        "expires_in_s": round(a.expires_in_s, 1),
        "peers": list(a.permissions),
        "bytes_to_peers": a.bytes_to_peers,
        "bytes_from_peers": a.bytes_from_peers,
        "packets_dropped": a.packets_dropped,
    }
