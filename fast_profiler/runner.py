"""Measures configurations through the real platform: provider -> sidecar -> worker.

For each configuration the runner deploys a shadow of the function (``<name>-profile``, one
replica, the configuration's ``fastgshare/gpu_sm_partition`` and quota request = limit, the
largest dynamic batch in ``FASTGSHARE_BATCH``: the worker runs up to that many queued requests as
one execution, the sidecar keeps that many in flight), waits for that replica alone to be ready,
and searches the highest Poisson rate with p99 under the SLO (``fast_profiler.search``) through
the gateway's ``/function/<shadow>``. The sidecar's ``/_/stats`` gives the busy time. The shadow carries no
``fastgshare/slo_ms``, so neither the scheduler nor the profile watcher acts on it, and the label
``fastgshare/profile-of`` (``fast_profiler.shadow``), so the provider keeps it out of the user's
answers; it is removed at the end. While it measures, the runner asks ``stop_reason`` about once a
second whether to go on: a function removed or redeployed with other code stops its run at once
(``ProfileCancelled``). The planner (``fast_profiler.planner``) decides what to measure; this module
only runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import aiohttp
import requests

from fast_profiler.errors import ProfileCancelled, ProfileError
from fast_profiler.gateway import Gateway
from fast_profiler.interference import CpuMonitor, foreign_cores
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
from fast_profiler.queue_model import final_answer
from fast_profiler.search import (
    SearchSettings,
    StepObservation,
    Verdict,
    counted_history,
    replay,
    result_rate,
    step_severity,
    step_verdict,
)
from fast_profiler.search import next_rate as search_next_rate
from fast_profiler.shadow import shadow_labels, shadow_name
from fast_profiler.table import ProfileTable
from fastgshare.provider_client import ProviderError
from fastgshare.resources import QUOTA_LIMIT, QUOTA_REQUEST, SCALE_MAX, SCALE_MIN, SLO_MS, SM_PARTITION
from fastgshare.stats import percentile

log = logging.getLogger("fast_profiler")
_T = TypeVar("_T")

BATCH_ENV = "FASTGSHARE_BATCH"
"""The replica's dynamic batch size: its worker runs up to this many queued requests at once
(``handle_batch``). Throughput stays in requests per second at every batch size."""
STEP_LABEL = "fastgshare/profile-step"
"""The shadow's deployment counter (``deploy_body``)."""
READY_TIMEOUT_S = 180.0
"""How long one configuration's replica may take to load."""
QUIET_SAMPLE_S = 0.5
"""How long one look at the node's other load lasts while waiting for it to be quiet."""
MIN_CHARGE_REQUESTS = 10
"""A step's device and token time per request are judged on at least this many requests (the first
few of a step are noisy: a 7 rps step failed its quota check on 5 of them)."""
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
    max_foreign_cores: float = 0.25
    """With a CPU monitor: a step during which other processes used more than this many cores was
    disturbed; a failing one is not counted but run again once the node is quiet."""
    quiet_wait_s: float = 10.0
    """... waiting at most this long per configuration for the node to be quiet (then it is
    measured as it is)."""
    max_foreign_reruns: int = 4
    """... and rerunning at most this many failing steps per configuration."""
    interference_budget_s: float = 40.0
    """... and spending at most this long in all (waits and rerun steps) per runner, i.e. per
    profile: a node that stays busy would otherwise stretch a profile past its time target (a run
    under other jobs' load took 309.5 s, 0.295 of the original's, where a quiet one took 208)."""
    warmup_gap_s: float = 0.05
    """Pause after each warm-up request (longer than the token client's linger, 10 ms)."""
    window_s: float = 5.0
    """The arbiter's sliding window (``ArbiterParams.window_us``). At a partial quota a step that
    failed may have used up the window (its queue ran on it), which would fail the next, lighter
    steps too; the load pauses this long after such a step (and after a partial-quota probe), so
    every step starts from the same, unused window. Idle time is free of the cap's bursts because
    a step also fails when its rate x charged time per request exceeds the quota."""
    seed: int = 1
    stop_poll_s: float = 1.0
    """How often the runner asks whether its function is still deployed as it was (``stop_reason``):
    a removed function's run stops within about this long."""


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
        return shadow_name(self.name)


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


def deploy_body(src: FunctionSource, cfg: Config, step: int = 0) -> dict[str, object]:
    """The shadow's deployment for ``cfg``; ``step`` (a label) makes every deployment a new
    revision, so the backend starts a new replica even when ``cfg`` was deployed just before (a
    Kubernetes Deployment whose pod template is unchanged rolls nothing)."""
    ann = {k: v for k, v in src.annotations.items()
           if k not in (SLO_MS, SCALE_MIN, SCALE_MAX, SM_PARTITION, QUOTA_REQUEST, QUOTA_LIMIT)}
    ann.update({SM_PARTITION: str(cfg.sm_pct), QUOTA_REQUEST: f"{cfg.quota_frac:g}",
                QUOTA_LIMIT: f"{cfg.quota_frac:g}"})
    body: dict[str, object] = {
        "service": src.shadow, "image": src.image, "namespace": src.namespace,
        "envVars": {**src.env_vars, BATCH_ENV: str(cfg.batch)}, "annotations": ann,
        "labels": {SCALE_MIN: "1", SCALE_MAX: "1", **shadow_labels(src.name), STEP_LABEL: str(step)},
        "secrets": list(src.secrets),
    }
    if src.env_process:
        body["envProcess"] = src.env_process
    return body


class Runner:
    """Measures one function's configurations on a running platform."""

    def __init__(self, gateway: Gateway, src: FunctionSource, settings: RunSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic, monitor: CpuMonitor | None = None,
                 stop_reason: Callable[[], str | None] | None = None) -> None:
        self.gw = gateway
        self.src = src
        self.settings = settings or RunSettings()
        self.clock = clock
        self.monitor = monitor
        """Other load on the node (``fast_profiler.interference``): None judges by busy time only."""
        self.stop_reason = stop_reason
        """Why the run must stop now (its function removed, redeployed with other code), or None;
        asked about every ``stop_poll_s``. None: the run is never stopped from outside."""
        self._next_stop_check = 0.0
        self._step = 0
        self._seen: set[str] = set()
        """Replicas of earlier deployments of the shadow, never taken for the current one's."""
        self._full_capacity: dict[tuple[int, int], float] = {}
        self._full_busy: dict[tuple[int, int], float] = {}
        """Busy ms per request under the full-quota probe (batches as the load forms them)."""
        self._quiet_left = self.settings.quiet_wait_s
        self._interference_left = self.settings.interference_budget_s

    # ---- deployment ------------------------------------------------------------------------

    def check_stop(self, *, now: bool = False) -> None:
        """Raise ``ProfileCancelled`` when ``stop_reason`` gives one (asked at most every
        ``stop_poll_s`` unless ``now``)."""
        if self.stop_reason is None:
            return
        t = self.clock()
        if not now and t < self._next_stop_check:
            return
        self._next_stop_check = t + self.settings.stop_poll_s
        reason = self.stop_reason()
        if reason:
            raise ProfileCancelled(f"profile of {self.src.name!r} stopped: {reason}")

    async def _guarded(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work``, cancelling it as soon as ``stop_reason`` gives a reason."""
        task = asyncio.ensure_future(work)
        if self.stop_reason is None:
            return await task
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.settings.stop_poll_s)
            if task in done:
                return task.result()
            reason = await asyncio.to_thread(self.stop_reason)
            if reason:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise ProfileCancelled(f"profile of {self.src.name!r} stopped: {reason}")

    def _deploy_and_wait(self, cfg: Config) -> str:
        """Deploy ``cfg`` and return the address of its replica once that replica, one this
        deployment started, is the shadow's only one and answers its health check. The address
        is the provider's (``replicas_of``): the same on every backend."""
        self.check_stop(now=True)
        provider = self.gw.provider
        self._seen.update(r.replica_id for r in provider.replicas_of(self.src.shadow, self.src.namespace))
        self._step += 1
        provider.deploy(deploy_body(self.src, cfg, self._step))
        deadline = self.clock() + READY_TIMEOUT_S
        while self.clock() < deadline:
            self.check_stop()
            reps = provider.replicas_of(self.src.shadow, self.src.namespace)
            if len(reps) == 1 and reps[0].replica_id not in self._seen and reps[0].url \
                    and reps[0].sm_pct == cfg.sm_pct:
                url = reps[0].url
                try:
                    ok = requests.get(f"{url}/_/health", timeout=2).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    self._seen.add(reps[0].replica_id)
                    return url
            time.sleep(0.1)
        raise ProfileError(f"{self.src.shadow}: no ready replica for {cfg} after {READY_TIMEOUT_S:.0f} s")

    def cleanup(self) -> None:
        """Remove the shadow (called in a ``finally``: a provider that refuses is logged, so the
        run's own error is the one raised)."""
        try:
            self.gw.provider.remove(self.src.shadow, self.src.namespace)
        except ProviderError as e:
            log.warning("could not remove %s: %s", self.src.shadow, e)

    # ---- one configuration -----------------------------------------------------------------

    def measure(self, cfg: Config) -> Measurement:
        t0 = self.clock()
        sidecar = self._deploy_and_wait(cfg)
        m = asyncio.run(self._guarded(self._measure(cfg, sidecar)))
        return replace(m, seconds=self.clock() - t0)

    def long_run(self, cfg: Config, rate_rps: float, seconds: float) -> StepRecord:
        """One open-loop Poisson load held at ``rate_rps`` for ``seconds`` on ``cfg``, drained (its
        latencies, errors, and per request the service and path times): the independent check of
        a table's rate over a long run."""
        self._deploy_and_wait(cfg)

        url = self.gw.provider.function_url(self.src.shadow)

        async def run() -> StepRecord:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:
                load = PoissonLoad(session, url, self.src.body, seed=self.settings.seed + 1)

                async def until(rec: StepRecord, now: float) -> Verdict:
                    return Verdict.PASS if now - rec.started_s >= seconds else Verdict.CONTINUE

                for _ in range(10):  # first calls pay first-call costs
                    async with session.post(url, data=self.src.body) as r:
                        await r.read()
                try:
                    rec = await load.step(rate_rps, until)
                    await load.drain(DRAIN_TIMEOUT_S)
                finally:
                    await load.close()
                return rec

        return asyncio.run(run())

    def seed(self, measurements: Iterable[Measurement]) -> None:
        """Start from what a finished profile's full-quota probes found (capacity, busy time per
        request), so that a later search of a partial quota (a held-out re-measurement) starts as the
        table's did instead of probing the partial quota, which would eat the arbiter's window."""
        for m in measurements:
            if m.config.quota_frac >= 1.0 and m.capacity_rps > 0:
                key = (m.config.sm_pct, m.config.batch)
                self._full_capacity[key] = m.capacity_rps
                if m.probe_busy_ms > 0:
                    self._full_busy[key] = m.probe_busy_ms

    async def _stats(self, session: aiohttp.ClientSession, sidecar: str) -> tuple[int, float]:
        n, busy, _ = await self._stats3(session, sidecar)
        return n, busy

    async def _stats3(self, session: aiohttp.ClientSession, sidecar: str) -> tuple[int, float, float]:
        """(requests, busy ms, token-held ms) so far: the arbiter charges the held time."""
        async with session.get(f"{sidecar}/_/stats", timeout=aiohttp.ClientTimeout(total=5)) as r:
            d = await r.json()
        return int(d["requests"]), float(d["busy_ms_total"]), float(d.get("held_ms_total") or 0.0)

    async def _measure(self, cfg: Config, sidecar: str) -> Measurement:
        s = self.settings
        self._quiet_left = s.quiet_wait_s
        url = self.gw.provider.function_url(self.src.shadow)
        conn = aiohttp.TCPConnector(limit=512, force_close=False)
        async with aiohttp.ClientSession(connector=conn) as session:
            nw = hw = 0.0
            for i in range(s.warmup_requests):
                if i == s.warmup_requests // 2:  # the first ones pay first-call costs
                    nw, _, hw = await self._stats3(session, sidecar)
                async with session.post(url, data=self.src.body) as r:
                    await r.read()
                    if r.status >= 300:
                        raise ProfileError(f"{self.src.shadow} answers HTTP {r.status} at {cfg}: "
                                           f"{(await r.text())[:200]}")
                # Spaced as a light load sends them: each one holds the token for its execution and
                # the linger after it, as the arbiter charges a partial quota's requests.
                await asyncio.sleep(s.warmup_gap_s)
            n0, b0, h0 = await self._stats3(session, sidecar)
            held_light = (h0 - hw) / (n0 - nw) if n0 > nw else 0.0
            full_key = (cfg.sm_pct, cfg.batch)
            # Sequential warm-up requests run one at a time: at batch > 1 the probe's busy time
            # (batches as a saturating load forms them) is the one that bounds a quota.
            busy_per_req = self._full_busy.get(full_key, b0 / max(1, n0))
            if cfg.quota_frac >= 1.0 or full_key not in self._full_capacity:
                await self._wait_quiet(cfg)  # the probe sets where the search starts
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
                else:
                    await asyncio.sleep(s.window_s)  # the probe used the window: start from an unused one
            mu_full = self._full_capacity.get(full_key, 0.0)
            capacity = mu_full
            # The quota bounds the charged time, the token's held time: one request at a time (the
            # warm-up, as a light load sends them) holds it for its execution and the linger after.
            charged = max(busy_per_req, held_light)
            if cfg.quota_frac < 1.0 and charged > 0:
                capacity = min(mu_full or float("inf"), cfg.quota_frac * 1000.0 / charged)
            if not capacity > 0:
                raise ProfileError(f"{self.src.shadow}: no capacity measured at {cfg}")
            m = await self._search(cfg, session, url, sidecar, capacity)
            return replace(m, capacity_rps=capacity, probe_busy_ms=self._full_busy.get(full_key, 0.0)
                           if cfg.quota_frac >= 1.0 else 0.0)

    async def _search(self, cfg: Config, session: aiohttp.ClientSession, url: str, sidecar: str,
                      capacity: float) -> Measurement:
        s = self.settings.search.for_quota(cfg.quota_frac, modelled=cfg.batch == 1)
        load = PoissonLoad(session, url, self.src.body, seed=self.settings.seed)
        state = replay(capacity, (), 0)
        passes: dict[float, tuple[StepRecord, float, tuple[float, ...]]] = {}
        """Rate -> its last passing step (the answer is the rate the majority passed)."""
        lowest_fail: tuple[StepRecord, float] | None = None
        steps: list[tuple[float, bool, float | None]] = []
        """Every step run: (rate, passed, busy ms per request); the votes are ``counted_history``."""
        left_out: tuple[int, ...] = ()
        records: list[StepRecord] = []
        """Each counted step's record, beside ``steps`` (its requests' service and path times) ..."""
        calm: list[tuple[float, float | None]] = []
        """... and the other load during it (cores) and its busy ms per request (the queue model
        reads the quiet steps' requests)."""
        severities: list[float | None] = []
        """Each step's severity (``step_severity``), beside ``steps``: ``answer_rate`` reads the
        counted ones at the bracket's two ends."""
        foreign_reruns = 0
        foreign_seen = 0.0
        try:
            rate = search_next_rate(state, s)
            while rate is not None:
                c0 = self.monitor.sample() if self.monitor else None
                n0, b0, h0 = await self._stats3(session, sidecar)
                busy_now: list[float | None] = [None]
                held_now: list[float | None] = [None]
                last_poll = [0.0]
                # The latencies the verdict was taken on: requests still in flight then may finish
                # later and land in the step's record, but the step was judged without them.
                judged: list[tuple[float, ...]] = [()]
                last_obs: list[StepObservation | None] = [None]

                async def decide(rec: StepRecord, now: float, n0: int = n0, b0: float = b0,
                                 h0: float = h0, busy_now: list[float | None] = busy_now,
                                 held_now: list[float | None] = held_now,
                                 last_poll: list[float] = last_poll,
                                 judged: list[tuple[float, ...]] = judged,
                                 last_obs: list[StepObservation | None] = last_obs) -> Verdict:
                    if now - last_poll[0] >= 0.3:
                        last_poll[0] = now
                        n, b, h = await self._stats3(session, sidecar)
                        if n - n0 >= MIN_CHARGE_REQUESTS:
                            busy_now[0] = (b - b0) / (n - n0)
                            held_now[0] = (h - h0) / (n - n0)
                    judged[0] = tuple(rec.latencies_ms)
                    obs = StepObservation(rec.rate_rps, now - rec.started_s, judged[0],
                                          tuple(rec.waiting_ages_ms(now)), rec.errors, busy_now[0],
                                          cfg.quota_frac, held_now[0])
                    last_obs[0] = obs
                    return step_verdict(obs, self.src.slo_ms, s)

                rec = await load.step(rate, decide)
                n1, b1, h1 = await self._stats3(session, sidecar)
                c1 = self.monitor.sample() if self.monitor else None
                foreign = foreign_cores(c0, c1) if c0 and c1 else 0.0
                busy_frac = (b1 - b0) / 1000.0 / max(1e-9, rec.ended_s - rec.started_s)
                step_busy = (b1 - b0) / (n1 - n0) if n1 - n0 >= 5 else None
                passed = rec.verdict is Verdict.PASS
                p99_ms = percentile(judged[0], 99, empty=0.0)
                log.info("%s %s: %.1f rps %s in %.1f s (%d sent, p99 %.1f ms, busy %.2f, %.1f busy / %.1f "
                         "held ms per request, %.2f other cores)", self.src.name, cfg, rate,
                         rec.verdict.value, rec.ended_s - rec.started_s, rec.sent, p99_ms,
                         busy_frac, step_busy or 0.0, (h1 - h0) / max(1, n1 - n0), foreign)
                if (not passed and foreign > self.settings.max_foreign_cores
                        and foreign_reruns < self.settings.max_foreign_reruns
                        and self._interference_left > 0):
                    foreign_reruns += 1
                    self._interference_left -= rec.ended_s - rec.started_s
                    log.info("%s %s: %.1f rps failed while other processes used %.2f cores: run again "
                             "when quiet", self.src.name, cfg, rate, foreign)
                    await self._recover(load, cfg, late=True)
                    await self._wait_quiet(cfg)
                    continue
                if passed or foreign <= self.settings.max_foreign_cores:
                    foreign_seen = max(foreign_seen, foreign)
                # Interference is told by stretched executions at full quota only: a partial quota's
                # failures are decided by its cap, and light load's executions vary more (cold caches).
                # With a CPU monitor the node's other load tells it directly.
                judge_busy = cfg.quota_frac >= 1.0 and self.monitor is None
                steps.append((rate, passed, step_busy if judge_busy else None))
                records.append(rec)
                calm.append((foreign, step_busy))
                severities.append(None if last_obs[0] is None
                                  else step_severity(last_obs[0], self.src.slo_ms, s))
                history, out = counted_history(steps, s)
                if out != left_out:
                    log.info("%s %s: failures left out as disturbed: %s", self.src.name, cfg,
                             ", ".join(f"{steps[i][0]:.1f} rps at {steps[i][2] or 0:.1f} ms" for i in out))
                left_out = out
                # Left-out failures cost no step of the budget (at most ``max_reruns`` of them).
                state = replay(capacity, history, len(history))
                if passed:
                    passes[rate] = (rec, busy_frac, judged[0])
                if not passed:
                    if lowest_fail is None or rate < lowest_fail[0].rate_rps:
                        lowest_fail = (rec, busy_frac)
                    late = percentile(judged[0], 100 * s.slo_quantile, empty=0.0) > self.src.slo_ms
                    await self._recover(load, cfg, late=late or rec.errors > 0)
                rate = search_next_rate(state, s)
        finally:
            await load.close()
        best = passes.get(result_rate(state))
        chosen = (best[0], best[1]) if best is not None else lowest_fail
        assert chosen is not None
        rec, busy_frac = chosen
        lat = list(best[2]) if best is not None and best[2] else rec.latencies_ms
        total = len(lat) + rec.errors
        counted = [i for i in range(len(steps)) if i not in left_out]
        quietest = min((b for _, b in calm if b), default=None)
        quiet = [calm[i][0] <= self.settings.max_foreign_cores
                 and not (quietest and calm[i][1] and calm[i][1] > quietest * s.disturbed_frac)
                 for i in counted]
        ans = final_answer(state, [steps[i][:2] for i in counted], [severities[i] for i in counted],
                           [(records[i].service_ms, records[i].path_ms) for i in counted], s,
                           self.src.slo_ms, lat, full_quota=cfg.quota_frac >= 1.0, model=cfg.batch == 1,
                           quiet=quiet)
        # requests per second (a request is one sample at every batch)
        return Measurement(cfg, ans.rps, *ans.latency_ms,
                           min(1.0, busy_frac), rec.errors / total if total else 0.0,
                           self._busy_per_req(rec, busy_frac), 0.0, state.history,
                           foreign_cores=round(foreign_seen, 3), search_rps=ans.searched,
                           model_rps=ans.modelled)

    async def _wait_quiet(self, cfg: Config) -> float:
        """Wait (within this configuration's and this profile's allowance) until other processes use
        at most ``max_foreign_cores``; returns the foreign load last seen (0 without a monitor)."""
        if self.monitor is None:
            return 0.0
        foreign = 0.0
        while True:
            a = self.monitor.sample()
            await asyncio.sleep(QUIET_SAMPLE_S)
            b = self.monitor.sample()
            if a is None or b is None:
                return 0.0
            foreign = foreign_cores(a, b)
            if foreign <= self.settings.max_foreign_cores:
                return foreign
            self._quiet_left -= QUIET_SAMPLE_S
            self._interference_left -= QUIET_SAMPLE_S
            if self._quiet_left <= 0 or self._interference_left <= 0:
                if foreign > self.settings.max_foreign_cores:
                    log.info("%s %s: node still busy (%.2f other cores), measuring anyway", self.src.name,
                             cfg, foreign)
                return foreign

    async def _recover(self, load: PoissonLoad, cfg: Config, *, late: bool) -> None:
        """After a failing step: its queue drains; at a partial quota, when the step failed on
        latency (its queue ran on the window, which may be used up), the window is let go too. A
        step failed by the quota check alone ends within a second or two, before it can use the
        window up (7.8 -> 8.2 rps at quota 0.2: 0.94 s of the 1 s the window allows)."""
        await load.drain(DRAIN_TIMEOUT_S)
        if cfg.quota_frac < 1.0 and late:
            await asyncio.sleep(self.settings.window_s)

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


__all__ = ["BATCH_ENV", "FunctionSource", "Progress", "ProfileResult", "RunSettings", "Runner",
           "as_function_source", "grid_for_device", "profile_function", "spatial_classes"]
