"""Call signaling (sans-I/O): one state machine per call, signed messages routed by supernodes.

Outgoing: look the callee up (a verified presence record gives its user key and its
supernodes) -> INVITE with the offer -> RINGING -> ACCEPT with the answer | REJECT | the
caller's CANCEL | timeout. Incoming: an INVITE whose signature verifies is checked against
the caller's key — a pinned contact key, else a directory lookup of the caller's name —
then rings (`CallIncoming`) until the application accepts or rejects. In a call: HOLD,
RESUME, BYE, and blind TRANSFER (A asks B to call C; B ends the call with A, whose side
ends too; the application at B places the new call with `referred_by`).

Every message is signed end to end (callmsg.py); messages whose signature or key do not
match end the call with the reason ("fails closed"): a supernode can drop signaling, not
forge or alter it. Which transition each message kind causes is in `TRANSITIONS`.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from dataclasses import dataclass, field

from peerphone.errors import DecodeError, LocalProtocolError
from peerphone.overlay.callmsg import (
    CALL_ID_BYTES,
    CallKind,
    CallMessage,
    decode_call_message,
    encode_call_message,
    make_call_message,
    signature_valid,
)
from peerphone.overlay.client import ClientCore
from peerphone.overlay.events import (
    CallAnswered,
    CallEnded,
    CallHoldChanged,
    CallIncoming,
    CallRinging,
    CallTransferRequested,
    Event,
    LookupDone,
)
from peerphone.records import PresenceBody, decode_body, valid_username
from peerphone.wire import Send, Signal, SignalAck, SignalDeliver

INVITE_TIMEOUT_S = 10.0  # no RINGING by then: the callee's node is unreachable
RING_TIMEOUT_S = 60.0  # no answer by then: the caller cancels
ANSWER_TIMEOUT_S = 10.0  # an accepted call whose ACCEPT is not acknowledged by a signal ack
ENDED_LINGER_S = 60.0  # ended calls stay visible (status, replays refused) this long
MAX_CALLS = 64  # calls at once (any state) per node
MAX_CLOCK_SKEW_S = 300.0  # an INVITE older or newer than this is refused (replays)
MAX_REMEMBERED_IDS = 10_000  # call ids seen, to refuse replayed invites


class CallState(enum.Enum):
    LOOKUP = "lookup"  # outgoing: finding the callee
    VERIFYING = "verifying"  # incoming: checking the caller's key in the directory
    INVITING = "inviting"  # outgoing: invite sent
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


@dataclass(slots=True)
class Call:
    """One call as this node sees it."""

    call_id: bytes
    outgoing: bool
    peer_user: str
    state: CallState
    started: float
    deadline: float
    peer_key: bytes | None = None
    peer_via: list[bytes] = field(default_factory=list)
    peer_node: bytes = b""  # the peer's device (signals are routed to it)
    local_sdp: str = ""
    remote_sdp: str = ""
    referred_by: str = ""
    seq_out: int = 0
    seq_in: int = 0
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: str = ""
    held_local: bool = False
    held_remote: bool = False
    invite: CallMessage | None = None  # incoming, while verifying
    relooked: bool = False  # outgoing: the callee was looked up again after a failed invite


# Incoming message kind -> states in which it is handled (anything else is ignored).
TRANSITIONS: dict[CallKind, frozenset[CallState]] = {
    CallKind.RINGING: frozenset({CallState.INVITING}),
    CallKind.ACCEPT: frozenset({CallState.INVITING, CallState.RINGING}),
    CallKind.REJECT: frozenset({CallState.INVITING, CallState.RINGING}),
    CallKind.CANCEL: frozenset({CallState.VERIFYING, CallState.RINGING}),
    CallKind.BYE: frozenset(
        {CallState.ACTIVE, CallState.RINGING, CallState.INVITING, CallState.VERIFYING}
    ),
    CallKind.HOLD: frozenset({CallState.ACTIVE}),
    CallKind.RESUME: frozenset({CallState.ACTIVE}),
    CallKind.TRANSFER: frozenset({CallState.ACTIVE}),
}


class CallCore:
    """All calls of one user's node; uses the client core to look users up and to send."""

    def __init__(self, client: ClientCore, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.calls: dict[bytes, Call] = {}
        self._events: list[Event] = []  # drained by pop_events
        self.refused: dict[str, int] = {}  # why incoming signaling was dropped, counted
        self._lookups: dict[int, bytes] = {}  # lookup req -> call id
        self._signals: dict[int, tuple[bytes, CallKind]] = {}  # Signal req -> call, kind
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # call ids ever seen

    @property
    def looking(self) -> bool:
        """Whether a lookup started by a call (callee, or caller check) is outstanding."""
        return bool(self._lookups)

    # -- application ------------------------------------------------------------------------

    def place(
        self, to_user: str, sdp: str, now: float, referred_by: str = ""
    ) -> tuple[bytes, list[Send]]:
        """Start a call to `to_user` with this SDP offer; CallAnswered carries the answer."""
        if not valid_username(to_user) or to_user == self.client.username:
            raise LocalProtocolError(f"cannot call {to_user!r}")
        self._check_room()
        call_id = self.rng.randbytes(CALL_ID_BYTES)
        call = Call(call_id, True, to_user, CallState.LOOKUP, now, now + INVITE_TIMEOUT_S)
        call.local_sdp, call.referred_by = sdp, referred_by
        self._add(call)
        req, sends = self.client.lookup(to_user, now)
        self._lookups[req] = call_id
        return call_id, sends

    def accept(self, call_id: bytes, sdp: str, now: float) -> list[Send]:
        call = self._get(call_id)
        if call.outgoing or call.state is not CallState.RINGING:
            raise LocalProtocolError("only a ringing incoming call can be accepted")
        call.local_sdp = sdp
        call.state, call.answered_at = CallState.ACTIVE, now
        call.deadline = float("inf")
        return self._send(call, CallKind.ACCEPT, now, sdp=sdp)

    def reject(self, call_id: bytes, reason: str, now: float) -> list[Send]:
        call = self._get(call_id)
        if call.outgoing or call.state not in (CallState.RINGING, CallState.VERIFYING):
            raise LocalProtocolError("only a ringing incoming call can be rejected")
        out = self._send(call, CallKind.REJECT, now, reason=reason)
        self._end(call, reason, now, by_peer=False)
        return out

    def hangup(self, call_id: bytes, now: float, reason: str = "hung up") -> list[Send]:
        """End the call whatever its state: CANCEL, REJECT (declined) or BYE (`reason`)."""
        call = self._get(call_id)
        if call.state is CallState.ENDED:
            return []
        if call.outgoing and call.state in (CallState.INVITING, CallState.RINGING):
            out = self._send(call, CallKind.CANCEL, now, reason="cancelled")
        elif not call.outgoing and call.state in (CallState.RINGING, CallState.VERIFYING):
            out = self._send(call, CallKind.REJECT, now, reason="declined")
        elif call.state is CallState.ACTIVE:
            out = self._send(call, CallKind.BYE, now, reason=reason)
        else:
            out = []
        self._end(call, reason, now, by_peer=False)
        return out

    def hold(self, call_id: bytes, held: bool, now: float) -> list[Send]:
        call = self._get(call_id)
        if call.state is not CallState.ACTIVE:
            raise LocalProtocolError("only an active call can be held or resumed")
        if call.held_local == held:
            return []
        call.held_local = held
        self._events.append(CallHoldChanged(call_id, held, False))
        return self._send(call, CallKind.HOLD if held else CallKind.RESUME, now)

    def transfer(self, call_id: bytes, target: str, now: float) -> list[Send]:
        """Ask the peer to call `target` instead of us (blind transfer)."""
        call = self._get(call_id)
        if call.state is not CallState.ACTIVE or not valid_username(target):
            raise LocalProtocolError("transfer needs an active call and a valid username")
        return self._send(call, CallKind.TRANSFER, now, target=target)

    # -- inputs -----------------------------------------------------------------------------

    def has_events(self) -> bool:
        return bool(self._events)

    def pop_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def waits_for(self, event: Event) -> bool:
        """Whether `event` is the end of a lookup one of our calls started."""
        return isinstance(event, LookupDone) and event.req in self._lookups

    def on_lookup(self, done: LookupDone, now: float) -> list[Send] | None:
        """A lookup finished; None if it was not one of ours."""
        call_id = self._lookups.pop(done.req, None)
        if call_id is None:
            return None
        call = self.calls.get(call_id)
        if call is None or call.state not in (CallState.LOOKUP, CallState.VERIFYING):
            return []
        if done.presence is None:
            if call.outgoing:
                self._end(call, f"{call.peer_user} not found ({done.reason})", now, False)
                return []
            return self._refuse_invite(call, f"caller not in the directory ({done.reason})", now)
        body = decode_body(done.presence)
        assert isinstance(body, PresenceBody)  # the client core verified it
        if call.outgoing:
            call.peer_key, call.peer_via = done.presence.owner, list(body.supernodes)
            call.peer_node = body.node
            call.state, call.deadline = CallState.INVITING, now + INVITE_TIMEOUT_S
            return self._send(
                call, CallKind.INVITE, now, sdp=call.local_sdp, referred_by=call.referred_by
            )
        if done.presence.owner != call.peer_key:
            return self._refuse_invite(call, "caller key does not match the directory", now)
        return self._ring(call, now)

    def handle_deliver(self, msg: SignalDeliver, now: float) -> list[Send]:
        try:
            cm = decode_call_message(msg.payload)
        except DecodeError:
            return self._count("undecodable")
        if cm.to_user != self.client.username:
            return self._count("not for us")
        if not signature_valid(cm):
            call = self.calls.get(cm.call_id)
            if call is not None and call.state is not CallState.ENDED:
                return self._fail_closed(call, "signature check failed", now)
            if cm.kind is CallKind.INVITE and cm.call_id not in self._seen:
                return self._refuse_forged_invite(cm, now)
            return self._count("bad signature")
        call = self.calls.get(cm.call_id)
        if call is None:
            return self._incoming(cm, now) if cm.kind is CallKind.INVITE else self._count("no call")
        if cm.from_user != call.peer_user or (call.peer_key and cm.from_key != call.peer_key):
            return self._fail_closed(call, "signed by someone else than the peer", now)
        if cm.seq <= call.seq_in:
            return self._count("replayed or reordered")
        if call.state not in TRANSITIONS.get(cm.kind, frozenset()):
            return self._count(f"{cm.kind.name.lower()} in state {call.state.value}")
        call.seq_in = cm.seq
        if cm.reply_via:
            call.peer_via, call.peer_node = list(cm.reply_via), cm.from_node
        return self._on_message(call, cm, now)

    def handle_ack(self, msg: SignalAck, now: float) -> list[Send]:
        sent = self._signals.pop(msg.req, None)
        if sent is None or msg.delivered:
            return []
        call_id, kind = sent
        call = self.calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            return []
        if kind is CallKind.INVITE and call.state is CallState.INVITING and not call.relooked:
            # the callee moved to other supernodes since the presence we found: look again
            call.relooked = True
            call.state, call.deadline = CallState.LOOKUP, now + INVITE_TIMEOUT_S
            req, sends = self.client.lookup(call.peer_user, now)
            self._lookups[req] = call.call_id
            return sends
        if kind in (CallKind.INVITE, CallKind.ACCEPT, CallKind.RINGING):
            self._end(call, f"{call.peer_user} unreachable ({msg.reason})", now, False)
        return []

    # -- transitions ------------------------------------------------------------------------

    def _incoming(self, cm: CallMessage, now: float) -> list[Send]:
        if cm.call_id in self._seen:
            return self._count("replayed invite")
        if abs(cm.sent_ms / 1000 - now) > MAX_CLOCK_SKEW_S:
            return self._count("invite too old or from the future")
        if len(self.calls) >= MAX_CALLS:
            return self._count("too many calls")
        call = Call(
            cm.call_id, False, cm.from_user, CallState.VERIFYING, now, now + INVITE_TIMEOUT_S
        )
        call.peer_key, call.peer_via, call.remote_sdp = cm.from_key, list(cm.reply_via), cm.sdp
        call.peer_node = cm.from_node
        call.referred_by, call.seq_in, call.invite = cm.referred_by, cm.seq, cm
        self._add(call)
        pinned = self.client.pinned.get(cm.from_user)
        if pinned is not None:
            if pinned != cm.from_key:
                return self._refuse_invite(call, "caller key does not match the contact's", now)
            return self._ring(call, now)
        req, sends = self.client.lookup(cm.from_user, now)
        self._lookups[req] = call.call_id
        return sends

    def _ring(self, call: Call, now: float) -> list[Send]:
        # longer than the caller's ring timeout: its CANCEL normally ends the call here
        call.state, call.deadline = CallState.RINGING, now + RING_TIMEOUT_S + INVITE_TIMEOUT_S
        call.invite = None
        self._events.append(
            CallIncoming(call.call_id, call.peer_user, call.remote_sdp, call.referred_by)
        )
        return self._send(call, CallKind.RINGING, now)

    def _refuse_forged_invite(self, cm: CallMessage, now: float) -> list[Send]:
        """Tell the named caller (signed by us, through the supernodes it named) that its
        invite arrived altered, so its call fails with that reason instead of a timeout.
        Nothing is kept but the call id (a replay gets no second answer)."""
        self._count("bad signature")
        if not valid_username(cm.from_user) or cm.from_user == self.client.username:
            return []
        call = Call(cm.call_id, False, cm.from_user, CallState.VERIFYING, now, now)
        call.peer_via, call.peer_node = list(cm.reply_via), cm.from_node
        self._seen[cm.call_id] = None
        return self._send(call, CallKind.REJECT, now, reason="invite signature check failed")

    def _refuse_invite(self, call: Call, reason: str, now: float) -> list[Send]:
        out = self._send(call, CallKind.REJECT, now, reason=reason)
        self._end(call, reason, now, by_peer=False)
        return out

    def _on_message(self, call: Call, cm: CallMessage, now: float) -> list[Send]:
        kind = cm.kind
        if kind is CallKind.RINGING:
            call.state, call.deadline = CallState.RINGING, now + RING_TIMEOUT_S
            self._events.append(CallRinging(call.call_id))
        elif kind is CallKind.ACCEPT:
            call.state, call.answered_at, call.deadline = CallState.ACTIVE, now, float("inf")
            call.remote_sdp = cm.sdp
            self._events.append(CallAnswered(call.call_id, cm.sdp))
        elif kind in (CallKind.REJECT, CallKind.CANCEL, CallKind.BYE):
            self._end(call, cm.reason or kind.name.lower(), now, by_peer=True)
        elif kind in (CallKind.HOLD, CallKind.RESUME):
            call.held_remote = kind is CallKind.HOLD
            self._events.append(CallHoldChanged(call.call_id, call.held_remote, True))
        elif kind is CallKind.TRANSFER:
            if not valid_username(cm.target):
                return self._count("bad transfer target")
            self._events.append(CallTransferRequested(call.call_id, cm.target, call.peer_user))
            out = self._send(call, CallKind.BYE, now, reason=f"transferred to {cm.target}")
            self._end(call, f"transferred to {cm.target}", now, by_peer=False)
            return out
        return []

    def _fail_closed(self, call: Call, reason: str, now: float) -> list[Send]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if call.state is CallState.ENDED:
            return []
        incoming_unanswered = not call.outgoing and call.state is not CallState.ACTIVE
        kind = CallKind.REJECT if incoming_unanswered else CallKind.BYE  # BYE ends any state
        out = self._send(call, kind, now, reason=reason) if call.peer_via else []
        self._end(call, reason, now, by_peer=False)
        return out

    def _end(self, call: Call, reason: str, now: float, by_peer: bool) -> None:
        if call.state is CallState.ENDED:
            return
        call.state, call.ended_at, call.end_reason = CallState.ENDED, now, reason
        call.deadline = now + ENDED_LINGER_S
        call.invite = None
        self._events.append(CallEnded(call.call_id, reason, by_peer))

    # -- sending ----------------------------------------------------------------------------

    def _send(self, call: Call, kind: CallKind, now: float, **fields: str) -> list[Send]:
        client = self.client
        if client.primary is None:
            if kind in (CallKind.INVITE, CallKind.ACCEPT, CallKind.RINGING):
                self._end(call, "not attached to a supernode", now, by_peer=False)
            return []
        call.seq_out += 1
        via = [bytes(sn) for sn in (client.primary, client.backup) if sn is not None]
        cm = make_call_message(
            client.user_keys,
            call_id=call.call_id,
            kind=kind,
            seq=call.seq_out,
            sent_ms=int(now * 1000),
            from_user=client.username,
            to_user=call.peer_user,
            from_node=bytes(client.node_keys.node_id),
            reply_via=via,
            **fields,
        )
        req = client._next_req()
        self._signals[req] = (call.call_id, kind)
        return [
            (client.primary, Signal(req, call.peer_node, call.peer_via, encode_call_message(cm)))
        ]

    # -- time and bookkeeping ---------------------------------------------------------------

    def next_timer(self) -> float | None:
        due = min((c.deadline for c in self.calls.values()), default=None)
        return None if due is None or due == float("inf") else due  # inf: an active call

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        for call in sorted(self.calls.values(), key=lambda c: (c.deadline, c.call_id)):
            if call.deadline > now:
                break
            if call.state is CallState.ENDED:
                del self.calls[call.call_id]
            elif call.state is CallState.RINGING and call.outgoing:
                out.extend(self._send(call, CallKind.CANCEL, now, reason="no answer"))
                self._end(call, "no answer", now, by_peer=False)
            elif call.state is CallState.RINGING:
                self._end(call, "not answered", now, by_peer=False)
            else:
                unreachable = call.outgoing and call.state is CallState.INVITING
                reason = f"{call.peer_user} unreachable (timeout)" if unreachable else "timeout"
                self._end(call, reason, now, by_peer=False)
        return out

    def _add(self, call: Call) -> None:
        self.calls[call.call_id] = call
        self._seen[call.call_id] = None
        while len(self._seen) > MAX_REMEMBERED_IDS:
            self._seen.popitem(last=False)

    def _get(self, call_id: bytes) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise LocalProtocolError("no such call")
        return call

    def _check_room(self) -> None:
        if len(self.calls) >= MAX_CALLS:
            raise LocalProtocolError(f"at most {MAX_CALLS} calls at once")

    def _count(self, reason: str) -> list[Send]:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return []
