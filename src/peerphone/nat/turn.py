"""A sans-I/O STUN responder and TURN server core (RFC 8489 STUN, an RFC 8656 subset).

`TurnServer` takes what arrives — from clients (`receive`, with a `Client`: transport,
address, TCP connection), at relayed sockets (`receive_from_peer`) — plus `now` (unix
seconds), and returns what to do: `ToClient` and `ToPeer` datagrams, and `OpenRelay` /
`CloseRelay` for relayed sockets, which the adapter (`server.py`) owns. An Allocate
waits for its socket: the core answers it from `relay_opened` (or `relay_failed`).

Implemented: Binding; Allocate (UDP relays only), Refresh (lifetime 0 deletes),
CreatePermission, ChannelBind (0x4000-0x4FFF, and RFC 5766's up to 0x7FFE), Send and
Data indications, ChannelData.
Long-term credentials (MESSAGE-INTEGRITY, and MESSAGE-INTEGRITY-SHA256 when a client
uses it) with REST-style usernames (`credentials.py`), stateless nonces, 401/438, and
FINGERPRINT, EVEN-PORT without reservation. Not implemented (answered with 420, 442 or
508): RESERVATION-TOKEN and EVEN-PORT's R bit, DONT-FRAGMENT, TCP relays (RFC 6062),
USERHASH and PASSWORD-ALGORITHMS.

Safety (see docs/decisions/0009-turn-relay.md and 0012-relay-hardening.md): only an
authenticated allocation relays, only to peers it holds a permission for, and permissions
are only granted to addresses `AddressFilter` allows (403 otherwise); nothing is granted
or relayed to the node itself (`own.py`: its addresses, ports and relayed ports, checked
on every packet); lifetimes, bytes and table sizes are capped (`limits.py`), allocations
per user (whom the credential was issued to, not the username) and per client address
range too; the owner's cap is one token bucket for all allocations; every dropped packet
is counted in `stats`. A sender that has not authenticated gets nothing bigger
than `MAX_UNAUTHENTICATED_EXCESS_BYTES` more than it sent (no amplification), and costs
no memory (nonces are stateless).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from peerphone.endpoints import Address
from peerphone.errors import DecodeError, LocalProtocolError
from peerphone.nat import stun
from peerphone.nat.addrfilter import AddressFilter
from peerphone.nat.allocation import Allocation, AllocationTable, Auth, Channel
from peerphone.nat.credentials import REALM, NonceMinter, long_term_key, username_user
from peerphone.nat.dataplane import DataPlane
from peerphone.nat.events import (
    Client,
    CloseRelay,
    OpenRelay,
    Output,
    SharingSnapshot,
    ToClient,
)
from peerphone.nat.limits import (
    CHANNEL_LIFETIME_S,
    CHANNEL_MAX,
    CHANNEL_MIN,
    CHANNEL_QUARANTINE_S,
    PERMISSION_LIFETIME_S,
    TokenBucket,
    TurnLimits,
    address_prefix,
    wire_bytes,
)
from peerphone.nat.own import OWN_RELAYED_PORT, OwnAddresses

log = logging.getLogger(__name__)

REQUESTED_TRANSPORT_UDP = 17 << 24  # protocol number in the first byte (RFC 8656 18.7)
# The 401/438 challenge: header, ERROR-CODE without a reason phrase, REALM, a 4-character
# NONCE, no FINGERPRINT: 20 + 8 + 8 + 8 bytes. coturn's uclient opens with a 44-byte
# Allocate, aioice with 36, the smallest valid Allocate is 28 (REQUESTED-TRANSPORT only).
CHALLENGE_BYTES = 44
MIN_CHALLENGED_REQUEST_BYTES = 28  # smaller unauthenticated requests are dropped
# The most a reply to an unauthenticated sender may exceed its request by: one IPv6
# XOR-MAPPED-ADDRESS (a Binding response to a bare 20-byte request is 44 bytes).
MAX_UNAUTHENTICATED_EXCESS_BYTES = 24
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    508: "Insufficient Capacity",
}


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


class TurnServer:
    """The STUN/TURN server of one node, without I/O (see the module docstring)."""

    def __init__(
        self,
        secret: bytes,
        *,
        bandwidth_bytes_per_s: float,
        now: float,
        rng: random.Random,
        address_filter: AddressFilter | None = None,
        limits: TurnLimits | None = None,
        relay_families: tuple[int, ...] = (4,),
    ) -> None:
        if not secret:
            raise LocalProtocolError("the TURN secret must not be empty")
        if not relay_families or not set(relay_families) <= {4, 6}:
            raise LocalProtocolError("relay_families must be a non-empty subset of (4, 6)")
        self.secret = secret
        self.realm = REALM
        self.limits = limits or TurnLimits()
        self.filter = address_filter or AddressFilter()
        self.relay_families = relay_families
        self.rng = rng
        self.nonces = NonceMinter(rng)
        self.stats: Counter[str] = Counter()
        # set while the node sheds duty (daemon/duty.py): new allocations get 508
        self.refusing_allocations = False
        self.own = OwnAddresses(self.filter)  # the node itself: never a peer
        self.table = AllocationTable(now, self.own.relayed_ports)
        self.data = DataPlane(
            self.table,
            self.limits,
            self.stats,
            TokenBucket(bandwidth_bytes_per_s, now),
            rng,
            self.own,
        )
        # requests on the client's allocation: `_request` answers 437 when it has none (or
        # its relayed socket is not open yet), so a handler always gets a ready one
        Handler = Callable[[stun.StunMessage, Client, Auth, Allocation, float], list[Output]]
        self._on_allocation: dict[int, Handler] = {
            stun.REFRESH: self._refresh,
            stun.CREATE_PERMISSION: self._create_permission,
            stun.CHANNEL_BIND: self._channel_bind,
        }

    # -- inputs ---------------------------------------------------------------------------

    def receive(self, data: bytes, client: Client, now: float) -> list[Output]:
        """A datagram (UDP) or one framed message (TCP) from a client."""
        if data and 0x40 <= data[0] < 0x80:  # ChannelData (see limits.CHANNEL_MAX)
            return self.data.channel_data(data, client, now)
        try:
            message = stun.decode(data)
        except DecodeError:
            self.stats["drop_malformed"] += 1
            return []
        if message.cls == stun.REQUEST:
            if message.method == stun.BINDING:
                return self._charged(self._binding(message, client), now)
            if message.method == stun.ALLOCATE or message.method in self._on_allocation:
                return self._charged(self._request(message, client, now), now)
        elif message.cls == stun.INDICATION and message.method == stun.SEND:
            return self.data.send_indication(message, client, now)
        self.stats["drop_unexpected_message"] += 1
        return []

    def receive_from_peer(
        self, allocation: int, data: bytes, peer: Address, now: float
    ) -> list[Output]:
        """A datagram from `peer` at the relayed socket of `allocation`."""
        return self.data.from_peer(allocation, data, peer, now)

    def relay_opened(self, allocation: int, relayed: Address, now: float) -> list[Output]:
        """The adapter opened `allocation`'s socket at `relayed`: answer its Allocate."""
        alloc = self.table.by_id.get(allocation)
        if alloc is None:  # deleted meanwhile (its client went away)
            return [CloseRelay(allocation)]
        self.table.opened(alloc, relayed)
        if relayed[0] not in self.own.hosts:  # what we advertise is ours, of course
            self.own.add_host(relayed[0])
        attributes = {
            "XOR-RELAYED-ADDRESS": relayed,
            "LIFETIME": max(0, int(alloc.expires - now)),
            "XOR-MAPPED-ADDRESS": alloc.client.address,
        }
        alloc.allocate_response = stun.encode(
            stun.ALLOCATE,
            stun.RESPONSE,
            alloc.allocate_transaction,
            attributes,
            key=alloc.key,
            algorithm=alloc.algorithm,
        )
        return self._charged([ToClient(alloc.client, alloc.allocate_response)], now)

    def relay_failed(self, allocation: int, now: float) -> list[Output]:
        """The adapter could not open `allocation`'s socket: 508 to its Allocate."""
        alloc = self.table.by_id.get(allocation)
        if alloc is None:
            return []
        self.stats["relay_open_failed"] += 1
        self.table.forget(alloc)
        reply = self._encode_error(
            stun.ALLOCATE,
            alloc.allocate_transaction,
            Auth(alloc.username, alloc.key, alloc.algorithm),
            508,
        )
        return self._charged([ToClient(alloc.client, reply)], now)

    def _charged(self, outputs: list[Output], now: float) -> list[Output]:
        """Answers go whatever the cap says, but count against it (see `TokenBucket.charge`):
        relayed packets wait until the answers are paid for."""
        for output in outputs:
            if isinstance(output, ToClient):
                self.data.bucket.charge(wire_bytes(output.data, output.client.address), now)
        return outputs

    def client_gone(self, client: Client, now: float) -> list[Output]:
        """A TCP client connection closed: its allocation goes with it (RFC 8656 s. 5)."""
        alloc = self.table.by_client.get(client)
        if alloc is None:
            return []
        self.stats["allocations_closed_with_connection"] += 1
        return self._delete(alloc)

    def handle_timer(self, now: float) -> list[Output]:
        """Expire allocations whose time has come; purge expired permissions/channels."""
        expired = self.table.expire(now)
        self.stats["allocations_expired"] += len(expired)
        return [CloseRelay(alloc.id) for alloc in expired]

    def next_timer(self) -> float:
        """When `handle_timer` should be called next (unix seconds)."""
        return self.table.next_timer()

    # -- requests -------------------------------------------------------------------------

    def _binding(self, message: stun.StunMessage, client: Client) -> list[Output]:
        if message.unknown_required:
            reply = stun.encode(
                stun.BINDING,
                stun.ERROR,
                message.transaction_id,
                {"ERROR-CODE": (420, "")},
                add_fingerprint=False,
                unknown=message.unknown_required,
            )
        else:
            reply = stun.encode(
                stun.BINDING,
                stun.RESPONSE,
                message.transaction_id,
                {"XOR-MAPPED-ADDRESS": client.address},
                add_fingerprint=message.fingerprint,
            )
        return self._unauthenticated_reply(message, client, reply)

    def _unauthenticated_reply(
        self, message: stun.StunMessage, client: Client, reply: bytes
    ) -> list[Output]:
        if len(reply) > message.size + MAX_UNAUTHENTICATED_EXCESS_BYTES:
            self.stats["drop_would_amplify"] += 1
            return []
        return [ToClient(client, reply)]

    def _request(self, message: stun.StunMessage, client: Client, now: float) -> list[Output]:
        auth = self._authenticate(message, client, now)
        if not isinstance(auth, Auth):
            return auth
        alloc = self.table.by_client.get(client)
        if alloc is not None and alloc.username != auth.username:
            return self._error(message, client, auth, 441)
        if message.unknown_required:
            return self._error(message, client, auth, 420, unknown=message.unknown_required)
        if message.method == stun.ALLOCATE:
            return self._allocate(message, client, auth, alloc, now)
        if alloc is None or alloc.relayed is None:
            return self._error(message, client, auth, 437)
        return self._on_allocation[message.method](message, client, auth, alloc, now)

    def _authenticate(
        self, message: stun.StunMessage, client: Client, now: float
    ) -> Auth | list[Output]:
        """The credentials of a request, or the 401/438 to send instead (RFC 8489 9.2.4)."""
        attributes = message.attributes
        username = attributes.get("USERNAME")
        nonce = attributes.get("NONCE")
        if message.integrity is None or username is None or nonce is None:
            self.stats["challenged"] += 1
            return self._challenge(message, client, 401, now)
        if attributes.get("REALM") != self.realm:
            self.stats["auth_wrong_realm"] += 1
            return self._challenge(message, client, 401, now)
        if not self.nonces.valid(nonce, client.address[0], now):
            self.stats["auth_stale_nonce"] += 1
            return self._challenge(message, client, 438, now)
        key = long_term_key(self.secret, username, self.realm, now)
        if key is None:
            self.stats["auth_bad_or_expired_username"] += 1
            return self._challenge(message, client, 401, now)
        if not message.check_integrity(key):
            self.stats["auth_bad_integrity"] += 1
            return self._challenge(message, client, 401, now)
        return Auth(username, key, message.integrity, username_user(username))

    def _challenge(
        self, message: stun.StunMessage, client: Client, code: int, now: float
    ) -> list[Output]:
        if message.size < MIN_CHALLENGED_REQUEST_BYTES:
            self.stats["drop_small_unauthenticated"] += 1
            return []
        reply = stun.encode(
            message.method,
            stun.ERROR,
            message.transaction_id,
            {
                "ERROR-CODE": (code, ""),
                "REALM": self.realm,
                "NONCE": self.nonces.mint(client.address[0], now),
            },
            add_fingerprint=False,
        )
        return self._unauthenticated_reply(message, client, reply)

    def _allocate(
        self,
        message: stun.StunMessage,
        client: Client,
        auth: Auth,
        alloc: Allocation | None,
        now: float,
    ) -> list[Output]:
        if alloc is not None:
            if alloc.allocate_transaction != message.transaction_id:
                return self._error(message, client, auth, 437)
            if alloc.allocate_response:  # a retransmission: the same answer
                return [ToClient(client, alloc.allocate_response)]
            return []  # still opening its socket: the answer follows
        transport = message.attributes.get("REQUESTED-TRANSPORT")
        if transport is None:
            return self._error(message, client, auth, 400)
        if transport != REQUESTED_TRANSPORT_UDP:
            return self._error(message, client, auth, 442)
        family = 6 if message.requested_family == 2 else 4
        if family not in self.relay_families:
            return self._error(message, client, auth, 440)
        if message.even_port:  # R bit: reserve the next port as well (RESERVATION-TOKEN)
            return self._error(message, client, auth, 508)
        if self.table.per_user[auth.user] >= self.limits.max_allocations_per_user:
            self.stats["refused_allocation_quota"] += 1
            return self._error(message, client, auth, 486)
        if self.table.per_prefix[address_prefix(client.address[0])] >= (
            self.limits.max_allocations_per_prefix
        ):
            self.stats["refused_allocation_prefix_quota"] += 1
            return self._error(message, client, auth, 486)
        if len(self.table.by_id) >= self.limits.max_allocations:
            self.stats["refused_allocations_full"] += 1
            return self._error(message, client, auth, 508)
        if self.refusing_allocations:  # the owner's caps: granted ones keep running
            self.stats["refused_allocation_shedding"] += 1
            return self._error(message, client, auth, 508)
        lifetime = self._lifetime(message.attributes.get("LIFETIME"))
        alloc = self.table.add(client, auth, family, now + lifetime, message.transaction_id)
        self.stats["allocations_created"] += 1
        return [OpenRelay(alloc.id, family, even_port=message.even_port == 0)]

    def _lifetime(self, requested: int | None) -> int:
        """RFC 8656 section 7.2: min(requested, max), but not below the default."""
        limits = self.limits
        if requested is None:
            return limits.default_lifetime_s
        return max(limits.default_lifetime_s, min(requested, limits.max_lifetime_s))

    def _refresh(
        self,
        message: stun.StunMessage,
        client: Client,
        auth: Auth,
        alloc: Allocation,
        now: float,
    ) -> list[Output]:
        if message.requested_family is not None and message.requested_family != (
            2 if alloc.family == 6 else 1
        ):
            return self._error(message, client, auth, 443)
        requested = message.attributes.get("LIFETIME")
        out: list[Output]
        if requested == 0:
            self.stats["allocations_deleted"] += 1
            out, lifetime = self._delete(alloc), 0
        else:
            out, lifetime = [], self._lifetime(requested)
            alloc.expires = now + lifetime
        reply = self._encode(message, auth, {"LIFETIME": lifetime})
        return [ToClient(client, reply), *out]

    def _create_permission(
        self,
        message: stun.StunMessage,
        client: Client,
        auth: Auth,
        alloc: Allocation,
        now: float,
    ) -> list[Output]:
        if not message.peers:
            return self._error(message, client, auth, 400)
        for peer in message.peers:
            code = self._check_peer(alloc, peer)
            if code:
                return self._error(message, client, auth, code)
        ips = {peer[0] for peer in message.peers}
        if len(ips | alloc.permissions.keys()) > self.limits.max_permissions_per_allocation:
            self.stats["refused_permissions_full"] += 1
            return self._error(message, client, auth, 508)
        for ip in sorted(ips):
            alloc.permissions[ip] = now + PERMISSION_LIFETIME_S
        return [ToClient(client, self._encode(message, auth, {}))]

    def _channel_bind(
        self,
        message: stun.StunMessage,
        client: Client,
        auth: Auth,
        alloc: Allocation,
        now: float,
    ) -> list[Output]:
        number = message.attributes.get("CHANNEL-NUMBER")
        if number is None or len(message.peers) != 1 or not CHANNEL_MIN <= number <= CHANNEL_MAX:
            return self._error(message, client, auth, 400)
        peer = message.peers[0]
        code = self._check_peer(alloc, peer)
        if code:
            return self._error(message, client, auth, code)
        reserved_until = now - CHANNEL_QUARANTINE_S  # a channel that expired after this
        existing = alloc.channels.get(number)
        bound = alloc.peer_channels.get(peer)
        if (
            existing is not None and existing.peer != peer and existing.expires > reserved_until
        ) or (
            bound is not None and bound != number and alloc.channels[bound].expires > reserved_until
        ):
            self.stats["refused_channel_conflict"] += 1
            return self._error(message, client, auth, 400)
        if existing is None and len(alloc.channels) >= self.limits.max_channels_per_allocation:
            self.stats["refused_channels_full"] += 1
            return self._error(message, client, auth, 508)
        ip = peer[0]
        if (
            ip not in alloc.permissions
            and len(alloc.permissions) >= self.limits.max_permissions_per_allocation
        ):
            self.stats["refused_permissions_full"] += 1
            return self._error(message, client, auth, 508)
        if existing is not None and existing.peer != peer:  # its quarantine is over
            alloc.peer_channels.pop(existing.peer, None)
        if bound is not None and bound != number:
            del alloc.channels[bound]
        alloc.channels[number] = Channel(peer, now + CHANNEL_LIFETIME_S)
        alloc.peer_channels[peer] = number
        alloc.permissions[ip] = now + PERMISSION_LIFETIME_S
        return [ToClient(client, self._encode(message, auth, {}))]

    def _check_peer(self, alloc: Allocation, peer: Address) -> int:
        """0 if `alloc` may get a permission for `peer`, else the error code."""
        if _family(peer[0]) != alloc.family:
            return 443
        verdict = self.filter.verdict(peer[0])
        if not verdict.allowed or peer[1] == 0:
            reason = verdict.reason if not verdict.allowed else "port-0"
            self.stats["refused_peer_" + reason] += 1
            return 403
        own = self.own.refusal(peer)
        if own is not None:
            other = self.table.by_relayed.get(peer) if own == OWN_RELAYED_PORT else None
            if other is None or other is alloc:
                self.stats["refused_peer_own_" + own] += 1
                return 403
            # another allocation's relayed address: its data is handed over inside the
            # relay (`DataPlane`), never sent to our socket
        return 0

    # -- helpers --------------------------------------------------------------------------

    def _encode(self, message: stun.StunMessage, auth: Auth, attributes: dict[str, Any]) -> bytes:
        return stun.encode(
            message.method,
            stun.RESPONSE,
            message.transaction_id,
            attributes,
            key=auth.key,
            algorithm=auth.algorithm,
        )

    def _encode_error(
        self,
        method: int,
        transaction_id: bytes,
        auth: Auth,
        code: int,
        unknown: list[int] | None = None,
    ) -> bytes:
        self.stats[f"error_{code}"] += 1
        return stun.encode(
            method,
            stun.ERROR,
            transaction_id,
            {"ERROR-CODE": (code, REASONS[code])},
            key=auth.key,
            algorithm=auth.algorithm,
            unknown=unknown,
        )

    def _error(
        self,
        message: stun.StunMessage,
        client: Client,
        auth: Auth,
        code: int,
        unknown: list[int] | None = None,
    ) -> list[Output]:
        log.debug("error %d to %s for %s", code, client, message)
        reply = self._encode_error(message.method, message.transaction_id, auth, code, unknown)
        return [ToClient(client, reply)]

    def _delete(self, alloc: Allocation) -> list[Output]:
        self.table.forget(alloc)
        return [CloseRelay(alloc.id)]

    # -- status ---------------------------------------------------------------------------

    def has_allocation(self, client: Client) -> bool:
        """Whether `client` holds an allocation (it authenticated an Allocate)."""
        return client in self.table.by_client

    def allocation(self, allocation: int) -> Allocation | None:
        """The allocation with this id (for the adapter and tests), if it exists."""
        return self.table.by_id.get(allocation)

    def snapshot(self, now: float) -> SharingSnapshot:
        """What this node shares right now, exactly."""
        return SharingSnapshot(
            allocations=self.table.snapshot(now),
            rate_bytes_per_s=self.data.meter.rate(now),
            cap_bytes_per_s=self.data.bucket.rate,
            total_bytes_relayed=self.data.total_bytes_relayed,
            drops=dict(sorted(self.stats.items())),
        )
