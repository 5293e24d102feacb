"""The voice scorer of tests/support/speech.py on doctored copies of the test speech (no
network): a clean copy scores near PESQ's top, a copy with a fifth of its 20-ms frames
zeroed scores far lower with stalls, and the alignment finds the speech wherever it is."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.speech import (
    PLAY_RATE,
    RecordingError,
    Samples,
    Speech,
    espeak_available,
    load_speech,
    read_wav,
    score,
)

LEAD_IN_S = 0.5
EXCERPT_S = 5.0  # the speech up to a pause before this: quick to score
FRAME = PLAY_RATE // 50  # 20 ms


@pytest.fixture(scope="module")
def speech() -> Speech:
    ok, reason = espeak_available()
    if not ok:
        pytest.skip(reason)
    return load_speech(LEAD_IN_S, EXCERPT_S)


def played(speech: Speech) -> Samples:
    """What the speech file plays (lead-in, speech), plus half a second of silence."""
    return np.concatenate([read_wav(speech.play_wav)[1], np.zeros(PLAY_RATE // 2, np.int16)])


def test_a_clean_copy_scores_high_and_is_found_after_its_lead_in(speech: Speech) -> None:
    result = score(speech.reference, played(speech), PLAY_RATE)
    assert result.mos > 4.0, result
    assert result.lag_ms == pytest.approx(LEAD_IN_S * 1000, abs=1.0), result
    assert result.longest_stall_ms == 0.0, result
    assert result.silent_share == pytest.approx(result.reference_silent_share, abs=0.01)
    assert 0.05 < result.reference_silent_share < 0.5, result  # the speech has pauses


def test_a_copy_with_a_fifth_of_its_frames_zeroed_scores_lower(speech: Speech) -> None:
    clean = score(speech.reference, played(speech), PLAY_RATE)
    damaged = played(speech)
    rng = np.random.default_rng(20)
    frames = len(damaged) // FRAME
    for i in rng.choice(frames, size=frames // 5, replace=False):
        damaged[i * FRAME : (i + 1) * FRAME] = 0
    result = score(speech.reference, damaged, PLAY_RATE)
    print(f"clean {clean}\nzeroed {result}")
    assert result.mos < clean.mos - 1.5, result
    assert result.silent_share > clean.silent_share + 0.1, result
    assert result.longest_stall_ms >= 20.0, result


def test_a_recording_300_ms_late_is_aligned(speech: Speech) -> None:
    late = np.concatenate([np.zeros(int(0.3 * PLAY_RATE), np.int16), played(speech)])
    result = score(speech.reference, late, PLAY_RATE)
    assert result.lag_ms == pytest.approx(LEAD_IN_S * 1000 + 300, abs=1.0), result
    assert result.mos > 4.0, result


def test_a_looping_source_is_scored_on_its_one_full_copy(speech: Speech) -> None:
    """A recording that starts in the middle of the speech and holds it again in full
    (a source that loops, as Chromium's fake microphone does)."""
    once = read_wav(speech.play_wav)[1]
    middle = len(once) // 2
    looped = np.concatenate([once[middle:], once, once[:middle]])
    result = score(speech.reference, looped, PLAY_RATE)
    full_copy_at_ms = (len(once) - middle) * 1000 / PLAY_RATE + LEAD_IN_S * 1000
    assert result.lag_ms == pytest.approx(full_copy_at_ms, abs=1.0), result
    assert result.mos > 4.0, result


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("silent", "silent"),
        ("short", "too short"),
        ("cut", "before the speech it holds does"),
    ],
)
def test_recordings_that_cannot_be_scored_say_why(speech: Speech, case: str, message: str) -> None:
    clip = read_wav(speech.play_wav)[1]
    if case == "silent":
        recording = np.zeros(3 * len(clip), np.int16)
    elif case == "short":
        recording = clip[: len(clip) // 2]
    else:  # long enough, but the speech starts so late that its end is cut off
        recording = np.concatenate([np.zeros(3 * PLAY_RATE, np.int16), clip[:-PLAY_RATE]])
    with pytest.raises(RecordingError, match=message):
        score(speech.reference, recording, PLAY_RATE)
