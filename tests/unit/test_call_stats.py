"""A call's statistics as the node shows them (issue 11, "honest statistics"): what the
softphone page may report about a browser call (checked key by key), the keys of the call
view that `calls --json` and the API give, and the quality numbers in `peerphone calls`."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from peerphone.daemon.calls import (
    BROWSER_STATS_KEYS,
    STATS_KEYS,
    CallManager,
    CallRecord,
    Media,
    checked_browser_stats,
)
from peerphone.daemon.config import NodeConfig
from peerphone.daemon.texts import call_text, quality_text
from peerphone.errors import LocalProtocolError

QUALITY_KEYS = (
    "loss",
    "loss_out",
    "concealed",
    "fec_recovered",
    "retransmitted",
    "late_packets",
    "discarded_packets",
    "jitter_buffer_ms",
    "mos_estimate",
)
# what the page measures of a call with some loss both ways
PAGE_REPORT: dict[str, Any] = {
    "path": "direct",
    "setup_ms": 412,
    "rtt_ms": 38,
    "jitter_ms": 2.5,
    "loss": 0.031,
    "loss_out": 0.0195,
    "concealed": 0.042,
    "fec_recovered": 17,
    "discarded_packets": 3,
    "jitter_buffer_ms": 61.4,
    "mos_estimate": 3.42,
    "bytes_sent": 120_000,
    "bytes_received": 118_500,
    "local_candidate": "host 192.0.2.1:50000",
    "remote_candidate": "srflx 198.51.100.7:40000",
}


def manager() -> CallManager:
    core = SimpleNamespace(call_snapshot=lambda call_id: None)
    return CallManager(NodeConfig(name="alice"), lambda: SimpleNamespace(core=core))  # type: ignore[arg-type, return-value]


def test_the_call_view_carries_every_quality_number() -> None:
    assert set(QUALITY_KEYS) <= set(STATS_KEYS)
    assert len(set(STATS_KEYS)) == len(STATS_KEYS)


def test_the_api_description_documents_every_key_of_the_call_view() -> None:
    doc = json.loads(
        (Path(__file__).resolve().parents[2] / "src/peerphone/daemon/openapi.json").read_text()
    )
    documented = doc["components"]["schemas"]["Call"]["properties"]
    calls = manager()
    call_id = bytes(range(16))
    calls.calls[call_id] = CallRecord(call_id, "bob", True, Media(), browser=True)
    view = asyncio.run(calls.view(call_id))
    assert set(STATS_KEYS) <= set(documented)
    assert set(view) <= set(documented)
    for key in ("loss", "loss_out", "concealed"):
        assert (documented[key]["minimum"], documented[key]["maximum"]) == (0, 1)
    assert (documented["mos_estimate"]["minimum"], documented["mos_estimate"]["maximum"]) == (
        1,
        4.5,
    )
    ref = {"$ref": "#/components/schemas/Call"}
    get = doc["paths"]["/v1/calls/{call_id}"]["get"]["responses"]["200"]
    assert get["content"]["application/json"]["schema"] == ref


def test_the_page_may_report_the_quality_numbers_it_can_measure() -> None:
    for key in ("loss", "loss_out", "concealed", "fec_recovered", "discarded_packets"):
        assert key in BROWSER_STATS_KEYS
    for key in ("jitter_buffer_ms", "mos_estimate"):
        assert key in BROWSER_STATS_KEYS
    assert set(BROWSER_STATS_KEYS) <= set(STATS_KEYS)  # nothing the view would drop


def test_a_sound_report_is_kept_whole() -> None:
    assert checked_browser_stats(PAGE_REPORT) == PAGE_REPORT


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("loss", 1.5),  # a share is 0..1
        ("loss", -0.01),
        ("loss_out", 2),
        ("concealed", 1.0001),
        ("mos_estimate", 0.5),  # the E-model's MOS is 1..4.5
        ("mos_estimate", 4.6),
        ("jitter_buffer_ms", -1.0),
        ("rtt_ms", -5),
        ("loss", math.nan),  # Python's json reads NaN and Infinity
        ("jitter_buffer_ms", math.inf),
        ("mos_estimate", "4.1"),  # numbers are numbers, not text
        ("concealed", True),  # nor booleans
        ("loss_out", None),
        ("loss_out", [0.1]),
        ("fec_recovered", -1),  # counts are whole and not negative
        ("fec_recovered", 2.5),
        ("discarded_packets", "3"),
        ("bytes_sent", math.inf),
        ("path", "carrier pigeon"),  # direct or relay
        ("path", 1),
        ("local_candidate", 7),
    ],
)
def test_a_value_out_of_its_type_or_range_is_left_out(key: str, value: object) -> None:
    kept = checked_browser_stats(PAGE_REPORT | {key: value})
    assert key not in kept
    assert kept == {k: v for k, v in PAGE_REPORT.items() if k != key}  # the rest stays


def test_the_edges_of_each_range_are_kept_and_whole_floats_count() -> None:
    edges = {"loss": 0, "loss_out": 1.0, "concealed": 1, "mos_estimate": 1, "rtt_ms": 0}
    assert checked_browser_stats(edges) == edges
    assert checked_browser_stats({"mos_estimate": 4.5}) == {"mos_estimate": 4.5}
    assert checked_browser_stats({"fec_recovered": 4.0}) == {"fec_recovered": 4}
    huge = 10**400  # too big for a float: kept as the count it is, no OverflowError
    assert checked_browser_stats({"bytes_sent": huge}) == {"bytes_sent": huge}


def test_keys_the_page_may_not_report_and_long_text_are_not_kept() -> None:
    kept = checked_browser_stats(
        {"retransmitted": 4, "late_packets": 2, "state": "active", "remote_candidate": "x" * 500}
    )
    assert kept == {"remote_candidate": "x" * 80}


def test_the_view_of_a_browser_call_shows_what_the_page_reported() -> None:
    calls = manager()
    call_id = bytes(range(16))
    calls.calls[call_id] = CallRecord(call_id, "bob", True, Media(), browser=True)
    calls.report_browser_stats(call_id, PAGE_REPORT | {"loss": 7, "late_packets": 1})
    view = asyncio.run(calls.view(call_id))
    assert view["endpoint"] == "browser"
    for key in STATS_KEYS:
        assert key in view  # every key, None when not reported
    assert view["loss"] is None  # 7 is no share
    assert view["late_packets"] is None and view["retransmitted"] is None
    for key in ("loss_out", "concealed", "fec_recovered", "jitter_buffer_ms", "mos_estimate"):
        assert view[key] == PAGE_REPORT[key]


def test_only_a_browser_call_takes_the_page_s_report() -> None:
    calls = manager()
    call_id = bytes(16)
    calls.calls[call_id] = CallRecord(call_id, "bob", True, Media())
    with pytest.raises(LocalProtocolError):
        calls.report_browser_stats(call_id, PAGE_REPORT)


# -- `peerphone calls`, as a person reads it ------------------------------------------------

CALL = {
    "call_id": "0123456789abcdef" * 2,
    "direction": "outgoing",
    "peer": "bob",
    "state": "active",
    "held": False,
    "end_reason": "",
    "path": "direct",
    "setup_ms": 412,
    "rtt_ms": 38.0,
    "jitter_ms": 2.5,
    "connected_s": 12.0,
    "bitrate_kbps": {"sent": 40.1, "received": 39.8},
    "bytes_sent": 60_000,
    "bytes_received": 59_000,
}


def test_the_line_shows_loss_both_ways_concealment_and_the_estimated_mos() -> None:
    line = call_text(
        CALL | {"loss": 0.031, "loss_out": 0.0195, "concealed": 0.042, "mos_estimate": 3.42}
    )
    assert "loss in/out 3.1 %/1.9 %, concealed 4.2 %, MOS est. 3.4" in line
    assert line.startswith("call 01234567 outgoing bob: active, path direct")
    assert line.endswith("40.1 kbit/s sent, 39.8 received, 60000 B sent, 59000 B received")


def test_what_is_not_measured_is_a_dash_or_left_out() -> None:
    # a node call before the new receive path: inbound loss only, nothing else measured
    assert quality_text(CALL | {"loss": 0.0}) == "loss in/out 0.0 %/-"
    assert quality_text(CALL | {"loss": 0.0, "loss_out": None, "concealed": None}) == (
        "loss in/out 0.0 %/-"
    )
    assert quality_text(CALL) == "loss in/out -/-"  # ringing: nothing yet
    assert quality_text({"loss": 0, "loss_out": 1, "concealed": 0, "mos_estimate": 1}) == (
        "loss in/out 0.0 %/100.0 %, concealed 0.0 %, MOS est. 1.0"
    )
