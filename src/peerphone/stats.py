"""Summary statistics shared by the simulator, the benchmarks and the demo."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q`-th percentile of `values`, `q` in percent (0 < q <= 100).

    Convention: sort the values and take the one at rank ceil(q / 100 * n), counting from 1
    (rank 1 for q near 0), so the answer is always one of the values, never an
    interpolation: p50 of [1, 2, 3, 4] is 2, p100 is the maximum. An empty sequence gives
    0.0, so a report of a run that measured nothing still has numbers in every field.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100.0 * len(ordered))))
    return float(ordered[rank - 1])
