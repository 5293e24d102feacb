"""`peerphone sharing`: what the running node gives the network, once or every second."""

from __future__ import annotations

import argparse
import json
import sys
import time

from peerphone.daemon.client import ControlClient
from peerphone.daemon.texts import sharing_text

WATCH_INTERVAL_S = 1.0
CLEAR_SCREEN = "\033[H\033[2J"  # cursor home, erase the screen (ANSI)


def cmd_sharing(args: argparse.Namespace) -> int:
    """Print the node's sharing view (`--json`: as one JSON object); with `--watch`, again
    every second until Ctrl-C, which ends it quietly (status 0)."""
    client = ControlClient(args.data_dir)
    if not args.watch:
        view = client.request("GET", "/v1/sharing")
        print(json.dumps(view, indent=2) if args.json else sharing_text(view))
        return 0
    tty = sys.stdout.isatty()
    deadline = time.monotonic()
    try:
        while True:
            view = client.request("GET", "/v1/sharing")
            if args.json:  # one object per line, for a script that reads them as they come
                print(json.dumps(view), flush=True)
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(view["ts"]))
                head = f"{CLEAR_SCREEN if tty else ''}peerphone sharing at {stamp} (Ctrl-C to stop)"
                print(f"{head}\n\n{sharing_text(view)}\n", flush=True)
            deadline = max(deadline + WATCH_INTERVAL_S, time.monotonic())
            time.sleep(deadline - time.monotonic())
    except KeyboardInterrupt:
        return 0
