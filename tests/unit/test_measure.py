"""What a node measures of itself: session history, upload, and the capacity it reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from peerphone.daemon import measure
from peerphone.daemon.config import ConfigError, NodeConfig
from peerphone.daemon.measure import RATE_WINDOW_S, Measurements, Sessions, UploadMeter


def test_uptime_is_the_median_of_completed_sessions(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    sessions = Sessions()
    assert sessions.typical_uptime_s() == 0
    for start, length in ((0, 100), (1000, 3000), (10_000, 500)):
        sessions.begin(float(start))
        sessions.touch(float(start + length))
    sessions.begin(50_000.0)  # the current session does not count (the core adds it)
    sessions.touch(99_999.0)
    assert sessions.typical_uptime_s() == 500
    sessions.save(path)
    again = Sessions.load(path)
    assert again.spans == sessions.spans
    assert again.typical_uptime_s() == 500


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b"{}",
        b'{"sessions": [[5, 1]], "peak_up_kbps": 0}',  # ends before it starts: dropped
        b'{"sessions": "x", "peak_up_kbps": 0}',
        b'{"sessions": [], "peak_up_kbps": -1}',
        b"[" * 100_000,
    ],
)
def test_a_damaged_history_is_set_aside_not_fatal(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(text)
    sessions = Sessions.load(path)
    assert sessions.peak_up_kbps == 0
    assert all(start <= end for start, end in sessions.spans)
    assert sessions.spans == [] or text.startswith(b'{"sessions": [[5')


def test_upload_is_the_best_window_of_real_bytes() -> None:
    meter = UploadMeter()
    meter.sample(0.0, 0)
    meter.sample(RATE_WINDOW_S / 2, 10**9)  # half a window: not yet a measurement
    assert meter.peak_kbps == 0
    meter.sample(RATE_WINDOW_S, 1_250_000)  # 1.25 MB in 10 s = 1000 kbit/s
    assert meter.peak_kbps == 1000
    meter.sample(2 * RATE_WINDOW_S, 1_250_000)  # an idle window does not lower the peak
    assert meter.peak_kbps == 1000


def test_a_declaration_never_raises_a_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(measure, "spare_cpu_score", lambda own_cores: 120)
    in_call = [False]
    m = Measurements(tmp_path, lambda: in_call[0], 0.0)
    m.tick(0.0, 0)
    m.tick(RATE_WINDOW_S, 250_000)  # 200 kbit/s measured
    cap = m.capacity(up_kbps_cap=10**7, cpu_percent_cap=100, udp=4433, tcp=443)
    assert (cap.reachable, cap.up_kbps, cap.cpu_score) == (False, 200, 100)
    assert (cap.udp_port, cap.tcp_port) == (4433, 443)
    low = m.capacity(up_kbps_cap=50, cpu_percent_cap=10, udp=4433, tcp=0)
    assert (low.up_kbps, low.cpu_score) == (50, 10)  # the owner's caps win when lower
    in_call[0] = True
    assert m.veto() == "the owner is in a call"
    assert m.capacity(10**7, 100, 4433, 443).cpu_score == 0  # the tier does not even ask
    m.save(RATE_WINDOW_S)
    data = json.loads((tmp_path / "sessions.json").read_text())
    assert data["peak_up_kbps"] == 200
    again = Measurements(tmp_path, lambda: False, 100.0)
    assert again.upload.peak_kbps == 200  # across restarts
    assert len(again.sessions.spans) == 2  # and the first session is history


def test_election_settings_are_checked() -> None:
    config = NodeConfig(name="alice", election_high_water=1.0, election_low_water=0.5)
    config.check()
    election = config.election()
    assert election.verify_reachability and election.high_water == 1.0
    with pytest.raises(ConfigError, match="election_low_water"):
        NodeConfig(name="alice", election_high_water=1.0, election_low_water=2.0).check()
    with pytest.raises(ConfigError, match="election_min_up_kbps"):
        NodeConfig(name="alice", election_min_up_kbps=-1).check()


def test_spare_cpu_does_not_count_our_own_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert measure.spare_cpu_score() == 50
    assert measure.spare_cpu_score(own_cores=1.0) == 150  # the node's own work is ours
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 1.0, 1.0))
    assert measure.spare_cpu_score() == 0  # never below zero
