"""The control API's JSON views as text for a person (the CLI prints these; `--json`
keeps the views for scripts). Plain words, no field names, and a hint where a number alone
would not say whether it matters."""

from __future__ import annotations

import time
from typing import Any

# refused-input counters a person may meet, and what they mean (the others are named as is)
ERROR_HINTS = {
    "relay_auth_bad_integrity": "relay requests with a wrong password (usually an expired "
    "credential: harmless unless it keeps growing fast)",
    "relay_auth_unknown_user": "relay requests with a credential we did not issue",
    "auth_failed": "links whose key check failed",
    "internal_errors": "internal errors (a bug: node.log has the traceback)",
    "socket_errors": "socket errors (a network interface went away?)",
    "drop_undecodable": "undecodable messages",
    "drop_dial_failed": "messages to peers that could not be reached",
}
KIB = 1024


def short_id(hex_id: str | None) -> str:
    return (hex_id or "-")[:8]


def amount(count: int, one: str, many: str = "") -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def size(n: int | None) -> str:
    n = n or 0
    if n < 10 * KIB:
        return f"{n} B"
    if n < 10 * KIB * KIB:
        return f"{n / KIB:.0f} KiB"
    return f"{n / KIB / KIB:.1f} MiB"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def status_text(st: dict[str, Any]) -> str:
    """`peerphone status` for a person."""
    rows = [
        (
            "you",
            f"{st['name']}, "
            + (st["status"] if st["state"] == "online" else f"{st['state']}, not reachable yet")
            + f" (device {st['device']!r}, key {short_id(st['user_key'])})",
        ),
        ("node", f"{short_id(st['node_id'])}, running for {duration(st['uptime_s'])}"),
        ("role", _role(st)),
        ("network", _network(st)),
    ]
    if st["contacts"]:
        rows.append(("contacts", amount(st["contacts"], "contact")))
    rows += _managed(st)
    rows += _sharing(st)
    rows.append(("problems", _problems(st)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _managed(st: dict[str, Any]) -> list[tuple[str, str]]:
    """The policy file's lines: which file, what it fixed, what it overrode."""
    managed = st.get("managed")
    if not managed:
        return []
    fixed = managed["fixed"]
    sns = ", ".join(f"{short_id(s['node_id'])} at {s['address']}" for s in fixed["supernodes"])
    parts = [f"role {fixed['role']}", f"supernodes only {sns}", f"listen {fixed['listen']}"]
    parts += [f"{key} {fixed[key]}" for key in ("tcp_listen", "control") if fixed.get(key)]
    if fixed.get("relays"):
        parts.append(f"relays only {', '.join(fixed['relays'])}")
    allowed = fixed.get("calls_allowed")
    if allowed:
        who = [f"*{s}" for s in allowed["suffixes"]] + [short_id(k) for k in allowed["keys"]]
        parts.append(f"calls only with {', '.join(who)}")
    rows = [("managed", f"managed by {managed['file']}: fixed {'; '.join(parts)}")]
    rows += [("", note) for note in managed["overridden"]]
    return rows


def _role(st: dict[str, Any]) -> str:
    return _role_line(st["role"], st["role_reason"])


def _role_line(role: str, reason: str) -> str:
    reason = reason or "elected by the tier"
    return reason if reason.startswith(role) else f"{role}: {reason}"


def _network(st: dict[str, Any]) -> str:
    network = st.get("network") or {}
    primary, backup = st["attached"]["primary"], st["attached"]["backup"]
    if primary is None:
        return f"NOT attached: {network.get('problem') or 'attaching'}"
    if primary["node_id"] == st["node_id"]:
        where = "to itself (this node is its own supernode)"
    else:
        where = f"to supernode {short_id(primary['node_id'])}"
        if primary.get("address"):
            where += f" at {primary['address']} ({primary['transport'].upper()})"
    second = f"backup {short_id(backup['node_id'])}" if backup else "no backup supernode yet"
    return f"attached {where}; {second}"


def _sharing(st: dict[str, Any]) -> list[tuple[str, str]]:
    sharing = st["sharing"]
    caps = sharing["limits"]
    cap_text = (
        f"at most {caps['max_clients']} clients, relay {caps['up_kbps']} kbit/s, directory "
        f"and signaling {caps['directory_kbps']} kbit/s, "
        f"{caps['cpu_percent']} % of one CPU core ([share] in config.toml)"
    )
    sn = st["supernode"]
    if sn is None:
        if not sharing["consented"]:
            if not caps["max_clients"]:
                return [("sharing", "nothing: [share] max_clients = 0 never serves others")]
            return [("sharing", "nothing: --role client never serves others")]
        return [("sharing", "nothing now; as a supernode it would give " + cap_text)]
    rows = [
        (
            "sharing",
            f"serving {sn['clients_served']} of at most {sn['max_clients']} clients "
            f"(backup for {sn['backup_for']}), holding "
            f"{amount(sn['records_held'], 'directory record')}; "
            f"{amount(sn['membership_size'], 'supernode')} in the tier",
        ),
        ("caps", cap_text + "; bytes shared now, today, this month: peerphone sharing"),
    ]
    relay = sharing.get("relay")
    if relay is None:
        problem = sharing.get("relay_problem") or "not started"
        rows.append(("relay", f"NOT running: {problem}"))
    else:
        rows.append(
            (
                "relay",
                f"running ({', '.join(relay['urls'])}): "
                f"{amount(relay['allocations'], 'relayed call')} now, "
                f"{relay['rate_kbps']:.0f} of {relay['cap_kbps']:.0f} kbit/s, "
                f"{size(relay['total_bytes_relayed'])} relayed in all",
            )
        )
        for alloc in relay["per_allocation"]:
            rows.append(
                (
                    "",
                    f"  for {alloc['client']} ({alloc['transport']}) to "
                    f"{', '.join(alloc['peers']) or 'no peer yet'}: "
                    f"{size(alloc['bytes_to_peers'])} out, {size(alloc['bytes_from_peers'])} in",
                )
            )
    return rows


def _problems(st: dict[str, Any]) -> str:
    errors: dict[str, int] = st["errors"]
    if not errors:
        return "none"
    parts = [f"{n} {ERROR_HINTS.get(k, k.replace('_', ' '))}" for k, n in sorted(errors.items())]
    return f"{st['errors_total']} inputs refused: " + "; ".join(parts)


def lookup_text(res: dict[str, Any]) -> str:
    """`peerphone lookup` for a person."""
    name = res["name"]
    if res["found"]:
        rec = res["record"]
        state = "online" if res["online"] else "offline"
        if res["online"] and res["status"] != "online":
            state = f"online, {res['status']}"
        return (
            f"{name} is {state} (verified: key {short_id(rec['owner'])}, device "
            f"{rec.get('device', '-')!r}, {', '.join(rec.get('addresses', [])) or 'no address'})"
            f" - {res['latency_ms']:.0f} ms, {amount(res['hops'], 'hop')}"
        )
    if not res.get("attached", True):
        return f"cannot look {name} up: {res['reason']}"
    if res.get("registered") is False:
        return f"{name}: no such user (the name was never registered)"
    if res.get("registered"):
        return f"{name} is registered but offline (no presence in the directory)"
    return f"{name}: lookup failed ({res['reason']})"


def _rate(value: object) -> str:
    if isinstance(value, dict):
        return f"{value.get('sent', '-')} kbit/s sent, {value.get('received', '-')} received"
    return "-"


# before this much connected time, a whole-call average is mostly the set-up burst
MIN_RATE_SECONDS = 2.0


def call_text(c: dict[str, Any]) -> str:
    """One call on one line: who, state (with the held mark), path and statistics."""

    def num(key: str, fmt: str) -> str:
        value = c.get(key)
        return "-" if value is None else format(value, fmt)

    state = c["state"]
    if c.get("held"):
        state += " (HELD)"
    if c.get("end_reason"):
        state += f" ({c['end_reason']})"
    seconds = c.get("connected_s")
    rate = "bitrate -"
    if seconds is not None and seconds >= MIN_RATE_SECONDS:
        rate = _rate(c.get("bitrate_kbps"))
    return (
        f"call {c['call_id'][:8]} {c['direction']} {c['peer']}: {state}"
        + f", path {c.get('path') or '-'}, setup {num('setup_ms', '.0f')} ms, "
        f"rtt {num('rtt_ms', '.1f')} ms, jitter {num('jitter_ms', '.1f')} ms, "
        f"{quality_text(c)}, {rate}, "
        f"{c.get('bytes_sent') or 0} B sent, {c.get('bytes_received') or 0} B received"
    )


def _percent(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:.1f} %"
    return "-"


def quality_text(c: dict[str, Any]) -> str:
    """A call's loss both ways (in: the peer's packets lost on the way to us, out: ours),
    and, when measured, the share of audio concealed and the estimated MOS."""
    parts = [f"loss in/out {_percent(c.get('loss'))}/{_percent(c.get('loss_out'))}"]
    if c.get("concealed") is not None:
        parts.append(f"concealed {_percent(c['concealed'])}")
    mos = c.get("mos_estimate")
    if isinstance(mos, int | float) and not isinstance(mos, bool):
        parts.append(f"MOS est. {mos:.1f}")
    return ", ".join(parts)


def event_text(e: dict[str, Any]) -> str | None:
    """One event from the control API's WebSocket as a line (None: not worth a line)."""
    kind = e.get("type", "?")
    call = short_id(e.get("call_id"))
    if kind == "PresenceChanged":
        device = f" on {e['device']!r}" if e.get("device") else ""
        return f"presence  {e.get('name')} is now {e.get('status')}{device}"
    if kind == "CallIncoming":
        via = f" (transferred by {e['referred_by']})" if e.get("referred_by") else ""
        return (
            f"call      incoming call {call} from {e.get('from_user')}{via}: "
            f"peerphone answer {call} / peerphone decline {call}"
        )
    texts = {
        "CallRinging": f"call      call {call} is ringing",
        "CallAnswered": f"call      call {call} answered",
        "CallEnded": f"call      call {call} ended: {e.get('reason')}"
        + (" (by the peer)" if e.get("by_peer") else ""),
        "CallHoldChanged": f"call      call {call} "
        + ("held" if e.get("held") else "resumed")
        + (" by the peer" if e.get("by_peer") else ""),
        "CallTransferRequested": f"call      call {call}: {e.get('by_user')} transfers us "
        f"to {e.get('target')}",
        "Attached": f"network   attached to supernode {short_id(e.get('primary'))}",
        "AttachLost": f"network   lost supernode {short_id(e.get('supernode'))}, re-attaching",
        "RoleChanged": "role      now "
        + ("a supernode" if e.get("supernode") else "a client")
        + f": {e.get('reason')}",
        "PublishRefused": f"network   the directory refused our presence: {e.get('reason')}",
        "KeyPinned": f"contacts  {e.get('username')}'s key pinned: {short_id(e.get('key'))}",
        "NodeStopping": "node      the node is stopping",
    }
    return texts.get(kind)


# exit statuses of `peerphone call` and `answer` for a call that ended before it connected
EXIT_FAILED = 1  # unreachable, not found, media failed...
EXIT_DECLINED = 3
EXIT_BUSY = 4
EXIT_NO_ANSWER = 5
# what a person reads about such a call, by (a word in) its end reason
END_MESSAGES = (
    ("declined", EXIT_DECLINED, "{peer} declined the call"),
    ("busy", EXIT_BUSY, "{peer} is busy"),
    ("no answer", EXIT_NO_ANSWER, "no answer from {peer}"),
    ("timeout", EXIT_NO_ANSWER, "no answer from {peer} (timeout)"),
)
PROGRESS = {
    "lookup": "looking {peer} up in the directory...",
    "verifying": "checking the caller's key...",
    "inviting": "calling {peer}...",
    "ringing": "ringing at {peer}...",
    "connecting": "answered: connecting the audio...",
}


def call_progress_text(call: dict[str, Any]) -> str:
    """Where a call that is not connected yet stands ("" if nothing to say)."""
    state = call["state"]
    if state == "active":
        state = "connecting"
    return PROGRESS.get(state, "").format(peer=call["peer"])


def call_end_text(call: dict[str, Any]) -> tuple[int, str]:
    """Why a call ended before it connected, and the exit status that says so."""
    reason = call.get("end_reason") or "ended"
    for key, code, message in END_MESSAGES:
        if key in reason:
            return code, message.format(peer=call["peer"])
    return EXIT_FAILED, reason


SHARING_TITLES = {
    "directory_signaling": "directory+signaling (overlay traffic while a supernode)",
    "relay": "relay (TURN)",
}
SHOWN_ROLE_CHANGES = 5


def _kbits(bytes_per_s: float) -> str:
    return f"{bytes_per_s * 8 / 1000:.1f} kbit/s"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _cap_text(cap: dict[str, Any] | None) -> str:
    if cap is None:
        return "no cap set"
    limit = cap["bytes_per_s"]
    used = cap["now_bytes_per_s"]
    share = f" ({100 * used / limit:.0f} %)" if limit else ""
    return f"cap {limit * 8 / 1000:g} kbit/s of {cap['counts']}: {_kbits(used)}{share}"


def _volume_text(volume: dict[str, Any]) -> str:
    def one(used: int, cap: int | None) -> str:
        return f"{size(used)}" + (f" of {cap / 1e6:g} MB ({100 * used / cap:.0f} %)" if cap else "")

    return (
        f"today {one(volume['today_bytes'], volume['today_cap_bytes'])}, this month "
        f"{one(volume['month_bytes'], volume['month_cap_bytes'])} (both categories, both ways)"
    )


def _duty_rows(duty: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The shedding ladder: its step and why, the caps reached, the steps taken."""
    if duty is None:
        return []
    step = duty["step"] + (f" ({duty['reason']})" if duty["reason"] else "")
    rows = [("duty", f"{step}; order: {' -> '.join(duty['order'])}")]
    rows += [("  reached", f"{r['why']}: asks for {r['asks_for']}") for r in duty["reached"]]
    taken = ", ".join(f"{label} {n}x" for label, n in duty["taken"].items() if n)
    rows.append(("  taken", taken or "no step so far"))
    for i, change in enumerate(duty["changes"][:SHOWN_ROLE_CHANGES]):
        line = f"{_utc(change['at'])}  {change['from']} -> {change['to']}: {change['reason']}"
        rows.append(("  changes" if i == 0 else "", line))
    if duty["declines_promotion"]:
        rows.append(("  declines", duty["declines_promotion"]))
    return rows


def sharing_text(v: dict[str, Any]) -> str:
    """`peerphone sharing` for a person: role and why, each category's bytes now, today and
    this month against its cap, clients, records, relay sessions, CPU."""
    rows = [("role", _role_line(v["role"], v["role_reason"]))]
    for i, change in enumerate(v["role_changes"][:SHOWN_ROLE_CHANGES]):
        line = f"{_utc(change['at'])}  {_role_line(change['role'], change['reason'])}"
        rows.append(("changes" if i == 0 else "", line))
    managed = _managed(v)  # "managed by FILE" and what it fixed, as status says it
    rows += managed or [("managed", "no: the owner's [share] settings decide (config.toml)")]
    for category, title in SHARING_TITLES.items():
        c = v["categories"][category]
        now, today, month = c["now"], c["today"], c["month"]
        rows += [
            (title, ""),
            (
                "  now",
                f"{_kbits(now['up_bytes_per_s'])} up, {_kbits(now['down_bytes_per_s'])} down "
                f"(last {v['window_s']} s); {_cap_text(c['cap'])}",
            ),
            (
                "  today",
                f"{size(today['up_bytes'])} up, {size(today['down_bytes'])} down ({v['day']} UTC)",
            ),
            (
                "  month",
                f"{size(month['up_bytes'])} up, {size(month['down_bytes'])} down "
                f"({v['month']} UTC)",
            ),
        ]
    rows.append(("volume", _volume_text(v["volume"])))
    relay = v["relay"]
    sessions = relay["sessions"]
    if not relay["running"]:
        state = f"not running: {relay['problem']}" if relay["problem"] else "not running"
        rows.append(("  sessions", state))
    else:
        rows.append(("  sessions", amount(len(sessions), "relayed session") + " now"))
    for s in sessions:
        peers = ", ".join(s["peers"]) or "no peer yet"
        rows.append(
            (
                "",
                f"    for {s['client']} ({s['transport']}) to {peers}: "
                f"{size(s['bytes_to_peers'])} out, {size(s['bytes_from_peers'])} in",
            )
        )
    if v["role"] == "supernode":
        rows += [
            (
                "clients",
                f"{v['clients_served']} served (backup for {v['backup_for']}) of at most "
                f"{v['max_clients']}",
            ),
            ("records", f"{amount(v['records_held'], 'directory record')} held"),
        ]
    else:
        rows.append(("clients", "none: only a supernode serves clients and holds records"))
    rows += _duty_rows(v.get("duty"))
    rows += [
        ("cpu", _cpu_text(v["cpu"], v["window_s"])),
        ("bytes", "whole IP packets (UDP headers included), as a firewall counts them"),
    ]
    width = max(len(k) for k, _ in rows if not k.startswith(("directory", "relay (")))
    return "\n".join(f"{k.ljust(width)}  {t}".rstrip() if t else k for k, t in rows)


def _cpu_text(cpu: dict[str, Any], window_s: int) -> str:
    now = cpu["now_percent"]
    measured = "measuring" if now is None else f"{now:.1f} % of one core (last {window_s} s)"
    enforced = " (enforced: over it for a minute, duty is shed)" if cpu["cap_enforced"] else ""
    return f"{measured}, {cpu['process_s']:.1f} s since start; cap {cpu['cap_percent']} %{enforced}"
