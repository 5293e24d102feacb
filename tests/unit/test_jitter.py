"""The jitter buffer's decisions on virtual time: what plays, what is asked for again, counts."""

from __future__ import annotations

import random

import pytest

from peerphone.media.jitter import (
    SEQ_MOD,
    Action,
    JitterBuffer,
    JitterConfig,
    Playout,
)

PACKET = 1920  # 40 ms at 48 kHz
STEP = PACKET / 48_000


def payload(seq: int) -> bytes:
    return seq.to_bytes(4, "big")


class Stream:
    """A sender of 40 ms packets and a player pulling on time, on one virtual clock."""

    def __init__(self, buffer: JitterBuffer, first_seq: int = 1000) -> None:
        self.buffer = buffer
        self.seq = first_seq
        self.now = 0.0
        self.played: list[Playout] = []

    def send(self, *, lose: bool = False, delay: float = 0.0) -> int:
        seq = self.seq % SEQ_MOD
        if not lose:
            self.buffer.insert(seq, seq * PACKET, payload(seq), PACKET, self.now + delay)
        self.seq += 1
        return seq

    def tick(self) -> Playout | None:
        out = self.buffer.pull(self.now)
        if out is not None:
            self.played.append(out)
        self.now += STEP
        return out

    def run(self, packets: int, lose: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        for i in range(packets):
            self.send(lose=i in lose)
            self.tick()


def actions(played: list[Playout]) -> list[str]:
    return [p.action.value for p in played]


def test_a_clean_stream_plays_every_packet_in_order_after_the_start_delay() -> None:
    stream = Stream(JitterBuffer(JitterConfig(start_delay_ms=40)))
    stream.run(50)
    assert stream.played[0].packet == payload(1000)
    decoded = [p.packet for p in stream.played]
    assert decoded == [payload(s) for s in range(1000, 1000 + len(decoded))]
    assert set(actions(stream.played)) == {"decode"}
    counts = stream.buffer.counts
    assert counts.lost == counts.late == counts.discarded == counts.concealed == 0
    assert stream.buffer.loss(stream.now) == 0.0
    delay = stream.buffer.delay_ms()
    assert delay is not None and 35 <= delay <= 45


def test_one_lost_packet_is_rebuilt_from_the_next_ones_fec() -> None:
    stream = Stream(JitterBuffer(JitterConfig(retransmit=False)))
    stream.run(30, lose={10})
    fec = [p for p in stream.played if p.action is Action.FEC]
    assert len(fec) == 1 and fec[0].packet == payload(1011)  # decoded from its successor
    assert stream.buffer.counts.fec == 1 and stream.buffer.counts.lost == 1
    assert stream.buffer.loss(stream.now) == pytest.approx(1 / 30)


def test_a_burst_is_concealed_then_fec_and_nothing_waits() -> None:
    stream = Stream(JitterBuffer(JitterConfig(retransmit=False, start_delay_ms=40)))
    stream.run(40, lose={10, 11, 12})
    kinds = actions(stream.played)
    assert "silence" not in kinds
    first = kinds.index("conceal")
    gap = kinds[first : kinds.index("fec") + 1]
    # two ticks find nothing newer (stretch: the delay grows), then the gap is covered:
    # the first two lost packets concealed, the third rebuilt from the packet after it
    assert gap == ["conceal"] * 4 + ["fec"]
    assert stream.buffer.counts.lost == 3
    # every tick after the start produced audio
    assert len(stream.played) >= 38


def test_an_underrun_stretches_with_concealment_then_silence_and_resumes() -> None:
    buffer = JitterBuffer(JitterConfig(max_expand_ms=120, retransmit=False, start_delay_ms=40))
    stream = Stream(buffer)
    stream.run(10)
    for _ in range(8):  # the peer goes quiet (hold, or a long outage)
        stream.tick()
    tail = actions(stream.played[-8:])
    # the packet already here plays, then 120 ms of concealment, then silence
    assert tail[:4] == ["decode"] + ["conceal"] * 3 and set(tail[4:]) == {"silence"}
    stream.run(5)  # it comes back, in sequence: played, nothing counted lost
    assert stream.played[-1].action is Action.DECODE
    assert buffer.counts.lost == 0 and buffer.counts.late == 0


def test_a_packet_after_its_turn_is_late_and_not_played() -> None:
    buffer = JitterBuffer(JitterConfig(retransmit=False, start_delay_ms=40))
    stream = Stream(buffer)
    stream.run(10)
    late = stream.send(lose=True)
    stream.send()
    stream.tick()  # the packet before it
    assert stream.tick() == Playout(Action.FEC, PACKET, payload(late + 1))
    buffer.insert(late, late * PACKET, payload(late), PACKET, stream.now)
    stream.run(3)
    assert buffer.counts.late == 1
    assert payload(late) not in [p.packet for p in stream.played if p.action is Action.DECODE]


def test_duplicates_are_discarded() -> None:
    buffer = JitterBuffer()
    buffer.insert(5, 0, payload(5), PACKET, 0.0)
    buffer.insert(5, 0, payload(5), PACKET, 0.001)
    assert buffer.counts.discarded == 1 and buffer.counts.received == 2


def test_a_gap_is_asked_for_again_and_a_retransmission_in_time_plays() -> None:
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.02
    stream = Stream(buffer)
    stream.run(10)
    lost = stream.send(lose=True)
    stream.send()
    assert buffer.nacks_due(stream.now) == [lost]
    assert buffer.nacks_due(stream.now) == []  # not again before 1.5 RTT + 10 ms
    assert buffer.nacks_due(stream.now + 0.041) == [lost]
    buffer.insert(lost, lost * PACKET, payload(lost), PACKET, stream.now + 0.045)
    stream.now += 0.05
    stream.run(4)
    decoded = [p.packet for p in stream.played if p.action is Action.DECODE]
    assert payload(lost) in decoded
    counts = buffer.counts
    assert counts.retransmitted == 1 and counts.lost == 1 and counts.fec == 0
    assert counts.nacks_sent == 2


def test_nacks_give_up_after_three_tries_and_not_at_a_long_round_trip() -> None:
    buffer = JitterBuffer(JitterConfig(max_nack_rtt_ms=150))
    buffer.rtt_s = 0.01
    buffer.insert(1, 0, payload(1), PACKET, 0.0)
    buffer.insert(3, 0, payload(3), PACKET, 0.0)
    tries = [buffer.nacks_due(t) for t in (0.0, 0.1, 0.2, 0.3, 0.4)]
    assert tries == [[2], [2], [2], [], []]
    far = JitterBuffer()
    far.rtt_s = 0.3  # waiting 1.5 RTT would cost more than it saves
    far.insert(1, 0, payload(1), PACKET, 0.0)
    far.insert(3, 0, payload(3), PACKET, 0.0)
    assert far.nacks_due(0.0) == []
    off = JitterBuffer(JitterConfig(retransmit=False))
    off.rtt_s = 0.01
    off.insert(1, 0, payload(1), PACKET, 0.0)
    off.insert(3, 0, payload(3), PACKET, 0.0)
    assert off.nacks_due(0.0) == []


def test_sequence_numbers_wrap() -> None:
    stream = Stream(JitterBuffer(JitterConfig(retransmit=False)), first_seq=SEQ_MOD - 5)
    stream.run(12, lose={7})
    decoded = [int.from_bytes(p.packet, "big") for p in stream.played if p.action is Action.DECODE]
    assert decoded[:4] == [SEQ_MOD - 5, SEQ_MOD - 4, SEQ_MOD - 3, SEQ_MOD - 2]
    assert 0 in decoded and 1 in decoded
    assert stream.buffer.counts.lost == 1 and stream.buffer.counts.late == 0


def test_too_much_delay_is_shed_one_packet_at_a_time() -> None:
    buffer = JitterBuffer(JitterConfig(start_delay_ms=300, window_s=1.0, retransmit=False))
    stream = Stream(buffer)
    stream.run(250)
    delay = buffer.delay_ms()
    assert delay is not None and delay < 100  # from 300 ms down to about a packet
    assert buffer.counts.discarded >= 4
    drops = [p for p in stream.played if p.drop_first]
    assert len(drops) == buffer.counts.discarded


def test_a_jump_of_the_stream_starts_it_over() -> None:
    buffer = JitterBuffer()
    stream = Stream(buffer)
    stream.run(5)
    stream.seq += 5000
    stream.run(5)
    assert buffer.counts.lost == 0  # not 5000 losses
    assert stream.played[-1].action is Action.DECODE


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("loss", [0.03, 0.10, 0.20])
def test_random_loss_is_counted_as_applied_and_every_tick_plays(seed: int, loss: float) -> None:
    rng = random.Random(seed)
    stream = Stream(JitterBuffer(JitterConfig(retransmit=False)))
    packets = 2000
    lose = {i for i in range(1, packets) if rng.random() < loss}  # the first one starts it
    lose.discard(packets - 1)
    stream.run(packets, lose=lose)
    # every tick plays once the first packet has waited the start delay
    assert len(stream.played) >= packets - 3, f"seed {seed}"
    assert "silence" not in actions(stream.played), f"seed {seed}"
    reported = stream.buffer.loss(stream.now + 2)
    assert reported == pytest.approx(len(lose) / packets, abs=0.002), f"seed {seed}"
    counts = stream.buffer.counts
    assert counts.fec <= counts.lost <= len(lose), f"seed {seed}"  # the last may be pending


def test_jittery_arrivals_grow_the_delay_instead_of_dropping_packets() -> None:
    rng = random.Random(7)
    buffer = JitterBuffer(JitterConfig(start_delay_ms=20, retransmit=False))
    stream = Stream(buffer)
    for _ in range(300):
        stream.send(delay=rng.uniform(0, 0.1))  # up to 100 ms late
        stream.tick()
    counts = buffer.counts
    assert counts.lost == 0
    # the first spikes cost concealment and a few late packets; then the delay covers them
    assert counts.late <= 10
    tail = actions(stream.played[-100:])
    assert tail.count("decode") >= 95


def test_an_overdue_packet_is_asked_for_before_the_next_one_shows_the_gap() -> None:
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.002
    buffer.quiet = False  # in speech
    stream = Stream(buffer)
    stream.run(20)  # regular: transit spread 0, overdue after 20 ms
    lost = stream.send(lose=True)
    due_at = (lost - 1000) * STEP  # when it should have come
    buffer.mark_overdue(due_at + 0.015)
    assert buffer.nacks_due(due_at + 0.015) == []  # not overdue yet
    buffer.mark_overdue(due_at + 0.025)
    assert buffer.nacks_due(due_at + 0.025) == [lost]
    # the retransmission comes before the next packet would have shown the gap
    buffer.insert(lost, lost * PACKET, payload(lost), PACKET, due_at + 0.028)
    assert buffer.counts.retransmitted == 1 and buffer.counts.lost == 1
    stream.run(5)
    assert payload(lost) in [p.packet for p in stream.played if p.action is Action.DECODE]
    assert buffer.counts.concealed == buffer.counts.fec == 0


def test_a_sender_pause_is_not_counted_as_loss() -> None:
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.002
    buffer.quiet = False  # in speech
    stream = Stream(buffer)
    stream.run(20)
    for _ in range(10):  # the peer holds: nothing is sent, the clock runs on
        buffer.mark_overdue(stream.now)
        buffer.nacks_due(stream.now)
        stream.tick()
    assert buffer.counts.nacks_sent > 0  # it did ask (it could not know)
    assert buffer.loss(stream.now + 5) == 0.0  # but a pause is not a loss while it lasts
    # resume: the next sequence numbers, timestamps 400 ms later
    for _ in range(10):
        seq = stream.seq % SEQ_MOD
        buffer.insert(seq, seq * PACKET + 10 * PACKET, payload(seq), PACKET, stream.now)
        stream.seq += 1
        stream.tick()
    assert buffer.counts.lost == 0 and buffer.loss(stream.now + 5) == 0.0
    assert buffer.first_copies_missing == 0
    assert stream.played[-1].action is Action.DECODE


def test_jitter_widens_what_counts_as_overdue() -> None:
    buffer = JitterBuffer()
    calm = buffer.overdue_after_s()
    rng = random.Random(3)
    stream = Stream(buffer)
    for _ in range(50):
        stream.send(delay=rng.uniform(0, 0.03))
        stream.tick()
    assert calm == pytest.approx(0.02)
    assert 0.03 < buffer.overdue_after_s() <= 0.05


def test_a_needless_nack_is_undone_when_the_second_copy_comes() -> None:
    """The clock calls a merely late packet overdue (a busy machine); both copies come."""
    buffer = JitterBuffer(JitterConfig(retransmit=True, keep_retransmission_ms=0))
    buffer.rtt_s = 0.002
    buffer.quiet = False  # in speech
    stream = Stream(buffer)
    stream.run(20)
    late = stream.seq % SEQ_MOD
    stream.seq += 1  # sent, but held up on the way
    due_at = (late - 1000) * STEP
    calm = buffer.overdue_after_s()
    buffer.mark_overdue(due_at + 0.025)
    assert buffer.nacks_due(due_at + 0.025) == [late]
    buffer.insert(late, late * PACKET, payload(late), PACKET, due_at + 0.026)  # the first copy
    assert buffer.counts.lost == 1 and buffer.needed_slack_s(due_at + 0.03) > 0.03  # so it seems
    buffer.insert(late, late * PACKET, payload(late), PACKET, due_at + 0.029)  # the answer
    counts = buffer.counts
    assert (counts.lost, counts.retransmitted, counts.spurious_nacks) == (0, 0, 1)
    assert counts.discarded == counts.late == 0
    assert buffer.needed_slack_s(due_at + 0.03) == pytest.approx(0.02)  # no loss: margin only
    # 10 ms more, besides the late copy's own lateness (counted as jitter, as it was)
    assert buffer.overdue_after_s() >= calm + 0.010 + 0.005
    stream.run(5)
    assert buffer.first_copies_missing == 0 and buffer.loss(stream.now + 5) == 0.0
    decoded = [p.packet for p in stream.played if p.action is Action.DECODE]
    assert decoded.count(payload(late)) == 1


def test_a_real_loss_retried_twice_is_not_taken_for_a_needless_nack() -> None:
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.002
    buffer.quiet = False  # in speech
    stream = Stream(buffer)
    stream.run(20)
    lost = stream.send(lose=True)
    due_at = (lost - 1000) * STEP
    buffer.mark_overdue(due_at + 0.025)
    assert buffer.nacks_due(due_at + 0.025) == [lost]
    assert buffer.nacks_due(due_at + 0.040) == [lost]  # no answer yet: asked again
    buffer.insert(lost, lost * PACKET, payload(lost), PACKET, due_at + 0.041)
    buffer.insert(lost, lost * PACKET, payload(lost), PACKET, due_at + 0.042)  # both answers
    assert (buffer.counts.lost, buffer.counts.spurious_nacks) == (1, 0)
    assert buffer.counts.discarded == 1


def test_a_short_round_trip_keeps_the_retransmission_slack_without_loss() -> None:
    """Loss that comes and goes then never grows or shrinks the delay; a long one does."""
    short = JitterBuffer(JitterConfig(retransmit=True))
    short.rtt_s = 0.002
    assert short.needed_slack_s(0.0) == pytest.approx(0.02 + 0.02 + 0.003 + 0.010)
    long = JitterBuffer(JitterConfig(retransmit=True))
    long.rtt_s = 0.060  # 20 + 90 + 10 ms of retransmission slack: only after a loss
    assert long.needed_slack_s(0.0) == pytest.approx(0.02)
    stream = Stream(long)
    stream.run(20, lose={5})
    assert long.needed_slack_s(stream.now) == pytest.approx(0.02 + 0.02 + 0.09 + 0.010)


def test_in_a_pause_nothing_is_called_overdue_and_stretching_is_not_concealment() -> None:
    """DTX: the sender sends one packet per 400 ms in a pause; that is not loss."""
    buffer = JitterBuffer(JitterConfig(retransmit=True, start_delay_ms=40))
    buffer.rtt_s = 0.002
    stream = Stream(buffer)
    buffer.quiet = False
    stream.run(20)
    buffer.quiet = True  # what was just played is a pause
    for _ in range(10):  # 400 ms with no packet
        buffer.mark_overdue(stream.now)
        assert buffer.nacks_due(stream.now) == []
        stream.tick()
    seq = stream.seq % SEQ_MOD  # the comfort-noise update, 400 ms on
    buffer.insert(seq, seq * PACKET + 10 * PACKET, payload(seq), PACKET, stream.now)
    stream.seq += 1
    for _ in range(3):  # talk again, on the sender's clock (10 frames were not sent)
        seq = stream.seq % SEQ_MOD
        buffer.insert(seq, seq * PACKET + 10 * PACKET, payload(seq), PACKET, stream.now)
        stream.seq += 1
        stream.tick()
    counts = buffer.counts
    assert counts.nacks_sent == 0 and counts.lost == 0 and buffer.loss(stream.now + 5) == 0.0
    assert counts.concealed_samples == 0 and counts.pause_samples > 0
    assert buffer.concealed_share() == 0.0


def test_the_senders_timeline_survives_its_pauses_and_the_delay_with_it() -> None:
    """DTX: two pauses of 440 ms with one comfort-noise packet each; the audio of each
    packet starts at its timestamp's place, and the delay after a pause is what it was."""
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.002
    buffer.quiet = False
    stream = Stream(buffer)
    sent: list[tuple[int, int]] = []  # (timestamp, seq) of what the sender sent
    frame = 0  # the sender's 40 ms frames, sent or not
    for talk, pause in ((20, 11), (20, 11), (20, 0)):
        for i in range(talk + pause):
            if i < talk or i == talk + 5:  # in the pause, one update halfway
                seq = stream.seq % SEQ_MOD
                buffer.insert(seq, frame * PACKET, payload(seq), PACKET, stream.now)
                sent.append((frame * PACKET, seq))
                stream.seq += 1
            # what is played is a pause from about then (the talk spurt's last frames,
            # played 80 ms later, are the encoder's quiet hang-over before DTX)
            buffer.quiet = talk - 3 <= i
            frame += 1
            stream.tick()
    for _ in range(5):
        stream.tick()
    at, starts = 0, {}
    for piece in stream.played:
        if piece.action is Action.DECODE and piece.timestamp is not None:
            starts[piece.timestamp] = at
        at += piece.samples
    first = sent[0][0]
    offsets = {ts: starts[ts] - (ts - first) for ts, _ in sent}
    assert set(offsets.values()) == {0}, offsets  # every packet exactly at its place
    assert buffer.counts.concealed_samples == 0 and buffer.counts.lost == 0
    assert buffer.counts.nacks_sent == 0


# -- the timeline, with time moving by what is played (as the player does) ---------------

Arrival = tuple[float, int, int]  # (when, sequence number, timestamp)


def play_timed(buffer: JitterBuffer, arrivals: list[Arrival], until: float) -> list[Playout]:
    """Pull from `buffer`, the clock moving by each piece's length; packets arrive on time."""
    pending = sorted(arrivals)
    played: list[Playout] = []
    now = 0.0
    while now < until:
        while pending and pending[0][0] <= now:
            _, seq, ts = pending.pop(0)
            buffer.insert(seq, ts, payload(seq), PACKET, now)
        piece = buffer.pull(now)
        if piece is None:
            now += 0.005
            continue
        played.append(piece)
        now += piece.samples / 48_000
    return played


def offsets(played: list[Playout]) -> dict[int, int]:
    """Each decoded packet's place in the output less its timestamp (samples)."""
    at, out = 0, {}
    for piece in played:
        if piece.action is Action.DECODE and piece.timestamp is not None:
            out[piece.timestamp] = at + piece.dropped_samples - piece.timestamp
        at += piece.samples
    return out


def talk_spurts(spurts: list[tuple[int, int]], lose: frozenset[int] = frozenset()) -> list[Arrival]:
    """(packets, pause in frames) each: DTX sends nothing in a pause; consecutive seqs."""
    arrivals, seq, frame = [], 0, 0
    for talk, pause in spurts:
        for _ in range(talk):
            if seq not in lose:
                arrivals.append((frame * STEP, seq, frame * PACKET))
            seq, frame = seq + 1, frame + 1
        frame += pause
    return arrivals


def test_a_deep_buffer_keeps_its_delay_across_pauses() -> None:
    """Slack beyond 200 ms (a long round trip, a jittery path) is restored after a pause
    too, not dropped all at once."""
    buffer = JitterBuffer(JitterConfig(retransmit=False, start_delay_ms=240))
    played = play_timed(buffer, talk_spurts([(10, 15), (10, 30), (10, 0)]), until=4.0)
    assert set(offsets(played).values()) == {offsets(played)[0]}  # one delay throughout
    assert buffer.counts.concealed_samples == 0


def test_a_lost_first_packet_after_a_pause_waits_for_its_retransmission() -> None:
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.002
    buffer.quiet = False
    onset = 10  # the first packet after the pause: lost on the way
    arrivals = talk_spurts([(10, 15), (10, 0)], lose=frozenset({onset}))
    resent_at = next(t for t, seq, _ in arrivals if seq == onset + 1) + 0.015
    arrivals.append((resent_at, onset, (onset + 15) * PACKET))  # asked for, and here
    played = play_timed(buffer, arrivals, until=2.0)
    decoded = [p.timestamp for p in played if p.action is Action.DECODE]
    assert (onset + 15) * PACKET in decoded  # played in its turn, not late
    assert buffer.counts.late == 0 and buffer.counts.fec == 0
    assert len(set(offsets(played).values())) == 1  # and the pause kept its length


def test_shedding_depth_never_drops_a_pause_with_a_packet() -> None:
    """The buffer sheds one packet in a pause of speech, never a sender's pause with it."""
    buffer = JitterBuffer(JitterConfig(retransmit=False, start_delay_ms=300, window_s=1.0))
    spurts = [(1, 2)] * 40 + [(40, 0)]  # first a pause after every packet, then talk
    played = play_timed(buffer, talk_spurts(spurts), until=9.0)
    dropped = sum(p.dropped_samples for p in played)
    assert dropped > 0  # it did shed depth
    values = sorted(set(offsets(played).values()))
    first = offsets(played)[0]
    # each shed moves the timeline by one packet's samples, never by a pause as well
    assert all((first - v) % PACKET == 0 for v in values)
    assert first - values[0] == dropped


def test_comfort_noise_that_sounds_loud_is_still_not_taken_for_late_packets() -> None:
    """DTX in a noisy room: the comfort noise played is not `quiet`, but a packet that
    came after a jump of its timestamps tells the sender paused: nothing after it is
    called overdue (before the first update the receiver cannot know, and may ask)."""
    buffer = JitterBuffer(JitterConfig(retransmit=True))
    buffer.rtt_s = 0.002
    stream = Stream(buffer)
    buffer.quiet = False
    stream.run(20)
    frame = stream.seq
    asked_after_an_update = []
    for update in range(3):  # comfort-noise updates every 400 ms, on time
        for _ in range(9):
            buffer.mark_overdue(stream.now)
            due = buffer.nacks_due(stream.now)
            if update:
                asked_after_an_update += due
            stream.tick()
        frame += 10
        seq = stream.seq % SEQ_MOD
        buffer.insert(seq, frame * PACKET, payload(seq), PACKET, stream.now)
        stream.seq += 1
        stream.tick()
    assert asked_after_an_update == []
    assert buffer.counts.lost == 0
