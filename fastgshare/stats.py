"""The one sample percentile of the project: what "p99" means in the profiler's tables, in
``fastgshare status``, in the sidecar's metrics and in every benchmark. Pure.

The definition is **nearest rank as MLPerf LoadGen computes it**: sort the n samples and take the
one at 0-based index ``floor(p/100 * n)`` (the last one for p = 100). That is the smallest sample
with *more* than p % of the samples at or below it; where ``p/100 * n`` is not a whole number it is
the textbook nearest rank ``ceil(p/100 * n)``, where it is whole it is one rank higher (the p99 of
100 samples is their maximum). Why this one:

- it is LoadGen's own (``loadgen/results.cc``: ``sample_latencies[sample_count * percentile]`` after
  ``std::sort``), so the platform's p99 and a LoadGen run's "99.00 percentile latency" are the same
  statistic, and a Server-scenario bound is checked the way MLPerf checks it;
- it is always one of the observed latencies, never an interpolation between two, so "p99 <= SLO"
  says that more than 99 % of the requests were answered within the SLO, and nothing weaker;
- it needs no convention beyond the index (numpy's default linear interpolation gives a value no
  request had, and its nine methods disagree).

A percentile of no samples is undefined: callers say what they want then (``empty``), NaN unless
they do. numpy arrays are taken as they are (partitioned, not sorted), but numpy is not imported
here: the sidecar imports this module and must stay small.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any


def percentile_index(n: int, pct: float) -> int:
    """The 0-based index of the ``pct`` percentile among ``n`` sorted samples (``n`` >= 1)."""
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile: pct must be within 0..100 (got {pct!r})")
    # Rounded first: 0.57 * 100 is 56.99999999999999, and 57 % of 100 samples is index 57.
    return min(n - 1, math.floor(round(pct * n / 100.0, 9)))


def percentile(values: Sequence[float] | Any, pct: float, *, empty: float = math.nan,
               presorted: bool = False) -> float:
    """The nearest-rank ``pct`` percentile (0..100) of ``values``; ``empty`` when there are none.
    ``presorted``: the values are sorted ascending already (no copy is made)."""
    n = len(values)
    if n == 0:
        return empty
    k = percentile_index(n, pct)
    if presorted:
        return float(values[k])
    np = sys.modules.get("numpy")  # never imported here: the sidecar imports this and not numpy
    if np is not None and isinstance(values, np.ndarray):
        return float(np.partition(values, k)[k])
    return float(sorted(values)[k])
