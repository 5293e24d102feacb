"""Chromium ↔ Chromium calls through the NAT lab, recorded as PCM: the anchor of the voice
benchmark (what WebRTC's own jitter buffer, NetEQ, makes of the same network).

Two client nodes behind port-restricted cone NATs (`start_browser_nodes`), each with
Debian's Chromium in its namespace (`ip netns exec`) logged in to its node's softphone
page, as tests/browser/test_softphone_relay.py does. The caller's page places the call and
the callee's answers, with their own buttons. The callee's fake microphone loops the
speech WAV (padded to whole 10-ms chunks, see `padded_microphone`); the caller's plays
silence (or the same speech: `caller_speaks`). A recording covers one whole loop of the
speech, from just before it starts (timed from when the callee's page got its
microphone) to just after it ends.

The caller's page records what it hears: an init script (support code only; the page is
unchanged) wraps `RTCPeerConnection`, plays each remote stream in a muted <audio>
(Chromium feeds a remote track to WebAudio only then) and captures it with an AudioWorklet
at 48 kHz; the samples come back as 16-bit PCM into a mono WAV. The worklet module is a
blob: URL, which the page's CSP (`script-src 'self'`) forbids: that context bypasses CSP.
The microphone's echo cancellation, noise suppression and gain control are off by default
(`raw_microphone`): the node's own path has none, the benchmark compares the network path.

    with NetLab() as lab:
        (sn,) = start_supernodes(lab, root, 1, SUPERNODE_ARGS)
        caller, callee = start_browser_nodes(lab, root, bootstrap_list(sn))
        with BrowserPhones(lab, caller, callee, speech.play_wav, root) as phones:
            result = phones.call(impair=hook)  # hook(caller's router) once media flows

or `browser_call(...)` for a single call. Playwright's sync API: not inside an asyncio loop.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import stat
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.browser import (
    CHROMIUM,
    IPV4_UDP_HEADER_BYTES,
    IPV6_UDP_HEADER_BYTES,
    SAMPLE_RATE,
    launch_args,
)
from tests.support.netlab import INTERNET_NET, Host, NetLab
from tests.support.netns_nodes import ATTACH_TIMEOUT_S, Node, spawn, wait_all_ready

# The supernode's options for browser calls: STUN/TURN for the pages (srflx candidates
# for the hole punch), its relay allowed toward the lab's private "internet".
SUPERNODE_ARGS = ("--turn-port", "3478", "--relay-allow", f"{INTERNET_NET}.0/24")
CALLER, CALLEE = "brcaller", "brcallee"
STEP_TIMEOUT_MS = 30_000  # ringing, ICE, DTLS in the lab with two browsers on 2 CPUs
RECORDER_TIMEOUT_MS = 10_000  # remote track -> worklet running
WARM_UP_S = 3.0  # the unrecorded first call of a pair of pages
SETTLE_S = 1.0  # after connecting (and after the impairment): let NetEQ find its depth
SILENCE_SECONDS = 2.0
CONTACT_TIMEOUT_MS = 10_000  # the callee online in the caller's page (then one reload)
LOOP_MARGIN_BEFORE_S = 0.5  # recording one loop: from this long before it starts
LOOP_MARGIN_AFTER_S = 1.5  # to this long after it ends (the call's delay is in there)

# An impairment: called with the caller's router once media flows, before recording
# starts. If it returns a callable, that is called when the recording stops (undo).
ImpairHook = Callable[[Host], object]


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


WORKLET_JS = """
class PPRecorder extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Float32Array(4800); this.n = 0; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    const len = ch ? ch.length : 128;  // no input (yet): silence keeps the timeline
    for (let i = 0; i < len; i++) {
      this.buf[this.n++] = ch ? ch[i] : 0;
      if (this.n === this.buf.length) {
        this.port.postMessage(this.buf, [this.buf.buffer]);
        this.buf = new Float32Array(4800);
        this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor("pp-recorder", PPRecorder);
"""

# Runs before the page's scripts. window.__ppRec: start()/stop() the recording, pcm()
# reads it back as base64 of little-endian int16. Each remote audio track (one a call)
# gets its own capture and replaces the one before (closed); `ready` is the number of
# the track whose worklet runs (`tracks`: how many came).
RECORDER_INIT_JS = """(() => {
  const WORKLET = __WORKLET__;
  const rec = { ready: 0, recording: false, chunks: [], frames: 0, tracks: 0,
                error: null, rate: 0, current: null };
  window.__ppRec = rec;
  rec.start = () => { rec.chunks = []; rec.frames = 0; rec.recording = true; };
  rec.stop = () => { rec.recording = false; return rec.frames; };
  rec.pcm = () => {
    const out = new Int16Array(rec.frames);
    let at = 0;
    for (const c of rec.chunks) {
      for (let i = 0; i < c.length; i++) {
        const v = Math.max(-1, Math.min(1, c[i]));
        out[at++] = Math.round(v * 32767);
      }
    }
    const bytes = new Uint8Array(out.buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  };
  async function capture(stream, track) {
    const old = rec.current;
    const cur = { track, audio: new Audio(), ctx: new AudioContext({ sampleRate: 48000 }) };
    rec.current = cur;  // the old capture's messages are ignored from now on
    if (old) { old.audio.srcObject = null; old.ctx.close().catch(() => {}); }
    try {
      cur.audio.muted = true;  // WebAudio gets a remote track only while it is played
      cur.audio.srcObject = stream;
      cur.audio.play().catch(() => {});
      await cur.ctx.resume();
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" }));
      await cur.ctx.audioWorklet.addModule(url);
      const source = cur.ctx.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(cur.ctx, "pp-recorder", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        channelCount: 1, channelCountMode: "explicit", channelInterpretation: "speakers",
      });
      node.port.onmessage = (e) => {
        if (rec.current === cur && rec.recording) {
          rec.chunks.push(e.data);
          rec.frames += e.data.length;
        }
      };
      const sink = cur.ctx.createGain();
      sink.gain.value = 0;  // the destination pulls the graph; nothing is heard
      source.connect(node);
      node.connect(sink).connect(cur.ctx.destination);
      cur.nodes = [source, node, sink];
      rec.rate = cur.ctx.sampleRate;
      if (rec.current === cur) rec.ready = track;
    } catch (e) {
      rec.error = String(e);
    }
  }
  const Native = window.RTCPeerConnection;
  class Recorded extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("track", (ev) => {
        if (ev.track.kind !== "audio") return;
        rec.tracks += 1;
        capture(ev.streams[0] || new MediaStream([ev.track]), rec.tracks);
      });
    }
  }
  window.RTCPeerConnection = Recorded;
})();""".replace("__WORKLET__", json.dumps(WORKLET_JS))

# Runs before the page's scripts: window.__ppMic.started (Date.now() when getUserMedia
# gave the microphone: Chromium's fake device starts its file then); with __RAW__ true,
# the microphone without echo cancellation, noise suppression and automatic gain (the
# speech reaches the encoder as it is in the WAV); with __BITRATE__ a number, every
# remote description's Opus maxaveragebitrate becomes that (a browser's encoder follows
# the remote description: the node sets BROWSER_OPUS_BITRATE_BPS there).
PAGE_INIT_JS = """((raw, bitrate) => {
  const mic = { started: null, raw, bitrate };
  window.__ppMic = mic;
  if (bitrate) {
    const setRemote = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
      if (desc && desc.sdp) {
        const sdp = desc.sdp.replace(/maxaveragebitrate=\\d+/g, "maxaveragebitrate=" + bitrate);
        desc = { type: desc.type, sdp };
      }
      return setRemote.call(this, desc, ...rest);
    };
  }
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia) return;
  const native = md.getUserMedia.bind(md);
  md.getUserMedia = async (c) => {
    if (raw && c && c.audio) {
      const audio = typeof c.audio === "object" ? c.audio : {};
      c = Object.assign({}, c, { audio: Object.assign({}, audio, {
        echoCancellation: false, noiseSuppression: false, autoGainControl: false }) });
    }
    const stream = await native(c);
    mic.started = Date.now();
    return stream;
  };
})(__RAW__, __BITRATE__);"""

# Runs in the page: the call's audio RTP statistics and its selected candidate pair.
CALL_STATS_JS = """async () => {
  const pc = state.call && state.call.pc;
  if (!pc) return null;
  const report = await pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  // the inbound-rtp numbers reported (at the end, and their change over the recording)
  const INBOUND = ("packetsLost packetsReceived packetsDiscarded concealedSamples " +
    "silentConcealedSamples concealmentEvents totalSamplesReceived fecPacketsReceived " +
    "fecPacketsDiscarded jitterBufferDelay jitterBufferTargetDelay jitterBufferMinimumDelay " +
    "jitterBufferEmittedCount insertedSamplesForDeceleration removedSamplesForAcceleration " +
    "jitter").split(" ");
  const pick = (o, keys) => Object.fromEntries(keys.filter((k) => k in o).map((k) => [k, o[k]]));
  const numbers = (s) => {
    const out = {};
    for (const [k, v] of Object.entries(s || {})) if (typeof v === "number") out[k] = v;
    return out;
  };
  let pair = null, inbound = null, outbound = null, remoteInbound = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = byId.get(s.selectedCandidatePairId);
    }
    if (s.kind !== "audio") return;
    if (s.type === "inbound-rtp") inbound = s;
    if (s.type === "outbound-rtp") outbound = s;
    if (s.type === "remote-inbound-rtp") remoteInbound = s;
  });
  const local = pair ? byId.get(pair.localCandidateId) || {} : {};
  const remote = pair ? byId.get(pair.remoteCandidateId) || {} : {};
  return {
    inbound: pick(numbers(inbound), INBOUND), outbound: numbers(outbound),
    remote_inbound: numbers(remoteInbound), pair: numbers(pair),
    local_candidate: local.candidateType || null, remote_candidate: remote.candidateType || null,
    remote_address: remote.address || null,
  };
}"""


@dataclass
class BrowserCallResult:
    """One recorded call. `stats`: the caller's inbound-rtp numbers at the end (`end`),
    their change over the recording (`window`) and figures derived from the window
    (loss_pct, concealed_pct, fec_packets, jitter_buffer_ms, discarded); `wire_kbps`:
    per direction (`callee_to_caller` carries the speech; `caller_to_callee`), each
    {udp_payload, ip, ipv6, packets_per_s}, counted at the sender's candidate pair
    (what went onto the wire, before any loss)."""

    recording: Path
    seconds: float
    stats: dict[str, Any]
    wire_kbps: dict[str, dict[str, float]]
    path: str  # the caller's page's call-path: "direct" or "relay"
    candidates: tuple[str | None, str | None]  # the caller's pair: local, remote type
    setup_s: float  # click on Call until the caller's page shows 'active'
    notes: list[str] = field(default_factory=list)


def chromium_in(ns: str, root: Path) -> Path:
    """A wrapper that starts Debian's Chromium inside network namespace `ns`."""
    wrapper = root / f"chromium-{ns}"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def write_pcm_wav(path: Path, pcm: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return path


def write_silence(path: Path, seconds: float = SILENCE_SECONDS) -> Path:
    """A mono 16-bit WAV of digital silence (the caller's microphone)."""
    return write_pcm_wav(path, b"\0\0" * int(SAMPLE_RATE * seconds), SAMPLE_RATE)


def start_browser_nodes(
    lab: NetLab, root: Path, bootstrap: Sequence[str], names: tuple[str, str] = (CALLER, CALLEE)
) -> tuple[Node, Node]:
    """The caller's and the callee's nodes, each behind its own port-restricted cone NAT,
    ready (the pages are the audio endpoints: no auto-answer)."""
    nodes = [spawn(lab, lab.nat_host(n, "cone"), n, root, "client", bootstrap) for n in names]
    wait_all_ready(nodes, ATTACH_TIMEOUT_S)
    return nodes[0], nodes[1]


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """The counters' change; `jitter` (not a counter) as it is at the end."""
    out = {k: v - before.get(k, 0.0) for k, v in after.items()}
    if "jitter" in after:
        out["jitter"] = after["jitter"]
    return out


def _derived(window: dict[str, float]) -> dict[str, float]:
    def share(part: str, whole: float, scale: float = 100.0, digits: int = 2) -> float:
        return round(scale * window.get(part, 0.0) / whole, digits) if whole else 0.0

    lost = window.get("packetsLost", 0.0)
    emitted = window.get("jitterBufferEmittedCount", 0.0)
    return {
        "loss_pct": share("packetsLost", window.get("packetsReceived", 0.0) + lost),
        "concealed_pct": share("concealedSamples", window.get("totalSamplesReceived", 0.0)),
        "fec_packets": window.get("fecPacketsReceived", 0.0),
        "discarded": window.get("packetsDiscarded", 0.0),
        "jitter_buffer_ms": share("jitterBufferDelay", emitted, 1000.0, 1),
        "jitter_buffer_target_ms": share("jitterBufferTargetDelay", emitted, 1000.0, 1),
    }


def _rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, float]:
    """What one page sent over `seconds`, from its selected pair."""
    payload = after["pair"].get("bytesSent", 0) - before["pair"].get("bytesSent", 0)
    packets = after["pair"].get("packetsSent", 0) - before["pair"].get("packetsSent", 0)
    ipv6 = ":" in (after["remote_address"] or "")
    header = IPV6_UDP_HEADER_BYTES if ipv6 else IPV4_UDP_HEADER_BYTES
    return {
        "udp_payload": round(payload * 8 / 1000 / seconds, 2),
        "ip": round((payload + packets * header) * 8 / 1000 / seconds, 2),
        "ipv6": round((payload + packets * IPV6_UDP_HEADER_BYTES) * 8 / 1000 / seconds, 2),
        "packets_per_s": round(packets / seconds, 1),
    }


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as f:
        return f.getnframes() / f.getframerate()


def padded_microphone(speech_wav: Path, out: Path) -> Path:
    """`speech_wav` padded with silence to whole 10-ms chunks: Chromium's fake device reads
    its file in 10-ms chunks and loops it, so the loop's period is then exactly the file's
    length (a ragged tail shifts every later loop by part of a chunk)."""
    with wave.open(str(speech_wav), "rb") as f:
        if (f.getnchannels(), f.getsampwidth()) != (1, 2):
            raise ValueError(f"{speech_wav}: want mono 16-bit, not {f.getparams()}")
        rate, pcm = f.getframerate(), f.readframes(f.getnframes())
    chunk = rate // 100
    frames = len(pcm) // 2
    pad = (-frames) % chunk
    return write_pcm_wav(out, pcm + b"\0\0" * pad, rate)


class BrowserPhones:
    """Both pages open (a Chromium in each node's namespace) for one or more calls.

    The callee's page keeps its microphone between calls (as the page does), so the fake
    device's loop of the speech runs on from call to call; `call` without `seconds`
    records exactly one loop (plus margins) from the next loop start on."""

    def __init__(
        self,
        lab: NetLab,
        caller: Node,
        callee: Node,
        speech_wav: Path,
        root: Path,
        raw_microphone: bool = True,
        opus_bitrate_bps: int | None = None,
        caller_speaks: bool = False,
    ) -> None:
        self.lab = lab
        self.caller = caller
        self.callee = callee
        self.root = root
        self.microphone = padded_microphone(speech_wav, root / "browser-microphone.wav")
        self.loop_s = wav_seconds(self.microphone)
        self.raw_microphone = raw_microphone
        self.opus_bitrate_bps = opus_bitrate_bps
        self.caller_speaks = caller_speaks  # the same speech back (else silence)
        self.calls = 0
        self._pw: Any = None
        self._manager: Any = None
        self._browsers: list[Any] = []
        self.caller_page: Any = None
        self.callee_page: Any = None
        self.dialogs: list[str] = []

    def __enter__(self) -> BrowserPhones:
        from playwright.sync_api import sync_playwright

        self._manager = sync_playwright()
        self._pw = self._manager.__enter__()
        try:
            if self.caller_speaks:
                said = self.microphone
            else:
                said = write_silence(self.root / "browser-silence.wav")
            self.callee_page = self._open(self.callee, self.microphone, recorder=False)
            self.caller_page = self._open(self.caller, said, recorder=True)
            self._add_contact()
            self.warm_up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for browser in self._browsers:
            # already gone? the lab kills what is left in its namespaces
            with contextlib.suppress(Exception):
                browser.close()
        self._browsers = []
        if self._manager is not None:
            self._manager.__exit__(None, None, None)
            self._manager = None

    def _open(self, node: Node, microphone: Path, recorder: bool) -> Any:
        code, url, err = node.cli("open", "--print-url", json_out=False)
        if code != 0:
            raise RuntimeError(f"peerphone open for {node.name}: exit {code}: {err}")
        args = launch_args(microphone)
        args["executable_path"] = str(chromium_in(node.host.ns, self.root))
        browser = self._pw.chromium.launch(**args)
        self._browsers.append(browser)
        # bypass_csp: the recorder's worklet module is a blob: URL (script-src 'self')
        context = browser.new_context(permissions=["microphone"], bypass_csp=recorder)
        page_init = PAGE_INIT_JS.replace("__RAW__", json.dumps(self.raw_microphone))
        page_init = page_init.replace("__BITRATE__", json.dumps(self.opus_bitrate_bps))
        context.add_init_script(script=page_init)
        if recorder:
            context.add_init_script(script=RECORDER_INIT_JS)
        page = context.new_page()

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto(str(url).strip())
        page.wait_for_selector(f'{tid("me")}:text-is("{node.name}")', timeout=STEP_TIMEOUT_MS)
        return page

    def _add_contact(self) -> None:
        """The caller's page adds the callee and sees it online (one reload if the
        presence does not come: the page then reads its contacts afresh)."""
        page, name = self.caller_page, self.callee.name
        online = f'{tid("contact-" + name)}[data-presence="online"]'
        page.fill(tid("add-contact-name"), name)
        page.click(tid("add-contact-submit"))
        for attempt in range(2):
            try:
                page.wait_for_selector(online, timeout=CONTACT_TIMEOUT_MS)
                return
            except Exception:
                row = page.evaluate(
                    "(sel) => { const e = document.querySelector(sel); return e && e.outerHTML; }",
                    tid("contact-" + name),
                )
                if attempt == 1:
                    raise RuntimeError(f"{name} not online in the caller's page: {row}") from None
                page.reload()
                page.wait_for_selector(
                    f'{tid("me")}:text-is("{self.caller.name}")', timeout=STEP_TIMEOUT_MS
                )

    def _connect(self) -> float:
        """Place the call, answer it, wait until the caller's recorder runs; the set-up."""
        caller, callee = self.caller_page, self.callee_page
        tracks = int(caller.evaluate("() => window.__ppRec.tracks"))
        started = time.monotonic()
        caller.click(tid("call-" + self.callee.name))
        callee.wait_for_selector(f"{tid('incoming-call')}:visible", timeout=STEP_TIMEOUT_MS)
        callee.click(tid("answer"))
        caller.wait_for_selector(f'{tid("call-state")}:text-is("active")', timeout=STEP_TIMEOUT_MS)
        setup_s = time.monotonic() - started
        caller.wait_for_function(
            "(n) => (window.__ppRec.tracks > n && window.__ppRec.ready === window.__ppRec.tracks)"
            " || window.__ppRec.error",
            arg=tracks,
            timeout=RECORDER_TIMEOUT_MS,
        )
        error = caller.evaluate("() => window.__ppRec.error")
        if error:
            raise RuntimeError(f"the caller's recorder failed: {error}")
        return setup_s

    def _hang_up(self) -> None:
        caller, callee = self.caller_page, self.callee_page
        caller.click(tid("hangup"))
        caller.wait_for_selector(f'{tid("call-state")}:text-is("ended")', timeout=STEP_TIMEOUT_MS)
        callee.wait_for_selector(f'{tid("call-state")}:text-is("ended")', timeout=STEP_TIMEOUT_MS)

    def warm_up(self, seconds: float = WARM_UP_S) -> None:
        """A short unrecorded call: the first call of a fresh pair of browsers starts
        their audio machinery under load, and NetEQ, seeing that jitter, holds a deep
        buffer (~140 ms, time-stretching) for many seconds; measured calls come after."""
        self._connect()
        time.sleep(seconds)
        self._hang_up()

    def _next_loop_start(self) -> float:
        """The wall-clock time (time.time()) of the next start of the callee's microphone
        loop, at least LOOP_MARGIN_BEFORE_S from now."""
        started_ms = self.callee_page.evaluate("() => window.__ppMic.started")
        if started_ms is None:
            raise RuntimeError("the callee's page never opened its microphone")
        origin = float(started_ms) / 1000
        loops = math.ceil((time.time() + LOOP_MARGIN_BEFORE_S - origin) / self.loop_s)
        return origin + loops * self.loop_s

    def call(
        self, seconds: float | None = None, impair: ImpairHook | None = None
    ) -> BrowserCallResult:
        """Call the callee, record what the caller hears, hang up. `seconds`: record that
        long from SETTLE_S after connecting (and impairing); None: one whole loop of the
        speech, from LOOP_MARGIN_BEFORE_S before a loop starts to LOOP_MARGIN_AFTER_S
        after it ends (the speech's delay through the call is well inside that)."""
        caller, callee = self.caller_page, self.callee_page
        self.calls += 1
        notes: list[str] = []
        setup_s = self._connect()
        rate = int(caller.evaluate("() => window.__ppRec.rate"))
        if rate != SAMPLE_RATE:
            notes.append(f"AudioContext ran at {rate} Hz, not {SAMPLE_RATE}")
        router = self.caller.host.router
        undo = impair(router) if impair is not None and router is not None else None
        time.sleep(SETTLE_S)
        if seconds is None:
            loop_start = self._next_loop_start()
            time.sleep(max(0.0, loop_start - LOOP_MARGIN_BEFORE_S - time.time()))
            seconds = LOOP_MARGIN_BEFORE_S + self.loop_s + LOOP_MARGIN_AFTER_S
        before = (caller.evaluate(CALL_STATS_JS), callee.evaluate(CALL_STATS_JS))
        caller.evaluate("() => window.__ppRec.start()")
        began = time.monotonic()
        time.sleep(seconds)
        frames = int(caller.evaluate("() => window.__ppRec.stop()"))
        took = time.monotonic() - began
        after = (caller.evaluate(CALL_STATS_JS), callee.evaluate(CALL_STATS_JS))
        if callable(undo):
            undo()
        pcm = base64.b64decode(caller.evaluate("() => window.__ppRec.pcm()"))
        path_text = caller.text_content(tid("call-path")) or ""
        self._hang_up()
        if abs(frames / rate - took) > 0.25:
            notes.append(f"recorded {frames / rate:.2f} s of audio in {took:.2f} s")
        recording = write_pcm_wav(self.root / f"browser-heard-{self.calls}.wav", pcm, rate)
        window = _delta(after[0]["inbound"], before[0]["inbound"])
        stats = {
            "end": after[0]["inbound"],
            "window": window,
            **_derived(window),
            "remote_inbound_end": after[1]["remote_inbound"],
        }
        wire = {
            "callee_to_caller": _rates(before[1], after[1], took),
            "caller_to_callee": _rates(before[0], after[0], took),
        }
        return BrowserCallResult(
            recording=recording,
            seconds=frames / rate,
            stats=stats,
            wire_kbps=wire,
            path=path_text.strip(),
            candidates=(after[0]["local_candidate"], after[0]["remote_candidate"]),
            setup_s=round(setup_s, 2),
            notes=notes,
        )


def browser_call(
    lab: NetLab,
    caller: Node,
    callee: Node,
    speech_wav: Path,
    root: Path,
    seconds: float | None = None,
    impair: ImpairHook | None = None,
    raw_microphone: bool = True,
    opus_bitrate_bps: int | None = None,
) -> BrowserCallResult:
    """One Chromium ↔ Chromium call (pages opened and closed around it)."""
    with BrowserPhones(
        lab, caller, callee, speech_wav, root, raw_microphone, opus_bitrate_bps
    ) as phones:
        return phones.call(seconds, impair)
