"""A lower bound on the GPUs any policy needs, from a linear-programming relaxation (HiGHS).

For a demand vector (rate per function), choose fractional replica counts ``x[f, c]`` of every
config ``c`` whose capacity at the SLO covers each function's rate, and minimise ``G`` subject to
the replicas' guaranteed SM-time fitting in ``G`` devices and their memory (activations only:
weights may be shared) fitting in ``G`` devices. Integrality, packing geometry, cold starts and
forecasting errors are all relaxed away. Each function's minimum replica count is kept (as a
fractional count). ``gpus`` is the LP's value; ``gpus_int`` its ceiling (devices are whole).

Why it is a bound, and on what. It bounds the devices needed for *guaranteed* capacity: replicas
whose quota requests (what the arbiter guarantees) serve each function's rate within the SLO under
the latency model the policies plan with.

- Admission (``placement.fits_sm_time``, implied by the band rule) keeps the guaranteed SM-time
  (sum of sm x request) of each device <= 1, and every replica holds its activation memory; so
  ``G`` devices hold at most ``G`` of each, whatever the packing.
- The columns are every config a policy here plans with: the table's grid, the tiling SM shares
  (``choices.candidate_points``) and the ``1 - STANDBY_REQUEST`` quotas of planned replicas beside
  a standby (``choices.room_points``). Configs between them (any integer SM share, any quota the
  table interpolates) are not columns; the best capacity per SM-time over every integer SM share in
  the table's range x quotas in 0.01 steps x batches is the columns' best on the bench's tables
  (``tests/unit/test_lower_bound.py`` checks it): a numerical check, not a proof for any table.
- A replica below the table's quota range (a standby's token request, limit above it) is served,
  in the simulator, on its limit's curve at request / limit of that rate: its SM-time and its
  capacity both scale by request / limit, i.e. it is a fraction of a column. That is also why the
  counts stay fractional: such replicas make any fraction of a column runnable, so a bound with
  integer replica counts (a MIP) over the columns is not valid for every policy the simulator can
  run, and widened to include those fractions its optimum is the LP's (the one difference, each
  fraction's own activation memory, is far from binding here: the SM-time row binds).
- Other valid cuts add nothing here: a function needs at least ``rate / (a replica's largest
  capacity)`` replicas, each with its activation memory; on the bench's functions that is a few
  devices' memory against ~33 devices of SM-time.

What it does not bound: capacity served on *borrowed* time. A replica past its request serves on
its device's idle SM-time (the arbiter lends it; the simulator models it, ``borrow_idle``), and
planned replicas at their capacity are busy only about ``profiled_utilisation`` (half) of their
request, so a policy that lived on borrowed time in steady state could sit under this bound in
the simulator (a bound for that would charge service time, about half of this one). Every policy
compared here plans its SLO capacity at requests (standby capacity is never counted in a plan), so
the bound is the floor for what they compete on; borrowing only adds to what they serve.

Pure arithmetic over its inputs; one solver instance is reused across demand vectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import highspy
import numpy as np

from fast_scheduler.choices import ConfigChoice


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
