"""The live control loop: read the platform, decide with ``control.plan_tick``, apply, log, expose.

Every ``interval_s``: list functions (``GET /system/functions``: annotations, invocationCount), read
replica groups and placement (``GET /system/fastgshare/replicas``), devices and profile tables from
Redis; decide; apply through ``PUT /system/fastgshare/configurations/<name>`` and
``POST /system/scale-function/<name>``; write each decision to ``keys.scheduler_decisions()``.
This module is the adapter: it is given the provider client (``fastgshare.provider_client``), the
Redis client and the clock, and nothing in it decides anything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from fast_manager.devices import DeviceInfo
from fast_manager.model_store import ModelUsage
from fast_manager.model_store_redis import read_device_models
from fast_manager.node_agent import read_devices
from fast_profiler.table import ProfileTable, device_type_of
from fast_scheduler.autoscale import AutoscaleSettings, Decision, describe_replicas
from fast_scheduler.choices import ShareConfig
from fast_scheduler.control import (
    Action,
    DeviceView,
    FunctionMemory,
    FunctionView,
    GroupSpec,
    RunningReplica,
    TickResult,
    with_batch_limits,
)
from fast_scheduler.placement import STANDBY_RETRY_S
from fast_scheduler.repack import MoveEvent, RepackSettings, RepackState, plan_tick_repacking
from fastgshare import keys
from fastgshare.errors import ValidationError
from fastgshare.provider_client import ProviderClient, ProviderError
from fastgshare.resources import MODEL, SCALE_MAX, SCALE_MIN, SLO_MS, parse_share
from gateway_plugin.types import STARTED_FIELD

log = logging.getLogger("fast_scheduler")

DEFAULT_MAX_REPLICAS = 20
"""OpenFaaS's default ``com.openfaas.scale.max``."""


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs; the autoscaler's own tuning is in ``autoscale``."""

    interval_s: float = 2.0
    """Seconds between ticks."""
    fast_interval_s: float = 1.0
    """Seconds between the fast scale-up sub-ticks in between ticks (``plan_tick(fast=True)``:
    only functions whose rate since the last reading exceeds their replicas' capacity get more);
    0, or not shorter than ``interval_s``: off."""
    standby_retry_s: float = STANDBY_RETRY_S
    """The devices that refused a standby request are not scanned for it again while they are
    unchanged, for at most this long (``placement.place_standby``); 0: every tick, on every device."""
    repack_every_ticks: int = RepackSettings.every_ticks
    """Plan a re-pack (``repack``: move replicas make-before-break to free wasted devices) every this
    many ticks, never on a fast sub-tick; 0: off."""
    repack_timeout_s: float = RepackSettings.ready_timeout_s
    """A re-pack move whose new replica is not ready after this long is abandoned."""
    namespace: str = "openfaas-fn"
    """The namespace whose functions are scheduled."""
    http_timeout_s: float = 10.0
    """Timeout of one provider call."""
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    """Autoscaler tuning (smoothing, headroom, scale-down delay, idle-to-zero)."""


def as_device_view(d: DeviceInfo, stored: Mapping[str, ModelUsage] | None = None) -> DeviceView:
    """A registry device, with the models its store holds (``model_store_redis.read_device_models``)."""
    uuid = d.device_id.split(":", 1)[1] if d.is_gpu and ":" in d.device_id else ""
    models = tuple(sorted((m, u.bytes) for m, u in (stored or {}).items() if u.users > 0))
    return DeviceView(d.device_id, d.node, d.mem_bytes, d.is_gpu, len(d.cores), uuid, models)


def _config(share: Mapping[str, str], batch: int = 1) -> ShareConfig:
    g = parse_share({str(k): str(v) for k, v in share.items()})
    return ShareConfig(g.sm_pct, g.quota_request_frac, g.quota_limit_frac, max(1, int(batch)))


def demand_count(fn: Mapping[str, Any]) -> float:
    """The function's request counter: arrivals (``fastgshareInvocationsStarted``, this provider's
    extension) where the provider has them, else ``invocationCount``, which counts requests when
    they are answered: past what the replicas serve it stops at what they serve, and a step up
    in load that overloads them never shows as more than that (the fast path could not see it)."""
    started = fn.get(STARTED_FIELD)
    return float(started if started is not None else (fn.get("invocationCount", 0) or 0))


def as_function_view(fn: Mapping[str, Any], reps: Mapping[str, Any] | None) -> FunctionView:
    """One function from ``/system/functions`` and its entry of ``/system/fastgshare/replicas``."""
    merged = {**dict(fn.get("labels") or {}), **dict(fn.get("annotations") or {})}
    slo = merged.get(SLO_MS)
    base = _config(merged)
    groups: dict[str, tuple[ShareConfig, int, str]] = {}
    limits: dict[str, int] = {}
    running: list[RunningReplica] = []
    total = int(fn.get("replicas", 0) or 0)
    if reps:
        total = int(reps.get("replicas", total) or 0)
        by_id: dict[str, ShareConfig] = {}
        for c in reps.get("configurations") or []:
            cfg = _config(c.get("share") or {}, c.get("batch") or 1)
            by_id[c["configId"]] = cfg
            gid = str(c["configId"])
            dev = f"gpu:{c['gpuUuid']}" if c.get("gpuUuid") else ""
            groups[gid] = (cfg, int(c.get("replicas", 0)), dev)
            if c.get("batchLimit") is not None:  # the batch lever, raised by an earlier pass
                limits[gid] = int(c["batchLimit"])
        for r in reps.get("replicaStatus") or []:
            cid = str(r.get("configId") or "")
            running.append(RunningReplica(str(r.get("device") or ""), by_id.get(cid, base), cid,
                                          bool(r.get("ready"))))
        # A CPU group has no GPU uuid: it lives where its replicas run.
        for gid, (cfg, n, dev) in list(groups.items()):
            if not dev:
                devs = [r.device_id for r in running if r.config_id == gid]
                groups[gid] = (cfg, n, devs[0] if devs else "")
    base_n = max(0, total - sum(n for _, n, _ in groups.values()))
    return FunctionView(
        name=str(fn["name"]), namespace=str(fn.get("namespace") or "openfaas-fn"),
        slo_ms=float(slo) if slo else None,
        min_replicas=int(merged.get(SCALE_MIN, 1)),
        max_replicas=int(merged.get(SCALE_MAX, DEFAULT_MAX_REPLICAS)),
        invocation_count=demand_count(fn), base_config=base, base_replicas=base_n,
        groups=groups, running=tuple(running), model=str(merged.get(MODEL, "")), batch_limits=limits,
    )


def group_json(g: GroupSpec) -> dict[str, Any]:
    """One group as ``PUT /system/fastgshare/configurations`` takes it; ``batchLimit`` only when
    raised (absent: the group's own batch)."""
    out: dict[str, Any] = {
        "configId": g.config_id, "replicas": g.replicas, "node": g.node, "gpuUuid": g.gpu_uuid,
        "batch": g.config.batch, "share": {"fastgshare/gpu_sm_partition": str(g.config.sm_pct),
                                           "fastgshare/gpu_quota_request": f"{g.config.quota_request_frac:g}",
                                           "fastgshare/gpu_quota_limit": f"{g.config.quota_limit_frac:g}"}}
    if g.batch_limit is not None:
        out["batchLimit"] = g.batch_limit
    return out


def log_batch_limits(a: Action, f: FunctionView | None, path: str) -> None:
    """Say when an action raises or lowers a group's batch limit (the batch lever)."""
    if a.groups is None or f is None:
        return
    now = {g.config_id: g.batch_limit for g in a.groups if g.batch_limit is not None}
    if now == dict(f.batch_limits):
        return
    batch = {g.config_id: g.config.batch for g in a.groups}
    moved = [f"{gid} b{f.batch_limits.get(gid, batch.get(gid, 0))}->b{now.get(gid, batch.get(gid, 0))}"
             for gid in sorted(set(now) | set(f.batch_limits)) if now.get(gid) != f.batch_limits.get(gid)]
    log.info("%s/%s [%s]: batch lever: %s (%s)", a.namespace, a.name, path, ", ".join(moved),
             "raised on a step" if set(now.items()) - set(f.batch_limits.items())
             else "back: the new replicas are ready")


def shadow_functions(fns: list[Mapping[str, Any]],
                     reps: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The profiler's shadow functions as ``/system/functions`` entries. The provider leaves them out
    of that list (they are the platform's, not the user's) but their replicas hold device share:
    they enter the snapshot as fixed load, with no SLO (so nothing is decided for them), at the
    share ``/system/fastgshare/replicas`` reports."""
    listed = {str(f.get("name")) for f in fns}
    return [{"name": name, "namespace": r.get("namespace"), "replicas": r.get("replicas", 0),
             "annotations": dict(r.get("share") or {})}
            for name, r in reps.items() if r.get("profileOf") and name not in listed]


def decision_record(d: Decision, f: FunctionView | None, now_s: float, observed_rps: float | None,
                    path: str = "tick", repack: list[dict[str, Any]] | None = None) -> str:
    """The JSON written to ``keys.scheduler_decisions()`` (documented in docs/scheduler.md); ``path``
    says which pass decided: ``"tick"`` or ``"fast"`` (a fast scale-up sub-tick); ``repack``: the
    function's re-pack moves this pass changed or has in flight (``repack_record``)."""
    counts: dict[ShareConfig, int] = {}
    for r in d.replicas:
        counts[r] = counts.get(r, 0) + 1
    util = d.predicted_utilisation
    raised = dict(d.batch_limits)  # the batch lever: a step's raise of what runs (fast path)
    return json.dumps({
        "function": d.function, "at_s": round(now_s, 3), "path": path, "replicas": len(d.replicas),
        "configs": [{"smPct": c.sm_pct, "quotaRequest": c.quota_request_frac,
                     "quotaLimit": c.quota_limit_frac, "batch": c.batch,
                     "batchLimit": raised.get(c, c.batch), "count": n}
                    for c, n in counts.items()],
        "summary": describe_replicas(d.replicas), "reason": d.reason, "feasible": d.feasible,
        "changed": d.changed, "target_rps": round(d.target_rps, 3),
        "observed_rps": None if observed_rps is None else round(observed_rps, 3),
        "capacity_rps": round(d.capacity_rps, 3),
        "predicted_utilisation": None if util == float("inf") else round(util, 4),
        "predicted_p99_ms": round(d.predicted_p99_ms, 2), "slo_ms": f.slo_ms if f else None,
        "repack": repack or [],
    })


def repack_record(state: RepackState, events: tuple[MoveEvent, ...],
                  now_s: float) -> dict[str, list[dict[str, Any]]]:
    """By ``namespace/name``: this pass's move events, and the moves still in flight (``waiting``:
    the new replica is starting)."""
    out: dict[str, list[dict[str, Any]]] = {}
    changed = {id(e.move) for e in events}

    def add(m: Any, st: str, message: str) -> None:
        out.setdefault(m.function, []).append({
            "state": st, "from": m.from_device, "to": m.to_device, "fromGroup": m.from_group,
            "toGroup": m.to_group, "for_s": round(now_s - m.started_s, 3), "message": message})

    for e in events:
        add(e.move, e.state, e.message)
    for m in state.moves:
        if id(m) not in changed:
            add(m, "waiting", f"re-pack: waiting for {m.to_group} to be ready ({m.describe()})")
    return out


@dataclass
class SchedulerLoop:
    """Reads, decides, applies; ``tick(now_s)`` is one pass, ``run(stop)`` repeats it."""

    provider: ProviderClient
    client: redis.Redis
    settings: LoopSettings = field(default_factory=LoopSettings)
    clock: Callable[[], float] = time.monotonic
    memory: dict[str, FunctionMemory] = field(default_factory=dict)
    repack: RepackState = field(default_factory=RepackState)
    _tables: dict[tuple[str, str], tuple[bytes, ProfileTable]] = field(default_factory=dict)
    _last_reason: dict[str, str] = field(default_factory=dict)

    def _table(self, name: str, device_type: str) -> ProfileTable | None:
        raw = self.client.get(keys.profile(name, device_type))  # what fast_profiler.store.save writes
        if raw is None:
            return None
        cached = self._tables.get((name, device_type))
        if cached and cached[0] == raw:  # same JSON: same object, so the choice set stays cached
            return cached[1]
        try:
            table = ProfileTable.from_json(raw.decode() if isinstance(raw, bytes) else raw)
        except (ValidationError, ValueError) as e:
            log.warning("profile table of %s on %s unreadable: %s", name, device_type, e)
            return None
        self._tables[(name, device_type)] = (raw, table)
        return table

    def tick(self, fast: bool = False) -> TickResult:
        """One tick; ``fast``: a fast scale-up sub-tick (same reads, ``plan_tick(fast=True)``)."""
        ns = self.settings.namespace
        fns = self.provider.functions(ns)
        reps = {str(r["name"]): r for r in self.provider.replicas(ns)}
        now_s, wall_s = self.clock(), time.time()
        infos = read_devices(self.client)
        gpus = [d for d in infos if d.is_gpu]
        devices = [as_device_view(d, read_device_models(self.client, d.device_id)) for d in (gpus or infos)]
        first = (gpus or infos or [None])[0]
        device_type = device_type_of(
            {"kind": first.kind.value, "name": first.name, "cores": list(first.cores)} if first else {})
        views = []
        for f in [*fns, *shadow_functions(fns, reps)]:
            try:
                views.append(as_function_view(f, reps.get(str(f["name"]))))
            except (ValidationError, ValueError, KeyError) as e:
                log.warning("skipping function %s: %s", f.get("name"), e)
        tables = {f"{v.namespace}/{v.name}": self._table(v.name, device_type) for v in views if v.slo_ms}
        st = self.settings
        rt = plan_tick_repacking(now_s, views, devices, tables, self.memory, st.autoscale, self.repack,
                                 RepackSettings(st.repack_every_ticks, st.repack_timeout_s), fast=fast,
                                 standby_retry_s=st.standby_retry_s)
        # The batch lever: a step's raise sent at once, lowered once the new replicas are ready.
        result = with_batch_limits(rt.result, views, devices)
        by_key = {f"{v.namespace}/{v.name}": v for v in views}
        for a in result.actions:
            self._apply(a)
            log_batch_limits(a, by_key.get(f"{a.namespace}/{a.name}"), "fast" if fast else "tick")
        for e in rt.events:
            log.info("%s/%s: %s", e.move.namespace, e.move.name, e.message)
        self._expose(result, by_key, wall_s, "fast" if fast else "tick",
                     repack_record(self.repack, rt.events, now_s))
        return result

    def _apply(self, a: Action) -> None:
        try:
            if a.groups is not None:
                self.provider.apply_configurations(a.name, [group_json(g) for g in a.groups], a.namespace)
            if a.base_replicas is not None:
                self.provider.scale(a.name, a.base_replicas, a.namespace)
        except ProviderError as e:  # next tick retries from what the provider reports
            log.warning("applying to %s failed: %s", a.name, e)

    def _expose(self, result: TickResult, views: Mapping[str, FunctionView], at_s: float,
                path: str = "tick", repack: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        """Write and log the decisions; ``at_s``: the epoch time the pass read the platform at (before
        it applied anything), so a reader can order a decision against what the provider showed."""
        pipe = self.client.pipeline(transaction=False)
        for key, d in result.decisions.items():
            rec = decision_record(d, views.get(key), at_s, result.observed_rps.get(key), path,
                                  (repack or {}).get(key))
            pipe.hset(keys.scheduler_decisions(), key, rec)
            if d.changed or self._last_reason.get(key, "").split(":")[0] != d.reason.split(":")[0]:
                log.info("%s [%s]: %s -> %s | predicted utilisation %.2f, p99 %.1f ms", key, path, d.reason,
                         describe_replicas(d.replicas), d.predicted_utilisation, d.predicted_p99_ms)
            self._last_reason[key] = d.reason
        for key, why in result.notes.items():
            if self._last_reason.get(key) != why:
                log.info("%s: %s", key, why)
                self._last_reason[key] = why
        pipe.execute()

    def _safe_tick(self, fast: bool) -> None:
        try:
            self.tick(fast)
        except (ProviderError, redis.RedisError) as e:
            log.warning("tick failed: %s", e)
        except Exception:  # the loop must outlive one bad tick
            log.exception("tick failed")

    def run(self, stop: threading.Event) -> None:
        every, fast_every = self.settings.interval_s, self.settings.fast_interval_s
        while not stop.is_set():
            t0 = time.monotonic()
            self._safe_tick(False)
            # Fast scale-up sub-ticks until the next tick is due.
            for t_next in sub_tick_offsets(every, fast_every):
                if stop.wait(max(0.0, t_next - (time.monotonic() - t0))):
                    return
                self._safe_tick(True)
            stop.wait(max(0.0, every - (time.monotonic() - t0)))


def sub_tick_offsets(interval_s: float, fast_interval_s: float) -> list[float]:
    """Seconds after a tick at which the fast sub-ticks run before the next tick (none when the
    fast interval is 0 or not shorter than the tick's)."""
    if fast_interval_s <= 0 or fast_interval_s >= interval_s:
        return []
    n = int((interval_s - 1e-9) // fast_interval_s)
    return [fast_interval_s * i for i in range(1, n + 1) if fast_interval_s * i < interval_s - 1e-9]
