"""Voice quality under packet loss, node ↔ node through the NAT lab (issue 11, item 4).

    .venv/bin/python -m benchmarks.bench_voice                    # ~3 min, needs root
    .venv/bin/python -m benchmarks.bench_voice --loss 0,3,10 --no-bursty --seed 7 --json out.json

The lab of tests/netns/test_netns_calls.py: a supernode on a public host (overlay, STUN and
TURN), alice and bob behind port-restricted cone NATs. bob auto-answers playing the test
speech (tests/support/speech.py: espeak-ng, ~14.5 s after 1 s of silence) and records
what he hears; alice calls him playing the same speech and records. One call per loss case
(each random rate of ``--loss``, then a Gilbert–Elliott bursty case): the impairment
(tests/support/impair.py, on alice's router, UDP between alice and bob's NAT address,
never the overlay's port) is switched on as soon as `peerphone call` says the media is
connected, with the same model (and different seeds) in both directions.

Per call: the applied loss per direction counted by nftables (every datagram of the call,
and RTP alone), PESQ wide-band MOS of what alice heard (down) and of what bob heard (up),
the silent 20-ms frames of alice's recording (next to the speech's own pauses), the
longest stall (speech in the source, digital silence in the recording), the quality
fields of alice's `peerphone calls --json` view of the call at the end of the talk (null
when the node does not report them yet), and the bytes on the wire per direction as whole
IPv4 packets (what each side sent, counted on the router before any drop) over the talk.
A second nftables table in alice's own namespace counts the same UDP as she sends and
receives it, a check that the router's counters separate the directions (printed).

Then `chromium_rows` (tests/support/browser_voice.py): the same cases, two more users
behind cone NATs with a Chromium each, the callee's fake microphone looping the speech, the
caller's page recording one loop of it (MOS down: NetEQ at the browsers' Opus bitrate; MOS
up is not recorded; "reported" is what the caller's page told its node).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
from tests.support.browser import missing as browser_missing
from tests.support.browser_voice import BrowserPhones, start_browser_nodes
from tests.support.impair import Counts, Impairment, LossModel, bursty_loss, random_loss
from tests.support.netlab import INTERNET_NET, Host, NetLab, NetLabError
from tests.support.netns_nodes import (
    ATTACH_TIMEOUT_S,
    NODE_UDP_PORT,
    Node,
    bootstrap_list,
    spawn,
    start_supernodes,
    wait_all_ready,
)
from tests.support.speech import (
    PLAY_RATE,
    RecordingError,
    Speech,
    VoiceScore,
    load_speech,
    read_wav,
    score,
)

from peerphone.media.opus import OpusSettings

DEFAULT_RATES = "0,1,3,5,10,20"
BURSTY_PERCENT = 5.0
MEAN_BURST_PACKETS = 3.0
LEAD_IN_S = 1.0  # silence before the speech: the impairment is on before it starts
TAIL_S = 1.5  # the call stays up this long after the speech (jitter buffer, late start)
CALL_CLI_TIMEOUT_S = 70.0  # `peerphone call` gives up after 60 s itself
END_TIMEOUT_S = 10.0  # hangup until both sides show the call ended (recordings closed)
POLL_S = 0.2
IPV6_EXTRA_HEADER_BYTES = 20
SUPERNODE_OPTIONS = ("--turn-port", "3478", "--relay-allow", f"{INTERNET_NET}.0/24")
QUALITY_KEYS = (
    *("loss", "loss_out", "concealed", "fec_recovered", "jitter_buffer_ms"),
    *("late_packets", "discarded_packets", "mos_estimate"),
)
HOST_TABLE = "voice_wire"
CEILING_KBPS = (12, 16, 24, 32)  # Opus bitrates whose score without a network is printed


@dataclass(frozen=True)
class LossCase:
    """One call's impairment: a model per direction (seen from the caller)."""

    label: str
    up: LossModel
    down: LossModel


def loss_cases(
    rates: Sequence[float], bursty: bool, seed: int, bursty_percent: float = BURSTY_PERCENT
) -> list[LossCase]:
    """The cases of a run; each direction of each case has a seed of its own."""
    cases = [
        LossCase(f"random {r:g} %", random_loss(r, seed + 2 * i), random_loss(r, seed + 2 * i + 1))
        for i, r in enumerate(rates)
    ]
    if bursty:
        i = len(cases)
        up = bursty_loss(bursty_percent, seed + 2 * i, MEAN_BURST_PACKETS)
        down = bursty_loss(bursty_percent, seed + 2 * i + 1, MEAN_BURST_PACKETS)
        cases.append(LossCase(f"bursty {bursty_percent:g} %/{MEAN_BURST_PACKETS:g}", up, down))
    return cases


@dataclass
class CallOutcome:
    """What one call of a pair gave, before scoring."""

    heard: Path | None  # the caller's recording (the down direction)
    heard_by_callee: Path | None  # the callee's recording (up), if there is one
    applied: Counts | None = None  # the impairment's counters over the whole call
    talk: Counts | None = None  # ... over the talk (loss on until the hangup)
    view: dict[str, Any] | None = None  # the caller's view of the call, end of the talk
    at_view: Counts | None = None  # the impairment's counters from the start to the view
    final_view: dict[str, Any] | None = None  # ... once ended
    check: dict[str, Any] = field(default_factory=dict)  # cross-checks of the counting
    error: str | None = None


@dataclass
class Row:
    """One scored call: a line of the table."""

    pair: str  # "node" or "chromium"
    case: str
    applied: dict[str, Any]
    mos_down: float | None
    mos_up: float | None
    score_down: dict[str, Any] | None
    score_up: dict[str, Any] | None
    reported: dict[str, Any]
    wire: dict[str, Any]
    check: dict[str, Any]
    errors: list[str]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _score(speech: Speech, path: Path | None, errors: list[str], side: str) -> VoiceScore | None:
    if path is None:
        return None
    try:
        return score(speech.reference, path)
    except RecordingError as exc:
        errors.append(f"{side}: {exc}")
        return None


def quality_fields(view: dict[str, Any] | None) -> dict[str, Any]:
    """The quality fields of a call view (top level, or one level down), None if absent."""
    out: dict[str, Any] = dict.fromkeys(QUALITY_KEYS)
    if view is None:
        return out
    nested = [v for _, v in sorted(view.items()) if isinstance(v, dict)]
    for key in QUALITY_KEYS:
        if key in view:
            out[key] = view[key]
        else:
            out[key] = next((d[key] for d in nested if key in d), None)
    return out


def wire_rates(talk: Counts | None) -> dict[str, Any]:
    """Offered IP kbit/s per direction over the talk (IPv4 as counted; IPv6 worst case)."""
    out: dict[str, Any] = {}
    for d in ("up", "down"):
        if talk is None or talk.at <= 0:
            out[d] = None
            continue
        count = talk.direction(d)
        pps = count.packets / talk.at
        v4 = talk.kbps(d) or 0.0
        out[d] = {
            "ipv4_kbps": v4,
            "ipv6_kbps": round(v4 + IPV6_EXTRA_HEADER_BYTES * 8 * pps / 1000, 2),
            "packets_per_s": round(pps, 1),
        }
    return out


def score_call(pair: str, speech: Speech, case: LossCase, outcome: CallOutcome) -> Row:
    """Score both recordings of a call and gather its numbers."""
    errors = [outcome.error] if outcome.error else []
    down = _score(speech, outcome.heard, errors, "caller's recording")
    up = _score(speech, outcome.heard_by_callee, errors, "callee's recording")
    applied: dict[str, Any] = {"up_model": case.up.describe(), "down_model": case.down.describe()}
    if outcome.applied is not None:
        applied["up"] = outcome.applied.up.as_dict()
        applied["down"] = outcome.applied.down.as_dict()
    if outcome.at_view is not None:  # what the reported numbers compare with
        applied["first_loss_at_view"] = {
            "up": outcome.at_view.up.first_loss,
            "down": outcome.at_view.down.first_loss,
        }
    return Row(
        pair,
        case.label,
        applied,
        None if down is None else down.mos,
        None if up is None else up.mos,
        None if down is None else down.as_dict(),
        None if up is None else up.as_dict(),
        quality_fields(outcome.view),
        wire_rates(outcome.talk),
        outcome.check,
        errors,
    )


# -- node <-> node -----------------------------------------------------------------------


class HostWire:
    """nftables counters in a host's own namespace: UDP sent to and received from `peer`
    (not the overlay's port), to check the router's per-direction counts against."""

    def __init__(self, lab: NetLab, host: Host, peer: str) -> None:
        self.lab, self.host = lab, host
        port = NODE_UDP_PORT
        rules = f"""
table inet {HOST_TABLE} {{
    counter sent {{}}
    counter received {{}}
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {peer} udp sport != {port} counter name "sent"
    }}
    chain in {{
        type filter hook input priority 0; policy accept;
        ip saddr {peer} udp dport != {port} counter name "received"
    }}
}}
"""
        lab.exec(host, ["nft", "-f", "-"], input=rules)

    def packets(self) -> dict[str, int]:
        listing = json.loads(self.lab.exec(self.host, ["nft", "-j", "list", "counters"]))
        return {
            item["counter"]["name"]: int(item["counter"]["packets"])
            for item in listing["nftables"]
            if "counter" in item and item["counter"]["table"] == HOST_TABLE
        }


@dataclass
class NodePair:
    """alice (caller) and bob (auto-answers with the speech) behind cone NATs."""

    lab: NetLab
    root: Path
    speech: Speech
    alice: Node
    bob: Node
    impairment: Impairment
    wire: HostWire
    calls: int = 0

    @classmethod
    def start(cls, lab: NetLab, root: Path, speech: Speech, bootstrap: Sequence[str]) -> NodePair:
        answered = root / "bob-answered"
        answered.mkdir(parents=True, exist_ok=True)
        extra = ["--auto-answer", "--answer-play", str(speech.play_wav)]
        extra += ["--answer-record", str(answered)]
        alice = spawn(lab, lab.nat_host("alice", "cone"), "alice", root, "client", bootstrap)
        bob = spawn(lab, lab.nat_host("bob", "cone"), "bob", root, "client", bootstrap, extra=extra)
        wait_all_ready([alice, bob], ATTACH_TIMEOUT_S)
        peer = bob.host.public_addr
        impairment = Impairment(lab, alice.host, peer)
        return cls(lab, root, speech, alice, bob, impairment, HostWire(lab, alice.host, peer))

    def calls_of(self, node: Node) -> list[dict[str, Any]]:
        code, out, err = node.cli("calls")
        if code != 0 or not isinstance(out, list):
            raise RuntimeError(f"calls on {node.name}: exit {code}: {err}")
        return out

    def view(self, node: Node, call_id: str) -> dict[str, Any] | None:
        return next((c for c in self.calls_of(node) if c["call_id"] == call_id), None)

    def wait(self, what: str, check: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while (result := check()) is None:
            if time.monotonic() > deadline:
                tails = "\n".join(n.log_tail() for n in (self.alice, self.bob))
                raise RuntimeError(f"{what}: not within {timeout_s} s\n{tails}")
            time.sleep(POLL_S)
        return result

    def call(self, case: LossCase, talk_s: float) -> CallOutcome:
        """One call with `case` switched on once connected; talk `talk_s` s, hang up."""
        self.calls += 1
        heard = self.root / f"alice-heard-{self.calls}.wav"
        outcome = CallOutcome(heard, None)
        imp, alice, bob = self.impairment, self.alice, self.bob
        known = {c["call_id"] for c in self.calls_of(bob)}
        imp.clear()
        imp.new_call()
        start, host_start = imp.counts(), self.wire.packets()
        code, call, err = alice.cli(
            "call", "bob", "--play", str(self.speech.play_wav), "--record", str(heard),
            timeout_s=CALL_CLI_TIMEOUT_S,
        )  # fmt: skip
        if code != 0 or not isinstance(call, dict):
            outcome.error = f"call failed: exit {code} {call} {err}"
            return outcome
        connected = time.monotonic()
        imp.set_loss(case.up, case.down)
        on = imp.counts()
        call_id = call["call_id"]
        time.sleep(max(0.0, connected + talk_s - time.monotonic()))
        outcome.view = self.view(alice, call_id)
        talked = imp.counts()
        outcome.talk, outcome.at_view = talked - on, talked - start
        incoming = next(
            (c for c in reversed(self.calls_of(bob)) if c["call_id"] not in known), None
        )
        code, _, err = alice.cli("hangup", call_id, json_out=False)
        if code != 0:
            outcome.error = f"hangup: exit {code}: {err}"

        def ended(node: Node, cid: str) -> dict[str, Any] | None:
            view = self.view(node, cid)
            return view if view is not None and view["state"] == "ended" else None

        outcome.final_view = self.wait(
            "alice's call ended", lambda: ended(alice, call_id), END_TIMEOUT_S
        )
        if incoming is not None:
            self.wait("bob's call ended", lambda: ended(bob, incoming["call_id"]), END_TIMEOUT_S)
            outcome.heard_by_callee = self.root / "bob-answered" / f"call-{incoming['call_id']}.wav"
        else:
            outcome.error = "bob never listed the call"
        time.sleep(0.3)  # the last datagrams in flight
        end, host_end = imp.counts(), self.wire.packets()
        imp.clear()
        outcome.applied = end - start
        host_sent = host_end["sent"] - host_start["sent"]
        host_received = host_end["received"] - host_start["received"]
        outcome.check = {
            "host_sent": host_sent,
            "router_up_offered": outcome.applied.up.packets,
            "host_received": host_received,
            "router_down_passed": outcome.applied.down.passed,
            "exact": host_sent == outcome.applied.up.packets
            and host_received == outcome.applied.down.passed,
        }
        return outcome


def node_rows(pair: NodePair, cases: Sequence[LossCase], talk_s: float) -> list[Row]:
    rows = []
    for case in cases:
        print(f"node <-> node: {case.label} ...", flush=True)
        try:
            outcome = pair.call(case, talk_s)
        except (RuntimeError, NetLabError) as exc:
            outcome = CallOutcome(None, None, error=str(exc))
        rows.append(score_call("node", pair.speech, case, outcome))
    return rows


# -- Chromium <-> Chromium: the hook -------------------------------------------------------


def chromium_rows(
    lab: NetLab,
    speech: Speech,
    impair: Callable[[Host, str], Impairment],
    cases: Sequence[LossCase],
    *,
    root: Path,
    bootstrap: Sequence[str],
    talk_s: float,
) -> list[Row] | None:
    """Chromium ↔ Chromium calls through the same lab, one per case: the anchor column (None
    without Chromium or Playwright). A call records one loop of the speech, not `talk_s`."""
    if (lacking := browser_missing()) is not None:
        print(f"no Chromium column: it needs {lacking}")
        return None
    caller, callee = start_browser_nodes(lab, root, bootstrap)
    imp = impair(caller.host, callee.host.public_addr)
    rows = []
    phones_at = partial(BrowserPhones, opus_bitrate_bps=OpusSettings().bitrate_bps)  # node's
    with phones_at(lab, caller, callee, speech.play_wav, root, caller_speaks=True) as phones:
        for case in cases:
            print(f"chromium <-> chromium: {case.label} ...", flush=True)
            rows.append(score_call("chromium", speech, case, chromium_call(phones, imp, case)))
    imp.remove()
    return rows


def chromium_call(phones: BrowserPhones, imp: Impairment, case: LossCase) -> CallOutcome:
    """One browser call with `case` on from connected to the end of the recording."""
    marks: dict[str, Any] = {}

    def switch_on(router: Host) -> Callable[[], None]:
        imp.set_loss(case.up, case.down)
        marks["on"] = imp.counts()

        def recorded() -> None:
            marks["off"] = imp.counts()
            call_id = phones.caller_page.evaluate("() => state.call && state.call.id")
            calls = phones.caller.cli("calls")[1] or []
            marks["view"] = next((c for c in calls if c["call_id"] == call_id), None)

        return recorded

    imp.clear()
    imp.new_call()
    start = imp.counts()
    try:
        result = phones.call(impair=switch_on)
    except Exception as exc:  # Playwright's errors too: the row says what went wrong
        return CallOutcome(None, None, error=f"browser call: {type(exc).__name__}: {exc}")
    time.sleep(0.3)  # the last datagrams in flight
    end = imp.counts()
    imp.clear()
    page = {k: result.stats[k] for k in ("loss_pct", "concealed_pct", "jitter_buffer_ms")}
    outcome = CallOutcome(result.recording, None, end - start, marks["off"] - marks["on"])
    outcome.view, outcome.at_view = marks.get("view"), marks["off"] - start
    outcome.check = {"page": page, "page_kbps": result.wire_kbps, "notes": result.notes}
    return outcome


# -- the codec alone ---------------------------------------------------------------------


def codec_ceiling(speech: Speech, bitrate_bps: int) -> float:
    """PESQ MOS of the speech through libopus alone (PyAV; voip, 20 ms, constrained VBR,
    complexity 10, as media/opus.py encodes) with no network: the best a call can score."""
    samples = read_wav(speech.play_wav)[1]
    encoder = av.CodecContext.create("libopus", "w")
    decoder = av.CodecContext.create("libopus", "r")
    assert isinstance(encoder, av.AudioCodecContext) and isinstance(decoder, av.AudioCodecContext)
    encoder.bit_rate, encoder.format, encoder.layout = bitrate_bps, "s16", "mono"
    encoder.sample_rate = decoder.sample_rate = PLAY_RATE
    decoder.layout, decoder.format = "mono", "s16"
    encoder.options = {
        "application": "voip", "frame_duration": "20", "vbr": "constrained",
        "compression_level": "10",
    }  # fmt: skip
    frame_samples = PLAY_RATE // 50
    out = []
    for i in range(0, len(samples) - frame_samples + 1, frame_samples):
        frame = av.AudioFrame.from_ndarray(
            samples[i : i + frame_samples].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = PLAY_RATE, i
        for packet in encoder.encode(frame):
            out += [f.to_ndarray().reshape(-1) for f in decoder.decode(packet)]
    joined = np.concatenate(out)
    if joined.dtype != np.int16:  # float planar from the decoder
        joined = np.round(np.clip(joined, -1, 1) * 32767)
    decoded = np.concatenate([joined.astype(np.int16), np.zeros(PLAY_RATE // 2, np.int16)])
    return score(speech.reference, decoded, PLAY_RATE).mos


# -- the run -------------------------------------------------------------------------------


def run(
    rates: Sequence[float],
    bursty: bool,
    seconds: float | None,
    seed: int,
    chromium: bool,
    calls: int = 1,
) -> dict[str, Any]:
    speech = load_speech(LEAD_IN_S, seconds)
    talk_s = LEAD_IN_S + speech.seconds + TAIL_S
    # round after round of every case (a busy spell of the machine spreads over the cases);
    # each round's loss patterns have seeds of their own
    cases = [c for r in range(calls) for c in loss_cases(rates, bursty, seed + 1000 * r)]
    print(f"speech: {speech}; talk {talk_s:.1f} s a call; seed {seed}")
    ceiling = {str(kbps): codec_ceiling(speech, kbps * 1000) for kbps in CEILING_KBPS}
    print(f"Opus alone (no network), PESQ MOS by kbit/s: {ceiling}")
    root = Path(tempfile.mkdtemp(prefix="bench-voice-"))
    started = time.monotonic()
    with NetLab() as lab:
        (supernode,) = start_supernodes(lab, root, 1, SUPERNODE_OPTIONS)
        bootstrap = bootstrap_list(supernode)
        pair = NodePair.start(lab, root, speech, bootstrap)
        print(f"lab ready in {time.monotonic() - started:.1f} s; {pair.impairment.describe()}")
        rows = node_rows(pair, cases, talk_s)
        pair.impairment.remove()
        browser = None
        if chromium:
            browser = chromium_rows(
                lab,
                speech,
                lambda host, peer: Impairment(lab, host, peer, table="impair_chromium"),
                cases,
                root=root,
                bootstrap=bootstrap,
                talk_s=talk_s,
            )
    summary = summarise(rows, browser)
    return {
        "summary": summary,
        "speech_s": speech.seconds,
        "talk_s": talk_s,
        "seed": seed,
        "opus_alone_mos_by_kbps": ceiling,
        "cases": [c.label for c in cases],
        "node": [r.__dict__ for r in rows],
        "chromium": None if browser is None else [r.__dict__ for r in browser],
        "took_s": round(time.monotonic() - started, 1),
        "root": str(root),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 3) if known else None


def summarise(node: Sequence[Row], browser: Sequence[Row] | None) -> list[dict[str, Any]]:
    """Per case, over its calls: mean (and the range of) MOS down and up, per pair, and the
    node's mean against Chromium's (the acceptance's ratio)."""
    out = []
    for label in dict.fromkeys(r.case for r in node):
        line: dict[str, Any] = {"case": label}
        for pair, rows in (("node", node), ("chromium", browser or [])):
            mine = [r for r in rows if r.case == label]
            for side in ("down", "up"):
                values = [getattr(r, f"mos_{side}") for r in mine]
                known = [v for v in values if v is not None]
                line[f"{pair}_{side}"] = _mean(values)
                line[f"{pair}_{side}_range"] = [min(known), max(known)] if known else None
            line[f"{pair}_calls"] = len(mine)
            line[f"{pair}_stall_ms_max"] = max(
                ((r.score_down or {}).get("longest_stall_ms") or 0 for r in mine), default=None
            )
        chromium = line["chromium_down"]
        line["node_vs_chromium"] = (
            round(line["node_down"] / chromium, 3) if chromium and line["node_down"] else None
        )
        out.append(line)
    return out


def print_summary(summary: Sequence[dict[str, Any]]) -> None:
    head = (
        f"{'case':17} {'calls':>5} {'node MOS dn (range)':>22} {'node MOS up (range)':>22}"
        f" {'stall ms':>8} {'chromium MOS dn':>22} {'node/chromium':>13}"
    )
    print(head)
    print("-" * len(head))

    def cell(line: dict[str, Any], key: str) -> str:
        rng = line[f"{key}_range"]
        span = "" if rng is None else f" ({rng[0]:.2f}-{rng[1]:.2f})"
        return _fmt(line[key], ".2f") + span

    for line in summary:
        print(
            f"{line['case']:17} {line['node_calls']:>5} {cell(line, 'node_down'):>22}"
            f" {cell(line, 'node_up'):>22} {_fmt(line['node_stall_ms_max'], '.0f'):>8}"
            f" {cell(line, 'chromium_down'):>22} {_fmt(line['node_vs_chromium'], '.3f'):>13}"
        )
    print("mean PESQ-WB MOS per case over its calls; node/chromium: the means of MOS down")


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "null"
    return format(value, spec) if spec and isinstance(value, int | float) else str(value)


def print_table(result: dict[str, Any]) -> None:
    head = (
        f"{'pair':8} {'loss':17} {'applied up/down %':>18} {'MOS dn':>6} {'MOS up':>6}"
        f" {'silent % (src)':>14} {'stall ms':>8} {'reported in/out':>16}"
        f" {'wire kbit/s up/dn':>18}"
    )
    print(head)
    print("-" * len(head))
    legend = (
        "applied: dropped share of the call's datagrams by nftables (up: caller -> callee);"
        " MOS dn: PESQ-WB of what the caller heard, up: of what the callee heard; silent:"
        " 20-ms frames of the caller's recording (the speech's own); stall: longest digital"
        " silence over speech; reported: the caller's loss/loss_out; wire: IPv4 packets sent"
    )
    for pair in ("node", "chromium"):
        for row in result.get(pair) or []:
            applied = row["applied"]
            up, down = applied.get("up") or {}, applied.get("down") or {}
            s = row["score_down"] or {}
            silent = "-"
            if s:
                silent = f"{100 * s['silent_share']:.1f} ({100 * s['reference_silent_share']:.1f})"
            rep = row["reported"]
            wire = row["wire"]
            kb = "/".join(_fmt((wire.get(d) or {}).get("ipv4_kbps"), ".1f") for d in ("up", "down"))
            print(
                f"{pair:8} {row['case']:17}"
                f" {_pct(up.get('loss')) + '/' + _pct(down.get('loss')):>18}"
                f" {_fmt(row['mos_down'], '.2f'):>6} {_fmt(row['mos_up'], '.2f'):>6}"
                f" {silent:>14} {_fmt(s.get('longest_stall_ms'), '.0f'):>8}"
                f" {_fmt(rep.get('loss')) + '/' + _fmt(rep.get('loss_out')):>16} {kb:>18}"
            )
    print(legend)
    print(f"Opus alone (no network), PESQ MOS by kbit/s: {result['opus_alone_mos_by_kbps']}")
    print()
    for pair in ("node", "chromium"):
        for row in result.get(pair) or []:
            fields = ", ".join(f"{k}={json.dumps(v)}" for k, v in row["reported"].items())
            print(f"{pair} {row['case']}: {fields}")
            a = row["applied"]
            up, down = a.get("up") or {}, a.get("down") or {}
            at_view = a.get("first_loss_at_view") or {}
            print(
                f"    applied {a['up_model']} / {a['down_model']}: RTP first transmissions"
                f" {_pct(up.get('first_loss'))}/{_pct(down.get('first_loss'))} % (until the"
                f" view: {_pct(at_view.get('up'))}/{_pct(at_view.get('down'))} %), resent"
                f" {up.get('resent')}/{down.get('resent')} packets;"
                f" counting check {json.dumps(row['check'])}"
            )
            for error in row["errors"]:
                print(f"    error: {error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", default=DEFAULT_RATES, help="random loss rates, %% (each way)")
    parser.add_argument(
        "--bursty", action=argparse.BooleanOptionalAction, default=True,
        help=f"also a Gilbert–Elliott case: {BURSTY_PERCENT:g} %% in bursts of"
        f" {MEAN_BURST_PACKETS:g} packets on average",
    )  # fmt: skip
    parser.add_argument(
        "--seconds", type=float, help="use the speech up to a pause before this (default: all)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds of the loss patterns")
    parser.add_argument(
        "--chromium", action=argparse.BooleanOptionalAction, default=True,
        help="the Chromium ↔ Chromium column (needs Chromium and Playwright)",
    )  # fmt: skip
    parser.add_argument(
        "--calls", type=int, default=1,
        help="calls per case (PESQ of one call varies by about 0.3); the summary gives means",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    rates = [float(r) for r in args.loss.split(",") if r.strip()]
    if args.calls < 1:
        parser.error("--calls: at least 1")
    result = run(rates, args.bursty, args.seconds, args.seed, args.chromium, args.calls)
    print()
    print_table(result)
    print()
    print_summary(result["summary"])
    print(f"\n{len(result['cases'])} cases in {result['took_s']} s; files in {result['root']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
