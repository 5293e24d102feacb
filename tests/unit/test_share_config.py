"""`[share]` in config.toml (issue 12, bad input): a malformed file, an unknown key or an
impossible value is refused with the file, the line and the reason, before the node starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peerphone.daemon.config import (
    ConfigError,
    NodeConfig,
    ShareConfig,
    checked_config,
    key_line,
    load_config,
)
from peerphone.daemon.duty_keeper import caps_of

GOOD = """name = "alice"
role = "auto"

[share]
max_clients = 50
up_kbps = 200
directory_kbps = 300
day_mb = 100
month_mb = 2000
cpu_percent = 25
only_when_idle = true
quiet_hours = "23:00-07:00"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path / "config.toml"


def test_every_share_setting_is_read_and_becomes_a_cap(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    config = checked_config(tmp_path, {})
    assert config.share == ShareConfig(50, 200, 300, 100, 2000, 25, True, "23:00-07:00")
    caps = caps_of(config.share)
    assert caps.relay_bytes_per_s == 25_000.0  # 200 kbit/s
    assert caps.directory_bytes_per_s == 37_500.0
    assert (caps.day_bytes, caps.month_bytes) == (100_000_000, 2_000_000_000)
    assert str(caps.quiet_hours) == "23:00-07:00" and caps.only_when_idle


@pytest.mark.parametrize(
    ("replace", "by", "line", "reason"),
    [
        ("cpu_percent = 25", "cpu_percent = 300", 10, "share.cpu_percent: 300 is impossible"),
        ("cpu_percent = 25", "cpu_percent = 0", 10, "1-100 percent of one core"),
        ("up_kbps = 200", "up_kbps = -1", 6, "share.up_kbps: -1 is impossible"),
        ("directory_kbps = 300", "directory_kbps = 1", 7, "share.directory_kbps: 1 is"),
        ("max_clients = 50", "max_clients = -5", 5, "share.max_clients: -5 is impossible"),
        ("month_mb = 2000", "month_mb = -2", 9, "share.month_mb"),
        ('quiet_hours = "23:00-07:00"', 'quiet_hours = "25:00-07:00"', 12, "not a time of day"),
        ('quiet_hours = "23:00-07:00"', 'quiet_hours = "soon"', 12, "expected HH:MM-HH:MM"),
        ('role = "auto"', 'role = "boss"', 2, "role 'boss': expected one of"),
        ("max_clients = 50", "max_clients = 0", 5, "never a supernode, but role is supernode"),
    ],
)
def test_impossible_values_name_file_line_and_reason(
    tmp_path: Path, replace: str, by: str, line: int, reason: str
) -> None:
    text = GOOD.replace(replace, by)
    if "never a supernode" in reason:
        text = text.replace('role = "auto"', 'role = "supernode"')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        checked_config(tmp_path, {})
    assert str(refused.value).startswith(f"{path}:{line}: "), refused.value
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("replace", "by", "line", "reason"),
    [
        ("cpu_percent = 25", "cpu_percnt = 25", 10, "share.cpu_percnt: unknown setting"),
        ("day_mb = 100", "day_mb = 1.5", 8, "share.day_mb: expected int, not 1.5"),
        ("only_when_idle = true", "only_when_idle = 1", 11, "expected bool, not 1"),
        ("[share]", "[shares]", 4, "shares: unknown setting"),
        ("day_mb = 100", "day_mb = ", 8, "Invalid value"),  # not TOML
    ],
)
def test_unknown_keys_wrong_types_and_bad_toml_name_file_and_line(
    tmp_path: Path, replace: str, by: str, line: int, reason: str
) -> None:
    path = write(tmp_path, GOOD.replace(replace, by))
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path)
    assert str(refused.value).startswith(f"{path}:{line}: "), refused.value
    assert reason in str(refused.value)


def test_an_option_that_mends_a_bad_value_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    write(tmp_path, GOOD.replace('role = "auto"', 'role = "supernode"'))
    assert checked_config(tmp_path, {"max_clients": 0, "role": "client"}).share.max_clients == 0
    with pytest.raises(ConfigError) as refused:  # the option is the culprit: no line
        checked_config(tmp_path, {"max_clients": 200_000})
    assert str(refused.value).startswith("share.max_clients: 200000 is impossible")


def test_key_line_finds_keys_in_their_table() -> None:
    text = "cpu_percent = 1\n[other]\ncpu_percent = 2\n[share]\n  cpu_percent=3\n"
    assert key_line(text, "share.cpu_percent") == 5
    assert key_line(text, "cpu_percent") == 1
    assert key_line(text, "share") == 4
    assert key_line(text, "share.up_kbps") == 0


def test_defaults_are_valid_and_consent_to_serving() -> None:
    config = NodeConfig(name="alice")
    config.check()
    assert config.share.max_clients > 0 and config.share.day_mb > 0


def test_the_node_refuses_to_start_on_a_bad_share_value(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("cpu_percent = 25", "cpu_percent = 101"))
    done = subprocess.run(
        [sys.executable, "-m", "peerphone", "node", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{path}:10: share.cpu_percent: 101 is impossible" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]  # nothing started
