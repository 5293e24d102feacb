"""Deterministic test speech (Debian's espeak-ng) and how well a call carried it (PESQ).

`load_speech()` renders a fixed English text (six Harvard sentences, IEEE 1969: the
classic material of speech-quality tests) with espeak-ng, about 14.5 s with the pauses
between sentences, and keeps two WAV files: 48 kHz mono s16 to play into a call (with
optional leading silence, so that an impairment can be switched on before the speech
starts), and 16 kHz mono s16, the reference of PESQ wide-band. The files are cached by a
hash of everything that makes them (text, voice, espeak-ng's version, rates, lead-in), in
``$PEERPHONE_SPEECH_CACHE`` or ``<tmp>/peerphone-speech``.

`score(reference_16k, recording)` downsamples a recording to 16 kHz, finds the speech in
it (FFT cross-correlation; the recording may start late and may hold the speech more than
once: the best-correlated full-length window wins), and measures:

* ``mos``: PESQ wide-band MOS-LQO (ITU-T P.862.2, the `pesq` package), 1.0 to 4.64;
* ``silent_share``: the share of 20-ms frames of the aligned window below SILENT_DBFS,
  next to the reference's own ``reference_silent_share`` (its pauses);
* ``longest_stall_ms``: the longest stretch in which the reference is speaking while the
  recording is digital silence (every sample within ±ZERO_LEVEL), in 5-ms blocks (a block
  of the reference speaks when it is above SILENT_DBFS) — what a stalled jitter buffer or
  a lost packet without concealment sounds like;
* ``correlation``: normalised waveform correlation at the chosen alignment.

Raises `RecordingError` with the reason for a recording that cannot be scored (too short,
silent, cut off before the speech ends).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

PLAY_RATE = 48_000
PESQ_RATE = 16_000
FRAME_MS = 20
STALL_BLOCK_MS = 5
SILENT_DBFS = -50.0  # a 20-ms frame quieter than this (RMS, re full scale) is silent
ZERO_LEVEL = 8  # |sample| <= this (s16, about -72 dBFS) counts as digital silence
PEAK_DBFS = -3.0  # the speech is normalised to this peak
FULL_SCALE = 32768.0
ESPEAK = "espeak-ng"
VOICE = "en-us"
WORDS_PER_MINUTE = 165
TEXT = (
    "The birch canoe slid on the smooth planks. "
    "Glue the sheet to the dark blue background. "
    "It's easy to tell the depth of a well. "
    "These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. "
    "The juice of lemons makes fine punch."
)
CACHE_ENV = "PEERPHONE_SPEECH_CACHE"

Samples = npt.NDArray[np.int16]


class SpeechUnavailable(RuntimeError):
    """espeak-ng is not installed (or fails): the message names it."""


class RecordingError(ValueError):
    """A recording that cannot be scored; the message says why."""


@dataclass(frozen=True)
class Speech:
    """The test speech: a file to play, the PESQ reference and its samples."""

    play_wav: Path  # 48 kHz mono s16, lead_in_s of silence then the speech
    reference_wav: Path  # 16 kHz mono s16, the speech alone
    reference: Samples  # the samples of reference_wav
    lead_in_s: float
    seconds: float  # the speech alone

    def __str__(self) -> str:
        return f"{self.seconds:.2f} s of espeak-ng speech ({self.play_wav})"


@dataclass(frozen=True)
class VoiceScore:
    """How well a recording carried the speech (see the module's docstring)."""

    mos: float
    silent_share: float
    reference_silent_share: float
    longest_stall_ms: float
    lag_ms: float  # where the speech starts in the recording
    correlation: float
    recording_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def espeak_available() -> tuple[bool, str]:
    """Whether espeak-ng can be run here; if not, why (naming espeak-ng)."""
    if shutil.which(ESPEAK) is None:
        return False, f"{ESPEAK} not installed (apt-get install -y espeak-ng)"
    return True, ""


def _espeak_version() -> str:
    try:
        done = subprocess.run(
            [ESPEAK, "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SpeechUnavailable(f"{ESPEAK} --version: {exc}") from exc
    return done.stdout.strip()


def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "peerphone-speech")
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- WAV files and resampling ------------------------------------------------------------


def read_wav(path: Path) -> tuple[int, Samples]:
    """A 16-bit WAV file as (rate, mono samples); channels are averaged."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise RecordingError(f"{path}: {8 * f.getsampwidth()}-bit samples, want 16-bit")
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        channels, rate = f.getnchannels(), f.getframerate()
    if channels > 1:
        mixed = data.reshape(-1, channels).astype(np.float64).mean(axis=1)
        return rate, np.round(mixed).astype(np.int16)
    return rate, data.astype(np.int16)


def write_wav(path: Path, samples: Samples, rate: int) -> None:
    """Mono s16 WAV, written to a temporary name and renamed (safe for a shared cache)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.astype("<i2").tobytes())
    tmp.replace(path)


def resample(samples: Samples, rate: int, to_rate: int) -> Samples:
    """Mono s16 from `rate` to `to_rate` (libswresample, through PyAV)."""
    if rate == to_rate:
        return samples.copy()
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    out = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    return out.astype(np.int16)


# -- the speech ----------------------------------------------------------------------------


def load_speech(
    lead_in_s: float = 0.0, max_seconds: float | None = None, text: str = TEXT
) -> Speech:
    """The cached test speech (rendered on first use). `lead_in_s`: silence before it in
    the file to play; `max_seconds`: keep only the speech up to the last pause (a silent
    20-ms frame) before that time."""
    version = _espeak_version() if shutil.which(ESPEAK) else ""
    if not version:
        raise SpeechUnavailable(espeak_available()[1])
    recipe = f"{version}|{VOICE}|{WORDS_PER_MINUTE}|{PEAK_DBFS}|{PLAY_RATE}|{PESQ_RATE}|{text}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    root = cache_dir()
    reference_wav = root / f"speech-{key}-16k.wav"
    speech_wav = root / f"speech-{key}-48k.wav"
    if not (reference_wav.exists() and speech_wav.exists()):
        _render(text, speech_wav, reference_wav)
    _, reference = read_wav(reference_wav)
    if max_seconds is not None and max_seconds * PESQ_RATE < len(reference):
        cut = _pause_before(reference, max_seconds)
        key += f"-cut{cut}"
        cut_reference, cut_speech = root / f"speech-{key}-16k.wav", root / f"speech-{key}-48k.wav"
        if not (cut_reference.exists() and cut_speech.exists()):
            write_wav(cut_reference, reference[:cut], PESQ_RATE)
            cut_48k = read_wav(speech_wav)[1][: cut * (PLAY_RATE // PESQ_RATE)]
            write_wav(cut_speech, cut_48k, PLAY_RATE)
        reference, reference_wav, speech_wav = reference[:cut], cut_reference, cut_speech
    play_wav = speech_wav
    if lead_in_s > 0:
        play_wav = root / f"speech-{key}-48k-lead{round(lead_in_s * 1000)}ms.wav"
        if not play_wav.exists():
            _, speech = read_wav(speech_wav)
            silence = np.zeros(round(lead_in_s * PLAY_RATE), np.int16)
            write_wav(play_wav, np.concatenate([silence, speech]), PLAY_RATE)
    return Speech(play_wav, reference_wav, reference, lead_in_s, len(reference) / PESQ_RATE)


def _pause_before(reference: Samples, seconds: float) -> int:
    """The end (a sample index at 16 kHz) of the last silent 20-ms frame before `seconds`
    that follows some speech."""
    frame = PESQ_RATE * FRAME_MS // 1000
    levels = frame_levels_dbfs(reference[: round(seconds * PESQ_RATE)], PESQ_RATE)
    spoken = np.flatnonzero(levels > SILENT_DBFS)
    if len(spoken) == 0:
        raise ValueError(f"no speech in the first {seconds} s")
    silent = [i for i in np.flatnonzero(levels <= SILENT_DBFS) if i > spoken[0]]
    if not silent:
        raise ValueError(f"no pause in the first {seconds} s of the speech")
    return (int(silent[-1]) + 1) * frame


def _render(text: str, play_path: Path, reference_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        raw_path = Path(tmp) / "raw.wav"
        argv = [ESPEAK, "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "-w", str(raw_path), text]
        try:
            subprocess.run(argv, capture_output=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SpeechUnavailable(f"{ESPEAK} failed: {exc}") from exc
        rate, raw = read_wav(raw_path)
    peak = float(np.max(np.abs(raw.astype(np.float64)))) or 1.0
    gain = FULL_SCALE * 10 ** (PEAK_DBFS / 20) / peak
    speech = np.round(raw.astype(np.float64) * gain).astype(np.int16)
    write_wav(play_path, resample(speech, rate, PLAY_RATE), PLAY_RATE)
    write_wav(reference_path, resample(speech, rate, PESQ_RATE), PESQ_RATE)


# -- scoring -------------------------------------------------------------------------------


def frame_levels_dbfs(samples: npt.NDArray[Any], rate: int, frame_ms: int = FRAME_MS) -> Any:
    """RMS level of each whole frame, in dBFS (-200 for digital silence)."""
    size = rate * frame_ms // 1000
    count = len(samples) // size
    frames = samples[: count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-10) / FULL_SCALE)


def align(reference: Samples, recording: Samples) -> tuple[int, float]:
    """(lag, correlation): where in `recording` (same rate) the full-length copy of
    `reference` that correlates best starts, and its normalised correlation."""
    ref = reference.astype(np.float64)
    rec = recording.astype(np.float64)
    n, m = len(ref), len(rec)
    size = 1 << (n + m - 1).bit_length()
    cross = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    anywhere = int(np.argmax(cross[:m]))  # lags >= 0 only: the call cannot lead the source
    window = cross[: m - n + 1] if m >= n else cross[:0]
    if len(window) == 0 or (anywhere > m - n and cross[anywhere] > 1.5 * np.max(window)):
        ends = (anywhere + n - m) * 1000 / PESQ_RATE
        raise RecordingError(
            f"the recording ends {ends:.0f} ms before the speech it holds does"
            f" (speech at {anywhere / PESQ_RATE:.2f} s of {m / PESQ_RATE:.2f} s)"
        )
    lag = int(np.argmax(window))
    seg = rec[lag : lag + n]
    denominator = float(np.sqrt(np.dot(ref, ref) * np.dot(seg, seg)))
    return lag, float(np.dot(ref, seg)) / denominator if denominator else 0.0


def longest_stall_ms(reference: Samples, window: Samples, rate: int = PESQ_RATE) -> float:
    """The longest run of STALL_BLOCK_MS blocks in which the reference speaks (the block is
    above SILENT_DBFS) and `window` (aligned, same length) is digital silence."""
    speaking = frame_levels_dbfs(reference, rate, STALL_BLOCK_MS) > SILENT_DBFS
    block = rate * STALL_BLOCK_MS // 1000
    blocks = min(len(speaking), len(window) // block)
    rec = np.abs(window[: blocks * block].astype(np.int32)).reshape(blocks, block)
    stalled = speaking[:blocks] & (rec.max(axis=1) <= ZERO_LEVEL)
    longest = run = 0
    for value in stalled:
        run = run + 1 if value else 0
        longest = max(longest, run)
    return float(longest * STALL_BLOCK_MS)


def score(reference_16k: Samples | Path, recording: Path | Samples, rate: int = 0) -> VoiceScore:
    """Score a recording of the speech (a WAV file, or samples at `rate`) against the 16 kHz
    reference (samples or a WAV file). Raises RecordingError if it cannot be scored."""
    from pesq import NoUtterancesError, PesqError, pesq  # type: ignore[import-untyped]

    if isinstance(reference_16k, Path):
        ref_rate, reference = read_wav(reference_16k)
        if ref_rate != PESQ_RATE:
            raise RecordingError(f"reference {reference_16k} is {ref_rate} Hz, want 16 kHz")
    else:
        reference = reference_16k
    if isinstance(recording, Path):
        if not recording.exists():
            raise RecordingError(f"no recording at {recording}")
        rate, samples = read_wav(recording)
        name = str(recording)
    else:
        if rate <= 0:
            raise RecordingError("samples given without their rate")
        samples, name = recording, "the recording"
    seconds = len(samples) / rate if rate else 0.0
    if len(samples) == 0 or np.max(np.abs(samples.astype(np.int32))) <= ZERO_LEVEL:
        raise RecordingError(f"{name} is silent ({seconds:.2f} s of digital silence)")
    heard = resample(samples, rate, PESQ_RATE)
    if len(heard) < len(reference):
        raise RecordingError(
            f"{name} is too short: {seconds:.2f} s, the speech is"
            f" {len(reference) / PESQ_RATE:.2f} s"
        )
    lag, correlation = align(reference, heard)
    window = heard[lag : lag + len(reference)]
    levels = frame_levels_dbfs(window, PESQ_RATE)
    if np.all(levels <= SILENT_DBFS):
        raise RecordingError(f"{name}: the aligned window is silent (below {SILENT_DBFS} dBFS)")
    ref_levels = frame_levels_dbfs(reference, PESQ_RATE)
    try:
        mos = float(
            pesq(
                PESQ_RATE,
                reference.astype(np.float32) / FULL_SCALE,
                window.astype(np.float32) / FULL_SCALE,
                "wb",
            )
        )
    except NoUtterancesError as exc:
        raise RecordingError(f"{name}: PESQ finds no speech in it ({exc})") from exc
    except PesqError as exc:
        raise RecordingError(f"{name}: PESQ failed: {type(exc).__name__} {exc}") from exc
    return VoiceScore(
        mos=round(mos, 3),
        silent_share=round(float(np.mean(levels <= SILENT_DBFS)), 4),
        reference_silent_share=round(float(np.mean(ref_levels <= SILENT_DBFS)), 4),
        longest_stall_ms=longest_stall_ms(reference, window),
        lag_ms=round(lag * 1000 / PESQ_RATE, 2),
        correlation=round(correlation, 4),
        recording_s=round(seconds, 3),
    )
