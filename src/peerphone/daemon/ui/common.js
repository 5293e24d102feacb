// peerphone softphone: one page, plain JS, no build step, four classic scripts sharing one
// global scope, loaded in order by index.html (no inline script: the CSP forbids it):
//   common.js  constants, the page's state, small helpers (this file)
//   lists.js   me and "what am I sharing", the buddy list, the call history
//   calls.js   calls with the browser as the audio endpoint, and their statistics
//   app.js     live events from the node and the page's start
// Everything that came from the network (names, devices, status texts, errors) is put
// into the page with textContent, never as markup.
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

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function share(part, whole) {
  // part / whole as a share 0..1, four decimals; undefined without a whole
  return whole > 0 ? Math.round(Math.min(1, Math.max(0, part / whole)) * 10000) / 10000 : undefined;
}

function percent(value) {
  return isNumber(value) ? (value * 100).toFixed(1) + " %" : "–";
}

function lossText(lossIn, lossOut) {
  // "1.2 / 0.4 %": the peer's packets lost on the way to us / ours on the way to the peer
  if (!isNumber(lossIn) && !isNumber(lossOut)) return "–";
  const part = (value) => (isNumber(value) ? (value * 100).toFixed(1) : "–");
  return part(lossIn) + " / " + part(lossOut) + " %";
}
