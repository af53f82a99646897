"""A lower bound on the GPUs any policy needs, from a linear-programming relaxation (HiGHS).

For a demand vector (rate per function), choose fractional replica counts ``x[f, c]`` of every
config ``c`` whose capacity at the SLO covers each function's rate, and minimise ``G`` subject to
the replicas' guaranteed SM-time fitting in ``G`` devices and their memory (activations only:
weights may be shared) fitting in ``G`` devices. Integrality, packing geometry, cold starts and
forecasting errors are all relaxed away, so no policy that meets the SLOs under the same latency
model can use fewer devices; ``ceil`` of it is still a bound. Each function's minimum replica count
is kept (as a fractional count).

Pure arithmetic over its inputs; one solver instance is reused across demand vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import highspy
import numpy as np

from fast_scheduler.autoscale import ConfigChoice


class GpuLowerBound:
    """Build once for a set of functions and their configs; ``gpus(demand)`` per instant."""

    def __init__(
        self,
        choices: Mapping[str, Sequence[ConfigChoice]],
        act_mem_frac: Mapping[str, float],
        min_replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.functions = list(choices)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        inf = highspy.kHighsInf
        nf = len(self.functions)
        # rows: one per function (cover its rate), SM-time, memory, one per function (min replicas)
        mins = [float((min_replicas or {}).get(f, 0)) if choices[f] else 0.0 for f in self.functions]
        # SM-time and memory rows are "used - G <= 0": inequalities (an equality would force the
        # smaller of the two up to G with padding replicas, and over-state the bound).
        h.addRows(
            2 * nf + 2,
            np.array([0.0] * nf + [-inf, -inf] + mins),
            np.array([inf] * nf + [0.0, 0.0] + [inf] * nf),
            0,
            np.array([], dtype=np.int32),
            np.array([], dtype=np.int32),
            np.array([], dtype=np.float64),
        )
        for i, f in enumerate(self.functions):
            for c in choices[f]:
                h.addCol(
                    0.0,
                    0.0,
                    inf,
                    4,
                    np.array([i, nf, nf + 1, nf + 2 + i], dtype=np.int32),
                    np.array([c.capacity_rps, c.config.area, act_mem_frac[f], 1.0]),
                )
        h.addCol(1.0, 0.0, inf, 2, np.array([nf, nf + 1], dtype=np.int32), np.array([-1.0, -1.0]))
        self._h = h
        self._nf = nf
        self._feasible = {f: bool(choices[f]) for f in self.functions}

    def gpus(self, demand_rps: Mapping[str, float]) -> float:
        """Fractional GPUs needed for ``demand_rps`` (functions with no SLO-feasible config add nothing)."""
        inf = highspy.kHighsInf
        for i, f in enumerate(self.functions):
            rate = max(0.0, float(demand_rps.get(f, 0.0))) if self._feasible[f] else 0.0
            self._h.changeRowBounds(i, rate, inf)
        self._h.run()
        if self._h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            raise RuntimeError(
                f"lower-bound LP not optimal: {self._h.modelStatusToString(self._h.getModelStatus())}"
            )
        return max(0.0, self._h.getInfo().objective_function_value)

    def gpus_int(self, demand_rps: Mapping[str, float]) -> int:
        """Whole GPUs: the ceiling of the LP value (tiny solver noise rounded away)."""
        return math.ceil(self.gpus(demand_rps) - 1e-7)
