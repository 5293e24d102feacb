"""`procs.pid_alive`: a running process is alive; an exited one (reaped or a zombie) is not."""

from __future__ import annotations

import os
import subprocess
import sys

from peerphone.procs import pid_alive


def test_this_process_is_alive() -> None:
    assert pid_alive(os.getpid())


def test_no_process_groups_and_no_such_pid() -> None:
    assert not pid_alive(0)
    assert not pid_alive(-1)
    assert not pid_alive(2**22 + 1)  # above Linux's pid_max (4 194 304)


def test_an_exited_child_is_gone_even_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid)
