"""DIR/pins.json: first-use pins survive restarts; a damaged file stops the node, loudly."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from peerphone.daemon.datadir import DataDirError
from peerphone.daemon.pins import Pins


def test_pins_round_trip_private_and_first_pin_wins(tmp_path: Path) -> None:
    pins = Pins(tmp_path)
    assert pins.load() == {}
    assert pins.add("alice", b"\x01" * 32)
    assert not pins.add("alice", b"\x02" * 32)  # pinned once: a later key does not replace it
    assert not pins.add("Not Valid", b"\x03" * 32)
    assert stat.S_IMODE((tmp_path / "pins.json").stat().st_mode) == 0o600
    assert Pins(tmp_path).load() == {"alice": b"\x01" * 32}


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"version": 2, "pins": {}}',
        b'{"version": 1, "pins": []}',
        b'{"version": 1, "pins": {"alice": "zz"}}',
        b'{"version": 1, "pins": {"alice": "0101"}}',
        b'{"version": 1, "pins": {"UPPER": "' + b"01" * 32 + b'"}}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_a_damaged_pins_file_is_an_error_that_names_it(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "pins.json").write_bytes(content)
    with pytest.raises(DataDirError, match=r"pins\.json is damaged"):
        Pins(tmp_path).load()
    assert (tmp_path / "pins.json").read_bytes() == content  # nothing lost
