"""A stock `peerphone node` that reports more capacity than it measured, as a node that
wants to be a supernode would run it.

    python -m tests.support.attackers.lying_candidate node --data-dir ... [opts]

The patch replaces what the node measured of itself (daemon/measure.py) with the best a
`Capacity` can say: reachable, up for years, a terabit of upload and a thousand spare cores,
at the ports it really listens on (so the tier could dial it, if it could reach it). Kept
in the tests' support code, never in `src/`.
"""

from __future__ import annotations

import sys

from peerphone import cli
from peerphone.daemon import measure
from peerphone.records import Capacity

BIG = 10**9


def boasted(
    self: measure.Measurements, up_kbps_cap: int, cpu_percent_cap: int, udp: int, tcp: int
) -> Capacity:
    return Capacity(True, BIG, BIG, BIG, BIG, udp, tcp)


def main(argv: list[str]) -> int:
    measure.Measurements.capacity = boasted  # type: ignore[method-assign]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
