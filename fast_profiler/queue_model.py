"""A replica as the queue it is: the long-run p99 at a rate, from measured service and path times. Pure.

At batch 1 a replica is one first-come first-served server (the sidecar's FIFO gate lets one request
at a time take a token and run), so a request's latency is its wait in that queue, the time it held
the server (token, forward, execution: the sidecar's ``X-Fastgshare-Hold-Ms``) and the path outside
it (client, gateway, network: latency - wait - hold). The profiler's steps measure the last two per
request; this module answers what p99 those give at a rate over the long run, by Lindley's
recursion over Poisson arrivals and (hold, path) pairs drawn from the measured ones.

Why: a step of a few seconds does not see a long-run p99. Near the knee late requests come in
clusters (a long busy period makes a dozen of them), so most short windows have none even when
7 % of all requests are late: on a simulated MobileNet replica a 150-request step passes 57 rps
half the time, where the long-run p99 reaches the 150 ms SLO at 50 (``bench.profiler_estimator``).
A search on pass/fail steps alone answers about 20 % high and spreads by about 6 %; the model,
fed the same steps' requests, reads the long run directly.

Common random numbers: the inter-arrival times are one draw of unit exponentials scaled by
``1 / rate``, so the simulated p99 is monotone in the rate and a bisection on it is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fast_profiler.search import SearchSettings, SearchState, answer_rate
from fastgshare.stats import percentile

MIN_SAMPLES = 200
"""Fewer measured requests than this: no model answer (the search's stands)."""
SIM_REQUESTS = 200_000
"""Requests simulated per rate (the first tenth is warm-up)."""
BLOCK = 20
"""Consecutive measured requests drawn together (``_draws``). Service times are correlated from one
request to the next (lag-1 0.35-0.37 for MobileNet on this shared machine: other load comes in
spells), and independent draws read a long run's p99 4-8 % low; runs of 20 matched it (real 60 s
loads at 36 and 40 rps: 100.3 / 129.7 ms; the model from their own requests: 96.7 / 118.8 with
independent draws, 101.9 / 130.3 with runs of 20)."""


def sojourn_quantile(rate_rps: float, service_ms: Sequence[float], path_ms: Sequence[float], q: float = 0.99,
                     n: int = SIM_REQUESTS, seed: int = 0, block: int = BLOCK) -> float:
    """The ``q`` latency quantile of a FIFO single server at ``rate_rps`` Poisson arrivals whose
    requests hold it for ``service_ms`` and spend ``path_ms`` outside it (pairs, resampled in runs
    of ``block``)."""
    s, p, e = _draws(service_ms, path_ms, n, seed, block)
    return _quantile(rate_rps, s, p, e, q)


def model_rate(service_ms: Sequence[float], path_ms: Sequence[float], slo_ms: float, q: float = 0.99,
               n: int = SIM_REQUESTS, seed: int = 0, rel_tol: float = 1e-3) -> float | None:
    """The highest rate whose long-run ``q`` latency quantile is within ``slo_ms``; None with fewer
    than ``MIN_SAMPLES`` measured requests, 0 when even an idle replica is over the SLO."""
    if len(service_ms) < MIN_SAMPLES or len(service_ms) != len(path_ms):
        return None
    s, p, e = _draws(service_ms, path_ms, n, seed)
    if _quantile(0.0, s, p, e, q) > slo_ms:
        return 0.0
    lo, hi = 0.0, 1000.0 / float(np.mean(s))  # past saturation the queue grows without bound
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        if _quantile(mid, s, p, e, q) <= slo_ms:
            lo = mid
        else:
            hi = mid
    return lo


def _draws(service_ms: Sequence[float], path_ms: Sequence[float], n: int, seed: int,
           block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(service, path, unit exponential gaps) for ``n`` requests: runs of ``block`` consecutive
    measured requests from random starts (a moving-block bootstrap: a slow minute of the node
    slows a run of requests, not one here and there, and the queue feels the difference)."""
    rng = np.random.default_rng(seed)
    m = len(service_ms)
    b = max(1, min(block, m))
    starts = rng.integers(0, m - b + 1, -(-n // b))
    idx = (starts[:, None] + np.arange(b)[None, :]).ravel()[:n]
    return (np.asarray(service_ms, dtype=float)[idx], np.asarray(path_ms, dtype=float)[idx],
            rng.exponential(1.0, n))


def _quantile(rate_rps: float, s: np.ndarray, p: np.ndarray, e: np.ndarray, q: float) -> float:
    if rate_rps <= 0:
        lat = s + p
    else:
        # Lindley: W[i+1] = max(0, W[i] + S[i] - A[i+1]) is C[i] - min(C[0..i]) for the partial sums C
        # of S[i] - A[i+1] (C[0] = 0): one cumulative sum and one running minimum.
        u = s[:-1] - e[1:] * (1000.0 / rate_rps)
        c = np.concatenate(([0.0], np.cumsum(u)))
        w = c - np.minimum.accumulate(c)
        lat = w + s + p
    warm = len(lat) // 10
    return percentile(lat[warm:], 100 * q)


@dataclass(frozen=True)
class Answer:
    """A configuration's rate at the SLO and how it was reached."""

    rps: float
    searched: float
    modelled: float | None
    latency_ms: tuple[float, float, float]
    """p50, p95, p99 at ``rps``: the queue model's when it set the answer, else the answer's step's."""


def final_answer(state: SearchState, steps: Sequence[tuple[float, bool]], severities: Sequence[float | None],
                 samples: Sequence[tuple[Sequence[float], Sequence[float]]], settings: SearchSettings,
                 slo_ms: float, step_latencies_ms: Sequence[float], *, full_quota: bool = False,
                 model: bool = True, quiet: Sequence[bool] | None = None) -> Answer:
    """One configuration's answer from its counted steps (rate and verdict, severity, and the
    service and path times of its requests, and whether the node was quiet during each).

    The search's answer is ``answer_rate``. The queue model's (``model_rate``) reads the requests of
    the quiet steps (all of them when the quiet ones hold fewer than ``MIN_SAMPLES``: a node that
    stays busy is measured busy): at full quota every step's, and the model's rate is the answer,
    up or down (a short step's p99 misses a long run's clusters of late requests, and a search in a
    busy minute reads its failures as the function's); at a partial quota only the passing steps'
    (a failing step waited for tokens of a used-up window, which is not service, and the model
    knows no window), and it can only lower the search's answer. ``model`` False (batch > 1: the
    gate admits a batch at once, which is not one server): the search's answer."""
    severity: dict[float, list[float]] = {}
    for (r, _), sev in zip(steps, severities, strict=True):
        if sev is not None:
            severity.setdefault(r, []).append(sev)
    searched = answer_rate(state, severity, settings)
    read = [ok or full_quota for _, ok in steps]
    calm = [x and q for x, q in zip(read, quiet or [True] * len(steps), strict=True)]
    if sum(len(s) for (s, _), c in zip(samples, calm, strict=True) if c) >= MIN_SAMPLES:
        read = calm
    service = [x for (s, _), r in zip(samples, read, strict=True) if r for x in s]
    path = [x for (_, p), r in zip(samples, read, strict=True) if r for x in p]
    modelled = (model_rate(service, path, slo_ms, settings.slo_quantile)
                if model and (searched > 0 or full_quota) else None)
    if modelled is None or (not full_quota and modelled >= searched):
        lat = (percentile(step_latencies_ms, 50, empty=0.0), percentile(step_latencies_ms, 95, empty=0.0),
               percentile(step_latencies_ms, 99, empty=0.0))
        return Answer(searched, searched, modelled, lat)
    p50, p95, p99 = (sojourn_quantile(modelled, service, path, q) for q in (0.5, 0.95, settings.slo_quantile))
    return Answer(modelled, searched, modelled, (p50, p95, p99))
