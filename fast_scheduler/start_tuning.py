"""The autoscaler's settings for a replica start time: tuned on the cluster bench at a few start
times (``START_TUNED``), interpolated between them (``for_start_time``). The live loop
(``python -m fast_scheduler --start-s``) and the simulator (``bench.cluster``) take them from here.
Pure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fast_scheduler.autoscale import AutoscaleSettings

START_TUNED: tuple[tuple[float, dict[str, float]], ...] = (
    (1.0, {"scale_down_delay_s": 0.0, "burst_k": 0.1, "standby_frac": 0.75, "headroom_frac": 0.03,
           "volatility_max_frac": 0.1, "smoothing": 0.3, "scale_down_margin_frac": 0.02,
           "backlog_drain_s": 10.0}),
    (5.0, {"scale_down_delay_s": 30.0, "burst_k": 0.35, "standby_frac": 1.5, "headroom_frac": 0.02,
           "volatility_max_frac": 1.0, "smoothing": 0.5, "scale_down_margin_frac": 0.15,
           "backlog_drain_s": 0.0}),
)
"""(replica start-to-ready s, the settings tuned for it) on the cluster bench (three seeds,
docs/scheduler.md) at two start times; ``for_start_time`` interpolates. What they guard against is
a step served by what ran before it for a sub-tick plus a start: the shorter the start, the less
capacity held between bursts, the sooner spare replicas go (no delay: a 1 s start brings them back
within the fast path's second), the tighter the re-plan band, and the smoother the level (a step
is the fast path's, not the level's). 5 s: the defaults of earlier runs (``volatility_max_frac`` 1:
no cap in practice; ``backlog_drain_s`` 0: off)."""

_BY_INVERSE = frozenset({"backlog_drain_s"})
"""Interpolated as a rate (1 / x, 0 when off), so a point between "drain in 10 s" and "off" drains
more slowly, never faster."""


def for_start_time(start_s: float, base: AutoscaleSettings | None = None) -> AutoscaleSettings:
    """``base`` with the settings of ``START_TUNED`` for replicas that start in ``start_s`` (piecewise
    linear between its points, clamped outside them), and ``start_s`` itself."""
    st = base or AutoscaleSettings()
    pts = sorted(START_TUNED, key=lambda p: p[0])
    lo, hi = pts[0], pts[-1]
    for p, q in zip(pts, pts[1:], strict=False):  # the segment holding start_s (piecewise linear)
        if start_s <= q[0]:
            lo, hi = p, q
            break
    else:
        lo = hi
    (s0, a), (s1, b) = lo, hi
    w = min(1.0, max(0.0, (start_s - s0) / (s1 - s0))) if s1 > s0 else 1.0
    out: dict[str, Any] = {}  # float settings only (``START_TUNED``)
    for k, x in a.items():
        y = b[k]
        if k in _BY_INVERSE:
            r = (1 / x if x > 0 else 0.0) * (1 - w) + (1 / y if y > 0 else 0.0) * w
            out[k] = 1 / r if r > 0 else 0.0
        else:
            out[k] = x * (1 - w) + y * w
    delay = out["scale_down_delay_s"]
    return replace(st, **out, start_s=start_s, calm_scale_down_delay_s=min(delay, st.calm_scale_down_delay_s))
