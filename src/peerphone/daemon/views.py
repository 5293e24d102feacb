"""JSON views of a running node for the control API: status, lookups, presence."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from peerphone.daemon.config import NodeConfig
from peerphone.daemon.datadir import Contact
from peerphone.daemon.policy import Policy
from peerphone.daemon.relay import Relay
from peerphone.endpoints import format_address
from peerphone.errors import DecodeError
from peerphone.identity import NodeId
from peerphone.overlay.events import LookupDone
from peerphone.records import PresenceBody, Record, Status, decode_body
from peerphone.runtime.node_runtime import BootstrapTry, NodeRuntime
from peerphone.wire import ReasonCode


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
    @property
    def policy(self) -> Policy | None: ...
    def network_problem(self) -> str: ...


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


# a lookup's reasons (client_lookups) that say whether the name is registered at all
REASON_NEVER_REGISTERED = ReasonCode.NOT_FOUND.value  # no replica holds a name record
REASON_NO_PRESENCE = "offline"  # a name record, but no presence of its owner


def lookup_view(
    done: LookupDone | None, latency_ms: float, name: str, problem: str = ""
) -> dict[str, Any]:
    """A lookup's result; `problem` (why this node cannot look anybody up) replaces the
    reason of a failed one. `registered`: True or False when the directory said, else
    None (a timeout, a conflict...)."""
    presence = done.presence if done is not None else None
    status = done.status if done is not None else None
    reason = problem or (done.reason if done is not None else "")
    found = presence is not None
    registered: bool | None = None
    if found or reason == REASON_NO_PRESENCE:
        registered = True
    elif reason == REASON_NEVER_REGISTERED:
        registered = False
    return {
        "name": name,
        "found": found,
        "registered": registered,
        "online": found and status is not None and status is not Status.OFFLINE,
        "status": status_name(status) if found else ("offline" if registered else None),
        "verified": found,  # the client core returns only records whose signatures it checked
        "reason": reason,
        "attached": not problem,
        "hops": done.hops if done is not None else 0,
        "latency_ms": round(latency_ms, 3),
        "record": presence_view(name, presence) if presence is not None else None,
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


def _bootstrap_try(service: StatusSource, tried: BootstrapTry) -> dict[str, Any]:
    answered = tried.answered_by
    return {
        "address": tried.address,
        "tries": tried.tries,
        "answered_by": answered.hex() if answered is not None else None,
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
        "managed": service.policy.view() if service.policy is not None else None,
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
        "network": {
            "attached": node.primary is not None,
            "problem": service.network_problem(),
            "bootstrap": [_bootstrap_try(service, t) for t in runtime.bootstrap_tries.values()],
        },
        "sharing": {
            "consented": service.config.role != "client" and service.config.share.max_clients > 0,
            "limits": {
                "max_clients": service.config.share.max_clients,
                "up_kbps": service.config.share.up_kbps,
                "directory_kbps": service.config.share.directory_kbps,
                "cpu_percent": service.config.share.cpu_percent,
            },
            "clients_served": supernode["clients_served"] if supernode else 0,
            "records_held": supernode["records_held"] if supernode else 0,
            "relay": service.relay.sharing(),
            "relay_problem": service.relay.failure or None,
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
