"""Serving one node until it is told to stop: service, control API, clean exit."""

from __future__ import annotations

import logging

from peerphone.daemon.config import NodeConfig
from peerphone.daemon.control import start_control
from peerphone.daemon.datadir import DataDir, DataDirError
from peerphone.daemon.service import NodeService
from peerphone.procs import pid_alive

log = logging.getLogger("peerphone.node")


def check_not_running(data: DataDir) -> None:
    """Refuse a second node on one data directory (it would fight over keys and files)."""
    try:
        info = data.read_control()
    except DataDirError:
        return  # none, or unreadable: a stale file from a crash is replaced below
    pid = info.get("pid")
    if isinstance(pid, int) and pid_alive(pid):
        raise DataDirError(f"a node (pid {pid}) is already running with data directory {data.path}")


async def serve(data: DataDir, config: NodeConfig) -> int:
    """Run the node until SIGINT/SIGTERM or a fatal error; return the exit status."""
    service = NodeService(data, config)
    await service.start()
    try:
        runner = await start_control(service)
    except OSError:
        await service.shutdown()
        raise
    try:
        await service.stopping.wait()
    finally:
        data.remove_control()
        await runner.cleanup()
        await service.shutdown()
    return service.exit_status()
