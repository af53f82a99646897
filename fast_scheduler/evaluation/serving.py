"""How the simulator scores a step's requests: the share served within the SLO and the latency
mixture, over the servers (replicas) of a function. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fast_scheduler.latency import LatencyCurve


def fresh_ok_fraction(servers: Sequence[tuple[float, LatencyCurve]], lam: float, mu: float,
                       slo_ms: float) -> float:
    """Share of requests served in their arrival step within the SLO; a server is (its service rate
    this step, its curve), receiving its share of ``lam`` in proportion to its rate (the proxy)."""
    if lam <= 0:
        return 1.0
    if lam >= mu:
        return 0.0
    ok = 0.0
    for thr, curve in servers:
        w = thr / mu
        # A replica borrowing idle time serves faster: its curve, at the same utilisation.
        lam_i = lam * w * curve.service_rps / thr
        ok += w * (1 - curve.late_fraction(lam_i, slo_ms))
    return ok


def fresh_terms(
    servers: Sequence[tuple[float, LatencyCurve]], count: float, lam: float, mu: float
) -> list[tuple[float, float, float, float]]:
    """Latency terms of ``count`` requests served in their arrival step, split over ``servers``."""
    out = []
    for thr, curve in servers:
        w = thr / mu
        lam_i = lam * w * curve.service_rps / thr
        p99 = curve.p99_at(lam_i)
        if math.isinf(p99):  # overloaded at this rate: no stationary tail; a step's wait
            out.append((count * w, curve.light_p99_ms + 1000 * count / max(lam, 1e-9) / 2, 0.0, 0.0))
            continue
        base, decay = curve.tail(p99)
        out.append((count * w, base, 0.5, decay))
    return out


def latency_quantile_ms(terms: Sequence[tuple[float, float, float, float]], q: float = 0.99) -> float:
    """The ``q`` quantile of the latency mixture ``terms`` (see ``FunctionResult.latency_terms``)."""
    total = sum(t[0] for t in terms)
    if total <= 0:
        return 0.0
    allowed = (1 - q) * total

    def above(x: float) -> float:
        n = 0.0
        for cnt, base, rho, decay in terms:
            if x < base:
                n += cnt
            elif rho > 0:
                n += cnt * min(1.0, rho * math.exp(-decay * (x - base)))
        return n

    lo, hi = 0.0, max(t[1] for t in terms)
    while above(hi) > allowed:
        hi = hi * 2 + 1
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if above(mid) > allowed else (lo, mid)
    return hi
