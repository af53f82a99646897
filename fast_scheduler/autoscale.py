"""SLO-aware autoscaling from profile tables: a pure ``decide_replicas(ctx, state) -> (decision, state)``.

The control loop (and the cluster simulator) calls ``decide_replicas`` once per function per tick
with the rate it observed since the last tick, the function's profile table, SLO and bounds, and
the replicas it runs now; it gets back the replica set to run, with a reason a person can read and
the utilisation it predicts. Nothing here reads a clock or a metric: ``now_s`` and the observed rate
are inputs, and all memory between ticks is in the returned state.

The configurations a function may run with, and their capacity at the SLO, are in ``choices``.
The latency model (shared with the simulator) is ``latency.LatencyCurve``: a table point is the
p99 measured at the profiled rate, and the curve through it falls towards light-load latency below
that rate and rises past it (M/G/1 shape). A config's *capacity at the SLO* is the highest rate whose
p99 stays under the SLO, never above the profiled rate.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fast_profiler.table import ProfileTable
from fast_scheduler.choices import (
    ChoiceSet,
    ShareConfig,
    choice_set,
    is_standby,
    plan_for_rate,
)
from fast_scheduler.latency import DEFAULT_MODEL, LatencyModel


@dataclass(frozen=True)
class AutoscaleSettings:
    """Tuning of the autoscaler; defaults suit a 5 s control interval."""

    smoothing: float = 0.5
    """Weight of the newest observation in the smoothed rate (Holt's level)."""
    trend_smoothing: float = 0.3
    """Weight of the newest slope in the smoothed trend."""
    horizon_s: float = 15.0
    """How far ahead the trend is extrapolated: a replica's start-up time plus one tick."""
    headroom_frac: float = 0.02
    """Capacity kept above the forecast in every case. Small: the table's rate already meets p99
    under Poisson arrivals, and the forecast is net of sampling noise."""
    volatility_k: float = 2.0
    """Extra capacity per unit of the smoothed absolute forecast error (bursty demand gets more)."""
    volatility_max_frac: float = math.inf
    """The volatility headroom is at most this fraction of the forecast. With short starts a step
    is met by the fast path within a sub-tick plus a start, so capacity held between steps for the
    size of past errors (2x a smoothed error after a 3x step: tens of percent) buys little SLO for
    its GPUs; a few percent more for every volatile function cuts the tail of all its requests."""
    volatility_smoothing: float = 0.1
    """Weight of the newest absolute forecast error in its smoothed value (a slow memory of bursts)."""
    jump_sigmas: float = 3.0
    """An observed rate this many Poisson standard deviations above the forecast is a jump, taken at once."""
    jump_gain: float = 1.0
    """A jump up moves the level to ``pred + jump_gain * (obs - pred)``: a step inside the tick is
    averaged with the rate before it, so the new rate is above what the tick counted (2: a step at
    mid-tick, the expected position). 1: the observed rate."""
    noise_error_sigmas: float = 1.0
    """Forecast error up to this many Poisson standard deviations is sampling noise, not volatility."""
    max_utilisation: float = 1.0
    """No replica is planned past this fraction of its profiled rate, whatever the latency model says."""
    scale_down_delay_s: float = 30.0
    """Desired capacity must stay below the current one this long before replicas are removed."""
    calm_scale_down_delay_s: float = 30.0
    """The delay for a *calm* function (at most ``scale_down_delay_s``): one whose burst memory
    holds no step (its remembered peak within ``jump_sigmas`` noise of the forecast). The delay
    keeps capacity a returning burst would need; a calm function has none to wait for, and waiting
    only holds the replicas its noise added. Off (30 s) by default: 15 s saved 0.3-0.4 GPUs on
    Poisson but cost 0.7 on a second seed's Azure-like trace (docs/scheduler.md)."""
    scale_down_margin_frac: float = 0.15
    """...and by at least this fraction of the current footprint (hysteresis band) to re-plan the mix."""
    trim_margin_frac: float = 0.02
    """Replicas are removed (without re-planning) while the rest serve the target plus this fraction."""
    idle_to_zero_s: float = 300.0
    """With min replicas 0, no request for this long scales the function to zero."""
    device_mem_bytes: int = 32 * 2**30
    """Memory of one device; a replica's footprint is the larger of its SM-time area and memory."""
    burst_k: float = 0.35
    """Burst headroom: capacity kept for this fraction of the gap between the function's recent peak
    level (``peak_rps``, decaying over ``burst_memory_s``) and its forecast. A reactive policy serves
    a step up with what ran before it for a tick plus a cold start; a function that stepped before
    is held ready for part of the next step. 0: off (reactive only). 0.5 measured best per GPU on
    the bursty and Azure-like traces with ticks alone; with the fast path and standby replicas
    covering the first seconds of a step, 0.35 (docs/scheduler.md)."""
    burst_memory_s: float = 300.0
    """Time constant over which the remembered peak decays towards the current level once calm."""
    burst_round_up: bool = True
    """With burst headroom, round the target up to whole replicas of the most efficient config (the
    spare of the last replica goes to the next burst instead of a small residual replica)."""
    fast_round_up: bool = True
    """The fast path (``fast_scale_up``) rounds what it adds up to whole replicas of the most
    efficient config: a step is rarely the last one of a burst."""
    standby_frac: float = 1.5
    """Warm standby: besides the planned replicas, keep standby replicas (``STANDBY_REQUEST`` of
    quota guaranteed, limit 1: they serve on the idle time the arbiter lends) whose capacity at
    the SLO when borrowing a whole window sums to this fraction of the target (or of the remembered
    peak, if higher). Placed only beside other replicas (``placement.beside_holders``), so they
    cost no device; planned replicas then run at ``1 - STANDBY_REQUEST`` of quota with limit 1
    (``candidate_points(standby_room=True)``). 0: off."""
    standby_max: int = 16
    """At most this many standby replicas per function."""
    quota_tiling: bool = True
    """Plan with footprints tiled in quota as well as SM share (``choices.tiled_area``): a partial
    quota costs the share of its strip that copies of it can fill, not its quota."""
    batch_lever: bool = True
    """On a step, the fast path raises the batch limit of the running replicas (``burst_batch``,
    ``Decision.batch_limits``) at once, besides starting replicas: a larger batch serves more per
    second with no cold start; the limit goes back once the new replicas are ready."""
    seasonal_forecast: bool = True
    """Learn each function's period from its own history (``seasonal.SeasonalForecaster``) and
    pre-scale ahead of a predicted step (``AutoscaleContext.predicted_rps``); functions with no
    period are decided reactively, unchanged."""
    seasonal_ahead_s: float = 11.0
    """How far ahead the seasonal forecast looks: a tick plus a replica's start (what a replica
    started now serves)."""
    start_s: float = 5.0
    """A replica's start-to-ready, as the policy plans for it (``for_start_time`` sets it): how long
    a step found short is served by what runs (``backlog_drain_s``)."""
    backlog_drain_s: float = 0.0
    """The fast path adds capacity to drain, within this many seconds, the backlog a step leaves
    queued: (observed - capacity) x (its window + ``start_s``). Requests queue FIFO, so a backlog
    left to the spare capacity of a plan at the rate makes every later request late until it is
    gone. 0: off (capacity for the rate only)."""
    limit_over_request: float = 1.0
    """Quota limit as a multiple of the request (capped at 1): >1 lets the arbiter lend idle time."""
    latency: LatencyModel = DEFAULT_MODEL
    """The latency curve through each table point (shared with the simulator)."""


def split_standby(
    replicas: Sequence[ShareConfig],
) -> tuple[tuple[ShareConfig, ...], tuple[ShareConfig, ...]]:
    """(planned replicas, standby replicas) of a set (standby ones last, as ``with_standby`` puts
    them: then the planned part is a slice)."""
    k = len(replicas)
    while k and is_standby(replicas[k - 1]):
        k -= 1
    planned, standby = tuple(replicas[:k]), tuple(replicas[k:])
    if any(is_standby(r) for r in planned):  # not in that order: sort them apart
        return tuple(r for r in replicas if not is_standby(r)), tuple(r for r in replicas if is_standby(r))
    return planned, standby


def standby_set(
    cs: ChoiceSet, target_rps: float, room: int, settings: AutoscaleSettings
) -> tuple[ShareConfig, ...]:
    """The standby replicas for a function planned for ``target_rps``: the most efficient config's
    SM share and batch at ``STANDBY_REQUEST`` quota with limit 1, as many as cover
    ``standby_frac`` x the target at that config's capacity (each serves it only while borrowing a
    whole window), at most ``standby_max`` and ``room``."""
    if settings.standby_frac <= 0 or target_rps <= 0 or not cs.choices or room <= 0:
        return ()
    best = cs.choices[0]
    want = math.ceil(settings.standby_frac * target_rps / best.capacity_rps - 1e-9)
    n = min(settings.standby_max, room, want)
    return (cs.standby_config(),) * max(0, n)


def with_standby(
    d: Decision, state: AutoscaleState, max_replicas: int, settings: AutoscaleSettings
) -> Decision:
    """``d`` with its function's standby replicas appended (``standby_set`` for the larger of its
    target and the remembered peak, so a function that went quiet after a burst stays ready for
    the next one); ``d`` itself when standby is off or nothing is planned."""
    cs = state.choice_set
    if settings.standby_frac <= 0 or cs is None or not d.replicas:
        return d
    extra = standby_set(cs, max(d.target_rps, state.peak_rps), max_replicas - len(d.replicas), settings)
    if not extra:
        return d
    return Decision(d.function, d.replicas + extra, d.reason, d.target_rps, d.capacity_rps,
                    d.predicted_utilisation, d.predicted_p99_ms, d.feasible, d.changed)


@dataclass(frozen=True)
class AutoscaleContext:
    """Everything one decision looks at."""

    function: str
    now_s: float
    observed_rps: float
    table: ProfileTable
    slo_ms: float
    current: tuple[ShareConfig, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 20
    fixed: tuple[ShareConfig, ...] = ()
    """Replicas that run whatever is decided (a platform's minimum it will not scale below); part
    of ``current``, their capacity counts and every decision keeps them."""
    predicted_rps: float | None = None
    """A seasonal forecast (``seasonal.SeasonalForecaster.ahead``): the highest rate expected
    before what is started now can serve. None: no period found, the reactive policy alone. Given,
    the target is at least it (pre-scaling ahead of a predicted step) and burst headroom is off
    (the forecast, not a memory of past steps, says when the next one comes)."""
    recent_rps: float | None = None
    """The rate over the last ``recent_window_s`` of the tick's window (since the fast path's last
    reading). A step in the last second before a tick is diluted in the tick's mean: given, a rate
    there above the current capacity by more than ``jump_sigmas`` of that window is planned for at
    once, as the fast path would have. None: the tick's rate alone."""
    recent_window_s: float = 0.0


@dataclass(frozen=True)
class AutoscaleState:
    """What the autoscaler remembers between ticks of one function."""

    level_rps: float = 0.0
    trend_rps_per_s: float = 0.0
    last_s: float | None = None
    last_active_s: float | None = None
    low_since_s: float | None = None
    error_rps: float = 0.0
    """Smoothed absolute error of the one-tick forecast: how bursty the demand has been."""
    choice_set: ChoiceSet | None = None
    """The table's configs under the SLO, computed once and kept (the loop's lookup cache)."""
    peak_rps: float = 0.0
    """The highest level held for two ticks of late (decaying towards the level over
    ``burst_memory_s``): burst memory."""


@dataclass(frozen=True)
class Decision:
    """The replica set to run and why."""

    function: str
    replicas: tuple[ShareConfig, ...]
    reason: str
    target_rps: float
    capacity_rps: float
    predicted_utilisation: float
    """Target rate over the set's throughput."""
    predicted_p99_ms: float
    feasible: bool = True
    changed: bool = False
    batch_limits: tuple[tuple[ShareConfig, int], ...] = ()
    """Running configs whose replicas' batch limit is raised now (config, batch): the first lever
    of a burst (``burst_batch``); the live loop sends it as the group's ``batch``, the simulator
    serves them at it until the function's new replicas are ready. Empty: configured batches."""


# ---- the policy -----------------------------------------------------------------------------


def decide_replicas(
    ctx: AutoscaleContext, state: AutoscaleState | None = None, settings: AutoscaleSettings | None = None
) -> tuple[Decision, AutoscaleState]:
    """The replica set for ``ctx.function`` now; see the module docstring."""
    st = state or AutoscaleState()
    cfg = settings or AutoscaleSettings()
    cs = st.choice_set
    if cs is None or not isinstance(cs.key, tuple) or cs.key[:2] != (id(ctx.table), ctx.slo_ms):
        st = replace(st, choice_set=choice_set(ctx.table, ctx.slo_ms, cfg))
        cs = st.choice_set
        assert cs is not None
    choices = cs.choices

    # Holt's linear smoothing of the observed rate, and how wrong its last forecast was.
    obs = max(0.0, ctx.observed_rps)
    noise = 0.0
    if st.last_s is None:
        level, trend, err = obs, 0.0, 0.0
        jump = False
    else:
        dt = max(1e-6, ctx.now_s - st.last_s)
        pred = max(0.0, st.level_rps + st.trend_rps_per_s * dt)
        # A rate counted over dt seconds of Poisson arrivals has this standard deviation: noise, not
        # demand. The table's p99 was measured under Poisson arrivals, so it already covers it.
        noise = math.sqrt(max(pred, obs) / dt)
        jump = obs - pred > cfg.jump_sigmas * noise
        if abs(obs - pred) > cfg.jump_sigmas * noise:
            # A step (up or down), not a slope: the level moves there at once and has no trend; a
            # slope learned from a step would be extrapolated into the next tick's error.
            level, trend = (obs if obs < pred else pred + cfg.jump_gain * (obs - pred)), 0.0
        else:
            level = cfg.smoothing * obs + (1 - cfg.smoothing) * pred
            trend = (
                cfg.trend_smoothing * (level - st.level_rps) / dt
                + (1 - cfg.trend_smoothing) * st.trend_rps_per_s
            )
        err = cfg.volatility_smoothing * abs(obs - pred) + (1 - cfg.volatility_smoothing) * st.error_rps
    level = max(0.0, level)
    last_active = ctx.now_s if obs > 0 else st.last_active_s
    # A jump beyond the noise is taken at once (a burst); otherwise the smoothed level, plus the
    # trend's extrapolation where it exceeds what noise alone would give.
    climb = max(0.0, trend * cfg.horizon_s - noise)
    forecast = max(obs if jump else 0.0, level + climb)
    # Headroom for volatility beyond Poisson noise (E|obs - pred| of pure noise is ~0.9 sigma).
    excess = max(0.0, err - cfg.noise_error_sigmas * noise)
    # Burst memory: the level's recent peak (held two ticks), decaying towards the level once calm.
    # Part of the gap is held as capacity for the next step up, once the gap is beyond what noise
    # moves the level (``jump_sigmas``; a steady Poisson function gets none).
    if st.last_s is None:
        peak = level
    else:
        # A level held for two ticks: a one-tick jump of noise (3 sigma, ~0.3 % of ticks) is no burst.
        held = min(level, st.level_rps)
        peak = held + max(0.0, st.peak_rps - held) * math.exp(-dt / max(cfg.burst_memory_s, 1e-9))
    gap = peak - forecast
    stepped = gap > cfg.jump_sigmas * noise
    seasonal = ctx.predicted_rps is not None
    burst = cfg.burst_k * (gap - noise) if cfg.burst_k > 0 and stepped and not seasonal else 0.0
    volatile = min(cfg.volatility_k * excess, cfg.volatility_max_frac * forecast)
    target = forecast * (1 + cfg.headroom_frac) + volatile + burst if forecast > 0 else 0.0
    if seasonal:  # pre-scale for the step the season predicts
        target = max(target, (ctx.predicted_rps or 0.0) * (1 + cfg.headroom_frac))
    cur_fp, cur_cap, _ = cs.totals(ctx.current)
    recent = ctx.recent_rps
    if recent is not None and ctx.recent_window_s > 0 and recent - cur_cap > cfg.jump_sigmas * math.sqrt(
            max(recent, 1e-9) / ctx.recent_window_s):
        target = max(target, recent * (1 + cfg.headroom_frac))
    if burst > 0 and cfg.burst_round_up and cs.choices:
        unit = cs.choices[0].capacity_rps
        target = math.ceil(target / unit - 1e-9) * unit
    choice_set_now = cs

    lo, hi = ctx.min_replicas, ctx.max_replicas

    def done(
        replicas: tuple[ShareConfig, ...],
        reason: str,
        feasible: bool = True,
        low_since: float | None = None,
    ) -> tuple[Decision, AutoscaleState]:
        _, cap, total_thr = cs.totals(replicas)
        p99 = 0.0
        for r in set(replicas):  # the proxy weights replicas by their capacity at the SLO
            c = cs.by_config.get(r)
            if c is not None and cap > 0:
                p99 = max(p99, c.p99_at(target * c.capacity_rps / cap))
        util = target / total_thr if total_thr > 0 else (0.0 if target <= 0 else math.inf)
        changed = replicas is not ctx.current and (
            len(replicas) != len(ctx.current) or Counter(replicas) != Counter(ctx.current)
        )
        return (
            Decision(ctx.function, replicas, reason, target, cap, util, p99, feasible, changed),
            AutoscaleState(level, trend, ctx.now_s, last_active, low_since, err, choice_set_now, peak),
        )

    if not choices:
        keep = ctx.current or ()
        return done(
            keep,
            f"infeasible: no config in the table meets p99 < {ctx.slo_ms:g} ms even idle; "
            "keeping the current replicas",
            feasible=False,
        )

    idle_for = math.inf if last_active is None else ctx.now_s - last_active
    if lo == 0 and obs <= 0 and idle_for >= cfg.idle_to_zero_s:
        why = "no request yet" if last_active is None else f"idle for {idle_for:.0f} s"
        return done((), f"scale to zero: {why} (>= {cfg.idle_to_zero_s:g} s)")

    cheapest = cs.cheapest
    assert cheapest is not None
    fixed = ctx.fixed
    _, fixed_cap, _ = cs.totals(fixed)
    plan, feasible = plan_for_rate(cs, max(0.0, target - fixed_cap), max(0, hi - len(fixed)))
    if obs > 0 and not plan and not fixed:  # first request after zero: bring one replica back
        plan = (cheapest,)
    replicas = fixed + tuple(c.config for c in plan)
    if len(replicas) < lo:
        replicas = replicas + (cheapest.config,) * (lo - len(replicas))
    new_fp, new_cap, _ = cs.totals(replicas)

    def note() -> str:  # built only when a decision says it (most ticks hold)
        season = f", season ahead {ctx.predicted_rps:.1f}" if ctx.predicted_rps is not None else ""
        return (
            f"target {target:.1f} rps (rate {obs:.1f}, level {level:.1f}, trend {trend:+.2f}/s, "
            f"error {err:.1f}, peak {peak:.1f}{season}); {describe_replicas(replicas)}"
        )

    if not feasible:
        return done(
            replicas,
            f"infeasible: {hi} replicas (max) of the largest config serve "
            f"{new_cap:.1f} < {target:.1f} rps under p99 {ctx.slo_ms:g} ms; {note()}",
            False,
        )

    if (
        cur_cap + 1e-9 < target
        or len(ctx.current) < lo
        or len(ctx.current) > hi
        or (obs > 0 and not ctx.current)
    ):
        if ctx.current and cur_cap > 0 and len(ctx.current) <= hi and len(ctx.current) >= lo:
            # Add to what runs rather than replace it: replacing costs cold starts, and a swap
            # decided on one tick's noise is undone on the next before either set serves. An
            # inefficient mix is re-planned by the scale-down path once it is 15 % too big.
            extra, ok = plan_for_rate(cs, target - cur_cap, hi - len(ctx.current))
            if ok:
                add = tuple(c.config for c in extra)
                return done(ctx.current + add, f"scale up by {len(add)}: capacity {cur_cap:.1f} < {note()}")
            if cur_cap >= forecast:
                return done(ctx.current, f"hold at {len(ctx.current)} replicas (max {hi}): capacity "
                            f"{cur_cap:.1f} covers the forecast {forecast:.1f}, not the headroom; {note()}")
        return done(replicas, f"scale up: capacity {cur_cap:.1f} < target; {note()}")

    trimmed = _trim(ctx.current, fixed, cs, target * (1 + cfg.trim_margin_frac), lo)
    replan = new_fp < cur_fp * (1 - cfg.scale_down_margin_frac)
    if replan or len(trimmed) < len(ctx.current):
        since = st.low_since_s if st.low_since_s is not None else ctx.now_s
        delay = cfg.scale_down_delay_s
        if not stepped:  # never longer than the delay it shortens
            delay = min(delay, cfg.calm_scale_down_delay_s)
        if ctx.now_s - since >= delay:
            if replan:
                return done(
                    replicas,
                    f"scale down after {ctx.now_s - since:.0f} s below: footprint "
                    f"{cur_fp:.2f} -> {new_fp:.2f}; {note()}",
                )
            return done(
                trimmed,
                f"scale down by {len(ctx.current) - len(trimmed)} after {ctx.now_s - since:.0f} s "
                f"above the target: the rest serve {cs.totals(trimmed)[1]:.1f} rps; {note()}",
            )
        return done(
            ctx.current,
            f"hold: {len(ctx.current) - len(trimmed)} replica(s) or footprint {cur_fp:.2f} -> {new_fp:.2f} "
            f"spare for {ctx.now_s - since:.0f} s of {delay:g} s",
            low_since=since,
        )
    return done(ctx.current, f"hold: capacity {cur_cap:.1f} >= target {target:.1f} rps")


def fast_scale_up(
    ctx: AutoscaleContext, state: AutoscaleState | None, window_s: float,
    settings: AutoscaleSettings | None = None,
) -> tuple[Decision | None, AutoscaleState | None]:
    """Between ticks: add replicas to a function whose rate over the last ``window_s`` seconds
    (``ctx.observed_rps``) exceeds the capacity at the SLO of the replicas it runs or starts
    (``ctx.current``) by more than ``jump_sigmas`` Poisson standard deviations of that window.

    Returns (None, state) when nothing is to be done (most functions, most sub-ticks: one sum per
    function), or a decision that keeps every current replica and adds what covers the observed
    rate plus ``headroom_frac`` (rounded up to whole most-efficient replicas with
    ``fast_round_up``). Only scale-up: removing stays on the ticks with their hysteresis. The
    smoothed level is left to the next tick (it sees the step in its own window); the scale-down
    timer is reset, since capacity was just found short. Before the first tick (no state) nothing
    is decided."""
    cfg = settings or AutoscaleSettings()
    st = state
    if st is None or st.last_s is None or st.choice_set is None or not st.choice_set:
        return None, st
    cs = st.choice_set
    obs = max(0.0, ctx.observed_rps)
    _, cap, _ = cs.totals(ctx.current)
    noise = math.sqrt(max(obs, 1e-9) / max(window_s, 1e-6))
    room = ctx.max_replicas - len(ctx.current)
    if obs - cap <= cfg.jump_sigmas * noise or room <= 0:
        return None, st
    target = obs * (1 + cfg.headroom_frac)
    if cfg.backlog_drain_s > 0:  # what queued while short, and queues until the new replicas serve
        target += (obs - cap) * (window_s + cfg.start_s) / cfg.backlog_drain_s
    extra, ok = plan_for_rate(cs, target - cap, room)
    if cfg.fast_round_up and ok and extra:
        best = cs.choices[0]
        n = math.ceil((target - cap) / best.capacity_rps - 1e-9)
        if n <= room:
            extra = (best,) * n
    add = tuple(c.config for c in extra)
    if not add:
        return None, st
    replicas = ctx.current + add
    new_cap = cap + sum(c.capacity_rps for c in extra)
    thr = cs.totals(replicas)[2]
    p99 = 0.0
    for r in set(replicas):
        c = cs.by_config.get(r)
        if c is not None and new_cap > 0:
            p99 = max(p99, c.p99_at(target * c.capacity_rps / new_cap))
    raised = batch_raise(ctx, cfg.latency) if cfg.batch_lever else ()
    lever = "; batch raised: " + ", ".join(f"b{c.batch}->b{b}" for c, b in raised) if raised else ""
    d = Decision(
        ctx.function, replicas,
        f"fast scale up by {len(add)}: rate {obs:.1f} rps over {window_s:g} s > capacity {cap:.1f} "
        f"+ {cfg.jump_sigmas:g} sigma ({noise:.1f}); target {target:.1f}; {describe_replicas(replicas)}"
        f"{lever}",
        target, new_cap, target / thr if thr > 0 else math.inf, p99, ok, True, raised,
    )
    return d, replace(st, low_since_s=None)


def burst_batch(table: ProfileTable, cfg: ShareConfig, slo_ms: float,
                latency: LatencyModel = DEFAULT_MODEL) -> int:
    """The batch limit a running replica of ``cfg`` is raised to on a step: the table's largest
    batch whose service rate at the replica's share is above its own batch's and whose light-load
    p99 is still under the SLO (it can serve within it); ``cfg.batch`` when none is. A batcher
    that forms batches by deadline uses the larger limit only while requests queue."""
    if is_standby(cfg):
        return cfg.batch
    base = table.estimate(cfg.sm_pct, cfg.quota_request_frac, cfg.batch)
    base_mu = base.throughput_rps
    best = cfg.batch
    for b in table.batches:
        if b <= cfg.batch:
            continue
        p = table.estimate(cfg.sm_pct, cfg.quota_request_frac, b)
        light = p.latency_p50_ms + latency.service_spread_share * (max(p.latency_p99_ms, p.latency_p50_ms)
                                                                  - p.latency_p50_ms)
        if p.throughput_rps > base_mu and light <= slo_ms:
            best = b
    return best


def batch_raise(ctx: AutoscaleContext, latency: LatencyModel = DEFAULT_MODEL,
                ) -> tuple[tuple[ShareConfig, int], ...]:
    """(config, raised batch) for each distinct running config of ``ctx.current`` that
    ``burst_batch`` raises."""
    out = []
    for c in dict.fromkeys(ctx.current):
        b = burst_batch(ctx.table, c, ctx.slo_ms, latency)
        if b > c.batch:
            out.append((c, b))
    return tuple(out)


def _trim(
    current: tuple[ShareConfig, ...], fixed: tuple[ShareConfig, ...], cs: ChoiceSet, keep_rps: float,
    lo: int,
) -> tuple[ShareConfig, ...]:
    """``current`` without the replicas it can spare while still serving ``keep_rps``: least
    efficient (footprint per capacity) first, never the fixed ones, never below ``lo``. Removing is
    free (no cold start), unlike a re-plan that swaps configs."""
    _, cap, _ = cs.totals(current)
    if len(current) <= lo or not cs._caps or cap - cs._caps[0] < keep_rps:
        return current  # not even the smallest config could go (most ticks: cheap)
    rest = list(current)
    spare = Counter(current) - Counter(fixed)

    def cost(c: ShareConfig) -> float:
        ch = cs.by_config.get(c)
        return ch.footprint / ch.capacity_rps if ch is not None and ch.capacity_rps > 0 else math.inf

    for c in sorted(spare.elements(), key=cost, reverse=True):
        ch = cs.by_config.get(c)
        c_cap = ch.capacity_rps if ch is not None else 0.0
        if len(rest) <= lo or cap - c_cap < keep_rps:
            continue
        rest.remove(c)
        cap -= c_cap
    return tuple(rest)


def describe_replicas(replicas: Sequence[ShareConfig]) -> str:
    if not replicas:
        return "no replicas"
    parts = [
        f"{n}x(sm {c.sm_pct}%, quota {c.quota_request_frac:g}/{c.quota_limit_frac:g}, batch {c.batch})"
        for c, n in sorted(Counter(replicas).items(), key=lambda kv: -kv[1])
    ]
    return " + ".join(parts)
