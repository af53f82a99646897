"""The latency model the autoscaler plans with and the simulator serves with. Pure.

What a profile table point measures (``fast_profiler``): ``throughput_rps`` is the highest Poisson
rate ``lam*`` at which the replica kept p99 under the profiling SLO, and ``p50`` / ``p99`` are the
latencies measured *at that rate*, queueing included. So the point is one measured spot on the
replica's latency-versus-rate curve, not a light-load service time with a service rate above it.

The curve through it, an M/G/1-style shape anchored at the point:

- the replica's service rate is ``mu = lam* / rho*``: at its profiled rate a replica is busy a
  fraction ``rho*`` of the time (``LatencyModel.profiled_utilisation``; the profiler's bisection stops
  where p99 reaches the SLO, well before saturation);
- of the measured spread ``p99* - p50*``, a share ``service_spread_share`` is service-time variability
  (token waits, scheduling noise) that is there at any load; the rest is queueing at ``rho*``;
- queueing grows like the M/G/1 (Kingman) waiting time, ``rho / (1 - rho)``:

      p99(lam) = s99 + q99 * g(lam),   g(lam) = [rho / (1 - rho)] / [rho* / (1 - rho*)],   rho = lam / mu
      s99 = p50* + share * (p99* - p50*)   (light-load p99),   q99 = p99* - s99

  so ``p99(lam*) = p99*`` exactly, latency falls to ``s99`` (between p50* and p99*) as the rate falls,
  rises past ``lam*`` and diverges at ``mu``.
- a request's latency is ``p50*`` plus an exponential tail fitted to the p99 at the rate (the
  simulator's SLO fraction and its latency quantiles).

Capacity at an SLO: the highest rate with ``p99(lam) <= SLO``, never above ``lam*`` (past the
measured rate is extrapolation; the profiler found the rate just above it failing). Both constants
are fitted to ``bench/calibrate`` on this machine (see docs/scheduler.md); they are not measured per
function, because the table does not carry the replica's busy time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN50 = math.log(50.0)
MIN_SPREAD_MS = 1.0
"""Smallest tail width (p99 - p50) a curve uses: a table with p99 == p50 still has a tail."""


@dataclass(frozen=True)
class LatencyModel:
    """Constants of the curve through a table point (module docstring)."""

    profiled_utilisation: float = 0.5
    """Busy fraction of a replica at its profiled rate: service rate = profiled rate / this."""
    service_spread_share: float = 0.3
    """Share of the measured p99 - p50 spread that is present at any load (not queueing)."""


DEFAULT_MODEL = LatencyModel()


@dataclass(frozen=True)
class LatencyCurve:
    """p99 (and the latency distribution) of one replica config as a function of its rate."""

    rate_rps: float
    """The profiled rate ``lam*``."""
    p50_ms: float
    p99_ms: float
    service_rps: float
    """``mu``: where the queue diverges."""
    light_p99_ms: float
    """``s99``: p99 as the rate goes to 0."""
    queue_p99_ms: float
    """``q99``: the queueing part of p99 at the profiled rate."""
    k_star: float
    """``rho* / (1 - rho*)``."""

    @classmethod
    def from_point(
        cls, rate_rps: float, p50_ms: float, p99_ms: float, model: LatencyModel = DEFAULT_MODEL
    ) -> LatencyCurve:
        rho = min(max(model.profiled_utilisation, 1e-3), 0.999)
        p99 = max(p99_ms, p50_ms)
        light = p50_ms + model.service_spread_share * (p99 - p50_ms)
        return cls(rate_rps, p50_ms, p99, rate_rps / rho if rate_rps > 0 else 0.0, light, p99 - light,
                   rho / (1 - rho))

    def p99_at(self, rate_rps: float) -> float:
        """p99 latency (ms) at ``rate_rps``; inf at or past the service rate."""
        if rate_rps <= 0:
            return self.light_p99_ms
        if rate_rps >= self.service_rps:
            return math.inf
        rho = rate_rps / self.service_rps
        return self.light_p99_ms + self.queue_p99_ms * (rho / (1 - rho)) / self.k_star

    def late_fraction(self, rate_rps: float, slo_ms: float) -> float:
        """Share of requests slower than ``slo_ms`` at ``rate_rps`` (exponential tail above p50*)."""
        p99 = self.p99_at(rate_rps)
        if math.isinf(p99):
            return 1.0
        base, decay = self.tail(p99)
        if slo_ms < base:
            return 1.0
        return 0.5 * math.exp(-decay * (slo_ms - base))

    def tail(self, p99_ms: float) -> tuple[float, float]:
        """(base_ms, decay_per_ms): P(latency > base + t) = 0.5 exp(-decay t), whose p99 is ``p99_ms``."""
        base = min(self.p50_ms, p99_ms)
        return base, LN50 / max(MIN_SPREAD_MS, p99_ms - base)

    def capacity_at(self, slo_ms: float) -> float:
        """Highest rate with p99 <= ``slo_ms``, at most the profiled rate (0 if even light load misses)."""
        if self.rate_rps <= 0 or self.light_p99_ms > slo_ms:
            return 0.0
        if self.p99_ms <= slo_ms or self.queue_p99_ms <= 0:
            return self.rate_rps
        k = (slo_ms - self.light_p99_ms) / self.queue_p99_ms * self.k_star  # rho/(1-rho) at the SLO
        return min(self.rate_rps, self.service_rps * k / (1 + k))
