"""Debian's Chromium, driven by Playwright, as the softphone's user (tests and benchmarks).

Each browser gets a fake microphone that plays a WAV file in a loop, so each side of a
call can send a tone of its own, and `dominant_hz` finds the tone in what the page hears
(a WebAudio analyser on the remote stream, which Chromium feeds only while the stream is
also attached to a media element: the page's <audio>).
"""

from __future__ import annotations

import math
import os
import struct
import time
import wave
from pathlib import Path
from typing import Any

from tests.support.node_procs import Node

CHROMIUM = Path(os.environ.get("PEERPHONE_CHROMIUM", "/usr/bin/chromium"))
SAMPLE_RATE = 48_000
TONE_SECONDS = 4.0
TONE_AMPLITUDE = 0.3  # of full scale: loud enough for the analyser, no clipping
FFT_SIZE = 8192  # 5.9 Hz per bin at 48 kHz
HZ_TOLERANCE = 12.0  # two bins either way
IPV4_UDP_HEADER_BYTES = 28
IPV6_UDP_HEADER_BYTES = 48

# Flags measured on these machines (NOTES.md, "Browser tests"); not --mute-audio.
BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def missing() -> str | None:
    """What the browser tests need and this machine lacks (None: all there)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the Python package playwright (pip install -e '.[dev]')"
    return None


def write_tone(path: Path, hz: float, seconds: float = TONE_SECONDS) -> Path:
    """A mono 16-bit WAV of a sine at `hz` (Chromium loops it as the microphone)."""
    frames = int(SAMPLE_RATE * seconds)
    peak = int(32767 * TONE_AMPLITUDE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(
            b"".join(
                struct.pack("<h", int(peak * math.sin(2 * math.pi * hz * i / SAMPLE_RATE)))
                for i in range(frames)
            )
        )
    return path


def launch_args(tone: Path) -> dict[str, Any]:
    """Keyword arguments for `playwright.chromium.launch` with `tone` as the microphone."""
    return {
        "executable_path": str(CHROMIUM),
        "headless": True,
        "ignore_default_args": ["--mute-audio"],
        "args": [*BASE_FLAGS, f"--use-file-for-fake-audio-capture={tone.resolve()}"],
    }


def login_url(node: Node) -> str:
    """A one-time login link to `node`'s softphone page (what `peerphone open` prints)."""
    token = node.control.request("POST", "/v1/ui/login-token", {})["token"]
    return f"{node.control.base}/login?token={token}"


# Runs in the page: the strongest frequency in the remote audio, averaged over a second.
DOMINANT_HZ_JS = """async (fftSize) => {
  const audio = document.getElementById("remote-audio");
  const stream = audio && audio.srcObject;
  if (!stream || stream.getAudioTracks().length === 0) return null;
  const ctx = new AudioContext();
  await ctx.resume();
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = fftSize;
  analyser.smoothingTimeConstant = 0;
  source.connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const sum = new Float64Array(analyser.frequencyBinCount);
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 100));
    analyser.getFloatFrequencyData(bins);
    for (let k = 0; k < bins.length; k++) sum[k] += Math.pow(10, bins[k] / 10);
  }
  let best = 1;
  for (let k = 2; k < sum.length; k++) if (sum[k] > sum[best]) best = k;
  let total = 0;
  for (let k = 1; k < sum.length; k++) total += sum[k];
  source.disconnect();
  await ctx.close();
  if (!(total > 0)) return { hz: 0, share: 0, peak_db: -200 };  // silence
  return { hz: (best * ctx.sampleRate) / fftSize, share: sum[best] / total,
           peak_db: 10 * Math.log10(sum[best] / 10) };
}"""


def dominant_hz(page: Any) -> dict[str, float]:
    """{hz, share (of all energy, in that bin), peak_db} of a (sync) page's remote audio."""
    result = page.evaluate(DOMINANT_HZ_JS, FFT_SIZE)
    assert result is not None, "the page has no remote audio stream"
    return dict(result)


# Runs in the page: the current call's selected candidate pair (bytes and packets both ways,
# the remote address) and how many audio packets arrived.
PAIR_STATS_JS = """async () => {
  const pc = state.call && state.call.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  let pair = null, inbound = 0;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = byId.get(s.selectedCandidatePairId);
    }
    if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s.packetsReceived || 0;
  });
  const p = pair || {};
  return { inbound, bytesSent: p.bytesSent || 0, bytesReceived: p.bytesReceived || 0,
           packetsSent: p.packetsSent || 0, packetsReceived: p.packetsReceived || 0,
           remote: pair ? (byId.get(pair.remoteCandidateId) || {}).address : null };
}"""


def wire_rates(page: Any, seconds: float) -> dict[str, Any]:
    """Per direction over `seconds` of the page's call, in kbit/s: UDP payload, whole
    packets of the path's address family (`ip`), and whole IPv6 packets (`ipv6`, the
    worst case). Counts from the selected candidate pair, so exact in packets."""
    before = page.evaluate(PAIR_STATS_JS)
    time.sleep(seconds)
    after = page.evaluate(PAIR_STATS_JS)
    ipv6 = ":" in (after["remote"] or "")
    header = IPV6_UDP_HEADER_BYTES if ipv6 else IPV4_UDP_HEADER_BYTES
    out: dict[str, Any] = {"path_ipv6": ipv6}
    for direction, key in (("sent", "Sent"), ("received", "Received")):
        payload = after[f"bytes{key}"] - before[f"bytes{key}"]
        packets = after[f"packets{key}"] - before[f"packets{key}"]
        out[direction] = {
            "udp_payload": round(payload * 8 / 1000 / seconds, 2),
            "ip": round((payload + packets * header) * 8 / 1000 / seconds, 2),
            "ipv6": round((payload + packets * IPV6_UDP_HEADER_BYTES) * 8 / 1000 / seconds, 2),
            "packets_per_s": round(packets / seconds, 1),
        }
    return out
