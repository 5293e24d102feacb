// peerphone softphone: one page, plain JS, no build step.
// Everything that came from the network (names, devices, status texts, errors) is put
// into the page with textContent, never as markup; the CSP forbids inline script anyway.
"use strict";

const GATHER_TIMEOUT_MS = 6000; // give up waiting for ICE gathering (send what we have)
const STATUS_POLL_MS = 1000; // "what am I sharing" and my status, once a second
const STATS_REPORT_MS = 2000; // the call's media statistics, back to the node
const CHART_POINTS = 60; // one minute of relay rate in the chart
const WS_RETRY_MS = 1000;
const HISTORY_SHOWN = 20;

const $ = (id) => document.getElementById(id);
const state = {
  me: null, // last /v1/status
  contacts: new Map(), // name -> contact view
  call: null, // the page's current call (see newCall)
  incoming: null, // {call_id, from_user, referred_by} ringing here
  mic: null, // MediaStream from getUserMedia, kept between calls
  chart: [], // relay rate samples (kbit/s)
};

// -- small helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function notice(text, kind) {
  const box = $("notice");
  box.textContent = text;
  box.className = "notice " + (kind || "");
  box.hidden = !text;
}

async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (response.status === 401) {
    notice("Not logged in (or the node restarted): run `peerphone open` again.", "bad");
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
    throw new Error(message);
  }
  return data;
}

function fingerprint(hex, groups) {
  if (typeof hex !== "string" || !hex) return "unknown";
  const parts = hex.match(/.{1,4}/g) || [];
  return parts.slice(0, groups || parts.length).join(" ");
}

function presenceOf(view) {
  const s = view && view.status;
  return s === "online" || s === "away" || s === "busy" ? s : "offline";
}

function kbps(bytes, seconds) {
  return seconds > 0 ? ((bytes * 8) / 1000 / seconds).toFixed(1) + " kbit/s" : "–";
}

// -- me and sharing (polled once a second) --------------------------------------------

async function pollStatus() {
  try {
    const st = await api("GET", "/v1/status");
    state.me = st;
    $("me-name").textContent = st.name;
    $("me-key").textContent = fingerprint(st.user_key, 4);
    $("me-key").title = fingerprint(st.user_key);
    $("me-role").textContent = st.role;
    const pick = $("my-status");
    if (document.activeElement !== pick && st.status && pick.value !== st.status) {
      pick.value = st.status;
    }
    renderSharing(st);
  } catch (e) {
    // shown by api() when it matters (401); a missed second is not news
  }
}

function renderSharing(st) {
  const sharing = st.sharing || {};
  const relay = sharing.relay;
  $("sh-role").textContent = st.role + " — " + (st.role_reason || "");
  $("sh-clients").textContent = String(sharing.clients_served || 0);
  $("sh-records").textContent = String(sharing.records_held || 0);
  if (relay) {
    $("sh-relay").textContent = String(relay.allocations);
    $("sh-bytes").textContent = (relay.total_bytes_relayed / 1000).toFixed(1) + " kB";
    $("sh-rate").textContent = relay.rate_kbps + " of " + relay.cap_kbps + " kbit/s cap";
  } else {
    $("sh-relay").textContent = "no relay running";
    $("sh-bytes").textContent = "0 kB";
    $("sh-rate").textContent = "0 kbit/s";
  }
  const limits = sharing.limits || {};
  $("sh-caps").textContent =
    (sharing.consented ? "You agreed to share up to " : "You never serve (role client). Caps: ") +
    limits.up_kbps + " kbit/s, " + limits.max_clients + " clients, " + limits.cpu_percent + " % CPU.";
  const list = $("sh-allocations");
  list.replaceChildren();
  for (const a of (relay && relay.per_allocation) || []) {
    list.append(
      el("li", {
        text: a.client + " ↔ " + (a.peers.join(", ") || "no peer yet") + ": " +
          (a.bytes_to_peers / 1000).toFixed(1) + " kB out, " +
          (a.bytes_from_peers / 1000).toFixed(1) + " kB in",
      }),
    );
  }
  state.chart.push(relay ? relay.rate_kbps : 0);
  if (state.chart.length > CHART_POINTS) state.chart.shift();
  drawChart(relay ? relay.cap_kbps : 0);
}

function drawChart(cap) {
  const canvas = $("sh-chart");
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 320;
  const cssHeight = canvas.clientHeight || 90;
  if (canvas.width !== Math.round(cssWidth * ratio)) {
    canvas.width = Math.round(cssWidth * ratio);
    canvas.height = Math.round(cssHeight * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const w = cssWidth;
  const h = cssHeight;
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(cap, ...state.chart, 1);
  ctx.strokeStyle = "#c0392b";
  ctx.setLineDash([4, 4]);
  if (cap > 0) {
    const y = h - 2 - (cap / top) * (h - 20);
    ctx.beginPath();
    ctx.moveTo(0, y);
    ctx.lineTo(w, y);
    ctx.stroke();
  }
  ctx.setLineDash([]);
  ctx.strokeStyle = "#2471a3";
  ctx.lineWidth = 2;
  ctx.beginPath();
  state.chart.forEach((value, i) => {
    const x = (i / (CHART_POINTS - 1)) * w;
    const y = h - 2 - (value / top) * (h - 20);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  ctx.fillText("relay kbit/s, last minute" + (cap > 0 ? " (dashed: cap)" : ""), 4, 12);
}

// -- contacts -------------------------------------------------------------------------

async function loadContacts() {
  const list = await api("GET", "/v1/contacts");
  state.contacts = new Map(list.map((c) => [c.name, c]));
  renderContacts();
}

function renderContacts() {
  const ul = $("buddy-list");
  ul.replaceChildren();
  const names = [...state.contacts.keys()].sort();
  $("no-buddies").hidden = names.length > 0;
  for (const name of names) ul.append(contactRow(state.contacts.get(name)));
}

function contactRow(c) {
  const presence = presenceOf(c);
  const li = el("li", { class: "buddy", "data-testid": "contact-" + c.name, "data-presence": presence });
  const dot = el("span", { class: "dot " + presence, title: presence });
  const who = el(
    "div",
    { class: "who" },
    el("span", { class: "name", text: c.name }),
    el("span", { class: "presence", text: presence + (c.device ? " · " + c.device : "") }),
    el("span", { class: "fp", text: "key " + fingerprint(c.owner || c.pinned_key, 4) }),
  );
  li.append(dot, who);
  if (c.owner && c.pinned_key && c.owner !== c.pinned_key) {
    li.append(
      el("div", {
        class: "key-warning",
        role: "alert",
        text: "WARNING: " + c.name + "'s key changed from " + fingerprint(c.pinned_key, 4) +
          " to " + fingerprint(c.owner, 4) + ". Do not trust this contact until you have " +
          "compared the fingerprint with them another way.",
      }),
    );
  }
  const call = el("button", { class: "good", "data-testid": "call-" + c.name, text: "Call" });
  call.addEventListener("click", () => placeCall(c.name).catch((e) => notice(e.message, "bad")));
  const remove = el("button", { class: "quiet", title: "remove " + c.name, text: "✕" });
  remove.addEventListener("click", async () => {
    try {
      await api("DELETE", "/v1/contacts/" + encodeURIComponent(c.name));
      state.contacts.delete(c.name);
      renderContacts();
    } catch (e) {
      notice(e.message, "bad");
    }
  });
  li.append(el("div", { class: "buddy-actions" }, call, remove));
  return li;
}

async function addContact(event) {
  event.preventDefault();
  const input = $("add-contact-name");
  const name = input.value.trim();
  const result = $("add-result");
  result.hidden = false;
  result.className = "result";
  try {
    await api("POST", "/v1/contacts", { name });
    input.value = "";
    result.textContent = "Added " + name + ". Looking up their key…";
    await loadContacts();
    const found = await api("GET", "/v1/lookup/" + encodeURIComponent(name));
    if (found.found && found.record) {
      result.textContent = "Added " + name + ". Key fingerprint: " +
        fingerprint(found.record.owner) + " — compare it with " + name + " out of band.";
    } else {
      result.className = "result warn";
      result.textContent = "Added " + name + ", but the directory does not know them (" +
        (found.reason || "not found") + "): check the spelling.";
    }
  } catch (e) {
    result.className = "result bad";
    result.textContent = "Could not add: " + e.message;
  }
}

function onPresence(ev) {
  const old = state.contacts.get(ev.name);
  if (!old) return;
  state.contacts.set(ev.name, Object.assign({}, old, ev, { pinned_key: old.pinned_key || ev.owner }));
  renderContacts();
}

// -- calls: the browser is the audio endpoint --------------------------------------------

function newCall(fields) {
  return Object.assign(
    {
      id: null, peer: "", outgoing: true, pc: null, heldLocal: false, heldRemote: false,
      muted: false, ended: false, connected: false, startedAt: null, lastStats: null,
      sender: null, statsTimer: null, phase: "ringing", path: "",
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
  if (state.call && !state.call.ended && state.call.id) {
    await api("POST", "/v1/calls/" + state.call.id + "/hangup", {}).catch(() => {});
    endLocally(state.call, "hung up to answer another call");
  }
  state.incoming = null;
  renderIncoming();
  const call = newCall({ id: ringing.call_id, peer: ringing.from_user, outgoing: false, phase: "connecting" });
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
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      stats.jitter_ms = Math.round((s.jitter || 0) * 1000 * 10) / 10;
      const lost = Math.max(0, s.packetsLost || 0);
      const total = lost + (s.packetsReceived || 0);
      stats.loss = total > 0 ? Math.round((lost / total) * 10000) / 10000 : 0;
    }
  });
  if (call.startedAt) stats.setup_ms = null;
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
  $("st-loss").textContent = stats.loss !== undefined ? (stats.loss * 100).toFixed(1) + " %" : "–";
  if (stats.path && call.path !== stats.path) {
    call.path = stats.path;
  }
  renderCall();
  const due = !call.reportedAt || now - call.reportedAt >= STATS_REPORT_MS;
  if (due && call.id && pair) {
    call.reportedAt = now;
    delete stats.setup_ms;
    api("POST", "/v1/ui/calls/" + call.id + "/stats", stats).catch(() => {});
  }
}

// -- history ------------------------------------------------------------------------------

async function loadHistory() {
  const calls = await api("GET", "/v1/calls");
  const ended = calls.filter((c) => c.state === "ended").slice(-HISTORY_SHOWN).reverse();
  const ul = $("history");
  ul.replaceChildren();
  $("no-history").hidden = ended.length > 0;
  for (const c of ended) {
    const arrow = c.direction === "outgoing" ? "→ " : "← ";
    const length = c.connected_s ? Math.round(c.connected_s) + " s" : "not connected";
    ul.append(
      el("li", {},
        el("span", { class: "name", text: arrow + c.peer }),
        el("span", { class: "muted", text: " " + length + (c.path ? ", " + c.path : "") + " — " + (c.end_reason || "") }),
      ),
    );
  }
}

// -- live events --------------------------------------------------------------------------

const EVENT_HANDLERS = {
  PresenceChanged: onPresence,
  CallIncoming: onIncoming,
  CallAnswered: onAnswered,
  CallEnded: onEnded,
  CallHoldChanged: onHold,
  CallTransferRequested: onTransferRequested,
  CallRinging: (ev) => {
    if (state.call && state.call.id === ev.call_id && !state.call.ended) {
      state.call.phase = "ringing";
      renderCall();
    }
  },
};

function connectEvents() {
  const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/events");
  socket.addEventListener("open", () => {
    // what changed while we were away
    loadContacts().catch(() => {});
  });
  socket.addEventListener("message", (message) => {
    let ev = null;
    try {
      ev = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    const handler = EVENT_HANDLERS[ev.type];
    if (handler) {
      Promise.resolve(handler(ev)).catch((e) => notice(e.message, "bad"));
    }
  });
  socket.addEventListener("close", () => setTimeout(connectEvents, WS_RETRY_MS));
}

// -- start ------------------------------------------------------------------------------

function start() {
  $("add-contact").addEventListener("submit", addContact);
  $("my-status").addEventListener("change", async (event) => {
    try {
      await api("POST", "/v1/presence", { status: event.target.value });
    } catch (e) {
      notice(e.message, "bad");
    }
  });
  $("answer").addEventListener("click", () => answerIncoming().catch((e) => notice(e.message, "bad")));
  $("decline").addEventListener("click", async () => {
    const ringing = state.incoming;
    state.incoming = null;
    renderIncoming();
    if (ringing) await api("POST", "/v1/calls/" + ringing.call_id + "/hangup", {}).catch((e) => notice(e.message, "bad"));
  });
  $("hangup").addEventListener("click", async () => {
    const call = state.call;
    if (!call) return;
    if (call.id) await api("POST", "/v1/calls/" + call.id + "/hangup", {}).catch(() => {});
    endLocally(call, "hung up");
    loadHistory().catch(() => {});
  });
  $("hold").addEventListener("click", () => toggleHold().catch((e) => notice(e.message, "bad")));
  $("mute").addEventListener("click", () => {
    const call = state.call;
    if (!call) return;
    call.muted = !call.muted;
    applyMedia(call);
    renderCall();
  });
  $("transfer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const call = state.call;
    const target = $("transfer-name").value.trim();
    if (!call || !call.id) return;
    try {
      await api("POST", "/v1/calls/" + call.id + "/transfer", { name: target });
      notice("Transferred " + call.peer + " to " + target + ".", "");
      $("transfer-name").value = "";
    } catch (e) {
      notice("Transfer failed: " + e.message, "bad");
    }
  });
  pollStatus();
  setInterval(pollStatus, STATUS_POLL_MS);
  setInterval(() => state.call && !state.call.ended && renderCall(), 1000);
  loadContacts().catch((e) => notice(e.message, "bad"));
  loadHistory().catch(() => {});
  connectEvents();
}

document.addEventListener("DOMContentLoaded", start);
