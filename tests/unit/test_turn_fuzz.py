"""Garbage never escapes the STUN decoder, the stream framer or the TURN core, and a
sender that has not authenticated never gets more than a few bytes more than it sent."""

from __future__ import annotations

import random
import struct

import pytest
from aioice import stun as aiostun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerphone.errors import DecodeError
from peerphone.nat import stun
from peerphone.nat.events import UDP, Client, OpenRelay, ToClient, ToPeer
from peerphone.nat.framing import StreamFramer
from peerphone.nat.turn import MAX_UNAUTHENTICATED_EXCESS_BYTES, TurnServer
from tests.support.turn_client import CLIENT, NOW, PEER, TID, TurnClient, channel_data, make_server

Method = aiostun.Method
Class = aiostun.Class


def corpus() -> list[bytes]:
    """Valid messages of every kind a server receives, signed and unsigned."""
    server = make_server()
    alice = TurnClient(server)
    alice.fetch_nonce()
    messages = [
        struct.pack("!HHI12s", 0x0001, 0, stun.COOKIE, TID),
        stun.encode(stun.BINDING, stun.REQUEST, TID, {}),
        bytes(aiostun.Message(Method.ALLOCATE, Class.REQUEST, TID, {"LIFETIME": 600})),
        alice.build(Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24, "LIFETIME": 777}),
        alice.build(Method.REFRESH, {"LIFETIME": 0}),
        alice.build(Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER}),
        alice.build(Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": PEER}),
        bytes(
            aiostun.Message(
                Method.SEND, Class.INDICATION, TID, {"XOR-PEER-ADDRESS": PEER, "DATA": b"hi"}
            )
        ),
        channel_data(0x4000, b"voice"),
        channel_data(0x4000, b"pad") + b"\0",
    ]
    return messages


CORPUS = corpus()


def allocated_server() -> tuple[TurnServer, TurnClient, int]:
    server = make_server()
    alice = TurnClient(server)
    allocation = alice.allocate()
    alice.bind(0x4000, PEER)
    return server, alice, allocation


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A corpus message truncated, extended, byte-flipped or spliced — or pure noise."""
    kind = draw(st.sampled_from(["noise", "truncate", "extend", "flip", "splice"]))
    if kind == "noise":
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(CORPUS)))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "extend":
        return bytes(data) + draw(st.binary(min_size=1, max_size=40))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    other = draw(st.sampled_from(CORPUS))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + other[draw(st.integers(0, len(other))) :]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_decode_parses_or_raises_decode_error(data: bytes) -> None:
    try:
        message = stun.decode(data)
    except DecodeError:
        return
    assert message.size == len(data)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_every_truncation_of_a_valid_message_is_handled(index: int) -> None:
    data = CORPUS[index]
    server, alice, _ = allocated_server()
    for end in range(len(data) + 1):
        server.receive(data[:end], alice.client, NOW)
        if data[0] < 0x40 and end < len(data):
            with pytest.raises(DecodeError):
                stun.decode(data[:end])
    for junk in (b"\0", b"\0\0\0\0", b"\xff" * 7):
        server.receive(data + junk, alice.client, NOW)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_core_never_raises_and_never_amplifies(data: bytes, from_stranger: bool) -> None:
    server, alice, allocation = allocated_server()
    client = Client(UDP, ("203.0.113.50", 1234)) if from_stranger else alice.client
    outputs = server.receive(data, client, NOW)
    assert isinstance(outputs, list)
    server.receive_from_peer(allocation, data, PEER, NOW)
    server.handle_timer(NOW + 1)
    if from_stranger:
        # a sender with no allocation: no relaying, no state, no amplification
        assert not any(isinstance(o, ToPeer | OpenRelay) for o in outputs)
        sent = sum(len(o.data) for o in outputs if isinstance(o, ToClient))
        assert sent <= len(data) + MAX_UNAUTHENTICATED_EXCESS_BYTES, (data, outputs)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=6), st.randoms())
def test_framer_splits_any_chunking_of_a_stream(messages: list[bytes], rnd: random.Random) -> None:
    padded = [m + b"\0" * (-len(m) % 4) for m in messages]  # ChannelData padded on streams
    stream = b"".join(padded)
    framer = StreamFramer()
    frames: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = rnd.randint(1, 50)
        frames += framer.feed(stream[pos : pos + step])
        pos += step
    assert frames == padded
    assert framer.buffered == 0


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_framer_frames_or_raises_decode_error(data: bytes) -> None:
    framer = StreamFramer()
    try:
        frames = framer.feed(data)
    except DecodeError:
        return
    assert sum(map(len, frames)) + framer.buffered == len(data)
    assert framer.buffered < framer.max_frame_bytes


def test_framer_refuses_oversized_frames_at_once() -> None:
    with pytest.raises(DecodeError):
        StreamFramer().feed(b"\x40\x00\xff\xff")
    with pytest.raises(DecodeError):
        StreamFramer().feed(struct.pack("!HHI", 0x0001, 0xFFFC, stun.COOKIE))
    with pytest.raises(DecodeError):
        StreamFramer().feed(b"GET / HTTP/1.1\r\n")


def test_amplification_of_every_unauthenticated_request_kind() -> None:
    """The ratios the decision record quotes, measured."""
    server = make_server()
    ratios = {}
    for name, data in [
        ("binding-bare", CORPUS[0]),
        ("binding-fingerprint", CORPUS[1]),
        (
            "allocate-smallest",
            bytes(
                aiostun.Message(
                    Method.ALLOCATE, Class.REQUEST, TID, {"REQUESTED-TRANSPORT": 17 << 24}
                )
            ),
        ),
        (
            "allocate-aioice",
            bytes(
                aiostun.Message(
                    Method.ALLOCATE,
                    Class.REQUEST,
                    TID,
                    {"LIFETIME": 600, "REQUESTED-TRANSPORT": 17 << 24},
                )
            ),
        ),
        (
            "allocate-uclient",
            stun.encode(
                stun.ALLOCATE,
                stun.REQUEST,
                TID,
                {"REQUESTED-TRANSPORT": 17 << 24, "LIFETIME": 777},
            ),
        ),
    ]:
        (reply,) = server.receive(data, CLIENT, NOW)
        assert isinstance(reply, ToClient)
        ratios[name] = round(len(reply.data) / len(data), 2)
    assert ratios == {
        "binding-bare": 1.6,  # 20 -> 32
        "binding-fingerprint": 1.43,  # 28 -> 40
        "allocate-smallest": 1.57,  # 28 -> 44
        "allocate-aioice": 1.22,  # 36 -> 44
        "allocate-uclient": 1.0,  # 44 -> 44
    }
