"""Policies as the simulator (and later the control loop) drives them: autoscale, then place.

``AutoscaledPolicy`` runs ``decide_replicas`` for every function and ``place`` for every new
replica; what differs between this project's policy and the sharing baselines is only the set of
configs it may choose from, the filters, and whether it re-packs. No clock, no I/O: the simulator
hands in ``now_s`` and the observed rates. The latest decision per function is kept in
``decisions`` so a loop can log and expose it.

Standby replicas are placed with ``place_standby``, as the live loop places them: the devices that
refused a standby request are not scanned for it again while they are unchanged (``refused``; the
same placements as a scan of every device, less work). ``apply`` has no clock of its own:
it goes by the ``now_s`` of the last ``desired`` or ``fast`` call (the simulator applies what they
return at once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fast_scheduler.autoscale import (
    AutoscaleContext,
    AutoscaleSettings,
    AutoscaleState,
    Decision,
    decide_replicas,
    fast_scale_up,
    split_standby,
    with_standby,
)
from fast_scheduler.choices import (
    ChoiceSet,
    ConfigChoice,
    ShareConfig,
    candidate_points,
    choice_set,
    config_choices,
    is_standby,
)
from fast_scheduler.evaluation.simulator import SimFunction
from fast_scheduler.placement import (
    DEFAULT_FILTERS,
    DEFAULT_SCORES,
    STANDBY_RETRY_S,
    STANDBY_SCORES,
    Filter,
    Placed,
    RefusedStandby,
    Rejection,
    ReplicaRequest,
    Score,
    Snapshot,
    beside_holders,
    evict_lone_standby,
    place,
    place_standby,
    plan_repack,
)
from fast_scheduler.repack import every_ticks_for_start
from fast_scheduler.seasonal import SeasonalForecaster

ChoiceFilter = Callable[[SimFunction, AutoscaleSettings], tuple[ConfigChoice, ...]]


@dataclass
class AutoscaledPolicy:
    name: str
    specs: Sequence[SimFunction]
    settings: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    choices: ChoiceFilter | None = None
    """Restricts the configs (a baseline's sharing mode); None: the whole table."""
    lookup: ChoiceFilter | None = None
    """Configs not planned with whose capacity counts when they run (``ChoiceSet`` lookup)."""
    filters: Sequence[Filter] = DEFAULT_FILTERS
    scores: Sequence[tuple[Score, float]] = DEFAULT_SCORES
    repack_every_ticks: int = 0
    """Re-pack every this many ticks; 0 never."""
    standby_retry_s: float = STANDBY_RETRY_S
    """The devices that refused a standby request are scanned for it again after this long even when
    unchanged (``place_standby``); 0: no memory, every standby request scanned over every device."""
    seasonal: SeasonalForecaster | None = None
    """Learns each function's period from the rates it observes and pre-scales ahead of a predicted
    step (``AutoscaleContext.predicted_rps``); None: one is made when
    ``settings.seasonal_forecast`` (reactive only without)."""
    states: dict[str, AutoscaleState] = field(default_factory=dict)
    recent: tuple[dict[str, float], float] | None = None
    """The rates over the last sub-window before the coming tick, and its length
    (``observe_recent``; ``AutoscaleContext.recent_rps``), used by that tick only."""
    batch_limits: dict[str, dict[ShareConfig, int]] = field(default_factory=dict)
    """Batch raises of the last fast sub-tick, per function, until ``take_batch_limits``."""
    last_tick_s: float | None = None
    decisions: dict[str, Decision] = field(default_factory=dict)
    ticks: int = 0
    now_s: float = 0.0
    """The time of the last ``desired`` or ``fast`` call (what ``apply`` goes by)."""
    refused: dict[ReplicaRequest, RefusedStandby] = field(default_factory=dict)
    """Standby requests with the devices that refused them (``place_standby``)."""
    standby_requests: int = 0
    """Standby requests ``apply`` was given."""
    standby_scans: int = 0
    """Of those, the ones scanned over one device or more (the others: every device refused them
    before, and none changed since)."""
    standby_devices: int = 0
    """Devices examined for standby requests (the placement work refusals cost)."""

    def __post_init__(self) -> None:
        if self.seasonal is None and self.settings.seasonal_forecast:
            self.seasonal = SeasonalForecaster()
        # One choice set per (table, SLO), shared by every function that has them.
        shared: dict[tuple[int, float], ChoiceSet] = {}
        for s in self.specs:
            key = (id(s.table), s.slo_ms)
            if key not in shared:
                if self.choices is not None:
                    lookup = self.lookup(s, self.settings) if self.lookup is not None else ()
                    shared[key] = ChoiceSet(self.choices(s, self.settings), (*key, self.name), lookup)
                else:
                    shared[key] = choice_set(s.table, s.slo_ms, self.settings)
            self.states[s.name] = AutoscaleState(choice_set=shared[key])

    def desired(
        self,
        now_s: float,
        observed_rps: Mapping[str, float],
        current: Mapping[str, tuple[ShareConfig, ...]],
    ) -> dict[str, tuple[ShareConfig, ...]]:
        self.ticks += 1
        recent, self.recent = self.recent, None
        span_s = now_s - self.last_tick_s if self.last_tick_s is not None else 0.0
        self.now_s, self.last_tick_s = now_s, now_s
        out = {}
        for s in self.specs:
            planned, _standby = split_standby(current.get(s.name, ()))
            predicted = None
            if self.seasonal is not None:
                self.seasonal.observe(s.name, now_s, observed_rps.get(s.name, 0.0), span_s)
                predicted = self.seasonal.ahead(s.name, now_s, self.settings.seasonal_ahead_s)
            ctx = AutoscaleContext(
                s.name,
                now_s,
                observed_rps.get(s.name, 0.0),
                s.table,
                s.slo_ms,
                planned,
                s.min_replicas,
                s.max_replicas,
                predicted_rps=predicted,
                recent_rps=recent[0].get(s.name, 0.0) if recent else None,
                recent_window_s=recent[1] if recent else 0.0,
            )
            d, st = decide_replicas(ctx, self.states.get(s.name), self.settings)
            d = with_standby(d, st, s.max_replicas, self.settings)
            self.states[s.name] = st
            self.decisions[s.name] = d
            out[s.name] = d.replicas
        return out

    def fast(
        self,
        now_s: float,
        observed_rps: Mapping[str, float],
        current: Mapping[str, tuple[ShareConfig, ...]],
        window_s: float,
    ) -> dict[str, tuple[ShareConfig, ...]]:
        """The fast scale-up path between ticks (``fast_scale_up``): only the functions whose rate
        over the last ``window_s`` exceeds their replicas' capacity, with their new replica sets."""
        self.now_s = now_s
        out = {}
        for s in self.specs:
            obs = observed_rps.get(s.name, 0.0)
            if obs <= 0:
                continue
            planned, standby = split_standby(current.get(s.name, ()))
            ctx = AutoscaleContext(s.name, now_s, obs, s.table, s.slo_ms, planned,
                                   s.min_replicas, s.max_replicas - len(standby))
            d, st = fast_scale_up(ctx, self.states.get(s.name), window_s, self.settings)
            if d is not None and st is not None:
                self.states[s.name] = st
                self.decisions[s.name] = d
                out[s.name] = d.replicas + standby
                if d.batch_limits:
                    self.batch_limits[s.name] = dict(d.batch_limits)
        return out

    def observe_recent(self, now_s: float, observed_rps: Mapping[str, float], window_s: float) -> None:
        """The rates since the fast path's last reading, handed over just before a tick (that
        ``desired`` plans for a step they show; ``AutoscaleContext.recent_rps``)."""
        self.recent = (dict(observed_rps), window_s)

    def take_batch_limits(self) -> dict[str, dict[ShareConfig, int]]:
        """The batch raises decided since the last call (the simulator applies them at once)."""
        out, self.batch_limits = self.batch_limits, {}
        return out

    def apply(
        self, snapshot: Snapshot, adds: Sequence[ReplicaRequest]
    ) -> tuple[Snapshot, list[ReplicaRequest]]:
        rejected = []
        standby_filters = (*self.filters, beside_holders)
        now, retry_s = self.now_s, self.standby_retry_s
        if self.refused:  # expired refusals would be scanned in full anyway
            self.refused = {k: v for k, v in self.refused.items() if now - v.at_s < retry_s}
        for r in sorted(adds, key=lambda r: (-r.area, r.replica_id)):
            p: Placed | Rejection | None
            if not is_standby(r.config):
                p = place(r, snapshot, self.filters, self.scores)
            else:
                self.standby_requests += 1
                if retry_s > 0:
                    p, scanned = place_standby(r, snapshot, self.refused, now, retry_s, standby_filters)
                else:
                    p, scanned = place(r, snapshot, standby_filters, STANDBY_SCORES), len(snapshot.candidates)
                self.standby_scans += scanned > 0
                self.standby_devices += scanned
            if p is None or isinstance(p, Rejection):
                rejected.append(r)
            else:
                snapshot = snapshot.with_device(p.device)
        return snapshot, rejected

    def after(self, snapshot: Snapshot) -> tuple[Snapshot, int]:
        """Standby replicas left alone on a device are removed (they would keep it in use); then a
        re-pack every ``repack_every_ticks``."""
        snapshot = evict_lone_standby(snapshot)
        if not self.repack_every_ticks or self.ticks % self.repack_every_ticks:
            return snapshot, 0
        plan = plan_repack(snapshot)
        return plan.snapshot, len(plan.moves)


def this_policy(specs: Sequence[SimFunction], settings: AutoscaleSettings | None = None,
                seasonal: SeasonalForecaster | None = None) -> AutoscaledPolicy:
    """This project's policy: every (SM, quota, batch) config of the table and the tiling SM shares
    (``candidate_points``, as the live loop offers them), band admission, packing + affinity, re-pack
    at the cadence for its start time (``repack.every_ticks_for_start(settings.start_s)``)."""
    st = settings or AutoscaleSettings()
    room = st.standby_frac > 0
    return AutoscaledPolicy(
        "this", specs, st, restricted(lambda s: candidate_points(s.table, room)),
        lookup=restricted(lambda s: candidate_points(s.table)) if room else None,
        repack_every_ticks=every_ticks_for_start(st.start_s), seasonal=seasonal,
    )


def restricted(points_of: Callable[[SimFunction], list]) -> ChoiceFilter:
    """A choice filter that offers only ``points_of(spec)`` (ProfilePoints, grid or interpolated)."""

    def choose(spec: SimFunction, settings: AutoscaleSettings) -> tuple[ConfigChoice, ...]:
        return config_choices(spec.table, spec.slo_ms, settings, points_of(spec))

    return choose
