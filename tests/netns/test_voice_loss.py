"""A call through a lossy link reports the loss the link applied (issue 11, item 3).

The lab of benchmarks/bench_voice.py: alice calls bob (both behind cone NATs, a direct
call), bob auto-answers playing the test speech, alice plays it too. Once the media is
connected, alice's router drops 5 % of the call's datagrams each way (seeded patterns,
tests/support/impair.py), counted exactly by nftables. alice's `peerphone calls --json`
view of the call must report ``loss`` (the whole call's incoming loss, 0..1) within one
percentage point of what the router dropped toward her, and ``loss_out`` (her outgoing
loss as bob reports it) within one point of what it dropped from her — compared with the
first transmissions of RTP packets alone: RTCP, STUN and DTLS datagrams are dropped too but
are not RTP loss, and a retransmission (a NACKed packet sent again, dropped or not) does
not change whether its packet was lost on the way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from benchmarks.bench_voice import (
    LEAD_IN_S,
    SUPERNODE_OPTIONS,
    TAIL_S,
    CallOutcome,
    LossCase,
    NodePair,
    quality_fields,
)

from tests.support.impair import DirectionCount, random_loss
from tests.support.netlab import NetLab, require_available
from tests.support.netns_nodes import bootstrap_list, start_supernodes
from tests.support.speech import espeak_available, load_speech

LOSS_PERCENT = 5.0
SEED = 11
TOLERANCE = 0.01  # one percentage point
SPEECH_S = 14.0


@pytest.fixture(scope="module")
def lossy_call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CallOutcome]:
    require_available()
    ok, reason = espeak_available()
    if not ok:
        pytest.skip(reason)
    speech = load_speech(LEAD_IN_S, SPEECH_S)
    root: Path = tmp_path_factory.mktemp("voice-loss")
    case = LossCase(
        f"random {LOSS_PERCENT:g} %",
        random_loss(LOSS_PERCENT, SEED),
        random_loss(LOSS_PERCENT, SEED + 1),
    )
    with NetLab() as lab:
        (supernode,) = start_supernodes(lab, root, 1, SUPERNODE_OPTIONS)
        pair = NodePair.start(lab, root, speech, bootstrap_list(supernode))
        outcome = pair.call(case, LEAD_IN_S + speech.seconds + TAIL_S)
        print(f"view at the end of the talk: {json.dumps(outcome.view)}")
        print(f"view once ended: {json.dumps(outcome.final_view)}")
        print(f"counting check: {json.dumps(outcome.check)}")
        if outcome.error:
            pytest.fail(f"{outcome.error}\n{pair.alice.log_tail()}", pytrace=False)
        yield outcome


def rtp_loss(count: DirectionCount) -> float:
    assert count.rtp_loss is not None, count
    return count.rtp_loss


def first_loss(count: DirectionCount) -> float:
    assert count.first_loss is not None, count
    return count.first_loss


def check_reported(view: dict[str, Any] | None, up: DirectionCount, down: DirectionCount) -> None:
    fields = quality_fields(view)
    applied_in, applied_out = first_loss(down), first_loss(up)
    print(
        f"applied to RTP first transmissions: in {100 * applied_in:.2f} % ({down.first_dropped}"
        f" of {down.first_dropped + down.first_passed}), out {100 * applied_out:.2f} %"
        f" ({up.first_dropped} of {up.first_dropped + up.first_passed}); resent in"
        f" {down.resent}, out {up.resent}; reported: loss {fields['loss']}, loss_out"
        f" {fields['loss_out']}"
    )
    for key, applied in (("loss", applied_in), ("loss_out", applied_out)):
        reported = fields[key]
        assert isinstance(reported, int | float), f"no {key!r} (0..1) in the call view: {view}"
        assert abs(reported - applied) <= TOLERANCE, (
            f"{key} {reported} vs applied {applied:.4f}: {view}"
        )


def test_the_link_dropped_about_what_was_asked_and_counted_both_ways(
    lossy_call: CallOutcome,
) -> None:
    assert lossy_call.applied is not None
    for count in (lossy_call.applied.up, lossy_call.applied.down):
        assert count.rtp_passed > 300, count  # ~25 packets/s (40 ms) for ~16 s
        assert 0.02 < rtp_loss(count) < 0.09, count
    assert lossy_call.check["exact"], lossy_call.check  # host and router agree per direction


def test_the_caller_reports_the_applied_loss_within_a_point_both_ways(
    lossy_call: CallOutcome,
) -> None:
    """During the call: the view read at the end of the talk against the counters read
    right after it (from before the call)."""
    assert lossy_call.at_view is not None
    check_reported(lossy_call.view, lossy_call.at_view.up, lossy_call.at_view.down)


def test_the_ended_call_reports_the_whole_calls_loss_within_a_point(
    lossy_call: CallOutcome,
) -> None:
    assert lossy_call.applied is not None
    check_reported(lossy_call.final_view, lossy_call.applied.up, lossy_call.applied.down)
