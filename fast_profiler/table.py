"""A function's profile table on one device type, and how the scheduler queries it. Pure.

A table is a full grid of points keyed by ``(sm_pct, quota_frac, batch)``. Each point holds the
throughput a replica with that share sustained and its latency percentiles, and says whether it was
measured or filled in (the profiler skips points that cannot matter and fills them by
interpolation). Queries between grid points interpolate bilinearly over ``(sm_pct, quota_frac)``
within one batch size and report themselves as inferred.

Throughput is read through a monotone envelope (a running maximum along both axes): measurement
noise must never make more SMs or more quota look slower, or the scheduler would chase noise. The
raw points are kept as measured. Latencies are the percentiles at light load (service time with the
token waits of the quota); schedulers add queueing on top.

This module must not read files, clocks or Redis: callers pass JSON text in and take it out.
``synthetic_table`` is for tests and the simulator only; its tables say ``synthetic: true``.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from fastgshare.errors import ValidationError

TABLE_VERSION = 1
"""Version of the JSON layout written by ``ProfileTable.to_json``; readers refuse other versions."""

PAPER_SM_GRID = (6, 12, 24, 50, 60, 80, 100)
"""SM shares (%) of the original's profiling grid."""
PAPER_QUOTA_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)
"""Quota fractions of the original's profiling grid."""


@dataclass(frozen=True)
class ProfilePoint:
    """One configuration's measurement (or its filled-in estimate)."""

    sm_pct: int
    quota_frac: float
    batch: int
    throughput_rps: float
    """Highest sustained request rate (requests, not batches, per second)."""
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    measured: bool = True
    """False where the profiler filled the point in instead of running it."""


@dataclass(frozen=True)
class Estimate:
    """The answer to a query: values, and whether they were measured at exactly that point."""

    throughput_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    measured: bool
    source: str
    """Where the numbers came from, e.g. ``measured`` or ``bilinear sm 12..24 x quota 0.2..0.4``."""


def _key(sm_pct: float, quota_frac: float, batch: int) -> tuple[int, float, int]:
    return int(round(sm_pct)), round(float(quota_frac), 6), int(batch)


@dataclass(frozen=True)
class ProfileTable:
    """The profile of one function on one device type."""

    function: str
    device_type: str
    points: tuple[ProfilePoint, ...]
    weight_bytes: int = 0
    """Device memory of the weights (shared between replicas of the same model)."""
    mem_bytes: int = 0
    """Device memory of one replica including its weights."""
    synthetic: bool = False
    """True for tables made by ``synthetic_table``: shapes from the paper, not measurements."""
    version: int = TABLE_VERSION
    _index: dict[tuple[int, float, int], ProfilePoint] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _envelope: dict[tuple[int, float, int], float] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if self.version != TABLE_VERSION:
            raise ValidationError("version", f"{TABLE_VERSION}", self.version)
        if not self.points:
            raise ValidationError("points", "at least one profile point", 0)
        index = {_key(p.sm_pct, p.quota_frac, p.batch): p for p in self.points}
        if len(index) != len(self.points):
            raise ValidationError("points", "one point per (sm_pct, quota_frac, batch)", "duplicates")
        sms = sorted({k[0] for k in index})
        quotas = sorted({k[1] for k in index})
        batches = sorted({k[2] for k in index})
        for p in self.points:
            if not (1 <= p.sm_pct <= 100 and 0 < p.quota_frac <= 1 and p.batch >= 1):
                raise ValidationError(
                    "point",
                    "1 <= sm_pct <= 100, 0 < quota_frac <= 1, batch >= 1",
                    (p.sm_pct, p.quota_frac, p.batch),
                )
            if p.throughput_rps < 0 or min(p.latency_p50_ms, p.latency_p95_ms, p.latency_p99_ms) < 0:
                raise ValidationError("point", "non-negative throughput and latencies", p)
        missing = [(s, q, b) for b in batches for s in sms for q in quotas if (s, q, b) not in index]
        if missing:
            raise ValidationError(
                "points",
                "a full sm x quota x batch grid (fill gaps before building)",
                f"{len(missing)} missing, e.g. {missing[0]}",
            )
        env: dict[tuple[int, float, int], float] = {}
        for b in batches:
            for i, s in enumerate(sms):
                for j, q in enumerate(quotas):
                    v = index[(s, q, b)].throughput_rps
                    if i:
                        v = max(v, env[(sms[i - 1], q, b)])
                    if j:
                        v = max(v, env[(s, quotas[j - 1], b)])
                    env[(s, q, b)] = v
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_envelope", env)

    # ---- the grid -------------------------------------------------------------------------

    @property
    def sm_grid(self) -> tuple[int, ...]:
        return tuple(sorted({k[0] for k in self._index}))

    @property
    def quota_grid(self) -> tuple[float, ...]:
        return tuple(sorted({k[1] for k in self._index}))

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(sorted({k[2] for k in self._index}))

    def grid(self) -> Iterator[ProfilePoint]:
        """Every point, in (batch, sm, quota) order, with throughput read through the envelope."""
        for b in self.batches:
            for s in self.sm_grid:
                for q in self.quota_grid:
                    yield self.point(s, q, b)

    def point(self, sm_pct: int, quota_frac: float, batch: int) -> ProfilePoint:
        """The grid point itself (throughput through the monotone envelope)."""
        k = _key(sm_pct, quota_frac, batch)
        if k not in self._index:
            raise ValidationError("point", "a grid point of this table", k)
        p = self._index[k]
        env = self._envelope[k]
        if env == p.throughput_rps:
            return p
        return ProfilePoint(
            p.sm_pct,
            p.quota_frac,
            p.batch,
            env,
            p.latency_p50_ms,
            p.latency_p95_ms,
            p.latency_p99_ms,
            p.measured,
        )

    # ---- queries --------------------------------------------------------------------------

    def estimate(self, sm_pct: float, quota_frac: float, batch: int) -> Estimate:
        """Values at any share inside the grid's range; bilinear between grid points.

        Below the smallest profiled share there is nothing to interpolate from: refused. Above the
        largest (only possible when the grid stops short of 100 % / 1.0) the last value holds,
        which under-states throughput and so errs on the safe side.
        """
        if batch not in self.batches:
            raise ValidationError("batch", f"one of {self.batches}", batch)
        sms, quotas = self.sm_grid, self.quota_grid
        if not (sms[0] - 1e-9 <= sm_pct <= 100 and quotas[0] - 1e-9 <= quota_frac <= 1):
            raise ValidationError(
                "share", f"sm_pct {sms[0]}..100 and quota_frac {quotas[0]}..1", (sm_pct, quota_frac)
            )
        s0, s1, ts = _bracket(sms, float(sm_pct))
        q0, q1, tq = _bracket(quotas, float(quota_frac))
        on_grid = any(abs(sm_pct - s) < 1e-9 for s in sms) and any(abs(quota_frac - q) < 1e-9 for q in quotas)
        if ts == 0.0 and tq == 0.0 and on_grid:
            p = self.point(int(s0), q0, batch)
            return Estimate(
                p.throughput_rps,
                p.latency_p50_ms,
                p.latency_p95_ms,
                p.latency_p99_ms,
                p.measured,
                "measured" if p.measured else "filled in by the profiler",
            )
        if ts == 0.0 and tq == 0.0:
            p = self.point(int(s0), q0, batch)
            return Estimate(
                p.throughput_rps,
                p.latency_p50_ms,
                p.latency_p95_ms,
                p.latency_p99_ms,
                False,
                f"held from the grid's edge (sm {s0}, quota {q0:g})",
            )
        corners = [
            (self.point(int(s), q, batch), w)
            for s, q, w in (
                (s0, q0, (1 - ts) * (1 - tq)),
                (s1, q0, ts * (1 - tq)),
                (s0, q1, (1 - ts) * tq),
                (s1, q1, ts * tq),
            )
        ]

        def mix(attr: str) -> float:
            return float(sum(getattr(p, attr) * w for p, w in corners))

        return Estimate(
            mix("throughput_rps"),
            mix("latency_p50_ms"),
            mix("latency_p95_ms"),
            mix("latency_p99_ms"),
            False,
            f"bilinear sm {s0}..{s1} x quota {q0:g}..{q1:g}",
        )

    def throughput(self, sm_pct: float, quota_frac: float, batch: int = 1) -> float:
        return self.estimate(sm_pct, quota_frac, batch).throughput_rps

    def latency_p99(self, sm_pct: float, quota_frac: float, batch: int = 1) -> float:
        return self.estimate(sm_pct, quota_frac, batch).latency_p99_ms

    def is_measured(self, sm_pct: float, quota_frac: float, batch: int = 1) -> bool:
        return self.estimate(sm_pct, quota_frac, batch).measured

    # ---- JSON -----------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "function": self.function,
                "device_type": self.device_type,
                "synthetic": self.synthetic,
                "weight_bytes": self.weight_bytes,
                "mem_bytes": self.mem_bytes,
                "points": [
                    [
                        p.sm_pct,
                        p.quota_frac,
                        p.batch,
                        p.throughput_rps,
                        p.latency_p50_ms,
                        p.latency_p95_ms,
                        p.latency_p99_ms,
                        p.measured,
                    ]
                    for p in self.points
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ProfileTable:
        try:
            d = json.loads(text)
            version = d["version"]
        except (ValueError, TypeError, KeyError) as e:
            raise ValidationError(
                "profile table", "JSON written by ProfileTable.to_json", "unreadable"
            ) from e
        if version != TABLE_VERSION:
            raise ValidationError("version", f"{TABLE_VERSION}", version)
        try:
            points = tuple(
                ProfilePoint(
                    int(r[0]),
                    float(r[1]),
                    int(r[2]),
                    float(r[3]),
                    float(r[4]),
                    float(r[5]),
                    float(r[6]),
                    bool(r[7]),
                )
                for r in d["points"]
            )
            return cls(
                str(d["function"]),
                str(d["device_type"]),
                points,
                int(d.get("weight_bytes", 0)),
                int(d.get("mem_bytes", 0)),
                bool(d.get("synthetic", False)),
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValidationError(
                "profile table", "points as [sm, quota, batch, rps, p50, p95, p99, measured]", "malformed"
            ) from e


def _bracket(grid: Sequence[float], x: float) -> tuple[float, float, float]:
    """Grid neighbours of ``x`` and the weight of the upper one (0 on a grid point)."""
    if x >= grid[-1]:
        return grid[-1], grid[-1], 0.0
    i = bisect.bisect_right(grid, x + 1e-9) - 1
    i = max(0, i)
    lo, hi = grid[i], grid[min(i + 1, len(grid) - 1)]
    if abs(x - lo) < 1e-9 or hi == lo:
        return lo, lo, 0.0
    return lo, hi, (x - lo) / (hi - lo)


# ---- synthetic tables (tests and the simulator only) -----------------------------------------


def synthetic_table(
    function: str,
    *,
    saturation_sm_pct: float,
    full_rps: float,
    device_type: str = "V100",
    sm_grid: Iterable[int] = PAPER_SM_GRID,
    quota_grid: Iterable[float] = PAPER_QUOTA_GRID,
    batches: Iterable[int] = (1, 2, 4, 8),
    batch_gain: float = 0.55,
    quota_efficiency: tuple[float, float] = (96.5 / 74.9, 1.0),
    token_ms: float = 20.0,
    mem_bytes: int = 1525 * 2**20,
    weight_bytes: int = 100 * 2**20,
) -> ProfileTable:
    """A table with the paper's curve shapes; NOT a measurement (``synthetic`` is set).

    - spatial: throughput grows with the SM share and saturates near ``saturation_sm_pct``
      (ResNet-50 about 24 %, BERT about 50 %);
    - temporal: throughput per unit of quota falls linearly from ``quota_efficiency[0]`` at quota
      0.2 to ``[1]`` at 1.0 relative to full quota (V100 ResNet-50: 96.5 -> 74.9 RPS per unit);
    - batch: ``b`` requests take ``b ** (1 - batch_gain)`` times one request's time;
    - latency: one batch's execution time, plus token waits that grow as the quota shrinks.
    """
    hi_eff, lo_eff = quota_efficiency
    points = []
    for b in batches:
        for s in sm_grid:
            spatial = _saturating(s, saturation_sm_pct)
            for q in quota_grid:
                per_quota = hi_eff + (lo_eff - hi_eff) * (q - 0.2) / 0.8
                rps_b1 = full_rps * spatial * q * per_quota
                exec_ms = 1000.0 / (full_rps * spatial) * b ** (1 - batch_gain)
                rps = b * 1000.0 / exec_ms * q * per_quota
                assert rps >= rps_b1 * 0.999
                wait_ms = (1 - q) * max(token_ms, exec_ms)
                points.append(
                    ProfilePoint(
                        int(s),
                        float(q),
                        int(b),
                        rps,
                        exec_ms + 0.5 * wait_ms,
                        1.05 * exec_ms + 0.9 * wait_ms,
                        1.1 * exec_ms + wait_ms,
                        True,
                    )
                )
    return ProfileTable(
        function, f"{device_type} (synthetic)", tuple(points), weight_bytes, mem_bytes, synthetic=True
    )


def _saturating(sm_pct: float, saturation_sm_pct: float) -> float:
    """Fraction of full-device throughput at ``sm_pct``: near-linear, then flat past saturation."""
    x = sm_pct / saturation_sm_pct
    return min(1.0, (1 - math.exp(-2.5 * x)) / (1 - math.exp(-2.5)))


def device_type_of(device: Mapping[str, object]) -> str:
    """The profile table's device type: a GPU's model name; ``cpu-<n>c`` for a CPU with n cores."""
    if device.get("kind") == "gpu":
        return str(device.get("name") or "gpu")
    return f"cpu-{len(list(device.get('cores') or [])) or 1}c"  # type: ignore[call-overload]


def summary(table: ProfileTable) -> str:
    """The table as text: throughput per quota (rows) x SM share (columns), inferred points starred."""
    lines = [f"{table.function} on {table.device_type} (* = inferred)",
             "quota \\ sm%  " + " ".join(f"{s:>8d}" for s in table.sm_grid)]
    for b in table.batches:
        if len(table.batches) > 1:
            lines.append(f"batch {b}")
        for q in table.quota_grid:
            cells = []
            for s in table.sm_grid:
                p = table.point(s, q, b)
                cells.append(f"{p.throughput_rps:7.1f}{' ' if p.measured else '*'}")
            lines.append(f"{q:>11g}  " + " ".join(cells))
    return "\n".join(lines)
