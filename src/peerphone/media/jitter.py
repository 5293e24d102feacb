"""An adaptive jitter buffer for one incoming Opus stream: what to play at each tick (no I/O).

The player asks `JitterBuffer.pull` for the next piece of audio whenever the previous one
has been played; the answer is never "wait" once playout has begun, so the output never
stalls on a gap (aiortc's buffer holds everything back until 16 packets queue):

* the next packet is here: decode it;
* it is missing but the one after it is here: decode the missing one from that packet's
  in-band FEC (libopus conceals if the packet carries none);
* nothing newer has arrived (a jitter spike, a burst, a peer that stopped sending):
  conceal without moving on, which also stretches the delay so the late packet plays
  when it comes; after `max_expand_ms` of that, play silence (the peer is on hold or gone);
* a gap with newer packets behind it: conceal it and move on.

Depth, in the spirit of WebRTC's NetEQ: each played packet's *slack* (play time minus
arrival time) is remembered for `window_s` (10 s: a delay spike keeps its depth that
long). When even the least slack in the window exceeds what is needed by more than a
packet, one packet is dropped (decoded but not played, so the decoder's state stays
right); when a late packet or a retransmission needs more, the buffer grows by
concealing. Both wait for a pause in the speech (`quiet`, set by the player) where they
cannot be heard; growing waits at most `grow_wait_s`.

What is needed: `margin_ms`, plus, while the link loses packets and retransmission is on
and the round trip is short enough, the time a retransmission takes (a loss shows when
the next packet comes, one packet later, then 1.5 RTT + 10 ms): then a lost packet is
asked for again (RTCP NACK, `nacks_due`) and usually arrives before its turn.

Counting (all per call): `received`, `late` (arrived after its turn), `discarded`
(duplicates, and packets dropped to shrink the delay), `lost` (the link lost the first
copy: never came, or came only after we asked again), `retransmitted` (came after a NACK,
in time), and what was played: decoded, FEC, concealed, silence.

A NACK can be needless: the clock called a packet overdue that was only late (a busy
machine's scheduler, a jitter spike beyond the last 100 packets'), and both the first copy
and the retransmission arrive. The second copy shows it (`spurious_nacks`): the packet is
not counted lost, the loss it suggested no longer deepens the buffer, and "overdue" waits
10 ms longer for the rest of the call (at most 40 ms).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

RTP_HZ = 48_000
SEQ_MOD = 1 << 16
MAX_GAP_TRACKED = 100  # a jump beyond this is a new stream, not a burst of losses
MAX_NACK_TRIES = 3
MAX_NACKS_PER_CALL = 64  # sequence numbers per NACK batch
MAX_BUFFERED = 250  # packets (10 s of 40 ms audio): a flood beyond this is dropped
MAX_OVERDUE = 5  # packets the clock may call missing ahead of the newest (then: a pause)
OVERDUE_BASE_S = 0.020  # a packet is overdue this long after its time, plus recent jitter
TRANSIT_WINDOW = 100  # packets whose transit time tells the jitter
SPURIOUS_STEP_S = 0.010  # each NACK that proves needless widens "overdue" by this ...
SPURIOUS_MAX_S = 0.040  # ... up to this much
SUSPECT_MEMORY_S = 2.0  # how long a NACKed packet's arrival is remembered (its copy may come)
UNKNOWN_RTT_RETRY_S = 0.1  # before RTCP has measured the round trip
TS_MOD = 1 << 32
KEEP_HYSTERESIS_S = 0.020  # the retransmission slack, once kept, goes only this far beyond


class Action(enum.Enum):
    DECODE = "decode"
    FEC = "fec"
    CONCEAL = "conceal"
    SILENCE = "silence"


@dataclass(frozen=True, slots=True)
class Playout:
    """One piece of audio to produce: `samples` at 48 kHz by `action` from `packet`.

    `drop_first` is a packet to decode and throw away before (the buffer shrinking), of
    `dropped_samples`. `timestamp` is the RTP timestamp of a decoded packet. `covers` says
    whether the piece stands for a packet of the sender's (FEC or concealment of a lost
    one) or is extra (stretching, silence while nothing comes).
    """

    action: Action
    samples: int
    packet: bytes = b""
    drop_first: bytes = b""
    timestamp: int | None = None
    dropped_samples: int = 0
    covers: bool = True


@dataclass(frozen=True, slots=True)
class JitterConfig:
    margin_ms: float = 20.0  # slack kept beyond what late packets needed
    start_delay_ms: float = 80.0  # wait this long after the first packet before playing
    max_delay_ms: float = 400.0  # never more slack than this (drop packets instead)
    max_expand_ms: float = 300.0  # conceal at most this long with nothing to play
    window_s: float = 10.0  # slack history: a delay spike keeps its depth this long
    retransmit: bool = True  # ask for lost packets again (RTCP NACK)
    max_nack_rtt_ms: float = 150.0  # beyond this, waiting for a retransmission costs too much
    loss_memory_s: float = 10.0  # keep the retransmission slack this long after a loss
    # ... and always while it is this small (a short round trip): then loss that comes and
    # goes does not grow and shrink the delay, which a listener hears (and PESQ scores)
    keep_retransmission_ms: float = 60.0
    grow_wait_s: float = 2.0  # grow in speech after all if no pause comes this soon


@dataclass(slots=True)
class JitterCounts:
    received: int = 0
    late: int = 0
    discarded: int = 0
    lost: int = 0
    retransmitted: int = 0
    reordered: int = 0
    nacks_sent: int = 0
    spurious_nacks: int = 0  # the first copy came after all (a second copy showed it)
    decoded: int = 0
    fec: int = 0
    concealed: int = 0  # pieces of audio
    concealed_samples: int = 0  # standing for audio that was lost or late
    pause_samples: int = 0  # stretching a pause: the sender paused too (DTX, hold)
    played_samples: int = 0  # decoded + FEC + concealed (not silence)
    silence_samples: int = 0


@dataclass(slots=True)
class _Packet:
    timestamp: int
    payload: bytes
    samples: int
    arrival: float
    retransmitted: bool = False  # its lateness is the NACK's round trip, not jitter


@dataclass(slots=True)
class _Suspect:
    """A packet that came after one NACK: the retransmission, or the first copy, late."""

    arrival: float
    loss_at_before: float  # `_last_loss_at` before this arrival counted as a loss


@dataclass(slots=True)
class _Missing:
    detected_at: float
    nacks: int = 0
    last_nack: float = float("-inf")
    expected_ts: int | None = None  # set when the clock, not a newer packet, found it due


@dataclass(slots=True)
class JitterBuffer:
    config: JitterConfig = field(default_factory=JitterConfig)
    counts: JitterCounts = field(default_factory=JitterCounts)
    rtt_s: float | None = None
    quiet: bool = True  # the player says whether what it just played was a pause
    _packets: dict[int, _Packet] = field(default_factory=dict)  # by extended seq
    _missing: dict[int, _Missing] = field(default_factory=dict)
    _first_seq: int | None = None
    _highest: int | None = None  # extended sequence number
    _first_arrival: float | None = None
    _next: int | None = None  # next extended seq to play; None before playout starts
    _last_samples: int = 960
    _expanded_ms: float = 0.0
    _slack: deque[tuple[float, float]] = field(default_factory=deque)  # (when, slack s)
    _last_loss_at: float = float("-inf")
    _ts_highest: int | None = None  # the newest packet's RTP timestamp, unwrapped
    _transit: deque[float] = field(default_factory=deque)  # arrival - send time, recent
    _suspects: dict[int, _Suspect] = field(default_factory=dict)  # by extended seq
    _after_pause: bool = False  # the newest packet came after a pause of the sender's
    _newest_samples: int = 960
    _keeping: bool = False  # the retransmission slack is kept without loss (short path)
    _expect_ts: int | None = None  # RTP timestamp the next packet should carry
    _extra: int = 0  # samples played since the last decode that stood for none of the sender's
    _overdue_extra_s: float = 0.0  # grown by needless NACKs

    # -- arrivals -------------------------------------------------------------------------

    def insert(self, seq: int, timestamp: int, payload: bytes, samples: int, now: float) -> None:
        """A packet arrived: `samples` it holds (from its TOC), its RTP `timestamp`."""
        ext = self._extend(seq)
        self.counts.received += 1
        if self._second_copy(ext, now):
            return
        if self._highest is None or self._first_seq is None:
            self._first_seq = self._highest = ext
            self._first_arrival = now
            self._ts_highest = None
        elif ext - self._highest > MAX_GAP_TRACKED:
            self._resync(ext, now)
        elif ext > self._highest:
            if ext > self._highest + 1:
                self._last_loss_at = now
            for gap in range(self._highest + 1, ext):
                self._missing.setdefault(gap, _Missing(now))
        if self._highest is not None and ext >= self._highest:
            self._note_newest(ext, timestamp, samples, now)
        missing = self._missing.pop(ext, None)
        if missing is not None and self._paused_before(missing, timestamp):
            missing = None  # the clock called it due, but the sender had paused (hold)
        retransmitted = missing is not None and missing.nacks > 0
        if missing is not None:
            if missing.nacks:
                if missing.nacks == 1:  # a second copy would prove the NACK needless
                    self._suspects[ext] = _Suspect(now, self._last_loss_at)
                self._last_loss_at = now
                self.counts.retransmitted += 1
                self.counts.lost += 1  # the first copy was lost on the way
            else:
                self.counts.reordered += 1
        if (self._next is not None and ext < self._next) or ext < self._first_seq:
            self.counts.late += 1
            return
        if ext in self._packets or len(self._packets) >= MAX_BUFFERED:
            self.counts.discarded += 1
            return
        self._packets[ext] = _Packet(timestamp, payload, samples, now, retransmitted)

    def _second_copy(self, ext: int, now: float) -> bool:
        """Whether this is the second copy of a packet NACKed once: then the first was only
        late, so undo what its arrival counted (see the module doc)."""
        while self._suspects:  # oldest first (insertion order): expire from the head
            oldest = next(iter(self._suspects))
            if now - self._suspects[oldest].arrival <= SUSPECT_MEMORY_S:
                break
            del self._suspects[oldest]
        suspect = self._suspects.pop(ext, None)
        if suspect is None:
            return False
        self.counts.spurious_nacks += 1
        self.counts.lost -= 1
        self.counts.retransmitted -= 1
        if self._last_loss_at == suspect.arrival:  # no real loss since
            self._last_loss_at = suspect.loss_at_before
        self._overdue_extra_s = min(SPURIOUS_MAX_S, self._overdue_extra_s + SPURIOUS_STEP_S)
        packet = self._packets.get(ext)
        if packet is not None:  # still waiting for its turn: its slack counts after all
            packet.retransmitted = False
        return True

    def _note_newest(self, ext: int, timestamp: int, samples: int, now: float) -> None:
        if self._ts_highest is None:
            self._ts_highest = timestamp
        else:
            delta = (timestamp - self._ts_highest) % (1 << 32)
            delta = delta - (1 << 32) if delta >= 1 << 31 else delta
            # the next sequence number, later than one packet on: the sender paused (DTX)
            after_previous = self._highest is not None and ext == self._highest + 1
            self._after_pause = after_previous and delta > self._newest_samples
            self._ts_highest += delta
        self._highest = ext
        self._newest_samples = samples
        self._transit.append(now - self._ts_highest / RTP_HZ)
        if len(self._transit) > TRANSIT_WINDOW:
            self._transit.popleft()

    def _paused_before(self, missing: _Missing, timestamp: int) -> bool:
        if missing.expected_ts is None or self._ts_highest is None:
            return False
        late_by = (timestamp - missing.expected_ts) % (1 << 32)
        return 2 * self._last_samples < late_by < 1 << 31

    def overdue_after_s(self) -> float:
        """How late a packet may be before the clock calls it missing: 20 ms (more after
        needless NACKs) beyond the latest any of the last 100 packets came."""
        base = OVERDUE_BASE_S + self._overdue_extra_s
        if len(self._transit) < 2:
            return base
        return base + max(self._transit) - min(self._transit)

    def mark_overdue(self, now: float) -> None:
        """Call packets missing whose time has passed, before a newer one shows the gap:
        a retransmission can then be asked for a packet earlier (40 ms, at 40 ms packets)."""
        if not self.config.retransmit or self._highest is None or self._ts_highest is None:
            return
        if self.quiet or self._after_pause:  # the sender may be silent (DTX): a gap will
            return  # show a loss; noise that DTX sends as comfort noise can sound loud
        if not self._transit:
            return
        on_time = self._ts_highest / RTP_HZ + min(self._transit)  # the newest's, at best
        step = self._last_samples / RTP_HZ
        late = self.overdue_after_s()
        for k in range(1, MAX_OVERDUE + 1):
            seq = self._highest + k
            if now <= on_time + k * step + late:
                break
            if seq not in self._missing and seq not in self._packets:
                expected = (self._ts_highest + k * self._last_samples) % (1 << 32)
                self._missing[seq] = _Missing(now, expected_ts=expected)

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            return seq % SEQ_MOD
        base = self._highest - (self._highest % SEQ_MOD)
        candidates = (base - SEQ_MOD + seq, base + seq, base + SEQ_MOD + seq)
        return min(candidates, key=lambda c: abs(c - self._highest))  # type: ignore[operator]

    def _resync(self, ext: int, now: float) -> None:
        """The stream jumped (a new sender, or hours of silence): start over from `ext`."""
        self._packets.clear()
        self._expire_missing(self._highest + 1 if self._highest is not None else ext)
        self._missing.clear()
        self._highest = self._first_seq = ext
        self._first_arrival = now
        self._next = None
        self._ts_highest = None
        self._transit.clear()
        self._suspects.clear()
        self._expect_ts, self._extra = None, 0
        self._after_pause = False

    # -- playout --------------------------------------------------------------------------

    def pull(self, now: float) -> Playout | None:
        """What to play now; None only before playout has begun (keep asking).

        The sender's timeline is kept across its pauses (DTX, hold): when the next packet's
        timestamp shows it paused longer than what was played meanwhile, the difference is
        played as silence first, so the delay after the pause is what it was before (and
        the packet's slack is measured when it really plays)."""
        if self._next is not None and (left := self._pause_left_before_next()) > 0:
            self._extra += left
            self.counts.silence_samples += left
            return Playout(Action.SILENCE, left, covers=False)
        out = self._pull(now)
        if out is not None:
            self._follow(out)
        return out

    def _pause_left_before_next(self) -> int:
        """The sender's pause not yet played before the next packet; when that one is lost
        (the first of a talk spurt), its timestamp is the first one behind it less theirs
        between, so the silence comes first and the retransmission has its time."""
        assert self._next is not None
        waiting = self._packets.get(self._next)
        if waiting is not None:
            return self._pause_left(waiting.timestamp)
        if not self._packets:
            return 0
        seq = min(self._packets)
        behind = self._packets[seq]
        expected = behind.timestamp - (seq - self._next) * self._last_samples
        return self._pause_left(expected % TS_MOD)

    def _pause_left(self, timestamp: int) -> int:
        if self._expect_ts is None:
            return 0
        pause = (timestamp - self._expect_ts) % TS_MOD
        missing = pause - self._extra if pause < TS_MOD // 2 else 0
        # the delay to restore is at most the slack, which never exceeds max_delay_ms
        cap = round(self.config.max_delay_ms * RTP_HZ / 1000)
        return max(0, min(missing, cap))

    def _follow(self, out: Playout) -> None:
        """Where the sender's timeline is after `out`."""
        if out.action is Action.DECODE and out.timestamp is not None:
            self._expect_ts = (out.timestamp + out.samples) % TS_MOD
            self._extra = 0
        elif out.covers:
            if self._expect_ts is not None:
                self._expect_ts = (self._expect_ts + out.samples) % TS_MOD
        else:
            self._extra += out.samples

    def _pull(self, now: float) -> Playout | None:
        if self._next is None:
            if not self._packets or self._first_arrival is None:
                return None
            if now < self._first_arrival + self.config.start_delay_ms / 1000:
                return None
            self._next = min(self._packets)
        self._expire_missing(self._next)
        packet = self._packets.pop(self._next, None)
        if packet is not None:
            return self._play(packet, now)
        if self._packets:  # a gap with newer packets behind it
            self._expanded_ms = 0.0
            return self._cover_gap()
        return self._underrun()

    def _play(self, packet: _Packet, now: float) -> Playout:
        assert self._next is not None
        self._next += 1
        self._last_samples = packet.samples
        self._expanded_ms = 0.0
        self.counts.decoded += 1
        self.counts.played_samples += packet.samples
        if not packet.retransmitted:
            self._remember_slack(now, now - packet.arrival)
        drop, dropped = b"", 0
        if self.quiet and self._should_shrink(packet.samples):  # shed depth in a pause
            following = self._packets.get(self._next)
            after = (packet.timestamp + packet.samples) % TS_MOD
            if following is not None and following.timestamp == after:  # no pause between
                del self._packets[self._next]
                self._next += 1
                self.counts.discarded += 1
                drop, dropped, packet = packet.payload, packet.samples, following
                self._slack.clear()
        return Playout(
            Action.DECODE, packet.samples, packet.payload, drop, packet.timestamp, dropped
        )

    def _cover_gap(self) -> Playout:
        assert self._next is not None
        self._next += 1  # past the lost one
        self._expire_missing(self._next)
        following = self._packets.get(self._next)
        samples = self._last_samples
        self.counts.played_samples += samples
        if following is not None:
            self.counts.fec += 1
            return Playout(Action.FEC, samples, following.payload)
        self.counts.concealed += 1
        self.counts.concealed_samples += samples
        return Playout(Action.CONCEAL, samples)

    def _underrun(self) -> Playout:
        samples = self._last_samples
        if self._expanded_ms >= self.config.max_expand_ms:
            self.counts.silence_samples += samples
            return Playout(Action.SILENCE, samples, covers=False)
        self._expanded_ms += samples * 1000 / RTP_HZ
        self._slack.clear()  # the delay just grew: judge it afresh
        self.counts.played_samples += samples
        if self.quiet:  # in a pause nothing is missed: the sender paused too (DTX), most likely
            self.counts.pause_samples += samples
        else:
            self.counts.concealed += 1
            self.counts.concealed_samples += samples
        return Playout(Action.CONCEAL, samples, covers=False)

    def _expire_missing(self, before: int) -> None:
        """Gaps the playout has passed for good: the packet was lost on the way."""
        for seq in [s for s in self._missing if s < before]:
            del self._missing[seq]
            self.counts.lost += 1

    # -- depth ----------------------------------------------------------------------------

    def needed_slack_s(self, now: float) -> float:
        """The slack the buffer aims for: margin, plus retransmission time while lossy."""
        needed = self.config.margin_ms / 1000
        if self._retransmission_pays(now):
            assert self.rtt_s is not None
            # a loss shows when the packet is overdue, then the NACK's round trip
            needed += self.overdue_after_s() + 1.5 * self.rtt_s + 0.010
        return needed

    def _retransmission_pays(self, now: float) -> bool:
        if (
            not self.config.retransmit
            or self.rtt_s is None
            or self.rtt_s * 1000 > self.config.max_nack_rtt_ms
        ):
            return False
        if now - self._last_loss_at <= self.config.loss_memory_s:
            return True
        cost_s = self.overdue_after_s() + 1.5 * self.rtt_s + 0.010
        keep_s = self.config.keep_retransmission_ms / 1000
        if cost_s <= keep_s:
            self._keeping = True
        elif cost_s > keep_s + KEEP_HYSTERESIS_S:  # jitter or RTT moving near the line
            self._keeping = False
        return self._keeping

    def _remember_slack(self, now: float, slack: float) -> None:
        self._slack.append((now, slack))
        while self._slack and self._slack[0][0] < now - self.config.window_s:
            self._slack.popleft()

    def _should_shrink(self, samples: int) -> bool:
        if not self._slack or self._slack[-1][0] - self._slack[0][0] < self.config.window_s * 0.9:
            return False
        least = min(s for _, s in self._slack)
        packet_s = samples / RTP_HZ
        now = self._slack[-1][0]
        too_much = least - self.needed_slack_s(now) > packet_s
        return too_much or least > self.config.max_delay_ms / 1000

    def should_grow(self, now: float) -> bool:
        """Whether the slack is short of what retransmissions need (the player expands)."""
        if not self._slack or not self._retransmission_pays(now):
            return False
        least = min(s for _, s in self._slack)
        return least < self.needed_slack_s(now) - 0.005

    def grow(self) -> Playout:
        """Conceal one piece without moving on: the delay grows by it."""
        self._slack.clear()
        samples = self._last_samples
        self.counts.played_samples += samples
        if self.quiet:
            self.counts.pause_samples += samples
        else:
            self.counts.concealed += 1
            self.counts.concealed_samples += samples
        # not counted in `_extra` (a stand-in for the sender's pause): the realign after a
        # pause must not take the growth back
        return Playout(Action.CONCEAL, samples, covers=False)

    # -- retransmission -------------------------------------------------------------------

    def nacks_due(self, now: float) -> list[int]:
        """Sequence numbers (16-bit) to ask for again now; empty when it would not pay."""
        if not self.config.retransmit:
            return []
        if self.rtt_s is not None and self.rtt_s * 1000 > self.config.max_nack_rtt_ms:
            return []
        wait = UNKNOWN_RTT_RETRY_S if self.rtt_s is None else 1.5 * self.rtt_s + 0.010
        due: list[int] = []
        for ext, missing in self._missing.items():
            if self._next is not None and ext < self._next:
                continue
            if missing.nacks >= MAX_NACK_TRIES or now - missing.last_nack < wait:
                continue
            missing.nacks += 1
            missing.last_nack = now
            due.append(ext % SEQ_MOD)
            if len(due) >= MAX_NACKS_PER_CALL:
                break
        self.counts.nacks_sent += len(due)
        return due

    # -- what a user sees -----------------------------------------------------------------

    @property
    def first_copies_missing(self) -> int:
        """Packets whose first copy never came (lost, or still missing): what the link lost."""
        highest = self._highest if self._highest is not None else -1
        return self.counts.lost + sum(1 for seq in self._missing if seq <= highest)

    @property
    def expected(self) -> int:
        if self._first_seq is None or self._highest is None:
            return 0
        return self._highest - self._first_seq + 1

    def loss(self, now: float) -> float:
        """Share of the peer's packets whose first copy never reached us (whole call)."""
        expected = self.expected
        if not expected:
            return 0.0
        highest = self._highest if self._highest is not None else -1
        pending = sum(
            1 for seq, m in self._missing.items() if seq <= highest and now - m.detected_at > 1.0
        )
        return min(1.0, (self.counts.lost + pending) / expected)

    def delay_ms(self) -> float | None:
        """The slack of the packets played lately: the delay the buffer adds, on average."""
        if not self._slack:
            return None
        return round(sum(s for _, s in self._slack) / len(self._slack) * 1000, 1)

    def concealed_share(self) -> float:
        played = self.counts.played_samples
        return round(self.counts.concealed_samples / played, 4) if played else 0.0
