"""STUN and ChannelData framed on a TCP stream (RFC 8656 section 12.5), sans-I/O.

On a stream a STUN message is delimited by its length field (20 + length bytes), a
ChannelData frame by its own (4 + length, padded to a multiple of 4). Anything else
at a frame boundary is garbage: the connection is closed (`DecodeError`).
"""

from __future__ import annotations

from peerphone.errors import DecodeError
from peerphone.nat.stun import COOKIE_BYTES, HEADER_BYTES, MAX_MESSAGE_BYTES

CHANNEL_HEADER_BYTES = 4


class StreamFramer:
    """Splits a byte stream into whole STUN messages and ChannelData frames."""

    def __init__(self, max_frame_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes  # a bigger frame closes the connection
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by `data` (each a STUN message or padded ChannelData)."""
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= CHANNEL_HEADER_BYTES:
            first = buffer[pos]
            length = (buffer[pos + 2] << 8) | buffer[pos + 3]
            if 0x40 <= first < 0x80:  # ChannelData (see limits.CHANNEL_MAX)
                size = CHANNEL_HEADER_BYTES + length + (-length % 4)
            elif first < 0x40:
                if end - pos >= 8 and buffer[pos + 4 : pos + 8] != COOKIE_BYTES:
                    raise DecodeError("no STUN magic cookie at a frame boundary")
                if length % 4:
                    raise DecodeError("STUN length not a multiple of 4")
                size = HEADER_BYTES + length
            else:
                raise DecodeError(f"neither STUN nor ChannelData at a frame boundary: {first:#x}")
            if size > self.max_frame_bytes:
                raise DecodeError(f"frame of {size} bytes above {self.max_frame_bytes}")
            if end - pos < size:
                break
            frames.append(bytes(buffer[pos : pos + size]))
            pos += size
        del buffer[:pos]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (at most one frame)."""
        return len(self._buffer)
