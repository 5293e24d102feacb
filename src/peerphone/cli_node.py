"""`peerphone node` and the commands that drive a running node through its data directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from peerphone.daemon.client import ControlClient, ControlError
from peerphone.daemon.config import ROLES, checked_config, save_config
from peerphone.daemon.datadir import DataDir, DataDirError
from peerphone.daemon.sharing_cli import cmd_sharing
from peerphone.daemon.texts import (
    call_end_text,
    call_progress_text,
    call_text,
    event_text,
    lookup_text,
    status_text,
)
from peerphone.daemon.ui_login import cmd_open
from peerphone.records import valid_username

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DEFAULT_DIR = Path(os.environ.get("PEERPHONE_DIR", Path.home() / ".peerphone"))


def _dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DIR,
        help="the node's data directory (default: $PEERPHONE_DIR or ~/.peerphone)",
    )


def _add_node(sub: SubParsers) -> None:
    node = sub.add_parser("node", help="run a node until SIGINT/SIGTERM")
    _dir_option(node)
    node.add_argument("--name", help="username (registered on first start)")
    node.add_argument("--listen", metavar="HOST:PORT", help="UDP address (default 0.0.0.0:0)")
    node.add_argument("--tcp-listen", metavar="HOST:PORT", help="TCP carrier address")
    node.add_argument(
        "--bootstrap",
        action="append",
        metavar="[tcp://]HOST:PORT",
        help="a supernode to start from (repeatable; replaces the saved list)",
    )
    node.add_argument("--role", choices=ROLES)
    node.add_argument("--control", metavar="127.0.0.1:PORT", help="control API address")
    node.add_argument("--device", help="device name shown in presence")
    node.add_argument("--max-clients", type=int, help="clients served at most as a supernode")
    node.add_argument(
        "--auto-answer", action="store_true", default=None, help="answer incoming calls by itself"
    )
    node.add_argument("--answer-play", metavar="FILE.wav", help="what auto-answered callers hear")
    node.add_argument("--answer-record", metavar="DIR", help="record auto-answered calls here")
    node.add_argument(
        "--relay-allow",
        action="append",
        metavar="CIDR",
        help="let our relay reach this special range anyway (repeatable)",
    )
    node.add_argument("--turn-port", type=int, help="STUN/TURN UDP port as a supernode (3478)")
    node.add_argument("--links-max", type=int, metavar="N", help="QUIC links in all (4096)")
    node.add_argument(
        "--links-per-address", type=int, metavar="N", help="inbound links per source IP (16)"
    )
    node.add_argument(
        "--links-per-prefix", type=int, metavar="N", help="... per /24 or /48 prefix (64)"
    )
    node.add_argument(
        "--links-loopback-exempt",
        choices=("yes", "no"),
        help="whether loopback sources skip those two bounds (default yes)",
    )
    node.add_argument("--verbose", action="store_true")


def _media_options(parser: argparse.ArgumentParser, heard_by: str) -> None:
    parser.add_argument("--play", type=Path, metavar="FILE.wav", help=f"what {heard_by} hears")
    parser.add_argument("--record", type=Path, metavar="FILE.wav", help="record what we hear")
    parser.add_argument(
        "--mic", action="store_true", help="talk through the default microphone (PyAV)"
    )
    parser.add_argument(
        "--speaker", action="store_true", help="listen on the default speaker (PyAV)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="hang up after S seconds connected (default: return once connected; with "
        "--mic or --speaker, stay until the call ends or Ctrl-C)",
    )
    parser.add_argument("--json", action="store_true")


def _add_call(sub: SubParsers) -> None:
    call = sub.add_parser(
        "call", help="call a user: progress on stderr, the call's statistics on stdout"
    )
    _dir_option(call)
    call.add_argument("name")
    _media_options(call, "the callee")


def _add_answer(sub: SubParsers) -> None:
    answer = sub.add_parser("answer", help="answer a ringing call (default: the one ringing)")
    _dir_option(answer)
    answer.add_argument("call_id", nargs="?", default="", help="the call id or a unique prefix")
    _media_options(answer, "the caller")


def _add_decline(sub: SubParsers) -> None:
    decline = sub.add_parser("decline", help="decline a ringing call (default: the one ringing)")
    _dir_option(decline)
    decline.add_argument("call_id", nargs="?", default="", help="the call id or a unique prefix")


def _add_events(sub: SubParsers) -> None:
    events = sub.add_parser(
        "events", help="presence changes, incoming calls and call states, live, one line each"
    )
    _dir_option(events)
    events.add_argument("--json", action="store_true", help="each event as one JSON object")


def _add_calls(sub: SubParsers) -> None:
    calls = sub.add_parser("calls", help="current and recent calls")
    _dir_option(calls)
    calls.add_argument("--json", action="store_true")


def _add_hangup(sub: SubParsers) -> None:
    hangup = sub.add_parser("hangup", help="hang up a call")
    _dir_option(hangup)
    hangup.add_argument("call_id", help="the call id or a unique prefix")


def _add_transfer(sub: SubParsers) -> None:
    transfer = sub.add_parser("transfer", help="send the peer of a call on to another user")
    _dir_option(transfer)
    transfer.add_argument("call_id", help="the call id or a unique prefix")
    transfer.add_argument("name")


def _add_hold(sub: SubParsers) -> None:
    hold = sub.add_parser("hold", help="put a call on hold (--resume: take it off)")
    _dir_option(hold)
    hold.add_argument("call_id", help="the call id or a unique prefix")
    hold.add_argument("--resume", action="store_true")


def _add_status(sub: SubParsers) -> None:
    status = sub.add_parser("status", help="the running node's status")
    _dir_option(status)
    status.add_argument("--json", action="store_true")


def _add_sharing(sub: SubParsers) -> None:
    sharing = sub.add_parser("sharing", help="what this node gives the network, exactly")
    _dir_option(sharing)
    sharing.add_argument("--watch", action="store_true", help="again every second until Ctrl-C")
    sharing.add_argument("--json", action="store_true", help="as JSON (--watch: one line each)")


def _add_lookup(sub: SubParsers) -> None:
    lookup = sub.add_parser("lookup", help="look a user up in the directory")
    _dir_option(lookup)
    lookup.add_argument("name")
    lookup.add_argument("--json", action="store_true")


def _add_contacts(sub: SubParsers) -> None:
    contacts = sub.add_parser("contacts", help="the buddy list")
    contacts_sub = contacts.add_subparsers(dest="action", required=True)
    for action in ("add", "remove"):
        p = contacts_sub.add_parser(action)
        _dir_option(p)
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
    listing = contacts_sub.add_parser("list")
    _dir_option(listing)
    listing.add_argument("--json", action="store_true")


def _add_demo(sub: SubParsers) -> None:
    demo = sub.add_parser("demo", help="a local network of node processes, exercised")
    demo.add_argument("--nodes", type=int, default=12, help="node processes (default 12)")
    demo.add_argument("--json", type=Path, help="also write the report as JSON here")
    demo.add_argument("--keep", action="store_true", help="keep the node directories")


def _add_set_status(sub: SubParsers) -> None:
    set_status = sub.add_parser("set-status", help="online, away or busy")
    _dir_option(set_status)
    set_status.add_argument("status", choices=("online", "away", "busy"))


def add_commands(sub: SubParsers) -> None:
    """Add every node command (`COMMANDS`) to the `peerphone` parser."""
    for add, _ in COMMANDS.values():
        add(sub)


def cmd_demo(args: argparse.Namespace) -> int:
    from peerphone.demo import run_demo

    return run_demo(args.nodes, args.json, args.keep)


def cmd_node(args: argparse.Namespace) -> int:
    from peerphone.daemon.logs import setup_logging
    from peerphone.daemon.main import check_not_running, serve
    from peerphone.daemon.policy import load_policy
    from peerphone.runtime.node_runtime import run

    policy = load_policy()  # managed mode: a bad policy file stops us here
    if policy is not None:
        policy.check_options(vars(args))
    data = DataDir(args.data_dir)
    config = checked_config(args.data_dir, vars(args))  # bad: refused, naming FILE:LINE
    check_not_running(data)
    data.create()
    save_config(args.data_dir, config)  # the user's settings; the policy goes over them
    if policy is not None:
        policy.apply(config)
        config.check()
    setup_logging(data.log_file, args.verbose)
    return run(serve(data, config, args.turn_port is not None, policy))


def _print(value: Any, as_json: bool, text: str) -> None:
    print(json.dumps(value, indent=2) if as_json else text)


def cmd_status(args: argparse.Namespace) -> int:
    st = ControlClient(args.data_dir).status()
    _print(st, args.json, status_text(st))
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    _check_name(args.name)
    res = ControlClient(args.data_dir).lookup(args.name)
    _print(res, args.json, lookup_text(res))
    return 0 if res["found"] else 1


def _check_name(name: str) -> None:
    if not valid_username(name):
        raise ValueError(
            f"{name!r} is not a peerphone username: 1-32 of a-z, 0-9, '.', '_' and '-' "
            "(no spaces or capitals)"
        )


def _contacts_offline(args: argparse.Namespace, why: Exception) -> int:
    """The buddy list from the data directory, when no node runs to say who is online."""
    contacts = DataDir(args.data_dir).load_contacts()
    items = [
        {"name": c.name, "status": None, "pinned_key": c.key.hex() if c.key else None}
        for c in contacts
    ]
    print(f"(no node answers, so no presence: {why})", file=sys.stderr)
    text = "\n".join(f"{c['name']:<32} ?" for c in items) or "(no contacts)"
    _print(items, args.json, text)
    return 0


def cmd_contacts(args: argparse.Namespace) -> int:
    try:
        client = ControlClient(args.data_dir)
        if args.action == "list":
            items = client.request("GET", "/v1/contacts")
    except (DataDirError, ControlError) as exc:
        if args.action == "list":
            return _contacts_offline(args, exc)
        raise
    if args.action == "add":
        _check_name(args.name)
        res = client.request("POST", "/v1/contacts", {"name": args.name})
        _print(res, args.json, f"{args.name} {'added' if res['added'] else 'already a contact'}")
        found = client.lookup(args.name)
        if found.get("registered") is False:
            print(
                f"warning: no user {args.name!r} is registered (yet); you will see them "
                "online if they ever sign up with that name",
                file=sys.stderr,
            )
        elif not found["found"] and not found.get("registered"):
            print(f"warning: could not check {args.name!r}: {found['reason']}", file=sys.stderr)
    elif args.action == "remove":
        res = client.request("DELETE", f"/v1/contacts/{args.name}")
        _print(res, args.json, f"{args.name} removed")
    else:
        text = "\n".join(_contact_line(c) for c in items) or "(no contacts)"
        _print(items, args.json, text)
    return 0


def _contact_line(contact: dict[str, Any]) -> str:
    line = f"{contact['name']:<32} {contact['status']}"
    if contact.get("key_changed"):
        line += (
            f"  WARNING: key changed from {str(contact['pinned_key'])[:16]} to"
            f" {str(contact['owner'])[:16]}: do not trust it until you have compared the"
            " key with them another way"
        )
    return line


def cmd_set_status(args: argparse.Namespace) -> int:
    res = ControlClient(args.data_dir).request("POST", "/v1/presence", {"status": args.status})
    print(f"status: {res['status']}")
    return 0


CALL_TIMEOUT_S = 90.0  # from placing a call until connected; the core gives up at 60 s
POLL_S = 0.2
FINAL_STATS_POLLS = 50  # the final statistics are taken as the call ends
# exit statuses of `call` and `answer` (README, "Running a node")
# (and EXIT_FAILED, _DECLINED, _BUSY, _NO_ANSWER: daemon/texts.py, by end reason)
EXIT_INTERRUPTED = 130  # Ctrl-C: the call was hung up (the shell's code for SIGINT)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _media_body(args: argparse.Namespace) -> dict[str, Any]:
    """What the call plays and records; --mic/--speaker are checked here, on the node's
    machine, so that a missing device is said at once."""
    from peerphone.media.sinks import SpeakerSink
    from peerphone.media.sources import AudioDeviceUnavailable, microphone

    body: dict[str, Any] = {}
    for key in ("play", "record"):
        path = getattr(args, key)
        if path is not None:
            body[key] = str(path.resolve())
    if args.mic and args.play is not None:
        raise ValueError("--mic and --play both say what the peer hears: choose one")
    if args.speaker and args.record is not None:
        raise ValueError("--speaker and --record both take what we hear: choose one")
    try:
        if args.mic:
            microphone().stop()
            body["mic"] = True
        if args.speaker:
            SpeakerSink().close()
            body["speaker"] = True
    except AudioDeviceUnavailable as exc:
        what = "microphone" if args.mic and "mic" not in body else "speaker"
        instead = "--play FILE.wav" if what == "microphone" else "--record FILE.wav"
        raise ValueError(f"no {what} on this machine ({exc}); use {instead} instead") from None
    return body


def _connected(call: dict[str, Any]) -> bool:
    # connected = the media is up (ICE and DTLS, the peer's certificate checked), not
    # merely a nominated ICE pair
    return call["state"] == "active" and call.get("media_state") == "connected"


def _follow(
    client: ControlClient, call: dict[str, Any], args: argparse.Namespace, shown: str = ""
) -> int:
    """Show the call's progress (after `shown`) until it connects or ends; then stay as
    asked."""
    path = f"/v1/calls/{call['call_id']}"
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while call["state"] != "ended" and not _connected(call):
        step = call_progress_text(call)
        if step and step != shown:
            _stderr(step)
            shown = step
        if time.monotonic() > deadline:
            call = client.request("POST", path + "/hangup", {})
            break
        time.sleep(POLL_S)
        call = client.request("GET", path)
    if not _connected(call):
        _print(call, args.json, call_text(call))
        code, message = call_end_text(call)
        _stderr(f"call failed: {message}")
        return code
    _stderr(f"connected via {call.get('path') or 'an unknown path'} with {call['peer']}")
    stay = args.duration is not None or args.mic or args.speaker
    if stay:
        if args.duration is None:
            _stderr("in the call: Ctrl-C hangs up")
        end = None if args.duration is None else time.monotonic() + args.duration
        while call["state"] == "active" and (end is None or time.monotonic() < end):
            left = POLL_S * 5 if end is None else min(POLL_S * 5, end - time.monotonic())
            time.sleep(max(0.0, left))
            call = client.request("GET", path)
        if call["state"] == "active":
            client.request("POST", path + "/hangup", {})
        for _ in range(FINAL_STATS_POLLS):
            call = client.request("GET", path)
            if call["state"] == "ended":
                break
            time.sleep(POLL_S / 2)
        if call.get("end_reason"):
            _stderr(f"call ended: {call['end_reason']}")
    _print(call, args.json, call_text(call))
    return 0


def _hang_up_interrupted(client: ControlClient, call_id: str, peer: str) -> int:
    """Ctrl-C: hang up (CANCEL or BYE) the call, or the one just placed to `peer` if its
    id had not come back yet; exit quietly."""
    ids = [call_id] if call_id else []
    if not ids:
        ids = [
            c["call_id"]
            for c in client.request("GET", "/v1/calls")
            if c["peer"] == peer and c["direction"] == "outgoing" and c["state"] != "ended"
        ]
    for cid in ids:
        try:
            client.request("POST", f"/v1/calls/{cid}/hangup", {})
        except ControlError as exc:
            _stderr(f"could not hang up call {cid[:8]}: {exc}")
    _stderr("interrupted: call hung up" if ids else "interrupted")
    return EXIT_INTERRUPTED


def cmd_call(args: argparse.Namespace) -> int:
    _check_name(args.name)
    body = {"name": args.name, **_media_body(args)}
    client = ControlClient(args.data_dir, timeout_s=CALL_TIMEOUT_S)
    me = client.status()["name"]
    if args.name == me:
        raise ValueError(f"you are {me}: call someone else (a node cannot call its own name)")
    call_id = ""
    try:
        shown = call_progress_text({"state": "lookup", "peer": args.name})
        _stderr(shown)  # placing the call takes a moment (the offer is made first)
        call = client.request("POST", "/v1/calls", body)
        call_id = call["call_id"]
        return _follow(client, call, args, shown)
    except KeyboardInterrupt:
        return _hang_up_interrupted(client, call_id, args.name)


def _find_call(client: ControlClient, prefix: str, ringing: bool = False) -> dict[str, Any]:
    """The call whose id starts with `prefix`; with none given (`ringing`), the one
    incoming call that rings."""
    calls: list[dict[str, Any]] = client.request("GET", "/v1/calls")
    if not prefix and ringing:
        found = [c for c in calls if c["state"] == "ringing" and c["direction"] == "incoming"]
        if not found:
            raise ValueError("no call is ringing")
    else:
        if not prefix or any(ch not in "0123456789abcdef" for ch in prefix.lower()):
            raise ValueError(f"{prefix!r} is not a call id (hex digits; see peerphone calls)")
        found = [c for c in calls if c["call_id"].startswith(prefix.lower())]
        if not found:
            raise ValueError(f"no call with an id starting {prefix!r} (see peerphone calls)")
    if len(found) > 1:
        listed = ", ".join(f"{c['call_id'][:8]} ({c['peer']})" for c in found)
        raise ValueError(f"{len(found)} calls match: {listed}; give more of the id")
    return found[0]


def cmd_answer(args: argparse.Namespace) -> int:
    body = _media_body(args)
    client = ControlClient(args.data_dir, timeout_s=CALL_TIMEOUT_S)
    call = _find_call(client, args.call_id, ringing=True)
    try:
        _stderr(f"answering {call['peer']} (call {call['call_id'][:8]})...")
        call = client.request("POST", f"/v1/calls/{call['call_id']}/answer", body)
        return _follow(client, call, args)
    except KeyboardInterrupt:
        return _hang_up_interrupted(client, call["call_id"], call["peer"])


def cmd_decline(args: argparse.Namespace) -> int:
    client = ControlClient(args.data_dir)
    call = _find_call(client, args.call_id, ringing=True)
    if call["state"] != "ringing" or call["direction"] != "incoming":
        raise ValueError(f"call {call['call_id'][:8]} is not ringing here ({call['state']})")
    client.request("POST", f"/v1/calls/{call['call_id']}/hangup", {"reason": "declined"})
    print(f"declined the call from {call['peer']} (call {call['call_id'][:8]})")
    return 0


def cmd_calls(args: argparse.Namespace) -> int:
    items = ControlClient(args.data_dir).request("GET", "/v1/calls")
    _print(items, args.json, "\n".join(call_text(c) for c in items) or "(no calls)")
    return 0


def cmd_call_action(args: argparse.Namespace) -> int:
    action, body = args.command, {}
    if args.command == "transfer":
        _check_name(args.name)
        body = {"name": args.name}
    elif args.command == "hold":
        body = {"held": not args.resume}
    client = ControlClient(args.data_dir)
    call_id = _find_call(client, args.call_id)["call_id"]
    call = client.request("POST", f"/v1/calls/{call_id}/{action}", body)
    print(call_text(call))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    import asyncio

    client = ControlClient(args.data_dir)
    try:
        return asyncio.run(_stream_events(client, args.json))
    except KeyboardInterrupt:
        return 0


async def _stream_events(client: ControlClient, as_json: bool) -> int:
    """Print each event of the node's WebSocket as it comes, until the node stops."""
    import aiohttp

    headers = {"Authorization": f"Bearer {client.token}"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(client.base + "/v1/events", headers=headers) as ws,
        ):
            _stderr("listening for events (Ctrl-C to stop)")
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                line = json.dumps(event) if as_json else event_text(event)
                if line is not None:
                    if not as_json:
                        line = time.strftime("%H:%M:%S ", time.localtime(event["ts"])) + line
                    print(line, flush=True)
                if event.get("type") == "NodeStopping":
                    return 0
    except aiohttp.ClientError as exc:
        raise ControlError(f"the node at {client.base} does not answer: {exc}") from None
    _stderr("the node closed the connection")
    return 1


def _add_open(sub: SubParsers) -> None:
    parser = sub.add_parser("open", help="open the softphone page in the browser (logged in)")
    _dir_option(parser)
    parser.add_argument(
        "--print-url",
        action="store_true",
        help="print the one-time login link (valid 60 s) instead of opening a browser",
    )


# each command: how its arguments are parsed, and what runs it (in `peerphone --help` order)
COMMANDS: dict[str, tuple[Callable[[SubParsers], None], Callable[[argparse.Namespace], int]]] = {
    "node": (_add_node, cmd_node),
    "call": (_add_call, cmd_call),
    "answer": (_add_answer, cmd_answer),
    "decline": (_add_decline, cmd_decline),
    "events": (_add_events, cmd_events),
    "calls": (_add_calls, cmd_calls),
    "hangup": (_add_hangup, cmd_call_action),
    "transfer": (_add_transfer, cmd_call_action),
    "hold": (_add_hold, cmd_call_action),
    "status": (_add_status, cmd_status),
    "sharing": (_add_sharing, cmd_sharing),
    "lookup": (_add_lookup, cmd_lookup),
    "contacts": (_add_contacts, cmd_contacts),
    "demo": (_add_demo, cmd_demo),
    "set-status": (_add_set_status, cmd_set_status),
    "open": (_add_open, cmd_open),
}


def dispatch(args: argparse.Namespace) -> int | None:
    command = COMMANDS.get(args.command)
    if command is None:
        return None
    code = command[1](args)
    sys.stdout.flush()
    return code
