"""`peerphone open`: the node's softphone page in the browser, logged in by a one-time link."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

from peerphone.daemon.client import ControlClient
from peerphone.endpoints import format_address


def login_url(data_dir: Path) -> str:
    """A fresh one-time login link to the running node's softphone page (60 s, once)."""
    client = ControlClient(data_dir)
    token = client.request("POST", "/v1/ui/login-token", {})["token"]
    host = str(client.info.get("host", "127.0.0.1"))
    return f"http://{format_address((host, int(client.info['port'])))}/login?token={token}"


def cmd_open(args: argparse.Namespace) -> int:
    """Open the page (or, with --print-url or without a browser, print the link)."""
    url = login_url(args.data_dir)
    if args.print_url:
        print(url)
        return 0
    if webbrowser.open(url):
        print("opened the softphone in your browser (the link works once, for 60 s)")
        return 0
    print("no browser found here; open this link within 60 s (it works once):", file=sys.stderr)
    print(url)
    return 0
