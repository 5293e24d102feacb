// peerphone softphone: live events from the node, and the start of the page.
"use strict";

// -- live events --------------------------------------------------------------------------

const EVENT_HANDLERS = {
  PresenceChanged: onPresence,
  KeyChanged: onPresence, // {name, owner: the key seen, pinned_key}: the list warns
  Sharing: renderSharingDetail, // every 5 s: the numbers of `peerphone sharing`
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
    if (!ringing) return;
    // the caller is told "declined" (not "hung up"), as `peerphone decline` tells it
    await api("POST", "/v1/calls/" + ringing.call_id + "/hangup", { reason: "declined" })
      .catch((e) => notice(e.message, "bad"));
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
  api("GET", "/v1/sharing").then(renderSharingDetail).catch(() => {}); // then the events
  setInterval(() => state.call && !state.call.ended && renderCall(), 1000);
  loadContacts().catch((e) => notice(e.message, "bad"));
  loadHistory().catch(() => {});
  connectEvents();
}

document.addEventListener("DOMContentLoaded", start);
