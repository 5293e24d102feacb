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

from peerphone.daemon.client import ControlClient
from peerphone.daemon.config import ROLES, NodeConfig, load_config, save_config
from peerphone.daemon.datadir import DataDir
from peerphone.daemon.ui_login import cmd_open

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


def _add_call(sub: SubParsers) -> None:
    call = sub.add_parser("call", help="call a user; prints the call's statistics")
    _dir_option(call)
    call.add_argument("name")
    call.add_argument("--play", type=Path, metavar="FILE.wav", help="what the callee hears")
    call.add_argument("--record", type=Path, metavar="FILE.wav", help="record what we hear")
    call.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="hang up after S seconds connected (default: return once connected)",
    )
    call.add_argument("--json", action="store_true")


def _add_calls(sub: SubParsers) -> None:
    calls = sub.add_parser("calls", help="current and recent calls")
    _dir_option(calls)
    calls.add_argument("--json", action="store_true")


def _add_hangup(sub: SubParsers) -> None:
    hangup = sub.add_parser("hangup", help="hang up a call")
    _dir_option(hangup)
    hangup.add_argument("call_id")


def _add_transfer(sub: SubParsers) -> None:
    transfer = sub.add_parser("transfer", help="send the peer of a call on to another user")
    _dir_option(transfer)
    transfer.add_argument("call_id")
    transfer.add_argument("name")


def _add_hold(sub: SubParsers) -> None:
    hold = sub.add_parser("hold", help="put a call on hold (--resume: take it off)")
    _dir_option(hold)
    hold.add_argument("call_id")
    hold.add_argument("--resume", action="store_true")


def _add_status(sub: SubParsers) -> None:
    status = sub.add_parser("status", help="the running node's status")
    _dir_option(status)
    status.add_argument("--json", action="store_true")


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
    from peerphone.runtime.node_runtime import run

    data = DataDir(args.data_dir)
    config = load_config(args.data_dir)
    _apply_options(config, args)
    config.check()
    check_not_running(data)
    data.create()
    save_config(args.data_dir, config)
    setup_logging(data.log_file, args.verbose)
    return run(serve(data, config))


def _apply_options(config: NodeConfig, args: argparse.Namespace) -> None:
    for option in ("name", "listen", "tcp_listen", "role", "control", "device"):
        value = getattr(args, option)
        if value is not None:
            setattr(config, option, value)
    if args.bootstrap is not None:
        config.bootstrap = list(args.bootstrap)
    if args.max_clients is not None:
        config.share.max_clients = args.max_clients
    if args.auto_answer is not None:
        config.auto_answer = True
    for option in ("answer_play", "answer_record"):
        value = getattr(args, option)
        if value is not None:
            setattr(config, option, str(Path(value).resolve()) if value else "")
    if args.turn_port is not None:
        config.turn_port = args.turn_port
    if args.relay_allow is not None:
        config.relay_allow = list(args.relay_allow)
    for option in ("links_max", "links_per_address", "links_per_prefix"):
        value = getattr(args, option)
        if value is not None:
            setattr(config, option, value)
    if args.links_loopback_exempt is not None:
        config.links_loopback_exempt = args.links_loopback_exempt == "yes"


def _print(value: Any, as_json: bool, text: str) -> None:
    print(json.dumps(value, indent=2) if as_json else text)


def cmd_status(args: argparse.Namespace) -> int:
    st = ControlClient(args.data_dir).status()
    attached = st["attached"]
    lines = [
        f"node      {st['node_id'][:16]}  user {st['name']}  ({st['state']}, {st['status']})",
        f"role      {st['role']} - {st['role_reason']}",
        f"addresses {', '.join(st['addresses']) or '-'}",
        "attached  primary {} backup {}".format(
            *(a["node_id"][:16] if a else "-" for a in (attached["primary"], attached["backup"]))
        ),
    ]
    sn = st["supernode"]
    if sn is not None:
        lines.append(
            f"serving   {sn['clients_served']}/{sn['max_clients']} clients, "
            f"backup for {sn['backup_for']}, {sn['records_held']} records, "
            f"membership {sn['membership_size']}"
        )
    lines.append(f"errors    {st['errors_total']} inputs dropped " + json.dumps(st["errors"]))
    _print(st, args.json, "\n".join(lines))
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    res = ControlClient(args.data_dir).lookup(args.name)
    if res["found"]:
        rec = res["record"]
        text = (
            f"{res['name']}: {res['status']} ({'online' if res['online'] else 'offline'}), "
            f"verified, key {rec['owner'][:16]}, addresses {', '.join(rec.get('addresses', []))}"
            f" - {res['latency_ms']:.1f} ms, {res['hops']} hops"
        )
    else:
        text = f"{res['name']}: not found ({res['reason']}) - {res['latency_ms']:.1f} ms"
    _print(res, args.json, text)
    return 0 if res["found"] else 1


def cmd_contacts(args: argparse.Namespace) -> int:
    client = ControlClient(args.data_dir)
    if args.action == "add":
        res = client.request("POST", "/v1/contacts", {"name": args.name})
        _print(res, args.json, f"{args.name} {'added' if res['added'] else 'already a contact'}")
    elif args.action == "remove":
        res = client.request("DELETE", f"/v1/contacts/{args.name}")
        _print(res, args.json, f"{args.name} removed")
    else:
        items = client.request("GET", "/v1/contacts")
        text = "\n".join(f"{c['name']:<32} {c['status']}" for c in items) or "(no contacts)"
        _print(items, args.json, text)
    return 0


def cmd_set_status(args: argparse.Namespace) -> int:
    res = ControlClient(args.data_dir).request("POST", "/v1/presence", {"status": args.status})
    print(f"status: {res['status']}")
    return 0


CALL_TIMEOUT_S = 60.0  # from placing a call until it is connected (or given up)
POLL_S = 0.2


def _rates(value: object) -> str:
    if isinstance(value, dict):
        return f"{value.get('sent', '-')} sent / {value.get('received', '-')} received"
    return "-" if value is None else str(value)


def _call_text(c: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        value = c.get(key)
        return "-" if value is None else format(value, fmt)

    return (
        f"call {c['call_id']} {c['direction']} {c['peer']}: {c['state']}"
        + (f" ({c['end_reason']})" if c.get("end_reason") else "")
        + f", path {c.get('path') or '-'}, setup {num('setup_ms', '.0f')} ms, "
        f"rtt {num('rtt_ms', '.1f')} ms, jitter {num('jitter_ms', '.1f')} ms, "
        f"loss {num('loss', '.3f')}, {_rates(c.get('bitrate_kbps'))} kbit/s, "
        f"{c.get('bytes_sent') or 0} B sent, {c.get('bytes_received') or 0} B received"
    )


def cmd_call(args: argparse.Namespace) -> int:
    client = ControlClient(args.data_dir, timeout_s=CALL_TIMEOUT_S)
    body: dict[str, Any] = {"name": args.name}
    for key in ("play", "record"):
        path = getattr(args, key)
        if path is not None:
            body[key] = str(path.resolve())
    call = client.request("POST", "/v1/calls", body)
    path = f"/v1/calls/{call['call_id']}"
    deadline = time.monotonic() + CALL_TIMEOUT_S
    # connected = the media is up (ICE and DTLS, the peer's certificate checked), not
    # merely a nominated ICE pair
    while call["state"] != "ended" and call.get("media_state") != "connected":
        if time.monotonic() > deadline:
            call = client.request("POST", path + "/hangup", {})
            break
        time.sleep(POLL_S)
        call = client.request("GET", path)
    connected = call["state"] == "active"
    if connected and args.duration is not None:
        end = time.monotonic() + args.duration
        while time.monotonic() < end and call["state"] == "active":
            time.sleep(min(POLL_S * 5, max(0.0, end - time.monotonic())))
            call = client.request("GET", path)
        if call["state"] == "active":
            client.request("POST", path + "/hangup", {})
        for _ in range(50):  # the final statistics are taken as the call ends
            call = client.request("GET", path)
            if call["state"] == "ended":
                break
            time.sleep(POLL_S / 2)
    _print(call, args.json, _call_text(call))
    return 0 if connected else 1


def cmd_calls(args: argparse.Namespace) -> int:
    items = ControlClient(args.data_dir).request("GET", "/v1/calls")
    _print(items, args.json, "\n".join(_call_text(c) for c in items) or "(no calls)")
    return 0


def cmd_call_action(args: argparse.Namespace) -> int:
    action, body = args.command, {}
    if args.command == "transfer":
        body = {"name": args.name}
    elif args.command == "hold":
        body = {"held": not args.resume}
    call = ControlClient(args.data_dir).request("POST", f"/v1/calls/{args.call_id}/{action}", body)
    print(_call_text(call))
    return 0


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
    "calls": (_add_calls, cmd_calls),
    "hangup": (_add_hangup, cmd_call_action),
    "transfer": (_add_transfer, cmd_call_action),
    "hold": (_add_hold, cmd_call_action),
    "status": (_add_status, cmd_status),
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
