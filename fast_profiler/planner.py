"""Which configurations to measure, and how the rest of the grid is filled in. Pure.

The grid is SM share x quota x batch (the original's 7 x 5 x 1). Three rules make it cheap:

1. **Same share, one measurement.** On the CPU device an SM share becomes a core count
   (``fastgshare.resources.cores_for_share``): every share that maps to the same count is the same
   configuration, measured once (``Source.SAME_SHARE`` marks the copies). A 2-core machine has two
   spatial points, a 16-core one up to 16; nothing here assumes either. On a GPU every share is its
   own point (``device_cores=None``).
2. **Saturation along the SM axis.** Spatial classes are measured in ascending order at full quota;
   once a class gains less than ``saturation_tol`` over the one below, the classes above it cannot
   matter (more SMs buy nothing) and are not measured. The first saturated class is measured at the
   other quota anchors as well (a partial quota limits device time, where a faster request may
   still gain); its other quotas are the last growing class's column x the ratio of the two
   classes, interpolated between neighbouring anchors, and the classes above copy it
   (``Source.SATURATED``).
3. **Quota anchors.** In each class that still gains, only the anchor quotas are measured (by default
   the smallest, the middle and the largest of the grid); the others are interpolated linearly
   between the neighbouring anchors (``Source.INTERPOLATED``).

``next_config`` is the whole plan as a function of what has been measured so far, so a profile can
be resumed, shown as progress and tested without a platform. ``fill`` makes the full grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from fast_profiler.table import PAPER_QUOTA_GRID, PAPER_SM_GRID, ProfilePoint, ProfileTable
from fastgshare.errors import ValidationError
from fastgshare.resources import cores_for_share


class Source(StrEnum):
    MEASURED = "measured"
    SAME_SHARE = "same-share"
    """Maps to the same enforced share as a measured point (CPU: same core count)."""
    SATURATED = "saturated"
    """Past the SM share where throughput stopped growing: the first saturated class between its
    smallest- and full-quota measurements (the last growing class's column x the ratio of the two,
    interpolated in quota); the classes above it copy that column."""
    INTERPOLATED = "interpolated"
    """Linear in quota between measured anchors of the same spatial class."""


@dataclass(frozen=True, order=True)
class Config:
    """One resource configuration of a replica."""

    sm_pct: int
    quota_frac: float
    batch: int = 1


@dataclass(frozen=True)
class GridSpec:
    """What to profile."""

    sm_grid: tuple[int, ...] = PAPER_SM_GRID
    quota_grid: tuple[float, ...] = PAPER_QUOTA_GRID
    batches: tuple[int, ...] = (1,)
    device_cores: int | None = None
    """CPU device: its core count (shares map to core sets). None: a GPU, every share distinct."""
    quota_anchors: tuple[float, ...] | None = None
    """Quotas measured in each class; None: smallest, middle and largest of ``quota_grid``."""
    saturation_tol: float = 0.05
    """A class gaining less than this fraction over the class below marks saturation."""

    def __post_init__(self) -> None:
        if not self.sm_grid or not self.quota_grid or not self.batches:
            raise ValidationError("grid", "non-empty sm, quota and batch grids", self)
        if any(not 1 <= s <= 100 for s in self.sm_grid):
            raise ValidationError("sm_grid", "percentages 1..100", self.sm_grid)
        if any(not 0 < q <= 1 for q in self.quota_grid):
            raise ValidationError("quota_grid", "fractions 0 < q <= 1", self.quota_grid)
        if any(b < 1 for b in self.batches):
            raise ValidationError("batches", "sizes >= 1", self.batches)
        if self.device_cores is not None and self.device_cores < 1:
            raise ValidationError("device_cores", "at least 1 core", self.device_cores)
        object.__setattr__(self, "sm_grid", tuple(sorted(set(self.sm_grid))))
        object.__setattr__(self, "quota_grid", tuple(sorted({round(q, 6) for q in self.quota_grid})))
        object.__setattr__(self, "batches", tuple(sorted(set(self.batches))))
        anchors = self.quota_anchors
        if anchors is None:
            qs = self.quota_grid
            anchors = tuple(sorted({qs[0], qs[len(qs) // 2], qs[-1]}))
        anchors = tuple(sorted({round(q, 6) for q in anchors}))
        if not set(anchors) <= set(self.quota_grid) or anchors[-1] != self.quota_grid[-1]:
            raise ValidationError("quota_anchors", f"a subset of {self.quota_grid} holding its largest",
                                  anchors)
        if anchors[0] != self.quota_grid[0]:
            raise ValidationError("quota_anchors", "the smallest quota of the grid (no extrapolation)",
                                  anchors)
        object.__setattr__(self, "quota_anchors", anchors)

    @property
    def anchors(self) -> tuple[float, ...]:
        """``quota_anchors`` as resolved at construction (never None after it)."""
        assert self.quota_anchors is not None
        return self.quota_anchors

    @property
    def points_total(self) -> int:
        return len(self.sm_grid) * len(self.quota_grid) * len(self.batches)


@dataclass(frozen=True)
class SpatialClass:
    """Shares of the grid that the device enforces identically."""

    sm_pct: int
    """The share deployed to measure the class (its smallest member)."""
    members: tuple[int, ...]
    cores: int | None = None


@dataclass(frozen=True)
class Measurement:
    """What the runner measured for one configuration."""

    config: Config
    throughput_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    busy_frac: float = 0.0
    """Fraction of wall time the device was busy at that rate (sidecar busy time)."""
    error_rate: float = 0.0
    busy_ms_per_request: float = 0.0
    seconds: float = 0.0
    """Wall time this configuration took to measure, deployment included."""
    steps: tuple[tuple[float, bool], ...] = ()
    """The rates tried and whether each passed."""
    capacity_rps: float = 0.0
    """The capacity estimate the search started from (at full quota: the closed-loop probe's rate)."""
    probe_busy_ms: float = 0.0
    """Busy ms per request under that probe (full quota; 0 when none ran)."""
    foreign_cores: float = 0.0
    """Most CPU (in cores) other processes used during a counted step (0: quiet, or not watched)."""
    search_rps: float = 0.0
    """The rate the step search answered (its pass/fail votes; before the queue model)."""
    model_rps: float | None = None
    """The queue model's long-run rate at the SLO from the passing steps' requests (None: too few)."""


@dataclass(frozen=True)
class FilledPoint:
    """A grid point of the finished profile, with where its numbers came from."""

    config: Config
    throughput_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    busy_frac: float
    error_rate: float
    source: Source
    basis: tuple[Config, ...]
    """The measured configurations the numbers were taken from."""


def spatial_classes(spec: GridSpec) -> tuple[SpatialClass, ...]:
    if spec.device_cores is None:
        return tuple(SpatialClass(s, (s,)) for s in spec.sm_grid)
    by_cores: dict[int, list[int]] = {}
    for s in spec.sm_grid:
        by_cores.setdefault(cores_for_share(s, spec.device_cores), []).append(s)
    return tuple(SpatialClass(m[0], tuple(m), c) for c, m in sorted(by_cores.items()))


def _key(c: Config) -> Config:
    return Config(int(c.sm_pct), round(float(c.quota_frac), 6), int(c.batch))


def saturation_index(spec: GridSpec, measured: Mapping[Config, Measurement], batch: int) -> int | None:
    """Index of the first class that gained less than ``saturation_tol`` over the one below, if any."""
    classes = spatial_classes(spec)
    q = spec.quota_grid[-1]
    for i in range(1, len(classes)):
        lo = measured.get(_key(Config(classes[i - 1].sm_pct, q, batch)))
        hi = measured.get(_key(Config(classes[i].sm_pct, q, batch)))
        if lo is None or hi is None:
            return None
        if hi.throughput_rps <= lo.throughput_rps * (1 + spec.saturation_tol):
            return i
    return None


def planned_configs(spec: GridSpec, measured: Mapping[Config, Measurement]) -> tuple[Config, ...]:
    """Every configuration the plan will measure, given what is known now (measured ones included).

    Shrinks as saturation is found; ``len(planned) - len(measured)`` is the work left.
    """
    measured = {_key(k): v for k, v in measured.items()}
    out: list[Config] = []
    classes = spatial_classes(spec)
    q_full = spec.quota_grid[-1]
    for b in spec.batches:
        sat = saturation_index(spec, measured, b)
        growing = classes if sat is None else classes[:sat]
        for i, c in enumerate(classes):
            if sat is None or i <= sat:
                out.append(Config(c.sm_pct, q_full, b))
        for c in growing:
            out.extend(Config(c.sm_pct, q, b) for q in spec.anchors if q != q_full)
        if sat is not None:
            # The first saturated class at the other quota anchors as well: a partial quota limits
            # device time, where a faster request may still gain (see ``_saturated_column``).
            out.extend(Config(classes[sat].sm_pct, q, b) for q in spec.anchors if q != q_full)
    return tuple(out)


def next_config(spec: GridSpec, measured: Mapping[Config, Measurement]) -> Config | None:
    """The next configuration to measure (full quota up the SM axis first), or None when done."""
    have = {_key(k) for k in measured}
    for c in planned_configs(spec, measured):
        if c not in have:
            return c
    return None


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _from(m: Measurement | FilledPoint, config: Config, source: Source,
          basis: tuple[Config, ...]) -> FilledPoint:
    return FilledPoint(config, m.throughput_rps, m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms,
                       m.busy_frac, m.error_rate, source, basis)


Anchors = list[tuple[float, Measurement]]


def _column(spec: GridSpec, cls: SpatialClass, batch: int, measured: Mapping[Config, Measurement],
            infer: Callable[[Config, Anchors, Anchors], FilledPoint]) -> dict[float, FilledPoint]:
    """Every quota of one class: its measured points as measured, the others from ``infer(config,
    anchors below, anchors above)``. The class must be measured at least at full quota."""
    anchors = [(q, m) for q in spec.anchors
               if (m := measured.get(_key(Config(cls.sm_pct, q, batch)))) is not None]
    if not anchors:
        raise ValidationError("measurements", f"at least the full-quota point of sm {cls.sm_pct}",
                              "none")
    col: dict[float, FilledPoint] = {}
    for q in spec.quota_grid:
        cfg = Config(cls.sm_pct, q, batch)
        exact = measured.get(_key(cfg))
        if exact is not None:
            col[q] = _from(exact, cfg, Source.MEASURED, (exact.config,))
        else:
            col[q] = infer(cfg, [a for a in anchors if a[0] < q], [a for a in anchors if a[0] > q])
    return col


def _quota_lerp(q: float, q0: float, r0: float, q1: float, r1: float) -> float:
    """The rate at quota ``q`` between two measured quotas: the device time each request costs
    (``quota / rate``) is linear in the quota, not the rate. A partial quota's rate is its cap over
    the time the arbiter charges per request, and that time falls as the rate rises (the token's
    linger after a request is shared by the next one when they queue back to back): MobileNet at
    one core served 6.9 / 15.1 / 25.8 rps at quota 0.2 / 0.4 / 0.6, which a line through the ends
    puts 8 % high at 0.4 (16.3) and this 1 % (15.3). Either rate 0: linear in the rate."""
    t = (q - q0) / (q1 - q0) if q1 != q0 else 1.0
    if r0 > 0 and r1 > 0:
        return q / _lerp(q0 / r0, q1 / r1, t)
    return _lerp(r0, r1, t)


def _between(cfg: Config, m0: Measurement, m1: Measurement, t: float, rps: float, source: Source,
             basis: tuple[Config, ...]) -> FilledPoint:
    """A point at ``t`` of the way from ``m0`` to ``m1`` (latencies, busy time), serving ``rps``."""
    return FilledPoint(cfg, rps, _lerp(m0.latency_p50_ms, m1.latency_p50_ms, t),
                       _lerp(m0.latency_p95_ms, m1.latency_p95_ms, t),
                       _lerp(m0.latency_p99_ms, m1.latency_p99_ms, t), _lerp(m0.busy_frac, m1.busy_frac, t),
                       max(m0.error_rate, m1.error_rate), source, basis)


def _class_column(spec: GridSpec, cls: SpatialClass, batch: int,
                  measured: Mapping[Config, Measurement]) -> dict[float, FilledPoint]:
    """Every quota of one measured class: anchors as measured, the rest interpolated."""
    def infer(cfg: Config, below: Anchors, above: Anchors) -> FilledPoint:
        q = cfg.quota_frac
        if below and above:
            (q0, m0), (q1, m1) = below[-1], above[0]
            t = (q - q0) / (q1 - q0)
            rps = _quota_lerp(q, q0, m0.throughput_rps, q1, m1.throughput_rps)
            return _between(cfg, m0, m1, t, rps, Source.INTERPOLATED, (m0.config, m1.config))
        # Only one side measured (an interrupted plan): throughput scales with the quota.
        qn, mn = (below or above)[-1 if below else 0]
        scale = q / qn
        return FilledPoint(cfg, mn.throughput_rps * scale, mn.latency_p50_ms, mn.latency_p95_ms,
                           mn.latency_p99_ms, min(1.0, mn.busy_frac * scale), mn.error_rate,
                           Source.INTERPOLATED, (mn.config,))

    return _column(spec, cls, batch, measured, infer)


def _saturated_column(spec: GridSpec, cls: SpatialClass, batch: int, ref: Mapping[float, FilledPoint],
                      measured: Mapping[Config, Measurement]) -> dict[float, FilledPoint]:
    """The first saturated class: measured at the quota anchors; in between, the last growing
    class's column (``ref``) x the ratio of the two classes, linear in quota between the ratios
    measured at the neighbouring anchors.

    Saturation is judged at full quota, where the rate stops growing; a partial quota limits device
    *time* instead, where a request that runs faster on the bigger share serves more of them, so
    the ratio is not the same at every quota. On a 2-core CPU two cores serve MobileNet no faster
    than one at full quota (the load generator and the platform share the cores), while at quota 0.2
    they served 1.6x more with the estimator of 2026-11-27 (5.8 rps against 3.7); a copy of the
    smaller class was 37 % off there. The ratio need not be linear in quota, hence every anchor.

    Where the smaller class serves nothing at an anchor (ratio undefined), the column is linear in
    quota between the class's own measurements there instead."""
    if _key(Config(cls.sm_pct, spec.quota_grid[-1], batch)) not in measured:
        raise ValidationError("measurements", f"the full-quota point of sm {cls.sm_pct}", "none")

    def infer(cfg: Config, below: Anchors, above: Anchors) -> FilledPoint:
        q = cfg.quota_frac
        (q0, m0), (q1, m1) = (below or above)[-1 if below else 0], above[0]
        t = (q - q0) / (q1 - q0) if q1 > q0 else 1.0
        b0, b1 = ref[q0].throughput_rps, ref[q1].throughput_rps
        basis = tuple(dict.fromkeys((m0.config, m1.config)))
        if b0 > 0 and b1 > 0:
            rps = ref[q].throughput_rps * _lerp(m0.throughput_rps / b0, m1.throughput_rps / b1, t)
            basis = tuple(dict.fromkeys(basis + ref[q].basis))
        else:
            rps = _quota_lerp(q, q0, m0.throughput_rps, q1, m1.throughput_rps)
        return _between(cfg, m0, m1, t, rps, Source.SATURATED, basis)

    return _column(spec, cls, batch, measured, infer)


def fill(spec: GridSpec, measured: Mapping[Config, Measurement]) -> tuple[FilledPoint, ...]:
    """The full grid from the measurements; raises if the plan has configurations left."""
    measured = {_key(k): v for k, v in measured.items()}
    left = next_config(spec, measured)
    if left is not None:
        raise ValidationError("measurements", "a finished plan (next_config() is None)", left)
    classes = spatial_classes(spec)
    out: list[FilledPoint] = []
    for b in spec.batches:
        sat = saturation_index(spec, measured, b)
        columns: dict[int, dict[float, FilledPoint]] = {}
        for i, cls in enumerate(classes):
            if sat is None or i < sat:
                columns[cls.sm_pct] = _class_column(spec, cls, b, measured)
            elif i == sat:
                columns[cls.sm_pct] = _saturated_column(spec, cls, b, columns[classes[sat - 1].sm_pct],
                                                        measured)
            else:  # more SMs buy nothing past the first saturated class: its column, inferred
                first = columns[classes[sat].sm_pct]
                columns[cls.sm_pct] = {q: replace(p, config=Config(cls.sm_pct, q, b), source=Source.SATURATED)
                                       for q, p in first.items()}
        for cls in classes:
            for s in cls.members:
                for q in spec.quota_grid:
                    p = columns[cls.sm_pct][q]
                    cfg = Config(s, q, b)
                    same = s != cls.sm_pct and p.source == Source.MEASURED
                    src = Source.SAME_SHARE if same else p.source
                    out.append(FilledPoint(cfg, p.throughput_rps, p.latency_p50_ms, p.latency_p95_ms,
                                           p.latency_p99_ms, p.busy_frac, p.error_rate, src, p.basis))
    return tuple(sorted(out, key=lambda p: (p.config.batch, p.config.sm_pct, p.config.quota_frac)))


def to_table(function: str, device_type: str, points: Sequence[FilledPoint], *,
             mem_bytes: int = 0, weight_bytes: int = 0) -> ProfileTable:
    """The scheduler's table: a point counts as measured when it was run (or its exact twin was)."""
    return ProfileTable(function, device_type, tuple(
        ProfilePoint(p.config.sm_pct, p.config.quota_frac, p.config.batch, p.throughput_rps,
                     p.latency_p50_ms, p.latency_p95_ms, p.latency_p99_ms,
                     p.source in (Source.MEASURED, Source.SAME_SHARE))
        for p in points), weight_bytes, mem_bytes)
