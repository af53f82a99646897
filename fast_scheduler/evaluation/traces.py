"""Request traces for the simulator: Poisson, bursty (MLPerf-style server load), Azure-Functions-like.

Every generator is deterministic in its ``seed`` and returns a ``simulator.Trace``: the underlying
rate per step (what the lower bound sees) and Poisson counts drawn from it (what the policies see).
The Azure-like shapes come from the arrival models ``orcbench`` ships (fitted to the Azure
Functions 2019 trace); ``load_orcbench_clusters`` is the only function here that reads files, and
it reads the model JSON directly (orcbench's own API draws from numpy's global random state and
its package pins numpy < 2).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fast_scheduler.evaluation.simulator import Trace


@dataclass(frozen=True)
class ArrivalCluster:
    """One orcbench model: inter-arrival times (minutes) are reciprocals of ``inverse_ecdf`` draws."""

    name: str
    inverse_ecdf: tuple[float, ...]
    num_functions: int

    @property
    def events_per_min(self) -> float:
        return 1.0 / float(np.mean(1.0 / np.asarray(self.inverse_ecdf)))


class OrcbenchMissing(RuntimeError):
    """orcbench (whose wheel ships the arrival models) is not installed."""


def orcbench_models_dir() -> Path | None:
    """Where the installed orcbench keeps its models, found without importing it (its import
    prints a banner and it pins numpy < 2); None when it is not installed."""
    spec = importlib.util.find_spec("orcbench")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "models"
    return d if d.is_dir() else None


def load_orcbench_clusters(models_dir: Path | None = None) -> list[ArrivalCluster]:
    """The arrival models shipped in the ``orcbench`` wheel (or in ``models_dir``)."""
    if models_dir is None:
        models_dir = orcbench_models_dir()
        if models_dir is None:
            raise OrcbenchMissing(
                "the Azure-like trace needs orcbench's arrival models: "
                "pip install --no-deps orcbench==0.1.4 (it pins numpy<2; only its data files are read)"
            )
    out = []
    for f in sorted(models_dir.iterdir(), key=lambda p: p.name):
        d = json.loads(f.read_text())
        out.append(
            ArrivalCluster(f.name, tuple(float(x) for x in d["inverse_ecdf"]), int(d["num_functions"]))
        )
    return out


def _counts(rates: np.ndarray, step_s: float, rng: np.random.Generator) -> list[int]:
    return [int(x) for x in rng.poisson(np.maximum(rates, 0.0) * step_s)]


def _trace(name: str, step_s: float, rates: Mapping[str, np.ndarray], seed: int) -> Trace:
    rng = np.random.default_rng(seed + 7919)
    return Trace(
        name,
        step_s,
        {f: _counts(r, step_s, rng) for f, r in rates.items()},
        {f: [float(x) for x in r] for f, r in rates.items()},
    )


def poisson_trace(
    mean_rps: Mapping[str, float], duration_s: float, seed: int = 0, step_s: float = 1.0
) -> Trace:
    """Constant-rate Poisson arrivals (MLPerf's Server scenario)."""
    n = int(duration_s / step_s)
    return _trace("poisson", step_s, {f: np.full(n, r) for f, r in mean_rps.items()}, seed)


def bursty_trace(
    mean_rps: Mapping[str, float],
    duration_s: float,
    seed: int = 0,
    step_s: float = 1.0,
    burst_factor: float = 3.0,
    mean_burst_s: float = 30.0,
    mean_calm_s: float = 120.0,
) -> Trace:
    """Poisson arrivals whose rate switches between calm and bursts (a two-state modulated process),
    over a slow ramp; each function's time-averaged rate is ``mean_rps``."""
    rng = np.random.default_rng(seed)
    n = int(duration_s / step_s)
    t = np.arange(n) * step_s
    rates = {}
    for f, mean in mean_rps.items():
        state = np.zeros(n)
        i, burst = 0, bool(rng.random() < mean_burst_s / (mean_burst_s + mean_calm_s))
        while i < n:
            length = max(1, int(rng.exponential(mean_burst_s if burst else mean_calm_s) / step_s))
            state[i : i + length] = 1.0 if burst else 0.0
            i += length
            burst = not burst
        ramp = 0.6 + 0.8 * (0.5 - 0.5 * np.cos(2 * np.pi * (t / max(duration_s, 1) + rng.random())))
        shape = ramp * np.where(state > 0, burst_factor, 1.0)
        rates[f] = mean * shape / shape.mean()
    return _trace("bursty", step_s, rates, seed)


def azure_like_trace(
    mean_rps: Mapping[str, float],
    duration_s: float,
    clusters: Sequence[ArrivalCluster],
    seed: int = 0,
    step_s: float = 1.0,
    bin_s: float = 30.0,
    min_events_per_min: float = 30.0,
) -> Trace:
    """Each function follows one orcbench arrival cluster (drawn by its share of Azure functions,
    among clusters active enough to give a shape per ``bin_s``): arrivals are drawn from the
    cluster's inter-arrival model in real time, counted per bin, and the bin counts, normalised,
    modulate the function's ``mean_rps``."""
    rng = np.random.default_rng(seed)
    usable = [c for c in clusters if c.events_per_min >= min_events_per_min]
    if not usable:
        raise ValueError(f"no orcbench cluster has >= {min_events_per_min} events per minute")
    weights = np.array([c.num_functions for c in usable], dtype=float)
    weights /= weights.sum()
    n = int(duration_s / step_s)
    nbins = max(1, int(np.ceil(duration_s / bin_s)))
    rates = {}
    for f, mean in mean_rps.items():
        c = usable[int(rng.choice(len(usable), p=weights))]
        inv = np.asarray(c.inverse_ecdf)
        expect = int(c.events_per_min * duration_s / 60 * 1.5) + 100
        arrivals = np.array([], dtype=float)
        t0 = rng.random() * 60.0  # desynchronise functions of the same cluster
        while arrivals.size == 0 or arrivals[-1] < duration_s + t0:
            gaps_s = 60.0 / inv[rng.integers(0, len(inv) - 1, size=expect)]
            base = arrivals[-1] if arrivals.size else 0.0
            arrivals = np.concatenate([arrivals, base + np.cumsum(gaps_s)])
        arrivals = arrivals[(arrivals >= t0) & (arrivals < duration_s + t0)] - t0
        counts, _ = np.histogram(arrivals, bins=nbins, range=(0, nbins * bin_s))
        shape = counts.astype(float)
        shape = shape / shape.mean() if shape.mean() > 0 else np.ones(nbins)
        per_step = np.repeat(shape, int(round(bin_s / step_s)))[:n]
        rates[f] = mean * per_step
    return _trace("azure", step_s, rates, seed)


TIMER_PERIODS_S = (60.0, 90.0, 120.0, 180.0, 300.0)
"""Periods of the timer-driven functions of ``timer_trace`` (Azure timer triggers are minutes apart)."""


def timer_trace(
    mean_rps: Mapping[str, float],
    duration_s: float,
    seed: int = 0,
    step_s: float = 1.0,
    timer_share: float = 0.5,
    burst_factor: float = 8.0,
) -> Trace:
    """Azure's other shape: timer-triggered functions. A ``timer_share`` of the functions (every
    other one, so both kinds get each table) is periodic: a low base rate, and every period (one of
    ``TIMER_PERIODS_S``, at a random phase) a burst of 10-40 s at ``burst_factor`` x the base; the
    rest switch between calm and bursts at random (as ``bursty_trace``, no ramp), with no period to
    find. Each function's time-averaged rate is ``mean_rps``. Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(duration_s / step_s)
    t = np.arange(n) * step_s
    rates = {}
    every = max(1, round(1 / timer_share)) if timer_share > 0 else 0
    for i, (f, mean) in enumerate(mean_rps.items()):
        if every and i % every == 0:
            period = float(rng.choice(TIMER_PERIODS_S))
            burst_s = float(rng.integers(1, 5)) * 10.0
            phase = rng.random() * period
            on = ((t + phase) % period) < burst_s
        else:
            on = np.zeros(n, dtype=bool)
            k, burst = 0, bool(rng.random() < 0.2)
            while k < n:
                length = max(1, int(rng.exponential(30.0 if burst else 120.0) / step_s))
                on[k:k + length] = burst
                k += length
                burst = not burst
        shape = np.where(on, burst_factor, 1.0)
        rates[f] = mean * shape / shape.mean()
    return _trace("timer", step_s, rates, seed)
