"""One tick of the live control loop as a pure function: platform views in, actions and decisions out.

``loop.py`` reads the provider and Redis, turns what it read into the views below, calls
``plan_tick`` with the clock's ``now_s``, and applies the returned actions. Nothing here does I/O or
reads a clock, so a tick can be replayed in a test from recorded views.

How a function's replicas map onto the provider: the deployed spec is the *base group* (its share,
sized with ``scale``); the scheduler adds *configuration groups*, one per (config, device), named by
``config_id``. ``com.openfaas.scale.min`` base replicas always run (the provider clamps scale to it)
and count as fixed capacity; base replicas beyond that (a wake-up from zero, a manual scale) count as
capacity while they run, are kept when the decision wants their config anyway, and are scaled away
only once the scheduler's groups are ready (make-before-break).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fast_profiler.table import ProfilePoint, ProfileTable
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
    ShareConfig,
    candidate_points,
    choice_set,
    is_standby,
    room_points,
)
from fast_scheduler.placement import (  # the refusal memory: re-exported, loop.py and repack.py use it
    STANDBY_RETRY_S,
    Device,
    Placed,
    RefusedStandby,
    Rejection,
    ReplicaRequest,
    Snapshot,
    place,
    place_standby,
)
from fast_scheduler.seasonal import SeasonalForecaster


@dataclass(frozen=True)
class DeviceView:
    """A device from the registry: spatial capacity in SM % (GPU) or cores (CPU)."""

    device_id: str
    node: str
    mem_bytes: int
    is_gpu: bool
    cores: int = 0
    gpu_uuid: str = ""
    stored_models: tuple[tuple[str, int], ...] = ()
    """(model identity, weight bytes) its model store holds (``keys.device_models``)."""


@dataclass(frozen=True)
class RunningReplica:
    device_id: str
    config: ShareConfig
    config_id: str
    ready: bool


@dataclass(frozen=True)
class FunctionView:
    """One function as the provider reports it."""

    name: str
    namespace: str
    slo_ms: float | None
    min_replicas: int
    max_replicas: int
    invocation_count: float
    base_config: ShareConfig
    base_replicas: int
    """Desired size of the base group."""
    groups: Mapping[str, tuple[ShareConfig, int, str]] = field(default_factory=dict)
    """The scheduler's groups now: config id -> (config, desired replicas, device id)."""
    running: tuple[RunningReplica, ...] = ()
    model: str = ""
    mem_bytes: int = 0
    weight_bytes: int = 0
    batch_limits: Mapping[str, int] = field(default_factory=dict)
    """The groups whose batch is raised now (config id -> the provider's ``batchLimit``)."""


@dataclass(frozen=True)
class GroupSpec:
    config_id: str
    config: ShareConfig
    replicas: int
    device_id: str
    node: str
    gpu_uuid: str
    batch_limit: int | None = None
    """The batch its replicas run at for now in place of ``config.batch`` (the provider's
    ``batchLimit``: the batch lever, ``with_batch_limits``); None: ``config.batch``."""


@dataclass(frozen=True)
class Action:
    """What to apply for one function; None fields mean "leave as it is"."""

    name: str
    namespace: str
    groups: tuple[GroupSpec, ...] | None = None
    base_replicas: int | None = None


@dataclass
class FunctionMemory:
    """What the loop keeps per function between ticks."""

    count: float
    at_s: float
    state: AutoscaleState | None = None
    table_key: object = None
    fast_count: float | None = None
    """The counter at the last reading of either kind (tick or fast sub-tick), and when."""
    fast_at_s: float | None = None
    refused: dict[ReplicaRequest, RefusedStandby] = field(default_factory=dict)
    """Standby requests (by the request with its id blanked) with the devices that refused them,
    whether or not another device took them (``place_standby``)."""
    seasonal: SeasonalForecaster | None = None
    """Its rate history and period (``AutoscaleSettings.seasonal_forecast``), fed each tick."""


@dataclass(frozen=True)
class TickResult:
    actions: tuple[Action, ...]
    decisions: Mapping[str, Decision]
    """By ``namespace/name``."""
    notes: Mapping[str, str]
    """Functions not decided this tick, and why (no SLO, no table, first sight)."""
    observed_rps: Mapping[str, float] = field(default_factory=dict)
    """The rate each decided function was given."""
    standby_scans: int = 0
    """Devices examined for standby requests (the placement work refusals cost)."""
    standby_skipped: int = 0
    """Standby requests not tried: refused before, and no device changed since (``place_standby``)."""
    snapshot: Snapshot | None = None
    """The devices as this tick leaves them: the replicas kept, the new ones placed, removed ones freed
    (what ``repack`` plans moves over)."""


def config_id(cfg: ShareConfig, device_index: int) -> str:
    """A DNS label of at most 20 characters naming (config, device): ``s50q60l100b1-d0``; a quota
    that is not a whole percent is in permille with a ``p`` (a standby's ``q5p``, its neighbours'
    ``q995p``)."""
    return (
        f"s{cfg.sm_pct}q{_pct(cfg.quota_request_frac)}l{_pct(cfg.quota_limit_frac)}"
        f"b{cfg.batch}-d{device_index}"
    )


def _pct(frac: float) -> str:
    pct = frac * 100
    return str(round(pct)) if abs(pct - round(pct)) < 1e-6 else f"{round(pct * 10)}p"


def effective_sm_pct(sm_pct: int, dev: DeviceView) -> int:
    """The spatial share a replica really gets: on the CPU its core set as a percentage."""
    if dev.is_gpu or dev.cores <= 0:
        return sm_pct
    n = max(1, min(dev.cores, round(sm_pct * dev.cores / 100)))
    return round(100 * n / dev.cores)


def live_points(
    table: ProfileTable, dev: DeviceView | None, standby_room: bool = False
) -> list[ProfilePoint]:
    """The table's configs the live loop can apply: every batch the table profiled (a group's
    batch becomes its workers' ``FASTGSHARE_BATCH``), and on the CPU one point per core count and
    batch with its SM share as the cores really given (``sm 6`` on 2 cores is one core, 50 %), so
    footprints are honest. ``standby_room``: full-quota configs leave a standby's token free
    (``autoscale.room_points``)."""
    if dev is None or dev.is_gpu or dev.cores <= 0:
        return list(candidate_points(table, standby_room))
    pts = room_points(table, table.grid()) if standby_room else list(table.grid())
    out: dict[tuple[int, float, int], ProfilePoint] = {}
    for p in sorted(pts, key=lambda p: p.sm_pct):
        eff = effective_sm_pct(p.sm_pct, dev)
        key = (eff, p.quota_frac, p.batch)
        if key not in out:  # same-share copies: the smallest profiled share measured it
            out[key] = replace(p, sm_pct=eff)
    return list(out.values())


def observed_rate(prev_count: float, prev_s: float, count: float, now_s: float) -> float:
    """Requests per second between two counter readings; a counter that went back (a provider
    restart) counts from zero."""
    dt = now_s - prev_s
    if dt <= 0:
        return 0.0
    delta = count - prev_count if count >= prev_count else count
    return max(0.0, delta) / dt


def _device_of(rep_device: str, devices: Mapping[str, DeviceView]) -> str:
    return rep_device if rep_device in devices else next(iter(devices), rep_device)


def snapshot_of(functions: Sequence[FunctionView], devices: Sequence[DeviceView]) -> Snapshot:
    """Devices with the replicas the provider runs or wants (desired groups, base replicas)."""
    devs = {d.device_id: d for d in devices}
    placed: dict[str, list[ReplicaRequest]] = {d.device_id: [] for d in devices}
    for f in functions:
        by_group: Counter[str] = Counter()
        for r in f.running:
            by_group[r.config_id] += 1
        # Desired replicas not yet running take their place too (they are being started).
        for gid, (cfg, n, dev_id) in f.groups.items():
            d = _device_of(dev_id, devs)
            if d in placed:
                for i in range(n):
                    placed[d].append(_request(f, cfg, f"{f.name}/{gid}/{i}", devs[d]))
        base_devs = [r.device_id for r in f.running if r.config_id == ""]
        for i in range(max(f.base_replicas, len(base_devs))):
            d = _device_of(base_devs[i] if i < len(base_devs) else "", devs)
            if d in placed:
                placed[d].append(_request(f, f.base_config, f"{f.name}/base/{i}", devs[d]))
    out = []
    for view in devices:
        dev = Device(view.device_id, view.node, view.mem_bytes or 2**62, stored_models=view.stored_models)
        for req in placed[view.device_id]:
            dev = dev.with_replica(req) or _force(dev, req)
        out.append(dev)
    return Snapshot(tuple(out))


def _force(dev: Device, req: ReplicaRequest) -> Device:
    """An over-full device as it is (replicas placed by hand may break the rule): keep counting them."""
    return Device(dev.device_id, dev.node, dev.mem_bytes, dev.replicas + (req,), dev.bands, 0,
                  dev.stored_models)


def _request(f: FunctionView, cfg: ShareConfig, rid: str, dev: DeviceView) -> ReplicaRequest:
    return ReplicaRequest(
        rid, f.name, f.model or f.name, effective_sm_pct(cfg.sm_pct, dev), cfg.quota_request_frac,
        f.mem_bytes, f.weight_bytes, cfg.quota_limit_frac, cfg.batch,
    )


def plan_tick(
    now_s: float,
    functions: Sequence[FunctionView],
    devices: Sequence[DeviceView],
    tables: Mapping[str, ProfileTable | None],
    memory: dict[str, FunctionMemory],
    settings: AutoscaleSettings,
    fast: bool = False,
    standby_retry_s: float = STANDBY_RETRY_S,
    held: Sequence[FunctionView] = (),
) -> TickResult:
    """Decide every function with an SLO and a table; place new replicas; return what to apply.

    ``tables`` is by ``namespace/name``; ``memory`` is updated in place (the only state).

    ``fast``: a sub-tick between ticks (the fast scale-up path): each function already decided on
    a tick is given the rate since the last reading of its counter (tick or sub-tick) and
    ``autoscale.fast_scale_up`` may add replicas to it; nothing is removed, smoothing is left to
    the ticks, and functions it leaves alone get no decision (nor a note).

    ``standby_retry_s``: how long the devices that refused a standby request go unscanned for it
    while they are unchanged (``place_standby``; 0: every tick, on every device). Planned replicas
    are always placed.

    ``held``: replicas that take their place on the devices but are no function's to decide (a
    re-pack move's new replica while it starts, ``repack.hide_moves``): in the snapshot only."""
    actions: list[Action] = []
    decisions: dict[str, Decision] = {}
    notes: dict[str, str] = {}
    observed: dict[str, float] = {}
    scans = skipped = 0
    devs = {d.device_id: d for d in devices}
    index = {d.device_id: i for i, d in enumerate(devices)}
    snap = snapshot_of([*functions, *held], devices)
    # Devices where only standby replicas are left: those go (a standby never keeps a device in use).
    lone = {d.device_id for d in snap.devices if d.replicas and all(r.standby for r in d.replicas)}
    seen = set()
    for f in functions:
        key = f"{f.namespace}/{f.name}"
        seen.add(key)
        if f.slo_ms is None:
            notes[key] = "no fastgshare/slo_ms: static annotations"
            continue
        table = tables.get(key)
        if table is None:
            notes[key] = "no profile table for this device type yet: static annotations"
            continue
        mem = memory.get(key)
        if mem is None:
            if fast:
                continue
            memory[key] = FunctionMemory(f.invocation_count, now_s, fast_count=f.invocation_count,
                                         fast_at_s=now_s)
            notes[key] = "first sight: counter recorded, deciding from the next tick"
            continue
        last_count = mem.count if mem.fast_count is None else mem.fast_count
        last_s = mem.at_s if mem.fast_at_s is None else mem.fast_at_s
        fast_rate = observed_rate(last_count, last_s, f.invocation_count, now_s)
        window_s = now_s - last_s
        if fast and (mem.state is None or mem.table_key is not table or window_s <= 0):
            continue
        mem.fast_count, mem.fast_at_s = f.invocation_count, now_s
        predicted = None
        recent: tuple[float, float] | None = None
        if fast:
            rate = fast_rate
        else:
            span_s = now_s - mem.at_s
            if 0 < window_s < span_s:  # a sub-tick read since the last tick: the tick's last part
                recent = (fast_rate, window_s)
            rate = observed_rate(mem.count, mem.at_s, f.invocation_count, now_s)
            mem.count, mem.at_s = f.invocation_count, now_s
            if settings.seasonal_forecast:  # the rate ahead, where the function has a period
                mem.seasonal = mem.seasonal or SeasonalForecaster()
                mem.seasonal.observe(key, now_s, rate, span_s)
                predicted = mem.seasonal.ahead(key, now_s, settings.seasonal_ahead_s)
        observed[key] = rate
        if mem.state is None or mem.table_key is not table:
            dev0, room = (devices[0] if devices else None), settings.standby_frac > 0
            cs = choice_set(table, f.slo_ms, settings, live_points(table, dev0, room),
                            lookup_points=live_points(table, dev0) if room else None)
            mem.state = AutoscaleState(choice_set=cs) if mem.state is None else _with_set(mem.state, cs)
            mem.table_key = table

        lo = f.min_replicas
        fixed = (f.base_config,) * min(lo, f.base_replicas)
        current = [f.base_config] * f.base_replicas
        for cfg, n, _dev in f.groups.values():
            current += [cfg] * n
        planned, standby = split_standby(current)  # standby groups are kept apart from the plan
        ctx = AutoscaleContext(
            f.name, now_s, rate, table, f.slo_ms, planned, lo, f.max_replicas - len(standby), fixed,
            predicted,
        )
        if recent is not None:  # a step in it is planned for on this tick (``recent_rps``)
            ctx = replace(ctx, recent_rps=recent[0], recent_window_s=recent[1])
        if fast:
            fd, fst = fast_scale_up(ctx, mem.state, window_s, settings)
            if fd is None:
                del observed[key]
                continue
            d, mem.state = replace(fd, replicas=fd.replicas + standby), fst
        else:
            d, mem.state = decide_replicas(replace(ctx, max_replicas=f.max_replicas), mem.state, settings)
            d = with_standby(d, mem.state, f.max_replicas, settings)
        want = Counter(d.replicas)
        have_groups: Counter[ShareConfig] = Counter()
        for cfg, n, _dev in f.groups.values():
            have_groups[cfg] += n
        # Base replicas: the fixed minimum, plus running extras whose config the decision wants.
        base = len(fixed) + min(f.base_replicas - len(fixed), max(0, want[f.base_config] - len(fixed)))
        want[f.base_config] -= base
        want = +want
        stranded = any(is_standby(cfg) and dev_id in lone for cfg, _n, dev_id in f.groups.values())
        if want == have_groups and base == f.base_replicas and not stranded:
            decisions[key] = d
            continue
        # Keep groups on their devices; place what is new.
        groups: dict[str, GroupSpec] = {}
        for gid, (cfg, n, dev_id) in sorted(f.groups.items()):
            keep = 0 if is_standby(cfg) and dev_id in lone else min(n, want[cfg])
            want[cfg] -= keep
            if keep:
                dv = devs.get(dev_id)
                node, uuid = (dv.node, dv.gpu_uuid) if dv else ("", "")
                groups[gid] = GroupSpec(gid, cfg, keep, dev_id, node, uuid)
            # Removed replicas free their place for this tick's placements.
            for i in range(keep, n):
                snap = _free(snap, f"{f.name}/{gid}/{i}")
        refused = standby_refused = standby_skipped = 0
        if mem.refused:  # expired refusals would be scanned in full anyway
            mem.refused = {k: v for k, v in mem.refused.items() if now_s - v.at_s < standby_retry_s}
        for cfg, n in sorted(want.items(), key=lambda kv: -kv[0].area):
            sb = is_standby(cfg)
            for i in range(n):
                if not devs:
                    refused += 1
                    continue
                any_dev = next(iter(devs.values()))
                req = _request(f, cfg, f"{f.name}/new/{cfg}/{i}", any_dev)
                p: Placed | Rejection | None
                if sb:  # only beside planned replicas, where the most SM-time is idle; refusals kept
                    p, n_scanned = place_standby(req, snap, mem.refused, now_s, standby_retry_s)
                    scans += n_scanned
                    standby_skipped += n_scanned == 0
                else:
                    p = place(req, snap)
                if p is None or isinstance(p, Rejection):
                    if sb:
                        standby_refused += 1
                    else:
                        refused += 1
                    continue
                snap = snap.with_device(p.device)
                dv = devs[p.device_id]
                gid = config_id(cfg, index[p.device_id])
                g = groups.get(gid)
                n_now = (g.replicas if g else 0) + 1
                groups[gid] = GroupSpec(gid, cfg, n_now, dv.device_id, dv.node, dv.gpu_uuid)
        if refused:
            kept = 0
            # Make-before-break when the make fails: keep the replicas this decision was removing
            # (where they still fit), rather than run with less than before.
            for gid, (cfg, n, dev_id) in sorted(f.groups.items()):
                if is_standby(cfg):
                    continue
                g = groups.get(gid)
                have = g.replicas if g else 0
                dv = devs.get(dev_id)
                for i in range(have, n):
                    if dv is None:
                        break
                    dev = snap.by_id()[dev_id]
                    back = dev.with_replica(_request(f, cfg, f"{f.name}/{gid}/{i}", dv))
                    if back is None:
                        break
                    snap = snap.with_device(back)
                    have += 1
                    kept += 1
                if have and (g is None or have != g.replicas):
                    groups[gid] = GroupSpec(gid, cfg, have, dev_id, dv.node if dv else "",
                                            dv.gpu_uuid if dv else "")
            d = _annotate(d, f"; {refused} replica(s) found no device (placement refused)"
                          + (f", {kept} kept that it was removing" if kept else ""))
        if standby_refused:
            d = _annotate(d, f"; {standby_refused} standby replica(s) found no room beside planned ones"
                          + (f" ({standby_skipped} not tried again: no device changed since it refused them)"
                             if standby_skipped else ""))
        skipped += standby_skipped
        # Make-before-break for base extras: scale the base down once the groups serve.
        ready_groups = sum(1 for r in f.running if r.config_id and r.ready and not is_standby(r.config))
        want_groups = sum(g.replicas for g in groups.values() if not is_standby(g.config))
        new_base: int | None = None
        if base < f.base_replicas:
            new_base = base if ready_groups >= want_groups else None
        elif base > f.base_replicas:
            new_base = base
        final = tuple(sorted(groups.values(), key=lambda g: g.config_id))
        old = tuple(sorted(f.groups))
        changed_groups = tuple(g.config_id for g in final) != old or any(
            f.groups[g.config_id][1] != g.replicas for g in final
        )
        actions.append(Action(f.name, f.namespace, final if changed_groups else None, new_base))
        decisions[key] = d
    for key in list(memory):
        if key not in seen:
            del memory[key]
    return TickResult(tuple(actions), decisions, {} if fast else notes, observed, scans, skipped, snap)


def _with_set(state: AutoscaleState, cs: ChoiceSet) -> AutoscaleState:
    return replace(state, choice_set=cs)


def _free(snap: Snapshot, replica_id: str) -> Snapshot:
    for d in snap.devices:
        if any(r.replica_id == replica_id for r in d.replicas):
            return snap.with_device(d.without(replica_id))
    return snap


def _annotate(d: Decision, extra: str) -> Decision:
    return replace(d, reason=d.reason + extra)


# ---- the batch lever ------------------------------------------------------------------------


def with_batch_limits(result: TickResult, functions: Sequence[FunctionView],
                      devices: Sequence[DeviceView]) -> TickResult:
    """``result`` with each function's group batch limits (``GroupSpec.batch_limit``) set as the
    batch lever wants them after this pass (``batch_limits_after``), on every action that sends
    groups, plus an action re-sending a function's groups unchanged where only its limits change.

    A pass over the whole result, after the autoscaler and the re-pack, because any action that
    sends a function's groups replaces them all: one that left a limit out would lower it."""
    devs = {d.device_id: d for d in devices}
    actions = {f"{a.namespace}/{a.name}": a for a in result.actions}
    for f in functions:
        key = f"{f.namespace}/{f.name}"
        a = actions.get(key)
        d = result.decisions.get(key)
        if not f.batch_limits and (d is None or not d.batch_limits):
            continue  # most functions, most passes: nothing raised, nothing to lower
        groups = a.groups if a is not None and a.groups is not None else current_groups(f, devs)
        base = a.base_replicas if a is not None and a.base_replicas is not None else f.base_replicas
        limits = batch_limits_after(f, groups, base, d.batch_limits if d is not None else ())
        if (a is None or a.groups is None) and limits == dict(f.batch_limits):
            continue
        specs = tuple(replace(g, batch_limit=limits.get(g.config_id)) for g in groups)
        actions[key] = Action(f.name, f.namespace, specs, a.base_replicas if a is not None else None)
    return replace(result, actions=tuple(actions.values()))


def batch_limits_after(f: FunctionView, groups: Sequence[GroupSpec], base_replicas: int,
                       raised: Sequence[tuple[ShareConfig, int]]) -> dict[str, int]:
    """Config id -> batch limit of ``f``'s groups once this pass is applied (``groups``, and
    ``base_replicas`` base replicas).

    ``raised`` (``Decision.batch_limits``, the fast path's raise on a step) raises each group
    that runs replicas now (one of them ready) of a raised config, at once: the replicas already
    running serve the step at a larger batch while the new ones start. A raise stays while any
    of the function's planned replicas (its groups but standby ones, and its base) is not ready,
    and goes once all are: the new replicas serve, the groups run at their own batch again. A
    group without a running replica is not raised (its replicas start at its own batch); a
    group this pass drops loses its limit with it."""
    ids = {g.config_id for g in groups}
    ready: Counter[str] = Counter(r.config_id for r in f.running if r.ready)
    starting = ready[""] < base_replicas or any(
        ready[g.config_id] < g.replicas for g in groups if not is_standby(g.config))
    out = {gid: n for gid, n in f.batch_limits.items() if gid in ids} if starting or raised else {}
    up = dict(raised)
    for gid, (cfg, _n, _dev) in f.groups.items():
        b = up.get(cfg)
        if b is not None and gid in ids and ready[gid] > 0:
            out[gid] = max(b, out.get(gid, 0))
    return out


def current_groups(f: FunctionView, devices: Mapping[str, DeviceView]) -> tuple[GroupSpec, ...]:
    """``f``'s groups as the provider has them now, with their limits: what an action re-sends
    to change a limit alone."""
    out = []
    for gid, (cfg, n, dev_id) in sorted(f.groups.items()):
        dv = devices.get(dev_id)
        out.append(GroupSpec(gid, cfg, n, dev_id, dv.node if dv else "", dv.gpu_uuid if dv else "",
                             f.batch_limits.get(gid)))
    return tuple(out)
