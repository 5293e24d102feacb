"""Managed mode's policy file: parsing (bad input named by file, line and reason), the
options it refuses, what it puts over the config, and the core's "only these supernodes"."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from peerphone.daemon.config import ConfigError, NodeConfig
from peerphone.daemon.policy import POLICY_PATH, Policy, load_policy, parse_policy
from peerphone.errors import LocalProtocolError
from peerphone.identity import KeyPair, SignatureVerifier
from peerphone.overlay.events import TurnGranted
from peerphone.overlay.node import NodeCore
from peerphone.records import Capacity, MemberBody, Record, RecordKind, make_record

SN = "ab" * 32
GOOD = f"""\
listen = "0.0.0.0:5060"
tcp_listen = "0.0.0.0:5061"
control = "127.0.0.1:7000"
relays = ["turn:192.0.2.10:3478?transport=udp"]

[[supernodes]]
node_id = "{SN}"
address = "192.0.2.10:4433"
tcp = "tcp://192.0.2.10:443"

[calls]
allow_suffixes = [".cern"]
allow_keys = ["{"cd" * 32}"]
"""
PATH = Path("/tmp/policy-under-test.toml")


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, PATH)
    return str(info.value)


def test_the_path_is_fixed() -> None:
    assert Path("/etc/peerphone/policy.toml") == POLICY_PATH


def test_a_good_policy() -> None:
    policy = parse_policy(GOOD, PATH)
    assert policy.listen == "0.0.0.0:5060"
    assert policy.tcp_listen == "tcp://0.0.0.0:5061"
    assert policy.control == "127.0.0.1:7000"
    assert policy.bootstrap() == ["192.0.2.10:4433", "tcp://192.0.2.10:443"]
    assert policy.node_ids() == [bytes.fromhex(SN)]
    assert policy.allow_suffixes == (".cern",)


def test_absent_file_means_unmanaged(tmp_path: Path) -> None:
    assert load_policy(tmp_path / "policy.toml") is None


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('listen = "0.0.0.0:5060"\nlisten = 3\n', 2, "Cannot overwrite a value"),
        ('listen = "0.0.0.0:5060\n', 1, "Illegal character"),
        (GOOD.replace("[calls]", "[calls"), 11, "Expected ']'"),
    ],
)
def test_malformed_toml_names_file_and_line(text: str, line: int, reason: str) -> None:
    message = refused(text)
    assert message.startswith(f"{PATH}:{line}: ")
    assert reason in message


@pytest.mark.parametrize(
    ("edit", "line", "reason"),
    [
        (("relays = [", 'colour = "red"\nrelays = ['), 4, "colour: unknown setting"),
        (("tcp = ", "port = 1\ntcp = "), 9, "supernodes.port: unknown setting"),
        (("allow_keys", "deny = []\nallow_keys"), 13, "calls.deny: unknown setting"),
        (('"0.0.0.0:5060"', '"0.0.0.0:0"'), 1, "listen: a fixed port is needed, not 0"),
        (('"0.0.0.0:5060"', '"nowhere"'), 1, "listen: "),
        (('"127.0.0.1:7000"', '"192.0.2.1:7000"'), 3, "control: the control API listens on"),
        (('"192.0.2.10:4433"', '"0.0.0.0:4433"'), 8, "supernodes.address: a supernode's"),
        ((f'"{SN}"', '"abc"'), 7, "supernodes.node_id: expected 64 hex digits"),
        (('["turn:', '["http://x", "turn:'), 4, "relays: 'http://x' is not a stun:"),
        (('[".cern"]', '["no spaces"]'), 12, "calls.allow_suffixes: 'no spaces' cannot"),
        (('[".cern"]', '".cern"'), 12, "calls.allow_suffixes: expected a list of strings"),
        (('control = "127.0.0.1:7000"', "control = 7000"), 3, "control: expected a string"),
    ],
)
def test_unknown_keys_and_impossible_values(edit: tuple[str, str], line: int, reason: str) -> None:
    text = GOOD.replace(*edit)
    assert text != GOOD
    message = refused(text)
    assert message.startswith(f"{PATH}:{line}: "), message
    assert reason in message, message


def test_missing_settings() -> None:
    assert "supernodes: missing" in refused('listen = "0.0.0.0:5060"\n')
    assert "listen: missing" in refused(GOOD.replace('listen = "0.0.0.0:5060"\n', ""))
    twice = GOOD + f'[[supernodes]]\nnode_id = "{SN}"\naddress = "192.0.2.11:4433"\n'
    assert "node_id: listed twice" in refused(twice)


def test_not_utf8_and_too_large(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"listen = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(path)
    path.write_bytes(b"#" * 70_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_policy(path)


def policy() -> Policy:
    return parse_policy(GOOD, PATH)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"role": "supernode"}, "--role supernode"),
        ({"role": "auto"}, "--role auto"),
        ({"turn_port": 3478}, "--turn-port"),
        ({"relay_allow": ["10.0.0.0/8"]}, "--relay-allow"),
        ({"max_clients": 5}, "--max-clients"),
        ({"listen": "0.0.0.0:9999"}, "--listen"),
        ({"control": "127.0.0.1:1"}, "--control"),
    ],
)
def test_conflicting_options_are_refused_naming_the_policy(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        policy().check_options(options)
    assert str(info.value).startswith(named)
    assert f"managed by {PATH}" in str(info.value)


def test_agreeing_options_pass_and_bootstrap_is_replaced() -> None:
    pol = policy()
    pol.check_options({"role": "client", "listen": "0.0.0.0:5060", "bootstrap": ["1.2.3.4:5"]})
    config = NodeConfig(name="alice", role="supernode", bootstrap=["198.51.100.1:4433"])
    config.relay_allow = ["10.0.0.0/8"]
    pol.apply(config)
    config.check()
    assert config.role == "client" and config.relay_allow == []
    assert config.bootstrap == ["192.0.2.10:4433", "tcp://192.0.2.10:443"]
    assert (config.listen, config.control) == ("0.0.0.0:5060", "127.0.0.1:7000")
    assert any("198.51.100.1:4433 ignored" in note for note in pol.overridden)
    assert pol.view()["file"] == str(PATH)


def test_call_allow_list_and_relays() -> None:
    pol = policy()
    assert pol.call_refusal("alice.cern", None) == ""
    assert pol.call_refusal("bob", bytes.fromhex("cd" * 32)) == ""
    assert "outside the organisation's allow-list" in pol.call_refusal("eve", None)
    grant = TurnGranted(
        ["turn:192.0.2.10:3478?transport=udp", "turn:6.6.6.6:3478"], "u", "p", 0, ""
    )
    screened = pol.screen_event(grant)
    assert isinstance(screened, TurnGranted)
    assert screened.urls == ["turn:192.0.2.10:3478?transport=udp"]


def member(keys: KeyPair, port: int) -> Record:
    body = MemberBody([f"127.0.0.1:{port}"], Capacity(), 10)
    return make_record(RecordKind.MEMBER, keys, 1, 10_000_000, body)


def test_core_attaches_only_to_listed_supernodes_and_never_serves() -> None:
    rng = random.Random(1)
    core = NodeCore(KeyPair.from_rng(rng), KeyPair.from_rng(rng), "alice", rng, SignatureVerifier())
    listed, other = KeyPair.from_rng(rng), KeyPair.from_rng(rng)
    core.learn_supernodes([member(other, 2)], 0.0)
    core.restrict_supernodes([listed.node_id])
    assert not core.knows_supernode(other.node_id)  # forgotten
    core.learn_supernodes([member(listed, 1), member(other, 2)], 0.0)
    assert core.knows_supernode(listed.node_id) and not core.knows_supernode(other.node_id)
    core.learn_bootstrap([other.node_id], 0.0)
    sends = core.login(0.0)
    assert {dest for dest, _ in sends} == {listed.node_id}
    with pytest.raises(LocalProtocolError):
        core.become_supernode(0.0, "asked")
