"""The node's own receive path: RTP packets → `JitterBuffer` → libopus → the call's sink.

aiortc hands us each received packet (`aiortc_internals.tap_incoming_rtp`); `Player`
files it in the jitter buffer, asks for retransmission of what is missing, and a playout
task produces audio on the 48 kHz clock: one piece each time the previous one has been
played, decoded, rebuilt from FEC, or concealed by libopus — never waiting on a gap.
Frames go to the sink as 48 kHz mono s16 with a continuous timeline (``pts``), so a
recording is exactly what a listener heard, concealment included.
"""

from __future__ import annotations

import array
import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from av.audio.frame import AudioFrame

from peerphone.errors import DecodeError
from peerphone.media.jitter import RTP_HZ, Action, JitterBuffer, JitterConfig, Playout
from peerphone.media.libopus import OpusDecoder

log = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, RTP_HZ)
IDLE_POLL_S = 0.01  # before the first packet, look again this often
MAX_BEHIND_S = 0.2  # a player this far behind its clock (a stalled loop) skips ahead
WATCH_S = 0.005  # how often the player looks for overdue packets between pieces
QUIET_PEAK = 330  # s16 peak under which a piece counts as a pause (about -40 dBFS)


class Player:
    """Plays one incoming stream into `write` (a sink's write; None drops the audio)."""

    def __init__(
        self,
        write: Callable[[AudioFrame], None],
        config: JitterConfig | None = None,
        *,
        request_retransmission: Callable[[int, list[int]], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.buffer = JitterBuffer(config or JitterConfig())
        self.muted = False  # on hold: keep the clock and the counts, play nothing
        self.decode_errors = 0
        self._write = write
        self._request = request_retransmission
        self._clock = clock
        self._decoder = OpusDecoder()
        self._ssrc: int | None = None
        self._played = 0  # samples handed to the sink (the output timeline)
        self._anchor: float | None = None  # clock time of output sample 0
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._grow_wanted_at: float | None = None

    # -- arrivals (called by aiortc's receive path, on the event loop) ---------------------

    def on_rtp(self, seq: int, timestamp: int, payload: bytes, ssrc: int) -> int | None:
        """File a packet; return how many of the stream's first copies are missing so far
        (for our RTCP receiver reports: the link's loss, retransmissions or not)."""
        if self._ssrc is None:
            self._ssrc = ssrc
        elif ssrc != self._ssrc:
            return None  # one stream per call; another SSRC is not ours to play
        try:
            samples = self._decoder.packet_samples(payload)
        except DecodeError:
            self.decode_errors += 1
            return None
        now = self._clock()
        self.buffer.insert(seq, timestamp, payload, samples, now)
        self._ask_again(now)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self.buffer.first_copies_missing

    def _ask_again(self, now: float) -> None:
        if self._request is None or self._ssrc is None:
            return
        seqs = self.buffer.nacks_due(now)
        if seqs:
            task = asyncio.ensure_future(self._request(self._ssrc, seqs))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    # -- playout --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                now = self._clock()
                if self._anchor is not None:
                    due = self._anchor + self._played / RTP_HZ
                    while due > now:  # meanwhile, watch for packets overdue
                        await asyncio.sleep(min(WATCH_S, due - now))
                        now = self._clock()
                        self.buffer.mark_overdue(now)
                        self._ask_again(now)
                    if now - due > MAX_BEHIND_S:
                        self._anchor = now - self._played / RTP_HZ
                self.buffer.mark_overdue(now)
                self._ask_again(now)
                playout = self._grow(now) if self._anchor is not None else None
                if playout is None:
                    playout = self.buffer.pull(now)
                if playout is None:
                    await asyncio.sleep(IDLE_POLL_S)
                    continue
                if self._anchor is None:
                    self._anchor = now
                self._emit(self._render(playout))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the node down; the call goes quiet
            log.exception("audio playout stopped")

    def _grow(self, now: float) -> Playout | None:
        """Deepen the buffer now if it is short of slack and this is a pause (or overdue)."""
        if not self.buffer.should_grow(now):
            self._grow_wanted_at = None
            return None
        if self._grow_wanted_at is None:
            self._grow_wanted_at = now
        waited = now - self._grow_wanted_at
        if not self.buffer.quiet and waited < self.buffer.config.grow_wait_s:
            return None
        self._grow_wanted_at = None
        return self.buffer.grow()

    def _render(self, playout: Playout) -> bytes:
        try:
            if playout.drop_first:
                self._decoder.decode(playout.drop_first)
            if playout.action is Action.DECODE:
                return self._decoder.decode(playout.packet)
            if playout.action is Action.FEC:
                return self._decoder.decode_fec(playout.packet, playout.samples)
            if playout.action is Action.CONCEAL:
                return self._decoder.conceal(playout.samples)
        except DecodeError:
            self.decode_errors += 1
            return self._decoder.conceal(playout.samples)
        return bytes(playout.samples * 2)

    def _emit(self, pcm: bytes) -> None:
        samples = len(pcm) // 2
        pcm_samples = array.array("h", pcm[: samples * 2])
        self.buffer.quiet = max(map(abs, pcm_samples[::4]), default=0) < QUIET_PEAK
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = RTP_HZ
        frame.pts = self._played
        frame.time_base = TIME_BASE
        self._played += samples
        if not self.muted:
            self._write(frame)

    # -- numbers and the end ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counts = self.buffer.counts
        now = self._clock()
        return {
            "loss": round(self.buffer.loss(now), 4),
            "concealed": self.buffer.concealed_share(),
            "fec_recovered": counts.fec,
            "retransmitted": counts.retransmitted,
            "late_packets": counts.late,
            "discarded_packets": counts.discarded,
            "jitter_buffer_ms": self.buffer.delay_ms(),
            "packets_expected": self.buffer.expected,
            "packets_lost": counts.lost,
            "nacks_sent": counts.nacks_sent,
            "spurious_nacks": counts.spurious_nacks,
            "played_s": round(counts.played_samples / RTP_HZ, 2),
        }

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
