// peerphone softphone: me, "what am I sharing", the buddy list and the call history.
"use strict";

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

// -- the Sharing event (and GET /v1/sharing at start): per category, volume, CPU, duty ---

function bytesText(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  return (n / 1e3).toFixed(1) + " kB";
}

function kbps(bytesPerSecond) {
  const value = ((bytesPerSecond || 0) * 8) / 1000;
  return (Number.isInteger(value) ? String(value) : value.toFixed(1)) + " kbit/s";
}

function renderSharingDetail(sh) {
  const rows = [];
  for (const [name, c] of Object.entries(sh.categories || {})) {
    rows.push(
      el("tr", {},
        el("th", { text: name.replace(/_/g, " ") }),
        el("td", { text: kbps(c.now && c.now.up_bytes_per_s) }),
        el("td", { text: c.cap ? kbps(c.cap.bytes_per_s) : "–" }),
        el("td", { text: bytesText(c.today.up_bytes) + " / " + bytesText(c.today.down_bytes) }),
        el("td", { text: bytesText(c.month.up_bytes) + " / " + bytesText(c.month.down_bytes) }),
      ),
    );
  }
  $("sh-categories").replaceChildren(...rows);
  const v = sh.volume || {};
  const against = (used, cap) => bytesText(used) + (cap ? " of " + bytesText(cap) : " (no cap)");
  $("sh-day").textContent = against(v.today_bytes, v.today_cap_bytes);
  $("sh-month").textContent = against(v.month_bytes, v.month_cap_bytes);
  const cpu = sh.cpu || {};
  $("sh-cpu").textContent =
    (cpu.now_percent === null || cpu.now_percent === undefined ? "–" : cpu.now_percent + " %") +
    " of one core (cap " + cpu.cap_percent + " %)";
  const duty = sh.duty || {};
  $("sh-duty").textContent = duty.level
    ? duty.step + " — " + (duty.reason || "")
    : "none: within every cap";
  $("sh-changes").replaceChildren(
    ...(sh.role_changes || []).slice(0, 5).map((c) =>
      el("li", { text: new Date(c.at * 1000).toLocaleString() + ": " + c.role + " — " + c.reason }),
    ),
  );
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
    // the node's view of the call's quality (a browser call's: what its page reported)
    const quality = isNumber(c.mos_estimate)
      ? ", loss " + lossText(c.loss, c.loss_out) + ", MOS est. " + c.mos_estimate.toFixed(1)
      : "";
    ul.append(
      el("li", {},
        el("span", { class: "name", text: arrow + c.peer }),
        el("span", {
          class: "muted", text: " " + length + (c.path ? ", " + c.path : "") + quality + " — " + (c.end_reason || ""),
        }),
      ),
    );
  }
}
