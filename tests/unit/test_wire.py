"""Tests of peerphone.wire (every message round-trips; the decoder's total-function rule) and
of the same rule for records.decode_record and records.decode_body."""

from __future__ import annotations

import random
import typing
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerphone.errors import DecodeError
from peerphone.identity import KeyPair
from peerphone.overlay.membership import MEMBERSHIP_PAGE_SIZE
from peerphone.records import (
    MAX_BODY_BYTES,
    MAX_SEQ,
    Capacity,
    MemberBody,
    NameBody,
    PresenceBody,
    Record,
    RecordKind,
    Status,
    decode_body,
    decode_record,
    encode_record,
    make_record,
)
from peerphone.wire import (
    MAX_GOSSIP_PER_MESSAGE,
    MAX_HINTS,
    MAX_MESSAGE_BYTES,
    MAX_NAMES_PER_WATCH,
    MAX_REASON_CHARS,
    MAX_RECORDS_PER_MESSAGE,
    Ack,
    Attach,
    AttachAccept,
    AttachRedirect,
    Detach,
    Fetch,
    FetchResult,
    Gossip,
    IndirectAck,
    Join,
    Lookup,
    LookupResult,
    MembershipPage,
    MemberState,
    Message,
    Notify,
    Ping,
    PingReq,
    PresenceUpdate,
    Promote,
    Publish,
    PublishAck,
    ReachCheck,
    ReachEcho,
    ReachProbe,
    ReachResult,
    Redirect,
    Signal,
    SignalAck,
    SignalDeliver,
    SignalRelay,
    SignalRelayAck,
    Store,
    StoreAck,
    Subscribe,
    TurnGrant,
    TurnRequest,
    Watch,
    decode_message,
    encode_message,
)

SETTINGS = settings(max_examples=300, derandomize=True, deadline=None, database=None)

KEYS = [KeyPair.from_seed(bytes([0x40 + i]) * 32) for i in range(3)]
EXPIRES_MS = 1_000_000_000

NAME = make_record(RecordKind.NAME, KEYS[0], 3, EXPIRES_MS, NameBody("alice"))
PRESENCE = make_record(
    RecordKind.PRESENCE,
    KEYS[0],
    4,
    EXPIRES_MS,
    PresenceBody(
        username="alice",
        device="laptop",
        status=Status.AWAY,
        supernodes=[KEYS[1].public, KEYS[2].public],
        addresses=["192.0.2.10:4000"],
        capabilities=["opus"],
        node=KEYS[2].node_id,
    ),
)
MEMBERS = [
    make_record(
        RecordKind.MEMBER,
        keys,
        7 + i,
        EXPIRES_MS,
        MemberBody(
            addresses=[f"203.0.113.{i}:5000"],
            capacity=Capacity(True, 100 * i, 1000, 8000, 150),
            max_clients=100,
        ),
    )
    for i, keys in enumerate(KEYS)
]
CAPACITY = Capacity(reachable=True, uptime_s=86_400, up_kbps=2_000, down_kbps=20_000, cpu_score=300)
GOSSIP = [
    Gossip(MemberState.ALIVE, KEYS[1].public, 8, MEMBERS[1]),
    Gossip(MemberState.SUSPECT, KEYS[2].public, 9, None),
    Gossip(MemberState.DEAD, KEYS[2].public, 9, None),
    Gossip(MemberState.LEFT, KEYS[0].public, 2**53, None),
]

SAMPLES: list[Message] = [
    Attach(req=1, capacity=CAPACITY, primary=True),
    AttachAccept(req=2, member=MEMBERS[0], others=MEMBERS[1:]),
    AttachRedirect(req=3, reason="full", others=MEMBERS),
    Publish(req=4, records=[NAME, PRESENCE]),
    PublishAck(req=5, stored=3, reason=""),
    Lookup(req=6, username="alice"),
    LookupResult(req=7, records=[NAME, PRESENCE], hops=2, reason="ok"),
    Watch(req=8, usernames=["alice", "bob", "carol.d"], add=True),
    PresenceUpdate(records=[PRESENCE]),
    Detach(reason="logout"),
    Redirect(reason="leaving the tier", others=MEMBERS[:2]),
    Promote(members=MEMBERS, total=3),
    Ping(seq=2**63 - 1, load=17, gossip=GOSSIP),
    Ack(seq=11, load=0, gossip=[]),
    PingReq(seq=12, target=KEYS[2].public, gossip=GOSSIP[:1]),
    IndirectAck(seq=13, target=KEYS[2].public),
    Join(record=MEMBERS[2], offset=0),
    MembershipPage(members=MEMBERS, offset=0, total=3),
    ReachCheck(req=24, node=KEYS[2].public, udp="10.99.0.7:4433", tcp="tcp://10.99.0.7:443"),
    ReachResult(req=25, node=KEYS[2].public, reached=False, declined=True, reason="busy"),
    ReachProbe(nonce=bytes(range(16))),
    ReachEcho(nonce=b"\xff" * 32),
    Store(req=14, records=[NAME, PRESENCE]),
    StoreAck(req=15, accepted=2, reason="é ünïcödé"),
    Fetch(req=16, key=bytes(range(32))),
    FetchResult(req=17, records=[NAME], responsible=False),
    Subscribe(keys=[bytes(32), b"\xff" * 32], add=False),
    Notify(records=[NAME, PRESENCE]),
    Signal(
        req=18, to_node=b"\x05" * 32, via=[KEYS[0].public, KEYS[1].public], payload=b"\x01" * 300
    ),
    SignalAck(req=19, delivered=False, reason="not attached here"),
    SignalRelay(req=20, to_node=bytes(32), payload=b""),
    SignalRelayAck(req=21, delivered=True, reason=""),
    SignalDeliver(payload=bytes(range(256))),
    TurnRequest(req=22),
    TurnGrant(
        req=23,
        urls=["turn:10.0.0.1:3478?transport=udp", "turn:10.0.0.1:443?transport=tcp"],
        username="1767225600:alice",
        password="c2VjcmV0",
        expires_ms=1_767_225_600_000,
        reason="",
    ),
]
ENCODINGS = [encode_message(m) for m in SAMPLES]
RECORD_ENCODINGS = [encode_record(r) for r in (NAME, PRESENCE, *MEMBERS)]

MESSAGE_TYPES: tuple[type[msgspec.Struct], ...] = typing.get_args(Message)


def sample_id(message: Message) -> str:
    return type(message).__name__


def assert_decodes_or_decode_error(data: bytes) -> None:
    """The decoder rule: a valid message (which re-encodes to itself) or DecodeError."""
    try:
        message = decode_message(data)
    except DecodeError:
        return
    assert isinstance(message, MESSAGE_TYPES)
    # what came out satisfies every constraint: it survives its own round trip
    assert decode_message(encode_message(message)) == message


def assert_record_decodes_or_decode_error(data: bytes) -> None:
    try:
        record = decode_record(data)
    except DecodeError:
        return
    assert isinstance(record, Record)
    assert isinstance(record.kind, RecordKind)
    assert decode_record(encode_record(record)) == record


def assert_body_decodes_or_decode_error(record: Record) -> bool:
    """The decoder rule for decode_body: a valid body of the record's kind, or DecodeError."""
    try:
        body = decode_body(record)
    except DecodeError:
        return True
    expected = {
        RecordKind.NAME: NameBody,
        RecordKind.PRESENCE: PresenceBody,
        RecordKind.MEMBER: MemberBody,
    }[record.kind]
    assert type(body) is expected
    again = msgspec.structs.replace(record, body=msgspec.msgpack.encode(body))
    assert decode_body(again) == body
    return True


def raw(obj: object) -> bytes:
    """Encode without the checks of encode_message (to build invalid input)."""
    return msgspec.msgpack.encode(obj)


# --- round trips ------------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert len(MESSAGE_TYPES) == 35
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES)
    assert len(SAMPLES) == len(MESSAGE_TYPES)


def test_message_tags_are_unique() -> None:
    tags = [t.__struct_config__.tag for t in MESSAGE_TYPES]
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_round_trip(message: Message) -> None:
    data = encode_message(message)
    assert len(data) <= MAX_MESSAGE_BYTES
    decoded = decode_message(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert encode_message(decoded) == data  # the encoding is canonical


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_round_trip_accepts_bytearray_and_memoryview(message: Message) -> None:
    data = encode_message(message)
    assert decode_message(cast(bytes, bytearray(data))) == message
    assert decode_message(cast(bytes, memoryview(data))) == message


def test_records_inside_messages_stay_intact() -> None:
    decoded = decode_message(encode_message(Publish(req=1, records=[NAME, PRESENCE])))
    assert isinstance(decoded, Publish)
    assert decoded.records == [NAME, PRESENCE]
    assert [r.kind for r in decoded.records] == [RecordKind.NAME, RecordKind.PRESENCE]
    assert decode_body(decoded.records[1]) == decode_body(PRESENCE)


def test_record_round_trip() -> None:
    for record in (NAME, PRESENCE, *MEMBERS):
        assert decode_record(encode_record(record)) == record


# --- the decoder rule: DecodeError or a valid message, nothing else --------------------------


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    assert_decodes_or_decode_error(data)


@SETTINGS
@given(tag=st.integers(-1, 40), data=st.binary(max_size=512))
def test_arbitrary_bytes_after_a_plausible_header(tag: int, data: bytes) -> None:
    # a fixarray header and a tag, then garbage: reaches the per-type field decoders
    for header in (b"\x93", b"\x94", b"\xdc\x00\x03"):
        assert_decodes_or_decode_error(header + raw(tag) + data)


@pytest.mark.parametrize(("index", "data"), list(enumerate(ENCODINGS)))
def test_every_truncation(index: int, data: bytes) -> None:
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            decode_message(data[:length])


@pytest.mark.parametrize(("index", "data"), list(enumerate(ENCODINGS)))
def test_every_single_byte_flip(index: int, data: bytes) -> None:
    rng = random.Random(index)
    for position in range(len(data)):
        for mask in (rng.randrange(1, 256), 0x80, 0x01):
            flipped = bytearray(data)
            flipped[position] ^= mask
            assert_decodes_or_decode_error(bytes(flipped))


@SETTINGS
@given(st_data=st.data())
def test_random_byte_flips(st_data: st.DataObject) -> None:
    data = bytearray(st_data.draw(st.sampled_from(ENCODINGS), label="encoding"))
    flips = st_data.draw(
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), max_size=6),
        label="flips",
    )
    for position, mask in flips:
        data[position] ^= mask
    assert_decodes_or_decode_error(bytes(data))


@SETTINGS
@given(
    data=st.sampled_from(ENCODINGS),
    junk=st.binary(min_size=1, max_size=64),
)
def test_trailing_junk(data: bytes, junk: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data + junk)


@pytest.mark.parametrize(("index", "data"), list(enumerate(ENCODINGS)))
def test_second_message_appended_is_rejected(index: int, data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data + data)


# structured mutation: decode a valid message to plain msgpack values, replace one part


plain_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=True),
        st.text(max_size=40),
        st.binary(max_size=40),
        st.sampled_from([0, 1, 31, 32, 33, 2**53, 2**53 + 1, 2**63, -1, b"\x00" * 32, "a" * 33]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


def paths(obj: Any, prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    found = [prefix]
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            found.extend(paths(item, (*prefix, i)))
    return found


def replace_at(obj: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    copy = list(obj)
    copy[path[0]] = replace_at(copy[path[0]], path[1:], value)
    return copy


@SETTINGS
@given(st_data=st.data())
def test_structured_mutations(st_data: st.DataObject) -> None:
    data = st_data.draw(st.sampled_from(ENCODINGS), label="encoding")
    tree = msgspec.msgpack.decode(data)
    path = st_data.draw(st.sampled_from(paths(tree)), label="path")
    action = st_data.draw(st.sampled_from(["replace", "drop", "extend"]), label="action")
    if action == "replace" or not path:
        mutated = replace_at(tree, path, st_data.draw(plain_values, label="value"))
    else:
        parent_path, index = path[:-1], path[-1]
        parent: Any = tree
        for i in parent_path:
            parent = parent[i]
        parent = list(parent)
        if action == "drop":
            del parent[index]
        else:
            parent.insert(index, st_data.draw(plain_values, label="value"))
        mutated = replace_at(tree, parent_path, parent)
    assert_decodes_or_decode_error(raw(mutated))


@pytest.mark.parametrize(("index", "data"), list(enumerate(ENCODINGS)))
def test_extra_or_missing_field_is_rejected(index: int, data: bytes) -> None:
    tree = msgspec.msgpack.decode(data)
    with pytest.raises(DecodeError):
        decode_message(raw([*tree, 0]))
    with pytest.raises(DecodeError):
        decode_message(raw(tree[:-1]))


@pytest.mark.parametrize(("index", "data"), list(enumerate(ENCODINGS)))
def test_extra_element_in_any_nested_array_is_rejected(index: int, data: bytes) -> None:
    # every array in a message is a struct (extra field) or a list of structs, bytes or str
    tree = msgspec.msgpack.decode(data)
    for path in paths(tree):
        node = tree
        for i in path:
            node = node[i]
        if isinstance(node, list):
            with pytest.raises(DecodeError):
                decode_message(raw(replace_at(tree, path, [*node, 0])))


WIRE_TAGS: dict[type[msgspec.Struct], int] = {
    Attach: 1,
    AttachAccept: 2,
    AttachRedirect: 3,
    Publish: 4,
    PublishAck: 5,
    Lookup: 6,
    LookupResult: 7,
    Watch: 8,
    PresenceUpdate: 9,
    Detach: 10,
    Redirect: 11,
    Promote: 12,
    Ping: 20,
    Ack: 21,
    PingReq: 22,
    IndirectAck: 23,
    Join: 24,
    MembershipPage: 25,
    Store: 26,
    StoreAck: 27,
    Fetch: 28,
    FetchResult: 29,
    Subscribe: 30,
    Notify: 31,
    ReachCheck: 32,
    ReachResult: 33,
    ReachProbe: 34,
    ReachEcho: 35,
    Signal: 40,
    SignalAck: 41,
    SignalRelay: 42,
    SignalRelayAck: 43,
    SignalDeliver: 44,
    TurnRequest: 45,
    TurnGrant: 46,
}


@pytest.mark.parametrize("message", SAMPLES, ids=sample_id)
def test_wire_tags_are_stable(message: Message) -> None:
    """Tags are the wire format: changing one breaks every peer running the old code."""
    tag = WIRE_TAGS[type(message)]
    assert msgspec.msgpack.decode(encode_message(message))[0] == tag


def test_golden_encodings() -> None:
    assert encode_message(Detach(reason="x")) == b"\x92\x0a\xa1x"
    assert encode_message(Lookup(req=1, username="al")) == b"\x93\x06\x01\xa2al"
    assert decode_message(b"\x94\x15\x07\x00\x90") == Ack(seq=7, load=0, gossip=[])


@pytest.mark.parametrize("tag", [0, 13, 19, 32, 99, -1, "1", None])
def test_unknown_tag_is_rejected(tag: object) -> None:
    with pytest.raises(DecodeError):
        decode_message(raw([tag, "reason"]))


def test_map_form_is_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_message(raw({"type": 10, "reason": "x"}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x91",
        b"\x90",
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\x91" * 10_000 + b"\x0a",  # deep nesting
        b"\xca\x7f\xc0\x00\x00",  # float NaN
    ],
)
def test_pathological_inputs(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


# --- size limits ------------------------------------------------------------------------------


def oversized_page() -> MembershipPage:
    big = make_record(
        RecordKind.MEMBER,
        KEYS[0],
        1,
        EXPIRES_MS,
        MemberBody(addresses=["x" * 64] * 8, capacity=CAPACITY, max_clients=1),
    )
    return MembershipPage(members=[big] * 500, offset=0, total=500)


def test_encode_refuses_oversized_message() -> None:
    with pytest.raises(ValueError, match="bytes"):
        encode_message(oversized_page())


def test_decode_refuses_oversized_input() -> None:
    data = raw(oversized_page())
    assert len(data) > MAX_MESSAGE_BYTES
    assert msgspec.msgpack.decode(data, type=MembershipPage) == oversized_page()  # well formed
    with pytest.raises(DecodeError, match="exceeds"):
        decode_message(data)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_message(ENCODINGS[0] + bytes(MAX_MESSAGE_BYTES))


def page_of_exact_size(size: int) -> bytes:
    """A MembershipPage (unsigned records: decoding does not check signatures) of `size` bytes."""

    def build(last_body: int, count: int) -> bytes:
        records = [Record(RecordKind.MEMBER, bytes(32), 0, 0, bytes(1000), bytes(64))] * count
        records.append(Record(RecordKind.MEMBER, bytes(32), 0, 0, bytes(last_body), bytes(64)))
        return raw(MembershipPage(members=records, offset=0, total=count + 1))

    count = 0
    while len(build(300, count + 1)) <= size:
        count += 1
    for last_body in range(300, 1025):
        data = build(last_body, count)
        if len(data) == size:
            return data
    raise AssertionError(f"no page of exactly {size} bytes")


def test_size_limit_boundary() -> None:
    exact = page_of_exact_size(MAX_MESSAGE_BYTES)
    assert len(exact) == MAX_MESSAGE_BYTES
    assert isinstance(decode_message(exact), MembershipPage)
    over = page_of_exact_size(MAX_MESSAGE_BYTES + 1)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_message(over)


GOOD_RECORD = NAME
KEY31 = bytes(31)
KEY33 = bytes(33)

OVER_LIMIT: list[tuple[str, object]] = [
    ("publish 5 records", Publish(req=1, records=[GOOD_RECORD] * 5)),
    ("lookup result 5 records", LookupResult(req=1, records=[GOOD_RECORD] * 5, hops=0, reason="")),
    ("fetch result 5 records", FetchResult(req=1, records=[GOOD_RECORD] * 5, responsible=True)),
    ("store 513 records", Store(req=1, records=[GOOD_RECORD] * (MAX_RECORDS_PER_MESSAGE + 1))),
    ("notify 513 records", Notify(records=[GOOD_RECORD] * (MAX_RECORDS_PER_MESSAGE + 1))),
    ("lookup 33-char username", Lookup(req=1, username="a" * 33)),
    ("lookup empty username", Lookup(req=1, username="")),
    ("watch 33-char username", Watch(req=1, usernames=["a" * 33], add=True)),
    ("watch 257 names", Watch(req=1, usernames=["a"] * (MAX_NAMES_PER_WATCH + 1), add=True)),
    ("fetch key of 31 bytes", Fetch(req=1, key=KEY31)),
    ("fetch key of 33 bytes", Fetch(req=1, key=KEY33)),
    ("indirect ack target 31 bytes", IndirectAck(seq=1, target=KEY31)),
    ("ping-req target 31 bytes", PingReq(seq=1, target=KEY31, gossip=[])),
    ("subscribe key of 31 bytes", Subscribe(keys=[bytes(32), KEY31], add=True)),
    ("subscribe 257 keys", Subscribe(keys=[bytes(32)] * (MAX_NAMES_PER_WATCH + 1), add=True)),
    (
        "gossip node of 31 bytes",
        Ping(seq=1, load=0, gossip=[Gossip(MemberState.DEAD, KEY31, 0, None)]),
    ),
    (
        "17 gossip entries",
        Ping(seq=1, load=0, gossip=[GOSSIP[1]] * (MAX_GOSSIP_PER_MESSAGE + 1)),
    ),
    ("9 hints", Redirect(reason="", others=[MEMBERS[0]] * (MAX_HINTS + 1))),
    ("9 hints in accept", AttachAccept(req=1, member=MEMBERS[0], others=[MEMBERS[0]] * 9)),
    ("121-char reason", Detach(reason="r" * (MAX_REASON_CHARS + 1))),
    ("negative req", PublishAck(req=-1, stored=0, reason="")),
    ("req of 2**63", PublishAck(req=2**63, stored=0, reason="")),
    ("count above 2**53", PublishAck(req=1, stored=2**53 + 1, reason="")),
    ("negative count", StoreAck(req=1, accepted=-1, reason="")),
    (
        "unknown member state",
        Ping(seq=1, load=0, gossip=[Gossip(cast(MemberState, 4), bytes(32), 0, None)]),
    ),
    ("capacity count above 2**53", Attach(req=1, capacity=Capacity(True, 2**53 + 1), primary=True)),
    ("bool as int", raw([1, 1, [True, 0, 0, 0, 0], 1])),
    ("int as bool", raw([1, 1, [1, 0, 0, 0, 0], True])),
    ("str as bytes", raw([28, 1, "x" * 32])),
    # records inside messages are bounded too
    ("record owner 31 bytes", Notify(records=[msgspec.structs.replace(NAME, owner=KEY31)])),
    ("record sig 63 bytes", Notify(records=[msgspec.structs.replace(NAME, sig=bytes(63))])),
    ("record sig 65 bytes", Notify(records=[msgspec.structs.replace(NAME, sig=bytes(65))])),
    ("record body 1025 bytes", Notify(records=[msgspec.structs.replace(NAME, body=bytes(1025))])),
    ("record seq above max", Notify(records=[msgspec.structs.replace(NAME, seq=MAX_SEQ + 1)])),
    ("record negative seq", Notify(records=[msgspec.structs.replace(NAME, seq=-1)])),
    (
        "record expiry above 2**53",
        Notify(records=[msgspec.structs.replace(NAME, expires_ms=2**53 + 1)]),
    ),
    ("record kind 4", Notify(records=[msgspec.structs.replace(NAME, kind=cast(RecordKind, 4))])),
]


@pytest.mark.parametrize(("what", "message"), OVER_LIMIT, ids=[w for w, _ in OVER_LIMIT])
def test_limits_enforced(what: str, message: object) -> None:
    data = message if isinstance(message, bytes) else raw(message)
    assert len(data) <= MAX_MESSAGE_BYTES
    with pytest.raises(DecodeError):
        decode_message(data)


AT_LIMIT: list[tuple[str, Message]] = [
    ("publish 4 records", Publish(req=1, records=[GOOD_RECORD] * 4)),
    ("store 512 records", Store(req=1, records=[GOOD_RECORD] * MAX_RECORDS_PER_MESSAGE)),
    ("lookup 32-char username", Lookup(req=1, username="a" * 32)),
    ("watch 256 names", Watch(req=1, usernames=["a"] * MAX_NAMES_PER_WATCH, add=True)),
    ("subscribe 256 keys", Subscribe(keys=[bytes(32)] * MAX_NAMES_PER_WATCH, add=True)),
    ("16 gossip entries", Ping(seq=1, load=0, gossip=[GOSSIP[1]] * MAX_GOSSIP_PER_MESSAGE)),
    ("8 hints", Redirect(reason="", others=[MEMBERS[0]] * MAX_HINTS)),
    ("120-char reason", Detach(reason="r" * MAX_REASON_CHARS)),
    ("req of 2**63-1 and count 2**53", PublishAck(req=2**63 - 1, stored=2**53, reason="")),
    (
        "record body of 1024 bytes",
        Notify(records=[msgspec.structs.replace(NAME, body=bytes(MAX_BODY_BYTES))]),
    ),
    ("record seq at max", Notify(records=[msgspec.structs.replace(NAME, seq=MAX_SEQ)])),
]


@pytest.mark.parametrize(("what", "message"), AT_LIMIT, ids=[w for w, _ in AT_LIMIT])
def test_limits_are_inclusive(what: str, message: Message) -> None:
    assert decode_message(encode_message(message)) == message


# --- the same rule for records.decode_record and records.decode_body ------------------------

# msgspec raises UnicodeDecodeError (a ValueError) for a string field that is not UTF-8;
# decode_body must turn it into DecodeError like every other malformation.

INVALID_UTF8_BODIES: list[tuple[RecordKind, bytes]] = [
    (RecordKind.NAME, b"\x91\xa1\xff"),  # [username="\xff"]
    # device="\xff", node=32 zero bytes
    (RecordKind.PRESENCE, b"\x97\xa1a\xa1\xff\x01\x90\x90\x90\xc4\x20" + bytes(32)),
    (RecordKind.MEMBER, b"\x93\x91\xa1\xff\x95\xc3\x00\x00\x00\x00\x01"),  # address="\xff"
]


@pytest.mark.parametrize(("kind", "body"), INVALID_UTF8_BODIES)
def test_invalid_utf8_bodies_are_otherwise_well_formed(kind: RecordKind, body: bytes) -> None:
    fixed = msgspec.structs.replace(NAME, kind=kind, body=body.replace(b"\xff", b"a"))
    assert isinstance(decode_body(fixed), (NameBody, PresenceBody, MemberBody))


@pytest.mark.parametrize(("kind", "body"), INVALID_UTF8_BODIES)
def test_decode_body_invalid_utf8_is_decode_error(kind: RecordKind, body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_body(msgspec.structs.replace(NAME, kind=kind, body=body))


def test_decode_message_invalid_utf8_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_message(raw([6, 1, "a"])[:-1] + b"\xff")  # Lookup(username="\xff")
    with pytest.raises(DecodeError):
        decode_message(b"\x92\x0a\xa1\xff")  # Detach(reason="\xff")


@SETTINGS
@given(data=st.binary(max_size=1200))
def test_decode_record_arbitrary_bytes(data: bytes) -> None:
    assert_record_decodes_or_decode_error(data)


@pytest.mark.parametrize(("index", "data"), list(enumerate(RECORD_ENCODINGS)))
def test_decode_record_truncations_flips_and_junk(index: int, data: bytes) -> None:
    rng = random.Random(index)
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            decode_record(data[:length])
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= rng.randrange(1, 256)
        assert_record_decodes_or_decode_error(bytes(flipped))
    for junk in (b"\x00", b"\xc1", data):
        with pytest.raises(DecodeError):
            decode_record(data + junk)


@SETTINGS
@given(st_data=st.data())
def test_decode_record_structured_mutations(st_data: st.DataObject) -> None:
    tree = msgspec.msgpack.decode(st_data.draw(st.sampled_from(RECORD_ENCODINGS)))
    path = st_data.draw(st.sampled_from(paths(tree)), label="path")
    value = st_data.draw(plain_values, label="value")
    assert_record_decodes_or_decode_error(raw(replace_at(tree, path, value)))


def test_decode_record_rejects_extra_or_missing_field() -> None:
    tree = msgspec.msgpack.decode(encode_record(NAME))
    with pytest.raises(DecodeError):
        decode_record(raw([*tree, 0]))
    with pytest.raises(DecodeError):
        decode_record(raw(tree[:-1]))
    names = [f.name for f in msgspec.structs.fields(Record)]
    with pytest.raises(DecodeError):
        decode_record(raw(dict(zip(names, tree, strict=True))))  # map form


def test_decode_record_rejects_out_of_range_fields() -> None:
    for bad in (
        msgspec.structs.replace(NAME, owner=bytes(31)),
        msgspec.structs.replace(NAME, sig=bytes(63)),
        msgspec.structs.replace(NAME, body=bytes(MAX_BODY_BYTES + 1)),
        msgspec.structs.replace(NAME, seq=MAX_SEQ + 1),
        msgspec.structs.replace(NAME, kind=cast(RecordKind, 0)),
    ):
        with pytest.raises(DecodeError):
            decode_record(encode_record(bad))


@SETTINGS
@given(kind=st.sampled_from(RecordKind), body=st.binary(max_size=MAX_BODY_BYTES))
def test_decode_body_arbitrary_bytes(kind: RecordKind, body: bytes) -> None:
    record = msgspec.structs.replace(NAME, kind=kind, body=body)
    assert_body_decodes_or_decode_error(record)


@SETTINGS
@given(kind=st.sampled_from(RecordKind), value=plain_values)
def test_decode_body_arbitrary_structures(kind: RecordKind, value: Any) -> None:
    record = msgspec.structs.replace(NAME, kind=kind, body=raw(value))
    assert_body_decodes_or_decode_error(record)


@pytest.mark.parametrize("record", [NAME, PRESENCE, MEMBERS[0]], ids=lambda r: r.kind.name)
def test_decode_body_truncations_flips_and_junk(record: Record) -> None:
    rng = random.Random(record.seq)
    body = record.body
    for length in range(len(body)):
        with pytest.raises(DecodeError):
            decode_body(msgspec.structs.replace(record, body=body[:length]))
    for position in range(len(body)):
        for mask in (rng.randrange(1, 256), 0x80, 0x01):
            flipped = bytearray(body)
            flipped[position] ^= mask
            tampered = msgspec.structs.replace(record, body=bytes(flipped))
            assert assert_body_decodes_or_decode_error(tampered)
    with pytest.raises(DecodeError):
        decode_body(msgspec.structs.replace(record, body=body + b"\x00"))


def test_decode_body_of_other_kind_is_rejected() -> None:
    for record in (NAME, PRESENCE, MEMBERS[0]):
        for kind in RecordKind:
            relabelled = msgspec.structs.replace(record, kind=kind)
            if kind is record.kind:
                assert decode_body(relabelled) == decode_body(record)
            else:
                with pytest.raises(DecodeError):
                    decode_body(relabelled)


def test_decode_body_unknown_kind_is_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_body(msgspec.structs.replace(NAME, kind=cast(RecordKind, 9)))


def test_full_membership_page_of_maximal_members_fits() -> None:
    """The wire limit is sized for the biggest membership page the overlay sends."""
    fat = make_record(
        RecordKind.MEMBER,
        KEYS[0],
        MAX_SEQ,
        2**53,
        MemberBody(
            addresses=["x" * 64] * 8,
            capacity=Capacity(True, 2**53, 2**53, 2**53, 2**53),
            max_clients=2**53,
        ),
    )
    page = MembershipPage(members=[fat] * MEMBERSHIP_PAGE_SIZE, offset=0, total=2**53)
    data = encode_message(page)
    assert len(data) <= MAX_MESSAGE_BYTES
    assert decode_message(data) == page
