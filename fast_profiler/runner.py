"""Measures configurations through the real platform: provider -> sidecar -> worker.

For each configuration the runner deploys a shadow of the function (``<name>-profile``, one
replica, the configuration's ``fastgshare/gpu_sm_partition`` and quota request = limit, the
largest dynamic batch in ``FASTGSHARE_BATCH``: the worker runs up to that many queued requests as
one execution, the sidecar keeps that many in flight), waits for that replica alone to be ready,
and searches the highest Poisson rate with p99 under the SLO (``fast_profiler.search``) through
the gateway's ``/function/<shadow>``. The sidecar's ``/_/stats`` gives the busy time. The shadow carries no
``fastgshare/slo_ms``, so neither the scheduler nor the profile watcher acts on it; it is removed at
the end. The planner (``fast_profiler.planner``) decides what to measure; this module only runs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import redis
import requests

from fast_profiler.errors import ProfileError
from fast_profiler.loadgen import PoissonLoad, StepRecord, closed_loop
from fast_profiler.planner import (
    Config,
    FilledPoint,
    GridSpec,
    Measurement,
    fill,
    next_config,
    planned_configs,
    spatial_classes,
    to_table,
)
from fast_profiler.search import (
    SearchSettings,
    StepObservation,
    Verdict,
    disturbed,
    quantile,
    record_step,
    result_rate,
    start_search,
    step_verdict,
)
from fast_profiler.search import next_rate as search_next_rate
from fast_profiler.table import ProfileTable
from fastgshare import keys
from fastgshare.resources import QUOTA_LIMIT, QUOTA_REQUEST, SCALE_MAX, SCALE_MIN, SLO_MS, SM_PARTITION

log = logging.getLogger("fast_profiler")

BATCH_ENV = "FASTGSHARE_BATCH"
"""The replica's dynamic batch size: its worker runs up to this many queued requests at once
(``handle_batch``). Throughput stays in requests per second at every batch size."""
SHADOW_SUFFIX = "-profile"
READY_TIMEOUT_S = 180.0
"""How long one configuration's replica may take to load."""
DRAIN_TIMEOUT_S = 20.0
"""After a failing step, how long to wait for its queue to empty before the next step."""


@dataclass(frozen=True)
class RunSettings:
    """How the runner drives one configuration."""

    search: SearchSettings = field(default_factory=SearchSettings)
    probe_s: float = 1.0
    """Closed-loop saturation probe at full quota (capacity estimate)."""
    probe_concurrency: int = 3
    """Back-to-back clients of the probe: enough to keep the sidecar's queue non-empty (at batch b,
    at least 2 b: one batch executing, the next one queued)."""
    warmup_requests: int = 8
    """Sequential requests after each deployment, before measuring (first-call costs, busy time)."""
    seed: int = 1


@dataclass(frozen=True)
class FunctionSource:
    """What to deploy: the user's function as the provider knows it."""

    name: str
    image: str
    slo_ms: float
    namespace: str = "openfaas-fn"
    env_vars: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    env_process: str = ""
    body: bytes = b"{}"
    """The request each measurement sends."""

    @property
    def shadow(self) -> str:
        return f"{self.name[:63 - len(SHADOW_SUFFIX)]}{SHADOW_SUFFIX}"


def as_function_source(status: Mapping[str, object], *, body: bytes = b"{}",
                       slo_ms: float | None = None) -> FunctionSource:
    """A provider ``FunctionStatus`` (GET /system/function/<name>) -> what the runner deploys."""
    ann = {str(k): str(v) for k, v in dict(status.get("annotations") or {}).items()}  # type: ignore[call-overload]
    labels = {str(k): str(v) for k, v in dict(status.get("labels") or {}).items()}  # type: ignore[call-overload]
    merged = {**labels, **ann}
    slo = slo_ms if slo_ms is not None else float(merged.get(SLO_MS, 0) or 0)
    if slo <= 0:
        raise ProfileError(f"function {status.get('name')!r} has no {SLO_MS}: nothing to profile against")
    env = {str(k): str(v) for k, v in dict(status.get("envVars") or {}).items()}  # type: ignore[call-overload]
    return FunctionSource(str(status["name"]), str(status["image"]), slo,
                          str(status.get("namespace") or "openfaas-fn"), env, merged,
                          tuple(str(s) for s in (status.get("secrets") or ())),  # type: ignore[union-attr]
                          str(status.get("envProcess") or ""), body)


@dataclass
class Gateway:
    """The platform as the runner uses it: provider HTTP API, gateway invoke path, and Redis."""

    url: str
    auth: tuple[str, str] | None
    redis_client: redis.Redis
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        if self.auth:
            self.http.auth = self.auth

    def function_status(self, name: str, namespace: str = "openfaas-fn") -> dict[str, object] | None:
        r = self.http.get(f"{self.url}/system/function/{name}", params={"namespace": namespace}, timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json())

    def list_functions(self, namespace: str = "openfaas-fn") -> list[dict[str, object]]:
        r = self.http.get(f"{self.url}/system/functions", params={"namespace": namespace}, timeout=10)
        r.raise_for_status()
        return list(r.json())

    def deploy(self, body: dict[str, object]) -> None:
        r = self.http.put(f"{self.url}/system/functions", json=body, timeout=30)
        if r.status_code == 404:
            r = self.http.post(f"{self.url}/system/functions", json=body, timeout=30)
        if r.status_code not in (200, 202):
            raise ProfileError(f"deploying {body.get('service')!r} failed: "
                               f"HTTP {r.status_code} {r.text[:300]}")

    def remove(self, name: str, namespace: str = "openfaas-fn") -> None:
        self.http.delete(f"{self.url}/system/functions", json={"functionName": name, "namespace": namespace},
                         timeout=30)

    def replicas(self, name: str, namespace: str) -> list[dict[str, object]]:
        return [json.loads(v) for v in self.redis_client.hvals(keys.replicas(namespace, name))]

    def device(self) -> dict[str, object]:
        """The first device the node agent registered (CPU or GPU)."""
        raw = list(self.redis_client.hvals(keys.devices()))
        devs = [json.loads(v) for v in raw]
        gpus = [d for d in devs if d.get("kind") == "gpu"]
        return (gpus or devs or [{"kind": "cpu", "name": "cpu", "cores": []}])[0]


def device_type_of(device: Mapping[str, object]) -> str:
    """The profile table's device type: a GPU's model name; ``cpu-<n>c`` for a CPU with n cores."""
    if device.get("kind") == "gpu":
        return str(device.get("name") or "gpu")
    return f"cpu-{len(list(device.get('cores') or [])) or 1}c"  # type: ignore[call-overload]


def deploy_body(src: FunctionSource, cfg: Config) -> dict[str, object]:
    ann = {k: v for k, v in src.annotations.items()
           if k not in (SLO_MS, SCALE_MIN, SCALE_MAX, SM_PARTITION, QUOTA_REQUEST, QUOTA_LIMIT)}
    ann.update({SM_PARTITION: str(cfg.sm_pct), QUOTA_REQUEST: f"{cfg.quota_frac:g}",
                QUOTA_LIMIT: f"{cfg.quota_frac:g}"})
    body: dict[str, object] = {
        "service": src.shadow, "image": src.image, "namespace": src.namespace,
        "envVars": {**src.env_vars, BATCH_ENV: str(cfg.batch)}, "annotations": ann,
        "labels": {SCALE_MIN: "1", SCALE_MAX: "1"}, "secrets": list(src.secrets),
    }
    if src.env_process:
        body["envProcess"] = src.env_process
    return body


class Runner:
    """Measures one function's configurations on a running platform."""

    def __init__(self, gateway: Gateway, src: FunctionSource, settings: RunSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.gw = gateway
        self.src = src
        self.settings = settings or RunSettings()
        self.clock = clock
        self._generation = -1
        self._full_capacity: dict[tuple[int, int], float] = {}
        self._full_busy: dict[tuple[int, int], float] = {}
        """Busy ms per request under the full-quota probe (batches as the load forms them)."""

    # ---- deployment ------------------------------------------------------------------------

    def _deploy_and_wait(self, cfg: Config) -> str:
        """Deploy ``cfg`` and return the sidecar URL of its (only) replica once it is ready."""
        self.gw.deploy(deploy_body(self.src, cfg))
        deadline = self.clock() + READY_TIMEOUT_S
        while self.clock() < deadline:
            reps = self.gw.replicas(self.src.shadow, self.src.namespace)
            newer = [r for r in reps if int(r.get("generation", 0)) > self._generation]  # type: ignore[call-overload]
            if len(reps) == 1 and newer and int(reps[0].get("sm_pct", 0)) == cfg.sm_pct:  # type: ignore[call-overload]
                url = f"http://127.0.0.1:{reps[0]['port']}"
                try:
                    ok = requests.get(f"{url}/_/health", timeout=2).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    self._generation = int(reps[0]["generation"])  # type: ignore[call-overload]
                    return url
            time.sleep(0.1)
        raise ProfileError(f"{self.src.shadow}: no ready replica for {cfg} after {READY_TIMEOUT_S:.0f} s")

    def cleanup(self) -> None:
        self.gw.remove(self.src.shadow, self.src.namespace)

    # ---- one configuration -----------------------------------------------------------------

    def measure(self, cfg: Config) -> Measurement:
        t0 = self.clock()
        sidecar = self._deploy_and_wait(cfg)
        m = asyncio.run(self._measure(cfg, sidecar))
        return Measurement(cfg, m.throughput_rps, m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms,
                           m.busy_frac, m.error_rate, m.busy_ms_per_request, self.clock() - t0, m.steps)

    async def _stats(self, session: aiohttp.ClientSession, sidecar: str) -> tuple[int, float]:
        async with session.get(f"{sidecar}/_/stats", timeout=aiohttp.ClientTimeout(total=5)) as r:
            d = await r.json()
        return int(d["requests"]), float(d["busy_ms_total"])

    async def _measure(self, cfg: Config, sidecar: str) -> Measurement:
        s = self.settings
        url = f"{self.gw.url}/function/{self.src.shadow}"
        conn = aiohttp.TCPConnector(limit=512, force_close=False)
        async with aiohttp.ClientSession(connector=conn) as session:
            for _ in range(s.warmup_requests):
                async with session.post(url, data=self.src.body) as r:
                    await r.read()
                    if r.status >= 300:
                        raise ProfileError(f"{self.src.shadow} answers HTTP {r.status} at {cfg}: "
                                           f"{(await r.text())[:200]}")
            n0, b0 = await self._stats(session, sidecar)
            full_key = (cfg.sm_pct, cfg.batch)
            # Sequential warm-up requests run one at a time: at batch > 1 the probe's busy time
            # (batches as a saturating load forms them) is the one that bounds a quota.
            busy_per_req = self._full_busy.get(full_key, b0 / max(1, n0))
            if cfg.quota_frac >= 1.0 or full_key not in self._full_capacity:
                done, _, el = await closed_loop(session, url, self.src.body,
                                                concurrency=max(s.probe_concurrency, 2 * cfg.batch),
                                                duration_s=s.probe_s)
                n1, b1 = await self._stats(session, sidecar)
                if n1 > n0:
                    busy_per_req = (b1 - b0) / (n1 - n0)
                mu = done / el if el > 0 else 0.0
                if cfg.quota_frac >= 1.0:
                    self._full_capacity[full_key] = mu
                    self._full_busy[full_key] = busy_per_req
            mu_full = self._full_capacity.get(full_key, 0.0)
            capacity = mu_full
            if cfg.quota_frac < 1.0 and busy_per_req > 0:
                capacity = min(mu_full or float("inf"), cfg.quota_frac * 1000.0 / busy_per_req)
            if not capacity > 0:
                raise ProfileError(f"{self.src.shadow}: no capacity measured at {cfg}")
            return await self._search(cfg, session, url, sidecar, capacity, busy_per_req)

    async def _search(self, cfg: Config, session: aiohttp.ClientSession, url: str, sidecar: str,
                      capacity: float, ref_busy_ms: float) -> Measurement:
        s = self.settings.search
        load = PoissonLoad(session, url, self.src.body, seed=self.settings.seed)
        state = start_search(capacity)
        passes: dict[float, tuple[StepRecord, float, tuple[float, ...]]] = {}
        """Rate -> its last passing step (the answer is the rate the majority passed)."""
        lowest_fail: tuple[StepRecord, float] | None = None
        quiet_busy = ref_busy_ms if ref_busy_ms > 0 else None
        reruns = 0
        try:
            rate = search_next_rate(state, s)
            while rate is not None:
                n0, b0 = await self._stats(session, sidecar)
                busy_now: list[float | None] = [None]
                last_poll = [0.0]
                # The latencies the verdict was taken on: requests still in flight then may finish
                # later and land in the step's record, but the step was judged without them.
                judged: list[tuple[float, ...]] = [()]

                async def decide(rec: StepRecord, now: float, n0: int = n0, b0: float = b0,
                                 busy_now: list[float | None] = busy_now,
                                 last_poll: list[float] = last_poll,
                                 judged: list[tuple[float, ...]] = judged) -> Verdict:
                    if now - last_poll[0] >= 0.3:
                        last_poll[0] = now
                        n, b = await self._stats(session, sidecar)
                        if n - n0 >= 5:
                            busy_now[0] = (b - b0) / (n - n0)
                    judged[0] = tuple(rec.latencies_ms)
                    obs = StepObservation(rec.rate_rps, now - rec.started_s, judged[0],
                                          tuple(rec.waiting_ages_ms(now)), rec.errors, busy_now[0],
                                          cfg.quota_frac)
                    return step_verdict(obs, self.src.slo_ms, s)

                rec = await load.step(rate, decide)
                n1, b1 = await self._stats(session, sidecar)
                busy_frac = (b1 - b0) / 1000.0 / max(1e-9, rec.ended_s - rec.started_s)
                step_busy = (b1 - b0) / (n1 - n0) if n1 - n0 >= 5 else None
                passed = rec.verdict is Verdict.PASS
                log.info("%s %s: %.1f rps %s (%d sent, p99 %.1f ms, busy %.2f)", self.src.name, cfg, rate,
                         rec.verdict.value, rec.sent, quantile(rec.latencies_ms, 0.99), busy_frac)
                if not passed and reruns < s.max_reruns and disturbed(step_busy, quiet_busy, s):
                    reruns += 1
                    log.info("%s %s: %.1f rps rerun (%.1f ms busy per request vs %.1f quiet: disturbed)",
                             self.src.name, cfg, rate, step_busy or 0.0, quiet_busy or 0.0)
                    await load.drain(DRAIN_TIMEOUT_S)
                    continue
                if step_busy is not None:
                    quiet_busy = step_busy if quiet_busy is None else min(quiet_busy, step_busy)
                state = record_step(state, rate, passed)
                if passed:
                    passes[rate] = (rec, busy_frac, judged[0])
                if not passed:
                    if lowest_fail is None or rate < lowest_fail[0].rate_rps:
                        lowest_fail = (rec, busy_frac)
                    await load.drain(DRAIN_TIMEOUT_S)
                rate = search_next_rate(state, s)
        finally:
            await load.close()
        best = passes.get(result_rate(state))
        chosen = (best[0], best[1]) if best is not None else lowest_fail
        assert chosen is not None
        rec, busy_frac = chosen
        lat = list(best[2]) if best is not None and best[2] else rec.latencies_ms
        total = len(lat) + rec.errors
        rps = result_rate(state)  # requests per second (a request is one sample at every batch)
        return Measurement(cfg, rps, quantile(lat, 0.5), quantile(lat, 0.95), quantile(lat, 0.99),
                           min(1.0, busy_frac), rec.errors / total if total else 0.0,
                           self._busy_per_req(rec, busy_frac), 0.0, state.history)

    @staticmethod
    def _busy_per_req(rec: StepRecord, busy_frac: float) -> float:
        dur = max(1e-9, rec.ended_s - rec.started_s)
        n = len(rec.latencies_ms) + rec.errors
        return busy_frac * dur * 1000.0 / n if n else 0.0


@dataclass(frozen=True)
class Progress:
    """Where a profile stands; written to Redis for ``fastgshare profile`` and the function's status."""

    measured: int
    planned: int
    current: Config | None
    elapsed_s: float


@dataclass(frozen=True)
class ProfileResult:
    table: ProfileTable
    points: tuple[FilledPoint, ...]
    measurements: tuple[Measurement, ...]
    seconds: float
    spec: GridSpec


def profile_function(runner: Runner, spec: GridSpec, device_type: str, *,
                     on_progress: Callable[[Progress], None] | None = None,
                     known: Mapping[Config, Measurement] | None = None) -> ProfileResult:
    """Measure what the plan asks for, then fill the grid. The shadow function is removed at the end."""
    t0 = runner.clock()
    measured: dict[Config, Measurement] = dict(known or {})
    try:
        while (cfg := next_config(spec, measured)) is not None:
            if on_progress:
                on_progress(Progress(len(measured), len(planned_configs(spec, measured)), cfg,
                                     runner.clock() - t0))
            measured[cfg] = runner.measure(cfg)
            log.info("%s measured %s: %.1f rps, p99 %.1f ms in %.1f s", runner.src.name, cfg,
                     measured[cfg].throughput_rps, measured[cfg].latency_p99_ms, measured[cfg].seconds)
    finally:
        runner.cleanup()
    seconds = runner.clock() - t0
    if on_progress:
        on_progress(Progress(len(measured), len(measured), None, seconds))
    points = fill(spec, measured)
    table = to_table(runner.src.name, device_type, points)
    return ProfileResult(table, points, tuple(measured.values()), seconds, spec)


def grid_for_device(device: Mapping[str, object], **overrides: object) -> GridSpec:
    """The default grid for a device: the paper's, with CPU shares mapped to its cores."""
    cores = None
    if device.get("kind") != "gpu":
        cores = len(list(device.get("cores") or [])) or 1  # type: ignore[call-overload]
    return GridSpec(device_cores=cores, **overrides)  # type: ignore[arg-type]


__all__ = ["BATCH_ENV", "FunctionSource", "Gateway", "Progress", "ProfileResult", "RunSettings", "Runner",
           "as_function_source", "device_type_of", "grid_for_device", "profile_function", "spatial_classes"]
