"""A function's replica configurations under its SLO, read from its profile table. Pure.

``ShareConfig`` is what one replica runs with; ``config_choices`` / ``choice_set`` turn a profile
table and an SLO into the configs a policy may choose, each with its capacity at the SLO (the
highest rate whose p99 stays under it, through ``latency.LatencyCurve``) and its footprint on a
device, most efficient first; ``plan_for_rate`` is the least-footprint set covering a rate. The
autoscaler (``autoscale``), the baselines and the simulator build on these.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from fast_profiler.table import ProfilePoint, ProfileTable
from fast_scheduler.latency import DEFAULT_MODEL, LatencyCurve, LatencyModel


class ChoiceSettings(Protocol):
    """What the configuration vocabulary reads of a policy's settings (``autoscale.AutoscaleSettings``
    is one): declared here, so this lower module never imports the policy above it."""

    @property
    def device_mem_bytes(self) -> int: ...
    @property
    def latency(self) -> LatencyModel: ...
    @property
    def max_utilisation(self) -> float: ...
    @property
    def limit_over_request(self) -> float: ...
    @property
    def quota_tiling(self) -> bool: ...


@dataclass(frozen=True)
class ShareConfig:
    """What one replica runs with."""

    sm_pct: int
    quota_request_frac: float
    quota_limit_frac: float
    batch: int = 1
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Configs key every count and lookup of a decision: hash once, not per use.
        object.__setattr__(
            self, "_hash", hash((self.sm_pct, self.quota_request_frac, self.quota_limit_frac, self.batch))
        )

    def __hash__(self) -> int:
        return self._hash

    @property
    def area(self) -> float:
        """Fraction of a device's SM-time this replica is guaranteed."""
        return self.sm_pct / 100 * self.quota_request_frac


STANDBY_REQUEST = 0.005
"""Quota request of a standby replica: the least the arbiter must guarantee it (a request must be
> 0); everything else it serves is borrowed idle time up to its limit."""
STANDBY_MAX_REQUEST = 0.05
"""A replica with a request at most this and a limit above it is a standby (``is_standby``)."""


def is_standby_quota(request_frac: float, limit_frac: float) -> bool:
    """A standby's quotas: a token request and a limit above it (it lives on borrowed time)."""
    return request_frac <= STANDBY_MAX_REQUEST + 1e-12 and limit_frac > request_frac


def is_standby(cfg: ShareConfig) -> bool:
    """A standby replica (``is_standby_quota`` of its quotas)."""
    return is_standby_quota(cfg.quota_request_frac, cfg.quota_limit_frac)


@dataclass(frozen=True)
class ConfigChoice:
    """A config with what the table predicts for it under a given SLO."""

    config: ShareConfig
    throughput_rps: float
    capacity_rps: float
    """Highest rate at which its p99 stays under the SLO (and under ``max_utilisation``)."""
    service_p99_ms: float
    footprint: float
    """max(tiled SM-time area, share of device memory): the device resource it takes (``tiled_area``)."""
    curve: LatencyCurve | None = None
    """Its p99 against rate (None: a flat ``service_p99_ms`` up to ``throughput_rps``)."""

    def p99_at(self, rate_rps: float) -> float:
        if self.curve is not None:
            return self.curve.p99_at(rate_rps)
        return self.service_p99_ms if rate_rps <= self.throughput_rps else math.inf


class ChoiceSet:
    """A function's configs under its SLO with the lookups every decision needs, built once per
    (table, SLO): most efficient first, by config, the cheapest, and the smallest config covering a
    residual rate by bisection. Deciding for 10,000 functions must not rebuild any of these."""

    __slots__ = ("choices", "by_config", "cheapest", "key", "_caps", "_best_from", "_standby")

    def __init__(self, choices: Sequence[ConfigChoice], key: tuple[object, ...] = (),
                 lookup: Sequence[ConfigChoice] = ()) -> None:
        self.choices = tuple(choices)
        self.key = key
        """What the set was built from (table identity, SLO, restriction); callers compare it."""
        # ``lookup``: configs not planned with but whose capacity counts when they run (a base
        # replica at full quota while new ones leave a standby's token free).
        self.by_config = {c.config: c for c in lookup} | {c.config: c for c in self.choices}
        self._standby: ShareConfig | None = None
        self.cheapest = min(self.choices, key=lambda c: (c.footprint, -c.capacity_rps), default=None)
        by_cap = sorted(self.choices, key=lambda c: c.capacity_rps)
        self._caps = [c.capacity_rps for c in by_cap]
        best: list[ConfigChoice] = []
        for c in reversed(by_cap):  # best[i]: least footprint among by_cap[i:]
            if not best or (c.footprint, -c.capacity_rps) < (best[-1].footprint, -best[-1].capacity_rps):
                best.append(c)
            else:
                best.append(best[-1])
        self._best_from = best[::-1]

    def __bool__(self) -> bool:
        return bool(self.choices)

    def standby_config(self) -> ShareConfig:
        """The standby replica of this set: the most efficient config's SM share and batch at
        ``STANDBY_REQUEST`` quota, limit 1 (one object, so sets of them compare by identity)."""
        if self._standby is None:
            best = self.choices[0].config
            self._standby = ShareConfig(best.sm_pct, STANDBY_REQUEST, 1.0, best.batch)
        return self._standby

    def smallest_covering(self, rate_rps: float) -> ConfigChoice | None:
        """The least-footprint config whose capacity at the SLO is >= ``rate_rps``."""
        i = bisect.bisect_left(self._caps, rate_rps - 1e-12)
        return self._best_from[i] if i < len(self._best_from) else None

    def totals(self, configs: Sequence[ShareConfig]) -> tuple[float, float, float]:
        """(footprint, capacity at SLO, throughput) of a set; unknown configs add their area only."""
        fp = cap = thr = 0.0
        get = self.by_config.get
        for cfg in configs:
            c = get(cfg)
            if c is None:
                fp += cfg.area
            else:
                fp += c.footprint
                cap += c.capacity_rps
                thr += c.throughput_rps
        return fp, cap, thr


# ---- the latency model ----------------------------------------------------------------------


def curve_of(point: ProfilePoint, model: LatencyModel = DEFAULT_MODEL) -> LatencyCurve:
    return LatencyCurve.from_point(point.throughput_rps, point.latency_p50_ms, point.latency_p99_ms, model)


def p99_at_rate_ms(point: ProfilePoint, rate_rps: float, model: LatencyModel = DEFAULT_MODEL) -> float:
    return curve_of(point, model).p99_at(rate_rps)


def capacity_at_slo(
    point: ProfilePoint, slo_ms: float, max_utilisation: float = 1.0, model: LatencyModel = DEFAULT_MODEL
) -> float:
    """Largest rate with p99 <= ``slo_ms``, at most ``max_utilisation`` x the profiled rate (0 when
    even an idle replica misses the SLO)."""
    return min(curve_of(point, model).capacity_at(slo_ms), point.throughput_rps * max_utilisation)


TILE_SM_PCT = (50, 33, 25, 20, 16, 14, 12)
"""SM shares that tile a device exactly (100 // k, k = 2..8): k replicas fill its SMs with no strip
left over, where the profiling grid's 24 % leaves 4 % of every device unusable."""


def candidate_points(table: ProfileTable, standby_room: bool = False) -> list[ProfilePoint]:
    """The configs a policy may choose: the table's grid, plus the tiling SM shares at every quota and
    batch of the grid, read through the table's interpolation (inside its SM range; not measured).

    ``standby_room``: every full-quota config is offered at ``1 - STANDBY_REQUEST`` instead
    (interpolated; its limit stays the whole window, ``config_choices``), which leaves a standby's
    token request free in its strip: a device packed with them can host standby replicas
    (``AutoscaleSettings.standby_frac``); the planned replica borrows that token back whenever the
    standby does not use it."""
    pts = list(table.grid())
    have = set(table.sm_grid)
    lo = table.sm_grid[0]
    for sm in TILE_SM_PCT:
        if sm in have or sm < lo:
            continue
        for b in table.batches:
            for q in table.quota_grid:
                e = table.estimate(sm, q, b)
                pts.append(ProfilePoint(sm, q, b, e.throughput_rps, e.latency_p50_ms, e.latency_p95_ms,
                                        e.latency_p99_ms, False))
    return room_points(table, pts) if standby_room else pts


def room_points(table: ProfileTable, pts: Iterable[ProfilePoint]) -> list[ProfilePoint]:
    """``pts`` with every full-quota point at ``1 - STANDBY_REQUEST`` instead: interpolated where
    the table has a lower quota, else the full-quota point's throughput scaled by the quota (a
    time share) and its latencies."""
    room_q = round(1.0 - STANDBY_REQUEST, 6)
    out = []
    for p in pts:
        if p.quota_frac >= 1.0 - 1e-9:
            if table.quota_grid[0] <= room_q:
                e = table.estimate(p.sm_pct, room_q, p.batch)
                p = ProfilePoint(p.sm_pct, room_q, p.batch, e.throughput_rps, e.latency_p50_ms,
                                 e.latency_p95_ms, e.latency_p99_ms, False)
            else:
                p = replace(p, quota_frac=room_q, throughput_rps=p.throughput_rps * room_q, measured=False)
        out.append(p)
    return out


def tiled_area(cfg: ShareConfig, quota_tiling: bool = False) -> float:
    """The share of a device a replica takes once packed: SM strips of its height fit ``100 // sm``
    times (a 24 % strip costs a quarter, like 25 %, since the 4 % left over fits nothing of its
    kind), and its quota of that strip. The planning footprint; placement checks the real rule.

    ``quota_tiling``: the strip's quota is tiled the same way: ``floor(1 / quota)`` replicas of its
    kind take turns in one strip, so each costs that fraction of it (0.4 costs half a strip, since
    the 0.2 left beside two of them fits nothing of their kind; 0.6 and 0.8 cost the whole strip)."""
    strips = max(1, 100 // max(1, cfg.sm_pct))
    if not quota_tiling:
        return cfg.quota_request_frac / strips
    return 1.0 / strips / max(1, math.floor(1.0 / max(cfg.quota_request_frac, 1e-9) + 1e-9))


def config_choices(
    table: ProfileTable,
    slo_ms: float,
    settings: ChoiceSettings,
    points: Iterable[ProfilePoint] | None = None,
) -> tuple[ConfigChoice, ...]:
    """Every config (the table's grid, or ``points``) that can meet the SLO at some rate, most
    efficient (footprint per RPS at the SLO) first."""
    act_bytes = max(0, table.mem_bytes - table.weight_bytes)
    mem_frac = act_bytes / settings.device_mem_bytes
    out = []
    for p in table.grid() if points is None else points:
        curve = curve_of(p, settings.latency)
        cap = min(curve.capacity_at(slo_ms), p.throughput_rps * settings.max_utilisation)
        if cap <= 0:
            continue
        limit = min(1.0, p.quota_frac * settings.limit_over_request)
        if p.quota_frac >= 1.0 - STANDBY_MAX_REQUEST - 1e-9:  # room for a standby's token: lend it back
            limit = 1.0
        cfg = ShareConfig(p.sm_pct, p.quota_frac, limit, p.batch)
        out.append(
            ConfigChoice(cfg, p.throughput_rps, cap, p.latency_p99_ms,
                         max(tiled_area(cfg, settings.quota_tiling), mem_frac), curve)
        )
    out.sort(key=lambda c: (c.footprint / c.capacity_rps, c.footprint, c.config.batch))
    return tuple(out)


def choice_set(
    table: ProfileTable,
    slo_ms: float,
    settings: ChoiceSettings,
    points: Iterable[ProfilePoint] | None = None,
    tag: str = "",
    lookup_points: Iterable[ProfilePoint] | None = None,
) -> ChoiceSet:
    """``config_choices`` with its lookups, keyed (table identity, SLO, ``tag``): ``decide_replicas``
    keeps a state's set while the first two match (``tag`` names a restriction, e.g. a baseline's).
    ``lookup_points``: configs whose capacity counts when they run but that are not planned with."""
    lookup = config_choices(table, slo_ms, settings, lookup_points) if lookup_points is not None else ()
    return ChoiceSet(config_choices(table, slo_ms, settings, points), (id(table), slo_ms, tag), lookup)


def plan_for_rate(
    choices: ChoiceSet | Sequence[ConfigChoice], rate_rps: float, max_replicas: int
) -> tuple[tuple[ConfigChoice, ...], bool]:
    """Least-footprint set covering ``rate_rps``: the most efficient config for the bulk, the smallest
    sufficient one for the residual. Returns (set, feasible within ``max_replicas``)."""
    cs = choices if isinstance(choices, ChoiceSet) else ChoiceSet(choices)
    if rate_rps <= 0 or not cs:
        return (), bool(cs) or rate_rps <= 0
    best = cs.choices[0]
    n_full = int(rate_rps // best.capacity_rps)
    resid = rate_rps - n_full * best.capacity_rps
    plan: tuple[ConfigChoice, ...] = (best,) * n_full
    if resid > 1e-9:
        small = cs.smallest_covering(resid) or best
        plan = plan + (small,)
    if len(plan) <= max_replicas:
        return plan, True
    fits = [
        (math.ceil(rate_rps / c.capacity_rps) * c.footprint, c)
        for c in cs.choices
        if math.ceil(rate_rps / c.capacity_rps) <= max_replicas
    ]
    if fits:
        c = min(fits, key=lambda fc: fc[0])[1]
        return (c,) * math.ceil(rate_rps / c.capacity_rps), True
    biggest = max(cs.choices, key=lambda c: c.capacity_rps)
    return (biggest,) * max_replicas, False


def footprint_of(
    configs: Sequence[ShareConfig], choices: ChoiceSet | Sequence[ConfigChoice]
) -> tuple[float, float]:
    """(footprint, capacity at SLO) of a set of configs; configs not in ``choices`` count 0 capacity."""
    cs = choices if isinstance(choices, ChoiceSet) else ChoiceSet(choices)
    fp, cap, _ = cs.totals(configs)
    return fp, cap
