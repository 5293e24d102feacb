"""A one-call media peer driven by JSON lines: for tests, benchmarks and trying calls by hand.

    python -m tests.support.media_probe --signal 7 --record heard.wav

It prints ``{"ready": true, "pid": …}``, then answers each request line on stdin with one
line on stdout (``{"ok": true, …}`` or ``{"ok": false, "error": …}``):

    {"op": "offer"}                      -> {"sdp": …}
    {"op": "accept", "sdp": OFFER}       -> {"sdp": ANSWER}
    {"op": "answer", "sdp": ANSWER}      -> {}
    {"op": "wait", "timeout_s": 10}      -> {"state": "connected"}
    {"op": "stats"}                      -> {"stats": {…}}   (MediaSession.stats)
    {"op": "hold"} / {"op": "resume"}    -> {}
    {"op": "cpu"}                        -> {"cpu_s": …, "wall_s": …}  (this process)
    {"op": "restart"}                    -> {}  (hang up; a new session, same options)
    {"op": "close"}                      -> {"stats": {…}} (final) and the process exits

`ProbeClient` drives one from another process.

Two probes in two network namespaces make a real call over real UDP (tests/loopback/test_media.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiortc import MediaStreamTrack

from peerphone.errors import LocalProtocolError, PeerphoneError
from peerphone.media.call import CallConfig, IceServer, MediaSession
from peerphone.media.opus import OpusSettings
from peerphone.media.sinks import AudioSink, DiscardSink, WavRecorder
from peerphone.media.sources import (
    ReferenceSignalSource,
    SilenceSource,
    ToneSource,
    WavSource,
)

MAX_REQUEST_BYTES = 64 * 1024  # one JSON line: an SDP (16 KiB at most) and some keys
START_TIMEOUT_S = 15.0  # a fresh process imports aiortc and PyAV
REPLY_TIMEOUT_S = 15.0  # the slowest request is "wait" (ICE and DTLS), bounded by its own timeout


class ProbeError(PeerphoneError):
    """The probe process answered with an error, not at all, or exited."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.media_probe", description=__doc__
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--play", metavar="FILE", help="send this sound file (then silence)")
    what.add_argument("--tone", metavar="HZ", type=int, help="send a sine tone")
    what.add_argument("--signal", metavar="SEED", type=int, help="send the reference signal")
    parser.add_argument("--signal-seconds", type=float, default=10.0)
    parser.add_argument("--record", metavar="FILE", help="write what is heard to a WAV file")
    parser.add_argument("--call-id", default="probe")
    parser.add_argument("--bitrate", type=int, default=OpusSettings().bitrate_bps)
    parser.add_argument("--frame-ms", type=int, default=OpusSettings().frame_ms)
    parser.add_argument(
        "--aiortc-encoder",
        action="store_true",
        help="let aiortc encode (96 kbit/s stereo): the benchmark's baseline",
    )
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL[,USER,CREDENTIAL]",
        help="a STUN or TURN server (repeatable)",
    )
    parser.add_argument("--force-relay", action="store_true")
    return parser.parse_args(argv)


def _source(args: argparse.Namespace) -> MediaStreamTrack:
    if args.play:
        return WavSource(args.play)
    if args.tone is not None:
        return ToneSource(args.tone)
    if args.signal is not None:
        return ReferenceSignalSource(args.signal, args.signal_seconds)
    return SilenceSource()


def _ice_server(spec: str) -> IceServer:
    url, _, rest = spec.partition(",")
    if not rest:
        return IceServer(url)
    username, _, credential = rest.partition(",")
    return IceServer(url, username, credential)


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _handle(session: MediaSession, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "offer":
        return {"sdp": await session.create_offer()}
    if op == "accept":
        return {"sdp": await session.accept_offer(str(request["sdp"]))}
    if op == "answer":
        await session.apply_answer(str(request["sdp"]))
        return {}
    if op == "wait":
        await session.wait_connected(float(request.get("timeout_s", 10.0)))
        return {"state": session.state.value}
    if op == "stats":
        return {"stats": await session.stats()}
    if op == "hold":
        session.hold()
        return {}
    if op == "resume":
        session.resume()
        return {}
    if op == "cpu":
        return {"cpu_s": time.process_time(), "wall_s": time.monotonic()}
    raise ValueError(f"unknown op {op!r}")


def _new_session(args: argparse.Namespace, record: str | None) -> MediaSession:
    sink: AudioSink = WavRecorder(record) if record else DiscardSink()
    config = CallConfig(
        ice_servers=tuple(_ice_server(s) for s in args.ice_server),
        force_relay=args.force_relay,
        opus=OpusSettings(bitrate_bps=args.bitrate, frame_ms=args.frame_ms),
        aiortc_encoder=args.aiortc_encoder,
    )
    return MediaSession(args.call_id, _source(args), sink, config)


async def serve(args: argparse.Namespace) -> None:
    session = _new_session(args, args.record)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_REQUEST_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"ready": True, "pid": os.getpid()})
    try:
        while line := await reader.readline():
            try:
                request = json.loads(line)
                if request.get("op") == "close":
                    break
                if request.get("op") == "restart":
                    await session.close()
                    session = _new_session(args, None)  # only the first call is recorded
                    _reply({"ok": True})
                    continue
                _reply({"ok": True} | await _handle(session, request))
            except (PeerphoneError, ValueError, KeyError, TypeError) as exc:
                _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        await session.close()
    _reply({"ok": True, "stats": await session.stats()})


class ProbeClient:
    """Drives a probe process started with stdin and stdout pipes (tests, benchmarks)."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path | None = None) -> None:
        if proc.stdin is None or proc.stdout is None:
            raise LocalProtocolError("start the probe with stdin=PIPE and stdout=PIPE")
        self.proc = proc
        self.log_path = log_path
        self.pid: int | None = None
        self._stdin = proc.stdin
        self._stdout_fd = proc.stdout.fileno()

    def ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        hello = json.loads(self._read_line(timeout_s))
        if not hello.get("ready"):
            raise ProbeError(f"probe did not start: {hello}{self._log()}")
        self.pid = int(hello["pid"])

    def ask(
        self, op: str, *, reply_timeout_s: float = REPLY_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """Send one request (`fields` are its keys); return the reply, ok or not."""
        self._stdin.write((json.dumps({"op": op} | fields) + "\n").encode())
        self._stdin.flush()
        reply: dict[str, Any] = json.loads(self._read_line(reply_timeout_s))
        return reply

    def must(
        self, op: str, *, reply_timeout_s: float = REPLY_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """Like `ask`, but raise ProbeError unless the reply is ok."""
        reply = self.ask(op, reply_timeout_s=reply_timeout_s, **fields)
        if not reply.get("ok"):
            raise ProbeError(f"{op}: {reply.get('error')}{self._log()}")
        return reply

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.must("stats")["stats"]
        return stats

    def close(self, timeout_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Hang up, wait for the process to end (it flushes its recording first) and
        return the call's final statistics (empty if it had already ended)."""
        if self.proc.poll() is not None:
            return {}
        final: dict[str, Any] = self.must("close", reply_timeout_s=timeout_s)["stats"]
        self.proc.wait(timeout_s)
        return final

    def _read_line(self, timeout_s: float) -> str:
        # Byte by byte, without Python's buffering, so select() sees what is left.
        deadline = time.monotonic() + timeout_s
        data = bytearray()
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeError(
                    f"no reply within {timeout_s} s (got {bytes(data)!r}){self._log()}"
                )
            ready, _, _ = select.select([self._stdout_fd], [], [], left)
            if ready:
                chunk = os.read(self._stdout_fd, 1)
                if not chunk:
                    raise ProbeError(f"probe exited ({self.proc.poll()}){self._log()}")
                data += chunk
        return data.decode()

    def _log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return f"\n--- probe log {self.log_path} ---\n{self.log_path.read_text()[-4000:]}"


def main(argv: list[str] | None = None) -> None:
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
