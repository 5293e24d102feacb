"""Processes by PID: whether one is still alive (the daemon's pid file, the NAT lab)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
DEAD_STATES = ("Z", "X")  # zombie (exited, not yet reaped) and dead: neither runs again


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie counts as gone).

    Linux reads /proc/PID/stat; elsewhere `kill(pid, 0)` answers (a zombie counts as
    alive there). A process of another user counts as alive.
    """
    if pid <= 0:
        return False  # kill(0 or -N, 0) would ask about process groups
    if PROC.is_dir():
        try:
            stat = (PROC / str(pid) / "stat").read_text("ascii", errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            return False
        fields = stat.rsplit(")", 1)[-1].split()  # after the command name, which may hold ")"
        return bool(fields) and fields[0] not in DEAD_STATES
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
