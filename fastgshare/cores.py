"""Which CPU cores a replica on the CPU device is pinned to. Pure.

On the CPU device an SM share maps to a core set (``fastgshare.resources.cores_for_share``).
We pick the least-loaded cores so replicas spread before they stack; ties go to the lowest core
so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fastgshare.resources import cores_for_share


def pick_cores(device_cores: Sequence[int], sm_pct: int, load: Mapping[int, int]) -> tuple[int, ...]:
    """``cores_for_share(sm_pct)`` cores of ``device_cores``, least ``load`` (replicas) first."""
    n = cores_for_share(sm_pct, len(device_cores))
    ranked = sorted(device_cores, key=lambda c: (load.get(c, 0), c))
    return tuple(sorted(ranked[:n]))
