// peerphone softphone: calls, with the browser as the audio endpoint, and their statistics.
"use strict";

// -- calls: the browser is the audio endpoint --------------------------------------------

function newCall(fields) {
  return Object.assign(
    {
      id: null, peer: "", outgoing: true, pc: null, heldLocal: false, heldRemote: false,
      muted: false, ended: false, connected: false, startedAt: null, lastStats: null,
      sender: null, statsTimer: null, phase: "ringing", path: "",
      quality: {}, // loss both ways, concealed, jitter buffer, MOS (as the node's call view names them)
      lastBuffer: null, // the jitter buffer's counters at the previous sample
      lastSamples: null, // the audio samples played and concealed, at the previous sample
      played: { concealed: 0, total: 0 }, // those samples, summed while not on hold
      setupFrom: performance.now(), // the click on Call or Answer
      setupMs: null, // from that click until the media path connected
    },
    fields,
  );
}

async function microphone() {
  if (state.mic && state.mic.getAudioTracks().some((t) => t.readyState === "live")) return state.mic;
  state.mic = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    video: false,
  });
  return state.mic;
}

async function peerConnection(call) {
  const [{ ice_servers }, mic] = await Promise.all([api("GET", "/v1/ui/ice"), microphone()]);
  const pc = new RTCPeerConnection({
    iceServers: ice_servers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require",
  });
  call.mic = mic;
  pc.addEventListener("track", (event) => {
    const audio = $("remote-audio");
    audio.srcObject = event.streams[0] || new MediaStream([event.track]);
    audio.play().catch(() => notice("Click anywhere to hear the call (autoplay blocked).", "warn"));
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected" && !call.connected) {
      call.connected = true;
      call.startedAt = Date.now();
      call.setupMs = Math.round(performance.now() - call.setupFrom);
      call.phase = "active";
      renderCall();
    } else if (pc.connectionState === "failed" && !call.ended && call.id) {
      notice("The media path failed (no route between the two of you).", "bad");
      api("POST", "/v1/calls/" + call.id + "/hangup", {}).catch(() => {});
    }
  });
  call.pc = pc;
  return pc;
}

function attachMicrophone(call, transceiver) {
  // The caller adds its transceiver before the offer; the callee takes the one the
  // offer created (adding another would need a second negotiation).
  const track = call.mic.getAudioTracks()[0];
  const opus = RTCRtpSender.getCapabilities("audio").codecs.filter(
    (c) => c.mimeType.toLowerCase() === "audio/opus",
  );
  transceiver.setCodecPreferences(opus); // Opus only: no 64 kbit/s PCMU, no RED doubling
  transceiver.direction = "sendrecv";
  call.sender = transceiver.sender;
  return transceiver.sender.replaceTrack(track);
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

async function placeCall(name, referredBy) {
  if (state.call && !state.call.ended) throw new Error("hang up the current call first");
  const call = newCall({ peer: name, outgoing: true, phase: "connecting" });
  state.call = call;
  renderCall();
  try {
    const pc = await peerConnection(call);
    await attachMicrophone(call, pc.addTransceiver("audio", { direction: "sendrecv", streams: [call.mic] }));
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const view = await api("POST", "/v1/ui/calls", {
      name, sdp: pc.localDescription.sdp, referred_by: referredBy || "",
    });
    call.id = view.call_id;
    call.phase = view.state === "ended" ? "ended" : "ringing";
    renderCall();
    startStats(call);
  } catch (e) {
    endLocally(call, e.message);
    throw e;
  }
}

async function answerIncoming() {
  const ringing = state.incoming;
  if (!ringing) return;
  const clicked = performance.now();
  if (state.call && !state.call.ended && state.call.id) {
    await api("POST", "/v1/calls/" + state.call.id + "/hangup", {}).catch(() => {});
    endLocally(state.call, "hung up to answer another call");
  }
  state.incoming = null;
  renderIncoming();
  const call = newCall({
    id: ringing.call_id, peer: ringing.from_user, outgoing: false, phase: "connecting", setupFrom: clicked,
  });
  state.call = call;
  renderCall();
  try {
    const { sdp } = await api("GET", "/v1/ui/calls/" + call.id + "/sdp");
    const pc = await peerConnection(call);
    await pc.setRemoteDescription({ type: "offer", sdp });
    const transceiver = pc.getTransceivers().find((t) => t.receiver.track.kind === "audio");
    if (!transceiver) throw new Error("the offer has no audio");
    await attachMicrophone(call, transceiver);
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    await api("POST", "/v1/ui/calls/" + call.id + "/answer", { sdp: pc.localDescription.sdp });
    startStats(call);
  } catch (e) {
    notice("Could not answer: " + e.message, "bad");
    await api("POST", "/v1/calls/" + call.id + "/hangup", {}).catch(() => {});
    endLocally(call, e.message);
  }
}

async function onAnswered(ev) {
  const call = state.call;
  if (!call || call.id !== ev.call_id || !call.outgoing || !call.pc) return;
  call.phase = "connecting";
  renderCall();
  try {
    const { sdp } = await api("GET", "/v1/ui/calls/" + call.id + "/sdp");
    await call.pc.setRemoteDescription({ type: "answer", sdp });
  } catch (e) {
    notice("The answer could not be used: " + e.message, "bad");
    await api("POST", "/v1/calls/" + call.id + "/hangup", {}).catch(() => {});
  }
}

function onEnded(ev) {
  if (state.incoming && state.incoming.call_id === ev.call_id) {
    state.incoming = null;
    renderIncoming();
  }
  const call = state.call;
  if (call && call.id === ev.call_id) endLocally(call, ev.reason);
  loadHistory().catch(() => {});
}

function endLocally(call, reason) {
  if (call.ended) return;
  call.ended = true;
  call.phase = "ended";
  call.endReason = reason || "";
  clearInterval(call.statsTimer);
  if (call.pc) call.pc.close();
  $("remote-audio").srcObject = null;
  renderCall();
}

async function toggleHold() {
  const call = state.call;
  if (!call || !call.id || call.ended) return;
  const held = !call.heldLocal;
  await api("POST", "/v1/calls/" + call.id + "/hold", { held });
  call.heldLocal = held;
  applyMedia(call);
  renderCall();
}

function applyMedia(call) {
  // On hold nothing is sent at all (no track: no RTP) and nothing is played.
  const held = call.heldLocal || call.heldRemote;
  const track = state.mic && state.mic.getAudioTracks()[0];
  if (call.sender) call.sender.replaceTrack(held ? null : track || null).catch(() => {});
  if (track) track.enabled = !call.muted;
  $("remote-audio").muted = held;
}

function onHold(ev) {
  const call = state.call;
  if (!call || call.id !== ev.call_id || !ev.by_peer) return;
  call.heldRemote = ev.held;
  applyMedia(call);
  renderCall();
}

function onTransferRequested(ev) {
  // The peer asks us to call someone else (blind transfer): the page places that call.
  const call = state.call;
  if (!call || call.id !== ev.call_id) return;
  notice(ev.by_user + " transferred you to " + ev.target + ".", "");
  const target = ev.target;
  const by = ev.by_user;
  setTimeout(() => placeCall(target, by).catch((e) => notice(e.message, "bad")), 300);
}

function onIncoming(ev) {
  state.incoming = ev;
  renderIncoming();
}

function renderIncoming() {
  const box = $("incoming");
  const ringing = state.incoming;
  box.hidden = !ringing;
  if (ringing) {
    $("incoming-who").textContent = ringing.from_user + " is calling" +
      (ringing.referred_by ? " (transferred by " + ringing.referred_by + ")" : "");
  }
}

function callStateText(call) {
  if (call.ended) return "ended";
  if (call.phase === "active" && (call.heldLocal || call.heldRemote)) return "held";
  return call.phase;
}

function renderCall() {
  const call = state.call;
  const card = $("call-card");
  card.hidden = !call;
  if (!call) return;
  $("call-peer").textContent = call.peer;
  const text = callStateText(call);
  $("call-state").textContent = text;
  $("call-state").className = "pill state-" + text;
  $("call-path").textContent = call.path;
  $("call-path").hidden = !call.path;
  $("mute").textContent = call.muted ? "Unmute" : "Mute";
  $("mute").setAttribute("aria-pressed", String(call.muted));
  $("hold").textContent = call.heldLocal ? "Resume" : "Hold";
  $("hold").setAttribute("aria-pressed", String(call.heldLocal));
  for (const id of ["mute", "hold", "hangup", "transfer-submit"]) $(id).disabled = call.ended;
  $("hold").disabled = call.ended || call.phase !== "active";
  $("transfer-submit").disabled = call.ended || call.phase !== "active";
  $("call-timer").textContent = call.ended
    ? call.endReason || ""
    : call.startedAt ? Math.round((Date.now() - call.startedAt) / 1000) + " s" : "";
  renderQuality(call.quality);
}

function renderQuality(q) {
  // `q` has the keys of the node's call view (loss, loss_out, concealed, jitter_buffer_ms,
  // mos_estimate): a browser call's are the ones this page measured (qualityStats)
  $("q-loss").textContent = lossText(q.loss, q.loss_out);
  $("q-concealed").textContent = percent(q.concealed);
  $("q-buffer").textContent = isNumber(q.jitter_buffer_ms) ? Math.round(q.jitter_buffer_ms) + " ms" : "–";
  $("q-mos").textContent = isNumber(q.mos_estimate) ? q.mos_estimate.toFixed(1) : "–";
}

// -- statistics of the call, measured here ------------------------------------------------

function startStats(call) {
  clearInterval(call.statsTimer);
  call.statsTimer = setInterval(() => sampleStats(call).catch(() => {}), 1000);
}

async function sampleStats(call) {
  if (!call.pc || call.ended) return;
  const report = await call.pc.getStats();
  let pair = null;
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
  });
  if (!pair) report.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  const stats = {};
  if (pair) {
    const local = byId.get(pair.localCandidateId) || {};
    const remote = byId.get(pair.remoteCandidateId) || {};
    stats.path = local.candidateType === "relay" || remote.candidateType === "relay" ? "relay" : "direct";
    stats.local_candidate = local.candidateType + " " + local.address + ":" + local.port;
    stats.remote_candidate = remote.candidateType + " " + remote.address + ":" + remote.port;
    if (pair.currentRoundTripTime !== undefined) stats.rtt_ms = Math.round(pair.currentRoundTripTime * 1000);
    stats.bytes_sent = pair.bytesSent;
    stats.bytes_received = pair.bytesReceived;
  }
  qualityStats(call, report, byId, stats);
  if (call.setupMs !== null) stats.setup_ms = call.setupMs;
  const now = performance.now();
  const last = call.lastStats;
  if (last && stats.bytes_sent !== undefined) {
    const seconds = (now - last.at) / 1000;
    $("st-sent").textContent = kbps(stats.bytes_sent - last.sent, seconds);
    $("st-recv").textContent = kbps(stats.bytes_received - last.received, seconds);
  }
  if (stats.bytes_sent !== undefined) {
    call.lastStats = { at: now, sent: stats.bytes_sent, received: stats.bytes_received };
  }
  $("st-rtt").textContent = stats.rtt_ms !== undefined ? stats.rtt_ms + " ms" : "–";
  $("st-jitter").textContent = stats.jitter_ms !== undefined ? stats.jitter_ms + " ms" : "–";
  call.quality = stats;
  if (stats.path && call.path !== stats.path) {
    call.path = stats.path;
  }
  renderCall();
  const due = !call.reportedAt || now - call.reportedAt >= STATS_REPORT_MS;
  if (due && call.id && pair) {
    call.reportedAt = now;
    api("POST", "/v1/ui/calls/" + call.id + "/stats", stats).catch(() => {});
  }
}

// -- call quality: the same numbers as the node's call view, from the page's getStats() -----

// the node's E-model (media/stats.py mos_estimate), with this page's packets
const MOS_PACKET_MS = 20; // the page's Opus packets (Chromium's ptime; browser_sdp keeps it)
const MOS_CODEC_DELAY_MS = 6.5; // Opus' look-ahead
const MOS_IE = 10; // the E-model's equipment impairment of the codec with no loss (Ie)
const MOS_BPL = 20; // and its robustness to packet loss (Bpl)

function qualityStats(call, report, byId, stats) {
  // Whole-call shares: loss (the peer's packets lost on the way to us), loss_out (ours, as
  // the peer's receiver reports count them), concealed (played audio that was concealment).
  report.forEach((s) => {
    if (s.kind !== "audio") return;
    if (s.type === "inbound-rtp") {
      stats.jitter_ms = Math.round((s.jitter || 0) * 1000 * 10) / 10;
      const lost = Math.max(0, s.packetsLost || 0);
      stats.loss = share(lost, lost + (s.packetsReceived || 0)) || 0;
      if (isNumber(s.totalSamplesReceived)) {
        stats.concealed = playedConcealed(call, s.concealedSamples || 0, s.totalSamplesReceived);
      }
      if (isNumber(s.fecPacketsReceived)) stats.fec_recovered = s.fecPacketsReceived;
      if (isNumber(s.packetsDiscarded)) stats.discarded_packets = s.packetsDiscarded;
      const buffer = jitterBufferMs(call, s.jitterBufferDelay, s.jitterBufferEmittedCount);
      if (buffer !== undefined) stats.jitter_buffer_ms = buffer;
    } else if (s.type === "remote-inbound-rtp") {
      const sent = (byId.get(s.localId) || {}).packetsSent;
      if (isNumber(s.packetsLost) && sent > 0) stats.loss_out = share(Math.max(0, s.packetsLost), sent);
      else if (isNumber(s.fractionLost)) stats.loss_out = share(s.fractionLost, 1);
      if (stats.rtt_ms === undefined && isNumber(s.roundTripTime)) stats.rtt_ms = Math.round(s.roundTripTime * 1000);
    }
  });
  if (stats.concealed !== undefined) {
    stats.mos_estimate = mosEstimate(stats.rtt_ms, stats.jitter_buffer_ms, stats.concealed);
  }
}

function playedConcealed(call, concealed, total) {
  // The share of the audio played that was concealment, leaving out the time on hold:
  // nothing arrives then, and what the page plays is concealment of no loss at all.
  const held = call.heldLocal || call.heldRemote;
  const last = call.lastSamples;
  call.lastSamples = { concealed, total, held };
  if (!last) {
    call.played = { concealed, total }; // from the start of the call
  } else if (!held && !last.held && total >= last.total) {
    call.played.concealed += Math.max(0, concealed - last.concealed);
    call.played.total += total - last.total;
  }
  return share(call.played.concealed, call.played.total);
}

function jitterBufferMs(call, delay, emitted) {
  // the playout delay now: over the samples played since the previous sample (the whole
  // call's average while none were, e.g. on hold)
  if (!isNumber(delay) || !(emitted > 0)) return undefined;
  const last = call.lastBuffer;
  call.lastBuffer = { delay, emitted };
  const fresh = last && emitted > last.emitted;
  const ms = fresh ? ((delay - last.delay) / (emitted - last.emitted)) * 1000 : (delay / emitted) * 1000;
  return Math.round(Math.max(0, ms) * 10) / 10;
}

function mosEstimate(rttMs, jitterBufferMs, concealed) {
  // The E-model (ITU-T G.107) as the node estimates it: delay impairment Id from the one-way
  // delay, loss impairment Ie_eff from the share of audio concealed; R to MOS, 1..4.5.
  const d = (rttMs || 0) / 2 + (jitterBufferMs || 0) + MOS_PACKET_MS + MOS_CODEC_DELAY_MS;
  const id = 0.024 * d + (d > 177.3 ? 0.11 * (d - 177.3) : 0);
  const ppl = Math.min(100, Math.max(0, concealed || 0) * 100);
  const ie = MOS_IE + ((95 - MOS_IE) * ppl) / (ppl + MOS_BPL);
  const r = 93.2 - id - ie;
  if (r <= 0) return 1;
  const mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r);
  return Math.round(Math.min(4.5, Math.max(1, mos)) * 100) / 100;
}
