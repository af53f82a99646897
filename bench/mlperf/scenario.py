"""The autoscaling scenario: one function under a changing open-loop Poisson rate, with the
scheduler on; what it reports is SLO attainment, replicas over time and the device share used.

Traces: a ramp (the original's 30 -> 110 -> 20 RPS over about 3 minutes, scaled to what this
device serves) and an Azure-Functions-like trace (``fast_scheduler.evaluation.traces.azure_like_trace`` over
``orcbench``'s arrival models). The scheduler is whatever ``python -m fast_scheduler`` is; if it
is not running, the run still happens (replicas stay as deployed) and the result says so.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from bench.mlperf import aggregate as agg
from bench.mlperf import platform_io as pio
from fastgshare.stats import percentile

POLL_S = 1.0
"""How often replicas and device counters are read during a scenario."""


def ramp_trace(peak_rps: float, duration_s: float) -> list[float]:
    from bench.mlperf.modes import ramp_rates

    return ramp_rates(peak_rps, duration_s)


def azure_trace(mean_rps: float, duration_s: float, seed: int = 0, bin_s: float = 10.0) -> list[float]:
    """Per-second rates from an Azure-like shape (orcbench models), mean ``mean_rps``."""
    from fast_scheduler.evaluation.traces import azure_like_trace, load_orcbench_clusters

    tr = azure_like_trace({"f": mean_rps}, duration_s, load_orcbench_clusters(), seed=seed,
                          step_s=1.0, bin_s=bin_s)
    return [float(x) for x in tr.rates_rps["f"]]


def poisson_times(rates_per_s: Sequence[float], rng: random.Random) -> list[float]:
    """Arrival times (s from 0) of a Poisson process whose rate is constant within each second. Pure
    given ``rng``."""
    out: list[float] = []
    for i, r in enumerate(rates_per_s):
        if r <= 0:
            continue
        t = i + rng.expovariate(r)
        while t < i + 1:
            out.append(t)
            t += rng.expovariate(r)
    return out


@dataclass
class ScenarioResult:
    name: str
    slo_ms: float
    rates_rps: list[float]
    sent_s: list[float]
    latencies_ms: list[float]
    """Per request, in sending order; ``inf`` for an error."""
    polls: list[dict[str, Any]]

    def summary(self, window_s: float = 5.0) -> dict[str, Any]:
        ok = [x for x in self.latencies_ms if math.isfinite(x)]
        errors = len(self.latencies_ms) - len(ok)
        reps = [p["replicas"] for p in self.polls]
        shares = [p["share"] for p in self.polls]
        utils = [p["cpu_util"] for p in self.polls if p.get("cpu_util") is not None]
        return {
            "slo_ms": self.slo_ms, "requests": len(self.latencies_ms), "errors": errors,
            "slo_attainment": round(agg.slo_attainment(ok, errors, self.slo_ms), 4),
            "p50_ms": round(percentile(ok, 50, empty=0.0), 2),
            "p99_ms": round(percentile(ok, 99, empty=0.0), 2),
            "mean_rate_rps": round(sum(self.rates_rps) / max(1, len(self.rates_rps)), 3),
            "peak_rate_rps": round(max(self.rates_rps, default=0.0), 3),
            "replicas_max": max(reps, default=0), "replicas_mean": round(sum(reps) / max(1, len(reps)), 3),
            "device_share_mean": round(sum(shares) / max(1, len(shares)), 4),
            "device_utilisation_mean": round(sum(utils) / len(utils), 4) if utils else None,
            "timeline": agg.timeline(self.sent_s, self.latencies_ms, self.slo_ms, window_s,
                                     float(len(self.rates_rps))),
            "polls": self.polls,
        }


def run_trace(t: pio.Target, service: str, name: str, rates: Sequence[float], slo_ms: float, ncores: int,
              *, seed: int = 0, workers: int = 64,
              progress: Callable[[str], None] = print) -> ScenarioResult:
    """Send the trace open loop (each request at its Poisson time, latency counted from then) while
    polling replicas and device counters."""
    times = poisson_times(rates, random.Random(seed))
    n = len(times)
    lat = [math.inf] * n
    url = t.function_url(service)
    local = threading.local()
    polls: list[dict[str, Any]] = []
    stop = threading.Event()
    probe = pio.UsageProbe(t)

    def post(i: int, t0: float) -> None:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        try:
            resp = s.post(url, data=b"{}", timeout=max(60.0, 20 * slo_ms / 1000))
            if resp.status_code == 200:
                lat[i] = (time.monotonic() - t0) * 1000.0
        except requests.RequestException:
            pass

    def poll(start: float) -> None:
        last = probe.sample([service])
        while not stop.wait(POLL_S):
            try:
                fns = {f["name"]: f for f in pio.replicas(t)}
            except requests.RequestException:
                continue
            f = fns.get(service, {})
            ready = [r for r in f.get("replicaStatus", []) if r.get("ready")]
            now = probe.sample([service])
            cpu, busy, sm_time = pio.utilisation(last, now, ncores)
            last = now
            polls.append({"t_s": round(time.monotonic() - start, 2), "replicas": f.get("replicas", 0),
                          "available": f.get("availableReplicas", 0),
                          "share": round(sum(r.get("smPct", 0) for r in ready) / 100.0, 3),
                          "configurations": [{"configId": c.get("configId"), "replicas": c.get("replicas"),
                                              "share": c.get("share")} for c in f.get("configurations", [])],
                          "cpu_util": None if cpu is None else round(cpu, 4),
                          "busy": None if busy is None else round(busy, 4),
                          "sm_time": None if sm_time is None else round(sm_time, 4),
                          "decision": (pio.scheduler_decision(t, service) or {}).get("summary")})

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"trace-{name}")
    start = time.monotonic()
    poller = threading.Thread(target=poll, args=(start,), daemon=True)
    poller.start()
    next_report = 10.0
    try:
        for i, at in enumerate(times):
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(post, i, start + at)
            if at >= next_report:
                p = polls[-1] if polls else {}
                done = [x for x in lat[:i] if math.isfinite(x)]
                progress(f"{name} t={at:4.0f}s rate {rates[int(at)]:.2f} rps, replicas "
                         f"{p.get('available', '?')}/{p.get('replicas', '?')}, share {p.get('share', '?')}, "
                         f"p99 so far {percentile(done, 99, empty=0.0):.0f} ms")
                next_report += 10.0
        pool.shutdown(wait=True)
    finally:
        stop.set()
        poller.join(5)
        probe.close()
    return ScenarioResult(name, slo_ms, list(rates), times, lat, polls)
