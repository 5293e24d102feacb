"""Tests of peerphone.identity: key pairs, node ids, signatures and the caching verifier."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerphone.identity import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    KeyPair,
    SignatureVerifier,
    node_id_of,
    short,
    verify_signature,
)

SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None)

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
KEYS_A = KeyPair.from_seed(SEED_A)
KEYS_B = KeyPair.from_seed(SEED_B)

seeds = st.binary(min_size=32, max_size=32)
messages = st.binary(max_size=256)


# --- key pairs and node ids -----------------------------------------------------------------


@SETTINGS
@given(seed=seeds)
def test_from_seed_is_deterministic(seed: bytes) -> None:
    first = KeyPair.from_seed(seed)
    second = KeyPair.from_seed(seed)
    assert first.public == second.public
    assert first.node_id == second.node_id
    assert first.private_bytes() == seed
    assert len(first.public) == PUBLIC_KEY_BYTES
    # Ed25519 signatures are deterministic, so both copies sign identically
    assert first.sign(b"hello") == second.sign(b"hello")


@SETTINGS
@given(seed=seeds)
def test_node_id_is_sha256_of_public_key(seed: bytes) -> None:
    keys = KeyPair.from_seed(seed)
    expected = hashlib.sha256(keys.public).digest()
    assert keys.node_id == expected
    assert node_id_of(keys.public) == expected
    assert len(keys.node_id) == 32


def test_different_seeds_give_different_keys() -> None:
    assert KEYS_A.public != KEYS_B.public
    assert KEYS_A.node_id != KEYS_B.node_id
    assert KEYS_A.node_id != KEYS_A.public  # the id is the hash, not the key itself


def test_known_answer_rfc8032_test_vector_1() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message)
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    public = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    signature = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    keys = KeyPair.from_seed(seed)
    assert keys.public == public
    assert keys.sign(b"") == signature
    assert verify_signature(public, signature, b"")


def test_from_rng_is_deterministic_for_a_seeded_rng() -> None:
    one = KeyPair.from_rng(random.Random(7))
    two = KeyPair.from_rng(random.Random(7))
    other = KeyPair.from_rng(random.Random(8))
    assert one.public == two.public
    assert one.public != other.public
    assert one.private_bytes() == random.Random(7).randbytes(32)


def test_generate_gives_fresh_keys() -> None:
    first = KeyPair.generate()
    second = KeyPair.generate()
    assert first.public != second.public
    assert len(first.private_bytes()) == 32
    assert verify_signature(first.public, first.sign(b"x"), b"x")


@pytest.mark.parametrize("seed_len", [0, 31, 33])
def test_from_seed_rejects_wrong_length(seed_len: int) -> None:
    with pytest.raises(ValueError, match=r"."):
        KeyPair.from_seed(bytes(seed_len))


def test_short_is_first_four_bytes_hex() -> None:
    assert short(bytes.fromhex("0123456789abcdef")) == "01234567"
    assert short(KEYS_A.node_id) == KEYS_A.node_id[:4].hex()
    assert len(short(KEYS_A.public)) == 8


# --- sign / verify --------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, data=messages)
def test_sign_verify_round_trip(seed: bytes, data: bytes) -> None:
    keys = KeyPair.from_seed(seed)
    signature = keys.sign(data)
    assert len(signature) == SIGNATURE_BYTES
    assert verify_signature(keys.public, signature, data)


@SETTINGS
@given(data=messages)
def test_verify_false_for_wrong_key(data: bytes) -> None:
    signature = KEYS_A.sign(data)
    assert verify_signature(KEYS_A.public, signature, data)
    assert not verify_signature(KEYS_B.public, signature, data)


@SETTINGS
@given(data=messages, st_data=st.data())
def test_verify_false_for_flipped_signature_byte(data: bytes, st_data: st.DataObject) -> None:
    signature = bytearray(KEYS_A.sign(data))
    index = st_data.draw(st.integers(0, SIGNATURE_BYTES - 1), label="index")
    mask = st_data.draw(st.integers(1, 255), label="mask")
    signature[index] ^= mask
    assert not verify_signature(KEYS_A.public, bytes(signature), data)


@SETTINGS
@given(data=messages, st_data=st.data())
def test_verify_false_for_flipped_public_key_byte(data: bytes, st_data: st.DataObject) -> None:
    public = bytearray(KEYS_A.public)
    index = st_data.draw(st.integers(0, PUBLIC_KEY_BYTES - 1), label="index")
    mask = st_data.draw(st.integers(1, 255), label="mask")
    public[index] ^= mask
    assert not verify_signature(bytes(public), KEYS_A.sign(data), data)


@SETTINGS
@given(data=messages.filter(len), st_data=st.data())
def test_verify_false_for_flipped_data_byte(data: bytes, st_data: st.DataObject) -> None:
    signature = KEYS_A.sign(data)
    tampered = bytearray(data)
    index = st_data.draw(st.integers(0, len(data) - 1), label="index")
    mask = st_data.draw(st.integers(1, 255), label="mask")
    tampered[index] ^= mask
    assert not verify_signature(KEYS_A.public, signature, bytes(tampered))


@SETTINGS
@given(data=messages, extra=st.binary(min_size=1, max_size=8))
def test_verify_false_for_extended_or_truncated_data(data: bytes, extra: bytes) -> None:
    signature = KEYS_A.sign(data)
    assert not verify_signature(KEYS_A.public, signature, data + extra)
    if data:
        assert not verify_signature(KEYS_A.public, signature, data[:-1])


@pytest.mark.parametrize("key_len", [0, 1, 31, 33, 64])
def test_verify_false_for_wrong_public_key_length(key_len: int) -> None:
    signature = KEYS_A.sign(b"data")
    public = (KEYS_A.public * 3)[:key_len]
    assert not verify_signature(public, signature, b"data")


@pytest.mark.parametrize("sig_len", [0, 1, 63, 65, 128])
def test_verify_false_for_wrong_signature_length(sig_len: int) -> None:
    signature = KEYS_A.sign(b"data")
    resized = (signature * 3)[:sig_len]
    assert not verify_signature(KEYS_A.public, resized, b"data")


def test_verify_false_for_signature_with_trailing_byte() -> None:
    signature = KEYS_A.sign(b"data")
    assert not verify_signature(KEYS_A.public, signature + b"\x00", b"data")
    assert not verify_signature(KEYS_A.public + b"\x00", signature, b"data")


@SETTINGS
@given(public=st.binary(max_size=40), signature=st.binary(max_size=70), data=messages)
def test_verify_signature_never_raises_on_garbage(
    public: bytes, signature: bytes, data: bytes
) -> None:
    result = verify_signature(public, signature, data)
    assert result is False  # a random triple is (overwhelmingly) not a valid signature


def test_verify_false_for_all_zero_key_and_signature() -> None:
    assert not verify_signature(bytes(32), bytes(64), b"")
    assert not verify_signature(b"\xff" * 32, b"\xff" * 64, b"")


# --- SignatureVerifier ----------------------------------------------------------------------


def test_verifier_counts_misses_then_hits() -> None:
    verifier = SignatureVerifier()
    signature = KEYS_A.sign(b"payload")
    assert verifier.verify(KEYS_A.public, signature, b"payload") is True
    assert (verifier.hits, verifier.misses) == (0, 1)
    assert verifier.verify(KEYS_A.public, signature, b"payload") is True
    assert (verifier.hits, verifier.misses) == (1, 1)
    assert verifier.verify(KEYS_A.public, signature, b"payload") is True
    assert (verifier.hits, verifier.misses) == (2, 1)
    # any component differing is a different cache key
    assert verifier.verify(KEYS_B.public, signature, b"payload") is False
    assert verifier.verify(KEYS_A.public, signature, b"payloaD") is False
    assert (verifier.hits, verifier.misses) == (2, 3)


def test_verifier_caches_bad_signature_as_false() -> None:
    verifier = SignatureVerifier()
    bad = bytearray(KEYS_A.sign(b"payload"))
    bad[0] ^= 1
    assert verifier.verify(KEYS_A.public, bytes(bad), b"payload") is False
    assert verifier.verify(KEYS_A.public, bytes(bad), b"payload") is False
    assert (verifier.hits, verifier.misses) == (1, 1)
    # a cached False for one signature does not leak to the good signature
    assert verifier.verify(KEYS_A.public, KEYS_A.sign(b"payload"), b"payload") is True
    assert verifier.misses == 2


def test_verifier_caches_wrong_length_inputs_as_false() -> None:
    verifier = SignatureVerifier()
    assert verifier.verify(b"short", bytes(64), b"") is False
    assert verifier.verify(b"short", bytes(64), b"") is False
    assert (verifier.hits, verifier.misses) == (1, 1)


@SETTINGS
@given(max_entries=st.integers(1, 24), count=st.integers(0, 120))
def test_verifier_cache_is_bounded(max_entries: int, count: int) -> None:
    verifier = SignatureVerifier(max_entries=max_entries)
    signature = KEYS_A.sign(b"x")
    for i in range(count):
        verifier.verify(KEYS_A.public, signature, i.to_bytes(2, "big"))
        assert len(verifier._cache) <= max_entries
    assert verifier.misses == count
    assert verifier.hits == 0


def test_verifier_evicts_oldest_first() -> None:
    verifier = SignatureVerifier(max_entries=16)
    signature = KEYS_A.sign(b"x")
    datas = [i.to_bytes(2, "big") for i in range(40)]
    for data in datas:
        verifier.verify(KEYS_A.public, signature, data)
    assert verifier.misses == 40
    # the newest entry is still cached ...
    verifier.verify(KEYS_A.public, signature, datas[-1])
    assert verifier.hits == 1
    # ... the oldest has been evicted, so asking again is a miss
    verifier.verify(KEYS_A.public, signature, datas[0])
    assert verifier.hits == 1
    assert verifier.misses == 41


def test_verifier_result_after_eviction_still_correct() -> None:
    verifier = SignatureVerifier(max_entries=2)
    good = KEYS_A.sign(b"good")
    bad = bytes(64)
    for _ in range(5):
        assert verifier.verify(KEYS_A.public, good, b"good") is True
        assert verifier.verify(KEYS_A.public, bad, b"good") is False
        assert verifier.verify(KEYS_B.public, good, b"good") is False
    assert len(verifier._cache) <= 2


@SETTINGS
@given(
    max_entries=st.integers(1, 8),
    queries=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 3), st.booleans()), min_size=1, max_size=60
    ),
)
def test_verifier_agrees_with_verify_signature(
    max_entries: int, queries: list[tuple[int, int, bool]]
) -> None:
    """Whatever the cache holds, the answer is the uncached one and every call is counted."""
    keys = (KEYS_A, KEYS_B)
    datas = [bytes([i]) * (i + 1) for i in range(4)]
    signatures = {(k, d): keys[k].sign(datas[d]) for k in range(2) for d in range(4)}
    verifier = SignatureVerifier(max_entries=max_entries)
    for key_index, data_index, tamper in queries:
        signature = signatures[(key_index, data_index)]
        if tamper:
            signature = bytes([signature[0] ^ 0x80]) + signature[1:]
        # verify with key 0 always: signatures by key 1 must come out False
        expected = verify_signature(KEYS_A.public, signature, datas[data_index])
        assert expected == (key_index == 0 and not tamper)
        assert verifier.verify(KEYS_A.public, signature, datas[data_index]) is expected
        assert len(verifier._cache) <= max_entries
    assert verifier.hits + verifier.misses == len(queries)
    distinct = len(set(queries))
    assert verifier.misses >= distinct  # every distinct question misses at least once
    if distinct <= max_entries:  # nothing was ever evicted: exactly one miss per question
        assert verifier.misses == distinct


# --- SignatureVerifier.recall / remember (memo of other pure results) ----------------------


def test_recall_returns_what_was_remembered() -> None:
    verifier = SignatureVerifier()
    assert verifier.recall(("record", 1)) is None
    verifier.remember(("record", 1), "bad signature")
    verifier.remember(("record", 2), {"body": 2})
    assert verifier.recall(("record", 1)) == "bad signature"
    assert verifier.recall(("record", 2)) == {"body": 2}
    assert verifier.recall(("record", 3)) is None
    verifier.remember(("record", 1), "invalid username")  # a later result replaces the old
    assert verifier.recall(("record", 1)) == "invalid username"


def test_memo_does_not_disturb_signature_cache_counters() -> None:
    verifier = SignatureVerifier()
    verifier.remember(b"k", True)
    assert verifier.recall(b"k") is True
    assert (verifier.hits, verifier.misses) == (0, 0)
    signature = KEYS_A.sign(b"k")
    assert verifier.verify(KEYS_A.public, signature, b"k") is True
    assert (verifier.hits, verifier.misses) == (0, 1)


@SETTINGS
@given(max_entries=st.integers(1, 24), count=st.integers(0, 120))
def test_memo_is_bounded_and_evicts_oldest(max_entries: int, count: int) -> None:
    verifier = SignatureVerifier(max_entries=max_entries)
    for i in range(count):
        verifier.remember(i, i * 10)
        assert len(verifier._memo) <= max_entries
        assert verifier.recall(i) == i * 10  # the newest is always there
    if count > max_entries:
        assert verifier.recall(0) is None  # the oldest went first
