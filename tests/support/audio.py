"""Audio helpers for tests: WAV files and how well what was heard matches what was played."""

from __future__ import annotations

import array
import math
import sys
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt


def correlation(played: npt.NDArray[np.float64], heard: npt.NDArray[np.float64]) -> float:
    """Normalised cross-correlation of `heard` with `played` at the best alignment.

    The lag comes from the FFT cross-correlation; the score is the cosine similarity of
    the overlapping parts at that lag (1.0 = same waveform up to gain).
    """
    n = len(played) + len(heard)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(heard, size) * np.conj(np.fft.rfft(played, size))
    cross = np.fft.irfft(spectrum, size)
    lag = int(np.argmax(np.abs(cross)))
    if lag > size // 2:
        lag -= size  # heard starts before played (cannot happen in a call, but be exact)
    if lag >= 0:
        a, b = played, heard[lag:]
    else:
        a, b = played[-lag:], heard
    m = min(len(a), len(b))
    a, b = a[:m], b[:m]
    denominator = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / denominator if denominator else 0.0


def windowed_correlation(
    played: npt.NDArray[np.float64], heard: npt.NDArray[np.float64], window: int = 12_000
) -> float:
    """Median, over the `window`-long pieces of `heard` that carry sound, of each piece's
    `correlation` with `played` (0.0 when nothing was heard).

    An adaptive jitter buffer moves the timeline when it stretches or sheds delay, so one
    lag for a whole call undervalues audio that arrived intact; each piece finds its own.
    Pieces under 1 % of the recording's RMS (after the signal ended, a hold) are left out.
    """
    pieces = [heard[i : i + window] for i in range(0, len(heard) - window + 1, window)]
    if not pieces:
        return correlation(played, heard)
    level = float(np.sqrt(np.mean(heard * heard)))
    if level == 0.0:
        return 0.0
    sounding = [p for p in pieces if float(np.sqrt(np.mean(p * p))) >= 0.01 * level]
    return float(np.median([correlation(played, piece) for piece in sounding]))


def read_wav(path: Path) -> tuple[int, npt.NDArray[np.float64]]:
    with wave.open(str(path), "rb") as f:
        assert f.getsampwidth() == 2
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64)
        channels = f.getnchannels()
        return f.getframerate(), data.reshape(-1, channels).mean(axis=1)


def write_wav(path: Path, samples: array.array[int], rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        frames = array.array("h", (s for s in samples for _ in range(channels)))
        if sys.byteorder != "little":
            frames.byteswap()
        f.writeframes(frames.tobytes())
