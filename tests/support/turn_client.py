"""A sans-I/O TURN client and server factory for tests of the relay core."""

from __future__ import annotations

import random
import struct
from typing import Any

from aioice import stun as aiostun
from aioice.turn import make_integrity_key

from peerphone.nat import stun
from peerphone.nat.credentials import (
    REALM,
    issue_credentials,
)
from peerphone.nat.events import (
    UDP,
    Client,
    OpenRelay,
    Output,
    ToClient,
)
from peerphone.nat.turn import (
    TurnServer,
)

SECRET = b"test secret"

NOW = 1_700_000_000.0

CLIENT = Client(UDP, ("198.51.100.7", 40000))

RELAY = ("192.0.2.1", 49152)  # the relay's own address: the filter judges peers only

PEER = ("1.2.3.4", 5000)

TID = bytes(range(12))

CAP = 1_000_000.0  # bytes/s

Method = aiostun.Method

Class = aiostun.Class


def make_server(**kwargs: Any) -> TurnServer:
    kwargs.setdefault("bandwidth_bytes_per_s", CAP)
    return TurnServer(SECRET, now=NOW, rng=random.Random(7), **kwargs)


def one(outputs: list[Output]) -> bytes:
    """The single datagram to the client in `outputs`."""
    assert len(outputs) == 1 and isinstance(outputs[0], ToClient), outputs
    return outputs[0].data


class TurnClient:
    """A test client: builds requests with aioice, signs them once it has a nonce."""

    def __init__(
        self, server: TurnServer, client: Client = CLIENT, who: str = "alice", ttl: float = 600
    ) -> None:
        self.server = server
        self.client = client
        self.creds = issue_credentials(SECRET, who, ttl, NOW)
        self.key = make_integrity_key(self.creds.username, REALM, self.creds.password)
        self.nonce: bytes | None = None
        self.tids = random.Random(hash(who) & 0xFFFF)

    def build(self, method: Method, attributes: dict[str, Any], tid: bytes | None = None) -> bytes:
        message = aiostun.Message(
            method, Class.REQUEST, tid or self.tids.randbytes(12), dict(attributes)
        )
        if self.nonce is not None:
            message.attributes["USERNAME"] = self.creds.username
            message.attributes["REALM"] = REALM
            message.attributes["NONCE"] = self.nonce
            message.add_message_integrity(self.key)
        return bytes(message)

    def send(self, data: bytes, now: float = NOW) -> list[Output]:
        return self.server.receive(data, self.client, now)

    def request(
        self, method: Method, attributes: dict[str, Any], now: float = NOW, tid: bytes | None = None
    ) -> tuple[aiostun.Message, list[Output]]:
        """Send a request (after the 401 round trip if needed); the response and outputs."""
        if self.nonce is None:
            self.fetch_nonce(now)
        outputs = self.send(self.build(method, attributes, tid), now)
        replies = [o for o in outputs if isinstance(o, ToClient)]
        if replies and aiostun.parse_message(replies[0].data).error_code == 438:
            self.nonce = aiostun.parse_message(replies[0].data).attributes["NONCE"]
            outputs = self.send(self.build(method, attributes, tid), now)
            replies = [o for o in outputs if isinstance(o, ToClient)]
        if not replies:  # an Allocate: answered once the relay socket is open
            return aiostun.Message(method, Class.RESPONSE), outputs
        response = aiostun.parse_message(replies[0].data)
        assert response.check_message_integrity(self.key), response
        return response, outputs

    def fetch_nonce(self, now: float = NOW) -> None:
        """Send an unauthenticated Allocate, as clients do first, and keep the nonce."""
        probe = self.build(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
        challenge = aiostun.parse_message(one(self.send(probe, now)))
        assert challenge.error_code == 401
        self.nonce = challenge.attributes["NONCE"]

    def allocate(self, now: float = NOW, relayed: tuple[str, int] = RELAY, **attrs: Any) -> int:
        attributes = {"REQUESTED-TRANSPORT": 17 << 24, **attrs}
        _, outputs = self.request(Method.ALLOCATE, attributes, now)
        assert len(outputs) == 1 and isinstance(outputs[0], OpenRelay), outputs
        allocation = outputs[0].allocation
        response = aiostun.parse_message(one(self.server.relay_opened(allocation, relayed, now)))
        assert response.message_class == Class.RESPONSE, response
        assert response.check_message_integrity(self.key)
        return allocation

    def permit(self, *peers: tuple[str, int], now: float = NOW) -> aiostun.Message:
        message = aiostun.Message(Method.CREATE_PERMISSION, Class.REQUEST, self.tids.randbytes(12))
        data = bytes(message)
        for peer in peers:  # several XOR-PEER-ADDRESS: aioice's dict holds one, so by hand
            value = aiostun.pack_xor_address(peer, message.transaction_id)
            data = stun._append(data, stun.XOR_PEER_ADDRESS, value)
        reply = aiostun.parse_message(one(self.send(self._sign(data), now)))
        if reply.error_code == 438:
            self.nonce = reply.attributes["NONCE"]
            reply = aiostun.parse_message(one(self.send(self._sign(data), now)))
        return reply

    def _sign(self, data: bytes) -> bytes:
        assert self.nonce is not None
        data = stun._append(data, stun.USERNAME, self.creds.username.encode())
        data = stun._append(data, 0x0014, REALM.encode())
        data = stun._append(data, 0x0015, self.nonce)
        return stun._append(data, stun.MESSAGE_INTEGRITY, aiostun.message_integrity(data, self.key))

    def bind(self, number: int, peer: tuple[str, int], now: float = NOW) -> aiostun.Message:
        attributes = {"CHANNEL-NUMBER": number, "XOR-PEER-ADDRESS": peer}
        return self.request(Method.CHANNEL_BIND, attributes, now)[0]


def channel_data(number: int, payload: bytes) -> bytes:
    return struct.pack("!HH", number, len(payload)) + payload
