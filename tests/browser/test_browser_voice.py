"""A Chromium ↔ Chromium call through the NAT lab, recorded in the caller's page and scored
with PESQ: proves the recording path of the voice benchmark's browser column
(tests/support/browser_voice.py) and its alignment.

Both users sit behind port-restricted cone NATs; their pages call each other with their
own buttons; the callee's fake microphone loops espeak-ng speech; the caller's page
records one whole loop. With no loss, the recording must score as well as the codec
alone does: the same speech through libopus at the bitrate the node gives browsers
(PyAV, no network), less a small margin. An absolute bar would measure the bitrate, not
the recording: PESQ wide-band of this speech through Opus alone is about 2.7 at
12 kbit/s, 3.0 at 16, 3.5 at 24 and 3.8 at 32.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import pytest

from peerphone.daemon.browser_sdp import BROWSER_OPUS_BITRATE_BPS
from tests.support.browser_voice import (
    LOOP_MARGIN_AFTER_S,
    LOOP_MARGIN_BEFORE_S,
    SUPERNODE_ARGS,
    BrowserPhones,
    start_browser_nodes,
)
from tests.support.netlab import NetLab, require_available
from tests.support.netns_nodes import bootstrap_list, start_supernodes
from tests.support.speech import (
    PLAY_RATE,
    Speech,
    espeak_available,
    load_speech,
    read_wav,
    score,
)

MOS_MARGIN = 0.25  # below the codec alone (measured: -0.01 to +0.11 after the warm-up)
OPUS_FRAME = PLAY_RATE // 50  # 20 ms


def require_speech() -> Speech:
    ok, why = espeak_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the voice test needs {why}", pytrace=False)
        pytest.skip(f"the voice test needs {why}")
    return load_speech()


def through_opus(speech: Speech, bitrate_bps: int) -> np.ndarray[Any, np.dtype[np.int16]]:
    """The speech through libopus (encode, decode) alone: 20-ms frames, VoIP mode."""
    _, samples = read_wav(speech.play_wav)
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = PLAY_RATE, "mono", "s16"
    encoder.bit_rate = bitrate_bps
    encoder.options = {"application": "voip", "frame_duration": "20"}
    decoder: Any = av.CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout = PLAY_RATE, "mono"
    silence = np.zeros(PLAY_RATE, np.int16)
    padded = np.concatenate([silence, samples, silence])
    out: list[np.ndarray[Any, Any]] = []
    for at in range(0, len(padded) - OPUS_FRAME + 1, OPUS_FRAME):
        frame = av.AudioFrame.from_ndarray(
            padded[at : at + OPUS_FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = PLAY_RATE, at
        for packet in encoder.encode(frame):
            for decoded in decoder.decode(packet):
                pcm = decoded.to_ndarray().reshape(-1)
                out.append(pcm if pcm.dtype == np.int16 else np.round(pcm * 32767))
    return np.concatenate(out).astype(np.int16)


@pytest.fixture(scope="module")
def phones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrowserPhones, Speech]]:
    require_available()
    speech = require_speech()
    root = tmp_path_factory.mktemp("browser-voice")
    os.chmod(root, 0o755)  # the wrappers and the microphone files are read by the browsers
    with NetLab() as lab:
        (supernode,) = start_supernodes(lab, root, 1, SUPERNODE_ARGS)
        caller, callee = start_browser_nodes(lab, root, bootstrap_list(supernode))
        with BrowserPhones(lab, caller, callee, speech.play_wav, root) as pair:
            yield pair, speech


def test_lossless_browser_call_scores_as_well_as_the_codec_alone(
    phones: tuple[BrowserPhones, Speech],
) -> None:
    pair, speech = phones
    result = pair.call()
    heard = score(speech.reference_wav, result.recording)
    codec = score(speech.reference, through_opus(speech, BROWSER_OPUS_BITRATE_BPS), PLAY_RATE)
    print(
        f"Chromium ↔ Chromium, no loss: PESQ WB MOS {heard.mos:.2f} (Opus alone at"
        f" {BROWSER_OPUS_BITRATE_BPS // 1000} kbit/s: {codec.mos:.2f}); {heard.as_dict()}"
    )
    print(f"stats {result.stats}; wire {result.wire_kbps}; path {result.path} {result.candidates}")
    assert not result.notes, result.notes
    assert result.path == "direct", result.candidates
    assert result.stats["loss_pct"] == 0 and result.stats["concealed_pct"] < 1, result.stats
    # one whole loop, starting just before the speech does (the call adds its delay)
    assert abs(result.seconds - (LOOP_MARGIN_BEFORE_S + pair.loop_s + LOOP_MARGIN_AFTER_S)) < 0.2
    assert heard.lag_ms >= LOOP_MARGIN_BEFORE_S * 1000 - 100
    assert heard.lag_ms <= (LOOP_MARGIN_BEFORE_S + LOOP_MARGIN_AFTER_S) * 1000
    assert heard.longest_stall_ms <= 20, heard
    assert heard.mos >= codec.mos - MOS_MARGIN, (heard, codec)
    assert pair.dialogs == []
