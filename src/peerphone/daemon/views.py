"""JSON views of a running node for the control API: status, lookups, presence."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from peerphone.daemon.config import NodeConfig
from peerphone.daemon.datadir import Contact
from peerphone.daemon.relay import Relay
from peerphone.errors import DecodeError
from peerphone.identity import NodeId
from peerphone.overlay.events import LookupDone
from peerphone.records import PresenceBody, Record, Status, decode_body
from peerphone.runtime.node_runtime import NodeRuntime, format_address


class StatusSource(Protocol):
    """What the status view reads of the node's service (the daemon's NodeService)."""

    @property
    def runtime(self) -> NodeRuntime: ...
    @property
    def relay(self) -> Relay: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def contacts(self) -> Mapping[str, Contact]: ...
    @property
    def started_at(self) -> float: ...
    @property
    def role_reason(self) -> str: ...
    @property
    def registered(self) -> bool: ...


# runtime counters that mean "input we refused" (shown under errors in status)
ERROR_PREFIXES = ("drop_", "tcp_drop_")
ERROR_NAMES = ("internal_errors", "auth_failed", "socket_errors")
# not errors: an unanswered UDP dial is how a firewalled node learns to use TCP
LINK_NAMES = ("handshake_timeouts", "dial_failed", "tcp_dialled", "tcp_accepted")
TRAFFIC_NAMES = ("datagrams_in", "datagrams_out", "messages_in", "messages_out", "retry_sent")


# the relay's counters of refused input (it takes what the TCP carrier does not recognise)
RELAY_ERROR_PREFIXES = ("drop_", "tcp_drop_", "tcp_unframeable", "tcp_refused", "auth_")


def error_counters(stats: Counter[str], relay: Counter[str] | None = None) -> Counter[str]:
    """The counters of input refused or failed (garbage, failed handshakes, our bugs),
    the relay's prefixed with ``relay_``."""
    out = Counter(
        {k: v for k, v in sorted(stats.items()) if k.startswith(ERROR_PREFIXES) or k in ERROR_NAMES}
    )
    for key, value in sorted((relay or Counter()).items()):
        if key.startswith(RELAY_ERROR_PREFIXES) and value:
            out["relay_" + key] = value
    return out


def status_name(status: Status | None) -> str | None:
    return None if status is None else status.name.lower()


def presence_view(name: str, record: Record) -> dict[str, Any]:
    """A verified presence record as JSON (the caller verified it)."""
    view: dict[str, Any] = {
        "name": name,
        "owner": record.owner.hex(),
        "seq": record.seq,
        "expires": record.expires(),
    }
    try:
        body = decode_body(record)
    except DecodeError:
        return view
    if isinstance(body, PresenceBody):
        view.update(
            status=status_name(body.status),
            device=body.device,
            addresses=list(body.addresses),
            supernodes=[s.hex() for s in body.supernodes],
            capabilities=list(body.capabilities),
        )
    return view


def lookup_view(done: LookupDone, latency_ms: float) -> dict[str, Any]:
    found = done.presence is not None
    return {
        "name": done.username,
        "found": found,
        "online": found and done.status is not None and done.status is not Status.OFFLINE,
        "status": status_name(done.status),
        "verified": found,  # the client core returns only records whose signatures it checked
        "reason": done.reason,
        "hops": done.hops,
        "latency_ms": round(latency_ms, 3),
        "record": presence_view(done.username, done.presence) if done.presence else None,
    }


def _peer(service: StatusSource, node: NodeId | None) -> dict[str, Any] | None:
    if node is None:
        return None
    link = service.runtime.link_to(node)
    if link is None:
        return {"node_id": node.hex(), "address": None, "transport": None}
    return {
        "node_id": node.hex(),
        "address": format_address(link.address),
        "transport": link.transport,
    }


def status_view(service: StatusSource) -> dict[str, Any]:
    runtime = service.runtime
    node = runtime.core.snapshot()
    stats = runtime.stats
    links = runtime.link_stats()
    errors = dict(error_counters(stats, service.relay.stats()))
    sn = node.supernode
    supernode: dict[str, Any] | None = None
    if sn is not None:
        supernode = {
            "clients_served": sn.clients_served,
            "backup_for": sn.backup_for,
            "max_clients": sn.max_clients,
            "records_held": sn.records_held,
            "keys_held": sn.keys_held,
            "membership_size": sn.membership_size,
            "ring_position": sn.ring_position.hex() if sn.ring_position else None,
            "seed": sn.seed,
            "stats": dict(sn.stats),
            "membership_refused": dict(sn.membership_refused),
        }
    return {
        "node_id": node.node_id.hex(),
        "name": node.username,
        "user_key": node.user_key.hex(),
        "device": node.device,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - service.started_at, 1),
        "role": "supernode" if sn is not None else "client",
        "role_setting": service.config.role,
        "role_reason": service.role_reason,
        "state": node.state.value,
        "status": status_name(node.status),
        "registered": service.registered,
        "name_refused": node.name_refused,
        "addresses": list(node.addresses),
        "attached": {
            "primary": _peer(service, node.primary),
            "backup": _peer(service, node.backup),
        },
        "supernode": supernode,
        "sharing": {
            "consented": service.config.role != "client",
            "limits": {
                "max_clients": service.config.share.max_clients,
                "up_kbps": service.config.share.up_kbps,
                "cpu_percent": service.config.share.cpu_percent,
            },
            "clients_served": supernode["clients_served"] if supernode else 0,
            "records_held": supernode["records_held"] if supernode else 0,
            "relay": service.relay.sharing(),
        },
        "contacts": len(service.contacts),
        "listen": {
            "udp": format_address(runtime.address) if runtime.address else None,
            "tcp": format_address(runtime.tcp_address) if runtime.tcp_address else None,
        },
        "links": links.up,
        "links_open": links.open,  # handshaking or up, in or out
        "links_over_tcp": links.over_tcp,
        "host_cache": node.host_cache_size,
        "errors": errors,
        "errors_total": sum(errors.values()),
        "traffic": {k: stats[k] for k in TRAFFIC_NAMES},
        "link_events": {k: stats[k] for k in LINK_NAMES},
    }
