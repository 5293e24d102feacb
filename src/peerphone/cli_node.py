"""`peerphone node` and the commands that drive a running node through its data directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from peerphone.daemon.client import ControlClient
from peerphone.daemon.config import ROLES, NodeConfig, load_config, save_config
from peerphone.daemon.datadir import DataDir

DEFAULT_DIR = Path(os.environ.get("PEERPHONE_DIR", Path.home() / ".peerphone"))


def _dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DIR,
        help="the node's data directory (default: $PEERPHONE_DIR or ~/.peerphone)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
    node.add_argument("--verbose", action="store_true")

    status = sub.add_parser("status", help="the running node's status")
    _dir_option(status)
    status.add_argument("--json", action="store_true")

    lookup = sub.add_parser("lookup", help="look a user up in the directory")
    _dir_option(lookup)
    lookup.add_argument("name")
    lookup.add_argument("--json", action="store_true")

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

    demo = sub.add_parser("demo", help="a local network of node processes, exercised")
    demo.add_argument("--nodes", type=int, default=12, help="node processes (default 12)")
    demo.add_argument("--json", type=Path, help="also write the report as JSON here")
    demo.add_argument("--keep", action="store_true", help="keep the node directories")

    set_status = sub.add_parser("set-status", help="online, away or busy")
    _dir_option(set_status)
    set_status.add_argument("status", choices=("online", "away", "busy"))


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


COMMANDS = {
    "demo": cmd_demo,
    "node": cmd_node,
    "status": cmd_status,
    "lookup": cmd_lookup,
    "contacts": cmd_contacts,
    "set-status": cmd_set_status,
}


def dispatch(args: argparse.Namespace) -> int | None:
    handler = COMMANDS.get(args.command)
    if handler is None:
        return None
    code = handler(args)
    sys.stdout.flush()
    return code
