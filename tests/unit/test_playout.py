"""The player's door to the network: what a peer's bad packets cost (libopus, no sockets)."""

from __future__ import annotations

import asyncio

from av.audio.frame import AudioFrame

from peerphone.media.libopus import OpusEncoder
from peerphone.media.playout import Player

PACKET = 1920  # 40 ms at 48 kHz


def test_garbage_from_the_peer_is_counted_and_dropped_and_good_packets_still_play() -> None:
    heard: list[AudioFrame] = []

    async def scenario() -> Player:
        player = Player(heard.append)
        for seq, junk in enumerate([b"", b"\xff\xff\xff", bytes(5000), b"\x03"]):
            assert player.on_rtp(seq, seq * PACKET, junk, 1) is None
        encoder = OpusEncoder(28_000, 5, fec=True)
        silence = bytes(PACKET * 2)
        for seq in range(10, 20):
            player.on_rtp(seq, seq * PACKET, encoder.encode(silence, PACKET), 1)
        player.on_rtp(20, 20 * PACKET, encoder.encode(silence, PACKET), 2)  # another SSRC
        await asyncio.sleep(0.3)
        await player.close()
        return player

    player = asyncio.run(scenario())
    assert player.decode_errors == 4
    assert player.buffer.counts.received == 10  # the other stream is not ours to play
    assert heard and all(f.sample_rate == 48_000 and f.samples == PACKET for f in heard)
