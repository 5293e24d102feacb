"""Calls in the node daemon: signaling from the core, audio from a MediaSession per call.

Outgoing: make the offer (ICE gathering complete), sign and send it through the core, apply
the verified answer, connect. Incoming: with auto-answer, accept with a session that plays
`answer_play` (silence if unset) and records into `answer_record`; otherwise the call
rings until `answer` or `hangup`. A transfer request (`CallTransferRequested`) places the
new call with the same audio settings (recording into a file of its own). ICE servers are
our own supernode's STUN/TURN, with credentials it issued (TurnGranted), refreshed before
they expire.

The browser as the endpoint (`place_browser`, `answer_browser`): while a softphone page is
open (`browser_present`), its RTCPeerConnection makes the SDP; the node checks and trims it
(`browser_sdp`), signs it into the INVITE/ACCEPT as it does aiortc's, and hands the page
the peer's SDP once the core verified its signature (`peer_sdp`). No aiortc session then:
the page reports its statistics (`report_browser_stats`). Incoming calls ring in the page
instead of being auto-answered, and a transfer of a browser call is placed by the page.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from peerphone.daemon.browser_sdp import browser_sdp
from peerphone.daemon.config import NodeConfig
from peerphone.endpoints import TCP
from peerphone.errors import LocalProtocolError, PeerphoneError
from peerphone.media import (
    CallConfig,
    CallFailed,
    DiscardSink,
    IceServer,
    MediaSession,
    SilenceSource,
    WavRecorder,
    WavSource,
    aiortc_internals,
)
from peerphone.media.sdp import sdp_fingerprints
from peerphone.media.sinks import AudioSink, SpeakerSink
from peerphone.media.sources import microphone
from peerphone.overlay.calls import CallState
from peerphone.overlay.events import (
    CallAnswered,
    CallEnded,
    CallHoldChanged,
    CallIncoming,
    CallTransferRequested,
    Event,
    TurnGranted,
)
from peerphone.runtime.node_runtime import NodeRuntime

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack


log = logging.getLogger("peerphone.calls")

TURN_REFRESH_MARGIN_S = 60.0  # ask for new relay credentials this long before expiry
MAX_ENDED_KEPT = 50  # ended calls still listed by `calls`
# a call's statistics in `calls --json` and the API's call view (None: not known or not
# measured); the quality numbers are the whole call's: `loss` (the peer's packets lost on
# the way to us) and `loss_out` (ours, from the peer's reports), 0..1; `concealed`, the
# share of played audio that was loss concealment; packets rebuilt from Opus FEC or by
# retransmission, late and discarded ones; the jitter buffer's delay now; an E-model MOS.
STATS_KEYS = (
    "path",
    "setup_ms",
    "rtt_ms",
    "jitter_ms",
    "loss",
    "loss_out",
    "concealed",
    "fec_recovered",
    "retransmitted",
    "late_packets",
    "discarded_packets",
    "jitter_buffer_ms",
    "mos_estimate",
    "bitrate_kbps",
    "bytes_sent",
    "bytes_received",
    "local_candidate",
    "remote_candidate",
)


@dataclass
class Media:
    """What one call plays and records."""

    play: str = ""  # WAV file; silence if empty
    record: str = ""  # WAV file to write what we hear; nothing if empty
    mic: bool = False  # the default microphone instead (PyAV; AudioDeviceUnavailable if none)
    speaker: bool = False  # the default speaker instead

    def source(self) -> MediaStreamTrack:
        if self.mic:
            return microphone()
        return WavSource(self.play) if self.play else SilenceSource()

    def sink(self) -> AudioSink:
        if self.speaker:
            return SpeakerSink()
        return WavRecorder(self.record) if self.record else DiscardSink()


@dataclass
class CallRecord:
    """A call as the control API shows it."""

    call_id: bytes
    peer: str
    outgoing: bool
    media: Media
    session: MediaSession | None = None
    placed_at: float = field(default_factory=time.monotonic)
    final_stats: dict[str, Any] = field(default_factory=dict)
    end_reason: str = ""
    transferred_to: str = ""
    connected_at: float | None = None
    ended_at: float | None = None
    browser: bool = False  # the media runs in the softphone page, not in this process
    peer_sdp: str = ""  # the peer's verified SDP (browser calls: for the page)
    browser_stats: dict[str, Any] = field(default_factory=dict)


# what the page may report about a browser call's media: text (a path name, candidates)...
BROWSER_TEXT_KEYS = ("path", "local_candidate", "remote_candidate")
# ...and numbers, each within its range (no upper bound: None); counts are whole numbers
BROWSER_NUMBER_RANGES: dict[str, tuple[float, float | None]] = {
    "setup_ms": (0, None),
    "rtt_ms": (0, None),
    "jitter_ms": (0, None),
    "loss": (0, 1),
    "loss_out": (0, 1),
    "concealed": (0, 1),
    "jitter_buffer_ms": (0, None),
    "mos_estimate": (1, 4.5),
}
BROWSER_COUNT_KEYS = ("bytes_sent", "bytes_received", "fec_recovered", "discarded_packets")
BROWSER_STATS_KEYS = BROWSER_TEXT_KEYS + tuple(BROWSER_NUMBER_RANGES) + BROWSER_COUNT_KEYS
MAX_BROWSER_STAT_CHARS = 80
PATHS = ("direct", "relay")


def checked_browser_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """What the page reported, kept only where it is what `BROWSER_STATS_KEYS` allow: text
    where text is due (a path is "direct" or "relay"), finite numbers within their range,
    whole non-negative counts. Anything else (a wrong type, NaN, loss 1.5) is left out."""
    kept: dict[str, Any] = {}
    for key in BROWSER_TEXT_KEYS:
        text = stats.get(key)
        if isinstance(text, str) and (key != "path" or text in PATHS):
            kept[key] = text[:MAX_BROWSER_STAT_CHARS]
    for key, (low, high) in BROWSER_NUMBER_RANGES.items():
        value = stats.get(key)
        if _is_number(value) and low <= value and (high is None or value <= high):
            kept[key] = value
    for key in BROWSER_COUNT_KEYS:
        value = stats.get(key)
        if _is_number(value) and value >= 0 and (isinstance(value, int) or value.is_integer()):
            kept[key] = int(value)
    return kept


def _is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number: not a bool, nor NaN or infinite (Python's json reads those too)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


class CallManager:
    """The daemon's calls (see the module docstring)."""

    def __init__(self, config: NodeConfig, runtime: Callable[[], NodeRuntime]) -> None:
        """`runtime`: the node's runtime once it has started (calls need it only then)."""
        # Without it, calls between two cone NATs go through our TURN relay when they
        # could go direct (see aiortc_internals.restart_checks_on_incoming).
        aiortc_internals.restart_checks_on_incoming()
        self.config = config
        self._runtime = runtime
        self.calls: dict[bytes, CallRecord] = {}
        self.turn: TurnGranted | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._answered: dict[bytes, asyncio.Event] = {}
        # whether a softphone page is open (set by the control API; then it is the endpoint)
        self.browser_present: Callable[[], bool] = lambda: False
        # managed mode (daemon/policy.py): why a call to or from this user is refused, or ""
        self.refusal: Callable[[str], str] = lambda name: ""

    # -- relay credentials ------------------------------------------------------------------

    def ice_servers(self) -> tuple[IceServer, ...]:
        grant = self.turn
        if grant is None or not grant.urls or grant.expires < time.time():
            return ()
        urls = list(grant.urls)
        if self._behind_tcp_only():
            # UDP does not get through, so STUN and TURN over UDP are useless, and worse:
            # gathering waits 5 s for the STUN answer (aioice) before the call can start.
            # (aiortc would use only the first TURN server anyway.)
            urls = [url for url in urls if url.endswith("transport=tcp")]
        servers = []
        for url in urls:
            if url.startswith("stun:"):
                servers.append(IceServer(url))
            else:
                servers.append(IceServer(url, grant.username, grant.password))
        return tuple(servers)

    def browser_ice_servers(self) -> list[dict[str, Any]]:
        """`ice_servers` as a page's RTCPeerConnection takes them (`iceServers`)."""
        out: list[dict[str, Any]] = []
        for server in self.ice_servers():
            entry: dict[str, Any] = {"urls": [server.url]}
            if server.username is not None:
                entry.update(username=server.username, credential=server.credential)
            out.append(entry)
        return out

    def _behind_tcp_only(self) -> bool:
        """Whether we reach our primary supernode over the TCP carrier (UDP blocked)."""
        runtime = self._runtime()
        primary = runtime.core.attached()[0]
        link = runtime.link_to(primary) if primary is not None else None
        return link is not None and link.transport == TCP

    def refresh_turn(self) -> None:
        """Ask our supernode for relay credentials when we have none or they run out."""
        grant = self.turn
        if grant is None or grant.expires - time.time() < TURN_REFRESH_MARGIN_S:
            runtime = self._runtime()
            runtime.drive(runtime.core.request_turn(runtime.now()))

    # -- application ------------------------------------------------------------------------

    def _check_allowed(self, name: str) -> None:
        refusal = self.refusal(name)
        if refusal:
            raise PeerphoneError(f"call to {name} refused: {refusal}")

    async def place(self, name: str, media: Media, referred_by: str = "") -> CallRecord:
        self._check_allowed(name)
        runtime = self._runtime()
        session = MediaSession("pending", media.source(), media.sink(), self._config())
        try:
            offer = await session.create_offer()
            call_id, sends = runtime.core.call(name, offer, runtime.now(), referred_by)
        except BaseException:
            await session.close()
            raise
        session.call_id = call_id.hex()
        record = CallRecord(call_id, name, True, media, session)
        self._keep(record)
        runtime.drive(sends)
        log.info("calling %s (call %s)", name, call_id.hex()[:8])
        return record

    def place_browser(self, name: str, sdp: str, referred_by: str = "") -> CallRecord:
        """Call `name` with the page's complete offer (checked, trimmed, then signed)."""
        self._check_allowed(name)
        offer = browser_sdp(sdp)
        runtime = self._runtime()
        call_id, sends = runtime.core.call(name, offer, runtime.now(), referred_by)
        record = CallRecord(call_id, name, True, Media(), browser=True)
        self._keep(record)
        runtime.drive(sends)
        log.info("calling %s from the softphone page (call %s)", name, call_id.hex()[:8])
        return record

    def answer_browser(self, call_id: bytes, sdp: str) -> None:
        """Answer a ringing call with the page's complete answer (checked, trimmed, signed)."""
        record = self._get(call_id)
        call = self._runtime().core.call_snapshot(call_id)
        if record.outgoing or call is None or call.state is not CallState.RINGING:
            raise LocalProtocolError("only a ringing incoming call can be answered")
        answer = browser_sdp(sdp)
        record.browser = True
        record.connected_at = time.monotonic()
        runtime = self._runtime()
        runtime.drive(runtime.core.accept_call(call_id, answer, runtime.now()))
        log.info("answered %s in the softphone page (call %s)", record.peer, call_id.hex()[:8])

    def peer_sdp(self, call_id: bytes) -> str:
        """The peer's SDP whose signature the core verified ("" while there is none yet).

        An incoming call's offer is known while it rings; an outgoing call's answer once
        it is answered. Refused (DecodeError) if it carries no DTLS fingerprint.
        """
        record = self._get(call_id)
        sdp = record.peer_sdp
        call = self._runtime().core.call_snapshot(call_id)
        if not sdp and call is not None:
            sdp = call.remote_sdp
        if sdp:
            sdp_fingerprints(sdp)
        return sdp

    def report_browser_stats(self, call_id: bytes, stats: dict[str, Any]) -> None:
        """Keep what the page measured of a browser call's media (for `calls` and views)."""
        record = self._get(call_id)
        if not record.browser:
            raise LocalProtocolError("not a call of the softphone page")
        record.browser_stats = checked_browser_stats(stats)

    async def answer(self, call_id: bytes, media: Media) -> None:
        record = self._get(call_id)
        call = self._runtime().core.call_snapshot(call_id)
        if record.outgoing or call is None or call.state is not CallState.RINGING:
            raise LocalProtocolError("only a ringing incoming call can be answered")
        try:
            session = MediaSession(call_id.hex(), media.source(), media.sink(), self._config())
        except (PeerphoneError, OSError) as exc:  # a device gone, a file that cannot be made
            # end it for both sides now, with the reason, rather than let the caller ring on
            runtime = self._runtime()
            reason = f"could not answer: {exc}"[:100]
            runtime.drive(runtime.core.reject_call(call_id, reason, runtime.now()))
            raise PeerphoneError(reason) from exc
        record.session, record.media = session, media
        try:
            answer = await session.accept_offer(call.remote_sdp)
        except PeerphoneError as exc:
            runtime = self._runtime()
            runtime.drive(runtime.core.reject_call(call_id, f"media failed: {exc}", runtime.now()))
            raise
        runtime = self._runtime()
        runtime.drive(runtime.core.accept_call(call_id, answer, runtime.now()))
        log.info("answered %s (call %s)", record.peer, call_id.hex()[:8])
        self._spawn(self._connected(record))

    def hangup(self, call_id: bytes, reason: str = "hung up") -> None:
        """End the call (cancel, decline or bye); `reason` is what the peer is told."""
        self._get(call_id)
        runtime = self._runtime()
        runtime.drive(runtime.core.hangup(call_id, runtime.now(), reason))

    def ids(self) -> list[bytes]:
        """The calls the API shows (live, or ended recently)."""
        return list(self.calls)

    def is_browser(self, call_id: bytes) -> bool:
        """Whether the softphone page is this call's audio endpoint."""
        record = self.calls.get(call_id)
        return record is not None and record.browser

    def hold(self, call_id: bytes, held: bool) -> None:
        record = self._get(call_id)
        runtime = self._runtime()
        runtime.drive(runtime.core.hold(call_id, held, runtime.now()))
        if record.session is not None and record.session.connected:
            (record.session.hold if held else record.session.resume)()

    def transfer(self, call_id: bytes, target: str) -> None:
        self._get(call_id)
        runtime = self._runtime()
        runtime.drive(runtime.core.transfer(call_id, target, runtime.now()))

    async def view(self, call_id: bytes) -> dict[str, Any]:
        record = self._get(call_id)
        call = self._runtime().core.call_snapshot(call_id)
        out: dict[str, Any] = {
            "call_id": call_id.hex(),
            "peer": record.peer,
            "direction": "outgoing" if record.outgoing else "incoming",
            "state": call.state.value if call is not None else CallState.ENDED.value,
            "held": bool(call and (call.held_local or call.held_remote)),
            "end_reason": record.end_reason or (call.end_reason if call else ""),
            "transferred_to": record.transferred_to,
        }
        out["endpoint"] = "browser" if record.browser else "node"
        stats = record.browser_stats if record.browser else record.final_stats
        if record.session is not None and not stats:
            stats = await record.session.stats()
            out["media_state"] = record.session.state.value
        for key in STATS_KEYS:
            out[key] = stats.get(key)
        if record.connected_at is not None:  # whole-call averages, not the last interval
            seconds = (record.ended_at or time.monotonic()) - record.connected_at
            out["connected_s"] = round(seconds, 3)
            if seconds > 0:
                out["bitrate_kbps"] = {
                    "sent": round((stats.get("bytes_sent") or 0) * 8 / 1000 / seconds, 2),
                    "received": round((stats.get("bytes_received") or 0) * 8 / 1000 / seconds, 2),
                }
        return out

    async def list(self) -> list[dict[str, Any]]:
        return [await self.view(call_id) for call_id in list(self.calls)]

    async def wait_answered(self, call_id: bytes, timeout_s: float) -> None:
        await asyncio.wait_for(
            self._answered.setdefault(call_id, asyncio.Event()).wait(), timeout_s
        )

    # -- events from the core ---------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, TurnGranted):
            self.turn = event
            if not event.urls:
                log.info("no relay from our supernode: %s", event.reason)
        elif isinstance(event, CallIncoming):
            self._incoming(event)
        elif isinstance(event, CallAnswered):
            self._spawn(self._connect(event))
        elif isinstance(event, CallEnded):
            self._spawn(self._ended(event))
        elif isinstance(event, CallHoldChanged) and event.by_peer:
            log.info(
                "call %s %s by the peer",
                event.call_id.hex()[:8],
                "held" if event.held else "resumed",
            )
        elif isinstance(event, CallTransferRequested):
            old = self.calls.get(event.call_id)
            if old is not None and old.browser and self.browser_present():
                old.transferred_to = event.target  # the page places the new call
            else:
                self._spawn(self._transfer(event))

    def _incoming(self, event: CallIncoming) -> None:
        refusal = self.refusal(event.from_user)
        if refusal:
            log.warning("incoming call from %s refused: %s", event.from_user, refusal)
            runtime = self._runtime()
            reason = f"refused by policy: {refusal}"
            runtime.drive(runtime.core.reject_call(event.call_id, reason, runtime.now()))
            return
        record = CallRecord(event.call_id, event.from_user, False, Media())
        self._keep(record)
        log.info(
            "incoming call from %s (call %s)%s",
            event.from_user,
            event.call_id.hex()[:8],
            f", transferred by {event.referred_by}" if event.referred_by else "",
        )
        cfg = self.config
        if cfg.auto_answer and not self.browser_present():
            record_path = ""
            if cfg.answer_record:
                record_path = str(Path(cfg.answer_record) / f"call-{event.call_id.hex()}.wav")
            self._spawn(self.answer(event.call_id, Media(cfg.answer_play, record_path)))

    async def _connect(self, event: CallAnswered) -> None:
        record = self.calls.get(event.call_id)
        if record is not None and record.browser:
            record.peer_sdp = event.sdp
            record.connected_at = time.monotonic()
            self._answered.setdefault(event.call_id, asyncio.Event()).set()
            return
        if record is None or record.session is None:
            return
        await record.session.apply_answer(event.sdp)
        self._answered.setdefault(event.call_id, asyncio.Event()).set()
        await self._connected(record)

    async def _connected(self, record: CallRecord) -> None:
        """Wait for the media path; if it fails, end the call for both sides (a BYE: the
        peer may see its side "connected" until ICE consent runs out otherwise)."""
        assert record.session is not None
        try:
            await record.session.wait_connected()
        except CallFailed as exc:
            log.warning("call %s: media failed: %s", record.call_id.hex()[:8], exc)
            runtime = self._runtime()
            if not record.end_reason:
                reason = f"media failed: {exc}"[:100]
                runtime.drive(runtime.core.hangup(record.call_id, runtime.now(), reason))
            return
        record.connected_at = time.monotonic()

    async def _ended(self, event: CallEnded) -> None:
        record = self.calls.get(event.call_id)
        if record is None:
            return
        record.end_reason = event.reason
        record.ended_at = time.monotonic()
        self._answered.setdefault(event.call_id, asyncio.Event()).set()
        if record.session is not None:
            record.final_stats = await record.session.stats()
            await record.session.close()
        log.info("call %s with %s ended: %s", event.call_id.hex()[:8], record.peer, event.reason)

    async def _transfer(self, event: CallTransferRequested) -> None:
        old = self.calls.get(event.call_id)
        media = Media()
        if old is not None:
            old.transferred_to = event.target
            # Not into the old call's recording: that one is still open (it is closed as
            # the old call ends) and opening it again would truncate it.
            record = old.media.record
            if record:
                path = Path(record)
                record = str(path.with_name(f"{path.stem}-transferred-to-{event.target}.wav"))
            media = Media(old.media.play, record)
        await self.place(event.target, media, referred_by=event.by_user)

    # -- bookkeeping --------------------------------------------------------------------------

    def _config(self) -> CallConfig:
        return CallConfig(ice_servers=self.ice_servers())

    def _keep(self, record: CallRecord) -> None:
        self.calls[record.call_id] = record
        ended = [c for c, r in self.calls.items() if r.end_reason]
        for call_id in ended[: max(0, len(ended) - MAX_ENDED_KEPT)]:
            del self.calls[call_id]
            self._answered.pop(call_id, None)

    def _get(self, call_id: bytes) -> CallRecord:
        record = self.calls.get(call_id)
        if record is None:
            raise LocalProtocolError("no such call")
        return record

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except (PeerphoneError, TimeoutError) as exc:
            log.warning("call handling failed: %s", exc)
        except Exception:
            log.exception("call handling crashed")

    async def close(self) -> None:
        for record in self.calls.values():
            if record.session is not None:
                await record.session.close()
        for task in list(self._tasks):
            task.cancel()
