"""Turning measured requests into the benchmark's figures. Pure: numbers in, numbers out.

- ``step_passes``: one LoadGen Server run at a fixed rate meets every function's bound (p99 of its
  latencies, errors counted as late, and the rate actually delivered);
- ``next_load``: a geometric bracket search over the offered load (grow while passing, bisect once
  a rate failed): the answer is the highest load that passed;
- ``summarise_mode`` and ``ratios_vs``: per-mode figures and every figure as a ratio to one mode;
- ``slo_attainment`` and ``timeline``: the autoscaling scenario's figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastgshare.stats import percentile


@dataclass(frozen=True)
class FunctionRun:
    """One function's requests in one LoadGen run."""

    function: str
    target_rps: float
    latencies_ms: tuple[float, ...]
    """Completed requests (HTTP 200), from LoadGen's issue time to the response."""
    errors: int
    skipped: int
    """Queries completed without a request once the run had clearly failed (early stop)."""
    duration_s: float

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies_ms) / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99, empty=0.0)


@dataclass(frozen=True)
class LoadSearchSettings:
    """How hard to look for one mode's highest sustained load."""

    start: float
    grow: float = 1.4
    """On a pass with no failure yet, the next load is this x the last."""
    rel_tol: float = 0.08
    """Stop when the lowest failing load is within this fraction of the highest passing one."""
    max_steps: int = 6
    min_load: float = 0.02
    max_load: float = 1e9
    quantile: float = 99.0


def late_budget(n: int, quantile: float = 99.0) -> float:
    """How many late requests ``n`` may have before the p99 is clearly broken (budget + 3 sd + 1)."""
    expected = (1.0 - quantile / 100.0) * n
    return expected + 3.0 * math.sqrt(expected) + 1.0


def step_passes(runs: Sequence[FunctionRun], bounds_ms: Mapping[str, float],
                settings: LoadSearchSettings) -> tuple[bool, str]:
    """Whether one run meets every function's bound; the reason names the first failure."""
    for r in runs:
        n = len(r.latencies_ms) + r.errors
        late = sum(1 for x in r.latencies_ms if x > bounds_ms[r.function]) + r.errors
        if n == 0:
            return False, f"{r.function}: no request completed"
        if late > (1.0 - settings.quantile / 100.0) * n + 1e-9:
            q = percentile(r.latencies_ms, settings.quantile, empty=0.0)
            return False, (f"{r.function}: p{settings.quantile:g} {q:.1f} ms > {bounds_ms[r.function]:.1f} "
                           f"ms ({late} of {n} late, {r.errors} errors)")
    skipped = [r for r in runs if r.skipped]
    if skipped:  # the run was cut short: by whichever function was late in the part it ran
        what = ", ".join(f"{r.function}: {r.skipped} skipped" for r in skipped)
        return False, f"stopped early ({what})"
    return True, "every function within its bound"


def next_load(history: Sequence[tuple[float, bool]], settings: LoadSearchSettings) -> float | None:
    """The next load to run, or None when the bracket is tight enough or the step budget is spent."""
    if not history:
        return settings.start
    if len(history) >= settings.max_steps:
        return None
    passed = [x for x, ok in history if ok]
    failed = [x for x, ok in history if not ok]
    lo = max(passed, default=0.0)
    hi = min(failed, default=None)
    if hi is None:
        nxt = lo * settings.grow
        return nxt if nxt <= settings.max_load else None
    if lo <= 0.0:
        nxt = hi / (settings.grow ** 2)
        return nxt if nxt >= settings.min_load else None
    if hi / lo <= 1.0 + settings.rel_tol:
        return None
    return math.sqrt(lo * hi)


def best_load(history: Sequence[tuple[float, bool]]) -> float:
    return max((x for x, ok in history if ok), default=0.0)


@dataclass(frozen=True)
class ModeResult:
    """One mode's sustained point: the runs at the highest passing load, and what the device did."""

    mode: str
    load: float
    """Normalised throughput: sum over functions of rate / its exclusive sustained rate."""
    runs: tuple[FunctionRun, ...]
    utilisation: float | None
    """Device utilisation during that run (CPU: worker CPU time / (wall x cores); GPU: busy fraction)."""
    sm_time: float | None
    """Sum over replicas of busy fraction x SM share (the paper's SM occupancy analogue)."""
    history: tuple[tuple[float, bool, str], ...] = field(default=())


def summarise_mode(res: ModeResult, bounds_ms: Mapping[str, float], *,
                   time_share: float = 1.0) -> dict[str, Any]:
    """A mode's figures; ``time_share`` scales rates of modes that run functions one at a time."""
    functions = {}
    for r in res.runs:
        functions[r.function] = {
            "rate_rps": round(time_share * r.target_rps, 3), "served_rps": round(r.achieved_rps, 3),
            "p50_ms": round(percentile(r.latencies_ms, 50, empty=0.0), 2), "p99_ms": round(r.p99_ms, 2),
            "bound_ms": bounds_ms[r.function], "requests": len(r.latencies_ms), "errors": r.errors,
        }
    p99_rel = [r.p99_ms / bounds_ms[r.function] for r in res.runs if r.latencies_ms]
    return {
        "throughput_rps": round(sum(f["rate_rps"] for f in functions.values()), 3),
        "normalised_throughput": round(res.load, 4),
        "p99_over_bound": round(max(p99_rel), 4) if p99_rel else None,
        "device_utilisation": None if res.utilisation is None else round(res.utilisation, 4),
        "sm_time": None if res.sm_time is None else round(res.sm_time, 4),
        "functions": functions,
        "search": [{"load": round(x, 4), "passed": ok, "why": why} for x, ok, why in res.history],
    }


RATIO_METRICS = ("throughput_rps", "normalised_throughput", "device_utilisation", "sm_time", "p99_over_bound")


def ratios_vs(modes: Mapping[str, Mapping[str, Any]], baseline: str,
              metrics: Sequence[str] = RATIO_METRICS) -> dict[str, dict[str, float | None]]:
    """Every metric of every mode divided by the baseline mode's (None where either is missing or 0)."""
    base = modes[baseline]
    out: dict[str, dict[str, float | None]] = {}
    for name, m in modes.items():
        row: dict[str, float | None] = {}
        for k in metrics:
            a, b = m.get(k), base.get(k)
            ok = isinstance(a, int | float) and isinstance(b, int | float) and b
            row[k] = round(a / b, 3) if ok else None
        out[name] = row
    return out


def slo_attainment(latencies_ms: Sequence[float], errors: int, slo_ms: float) -> float:
    """Fraction of requests answered within the SLO (errors count as misses); 1 when there were none."""
    n = len(latencies_ms) + errors
    return 1.0 if n == 0 else sum(1 for x in latencies_ms if x <= slo_ms) / n


def per_window(times_s: Sequence[float], values: Sequence[float], window_s: float,
               duration_s: float) -> list[list[float]]:
    """Values grouped by ``window_s`` buckets of their time (0 .. duration)."""
    n = max(1, int(math.ceil(duration_s / window_s)))
    out: list[list[float]] = [[] for _ in range(n)]
    for t, v in zip(times_s, values, strict=True):
        i = int(t // window_s)
        if 0 <= i < n:
            out[i].append(v)
    return out


def timeline(sent_s: Sequence[float], latencies_ms: Sequence[float], slo_ms: float, window_s: float,
             duration_s: float) -> list[dict[str, float]]:
    """Per window: requests/s completed, p99, attainment (latency of a failed request: +inf)."""
    rows = []
    for i, w in enumerate(per_window(sent_s, latencies_ms, window_s, duration_s)):
        finite = [x for x in w if math.isfinite(x)]
        rows.append({"t_s": round(i * window_s, 2), "rps": round(len(w) / window_s, 3),
                     "p99_ms": round(percentile(finite, 99), 2) if finite else 0.0,
                     "attainment": round(sum(1 for x in w if x <= slo_ms) / len(w), 4) if w else 1.0})
    return rows


MIN_SAMPLES_PER_STEP = 300
"""A LoadGen run lasts long enough for this many queries of its slowest function (p99 is then the
3rd-latest, not the maximum of a few dozen), within ``MAX_STEP_FACTOR`` x the nominal step."""
MAX_STEP_FACTOR = 4.0


def step_duration_s(rates: Mapping[str, float], step_s: float,
                    min_samples: int = MIN_SAMPLES_PER_STEP,
                    max_factor: float = MAX_STEP_FACTOR) -> float:
    """Seconds for one LoadGen run at ``rates``: at least ``step_s``, longer until the slowest
    function gets ``min_samples`` queries, at most ``max_factor`` x ``step_s``."""
    slowest = min((r for r in rates.values() if r > 0), default=0.0)
    if slowest <= 0:
        return step_s
    return round(min(max_factor * step_s, max(step_s, min_samples / slowest)), 2)
