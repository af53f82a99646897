"""Calibrate the cluster simulator against the real local platform.

One small real torch function (``tests/integration/handlers/paced``: a tiny matmul plus 45 ms that
stands for device time, so a replica serves ~20 requests/s whatever else the shared machine runs) is
profiled **on this machine** through the real platform (``fast_profiler.jobs.profile_and_store``,
coarse grid: SM 50/100 x quota 0.5/1.0). Then the same request schedules (seeded Poisson send times)
are played

- on the real platform (provider -> sidecar -> worker, arbiter on), counting latency from each
  request's intended send time, and
- in ``fast_scheduler.evaluation.simulator`` with the table just profiled, the arrivals of each 1 s step being
  exactly the real schedule's,

for (1) each measured configuration at a fixed replica count and rates 0.5 / 0.8 / 1.2 x the table's
throughput, and (2) an autoscaled ramp (2 -> 20 -> 2 rps) with the live scheduler
(``python -m fast_scheduler``) on the real side and the same policy code (``this_policy``, same
settings) in the simulator. Reported per run: throughput (requests completed inside the load window
/ window), p99 latency, SLO attainment, for real and simulated, and how far apart (sim / real); for the
ramp also the replica count over time. Table, JSON (default bench/results/calibrate.json) and a PNG.

The comparison code (schedules, traces, summaries, ratios) is pure and tested in
``tests/unit/test_calibrate.py``; everything else is I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS, parser, write_json
from fast_profiler.table import ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.evaluation.policies import AutoscaledPolicy, this_policy
from fast_scheduler.evaluation.simulator import SimFunction, SimResult, SimSettings, Trace, simulate
from fastgshare.stats import percentile

REPO = Path(__file__).resolve().parents[1]
HANDLER = REPO / "tests" / "integration" / "handlers" / "paced"
TEMPLATE = REPO / "function_templates" / "python3-torch"
IMAGE = "calibrate/paced:latest"
NAME = "paced"
SLO_MS = 250.0
RATE_FRACS = (0.5, 0.8, 1.2)
REQUEST_TIMEOUT_S = 30.0
STEP_S = 0.1
"""The simulator's step for calibration (finer than the cluster bench's 1 s: waits are sub-second)."""


# ---------------------------------------------------------------- pure: schedules, traces, comparison


def poisson_schedule(rate_at: Callable[[float], float], duration_s: float, seed: int) -> list[float]:
    """Send times of a (piecewise) Poisson process with rate ``rate_at(t)`` on [0, duration_s)
    (thinning against the rate's maximum on a 0.1 s grid)."""
    rng = random.Random(seed)
    peak = max(rate_at(i * 0.1) for i in range(int(duration_s * 10) + 1))
    if peak <= 0:
        return []
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        if rng.random() * peak < rate_at(t):
            out.append(t)


def trace_from_sends(
    name: str, sends: Sequence[float], duration_s: float, rate_at: Callable[[float], float],
    step_s: float = 1.0, tail_s: float = 0.0,
) -> Trace:
    """The simulator's trace whose step counts are exactly ``sends`` (plus ``tail_s`` of silence, so a
    backlog can drain as it does on the real platform after the load stops)."""
    steps = math.ceil(duration_s / step_s)
    counts = [0] * (steps + math.ceil(tail_s / step_s))
    for t in sends:
        counts[min(int(t // step_s), steps - 1)] += 1
    rates = [rate_at(i * step_s) if i < steps else 0.0 for i in range(len(counts))]
    return Trace(f"calibrate-{name}", step_s, {NAME: counts}, {NAME: rates})


@dataclass(frozen=True)
class Request:
    sent_s: float
    """Intended send time (from the start of the load)."""
    done_s: float
    """Completion time (same origin); ``math.inf`` when it failed or timed out."""
    ok: bool


def real_summary(reqs: Sequence[Request], duration_s: float, slo_ms: float) -> dict[str, float]:
    """Throughput (successes completed inside [0, duration_s) per second), p99 latency (failures count
    as infinitely late), SLO attainment, error rate."""
    lat = [(r.done_s - r.sent_s) * 1000 if r.ok else math.inf for r in reqs]
    n = len(reqs)
    return {
        "requests": n,
        "throughput_rps": sum(1 for r in reqs if r.ok and r.done_s < duration_s) / duration_s,
        "p99_ms": percentile(lat, 99, empty=0.0),
        "slo_attainment": sum(1 for x in lat if x <= slo_ms) / n if n else 1.0,
        "error_rate": sum(1 for r in reqs if not r.ok) / n if n else 0.0,
    }


def sim_summary(res: SimResult, duration_s: float, slo_ms: float) -> dict[str, float]:
    """The same numbers from a simulation run with ``SimSettings(record_latency=True)``."""
    f = res.functions[NAME]
    steps = round(duration_s / res.step_s)
    return {
        "requests": f.arrived,
        "throughput_rps": sum(f.served_by_step[:steps]) / duration_s,
        "p99_ms": f.latency_quantile_ms(0.99) if f.served >= f.arrived - 1e-6 else math.inf,
        "slo_attainment": f.slo_attainment,
        "error_rate": 0.0,
    }


def compare(real: Mapping[str, float], sim: Mapping[str, float]) -> dict[str, float]:
    """How far apart: sim / real for throughput and p99, sim - real for SLO attainment (points)."""

    def ratio(a: float, b: float) -> float:
        if b == 0:
            return 1.0 if a == 0 else math.inf
        if math.isinf(a) and math.isinf(b):
            return 1.0
        return a / b

    return {
        "throughput_ratio": ratio(sim["throughput_rps"], real["throughput_rps"]),
        "p99_ratio": ratio(sim["p99_ms"], real["p99_ms"]),
        "slo_attainment_diff": sim["slo_attainment"] - real["slo_attainment"],
    }


def series_error(real: Sequence[float], sim: Sequence[float]) -> dict[str, float]:
    """Two per-step series (replica counts): mean absolute difference, and means of each."""
    n = min(len(real), len(sim))
    if n == 0:
        return {"mean_abs_diff": 0.0, "real_mean": 0.0, "sim_mean": 0.0}
    return {"mean_abs_diff": sum(abs(real[i] - sim[i]) for i in range(n)) / n,
            "real_mean": sum(real[:n]) / n, "sim_mean": sum(sim[:n]) / n}


def ramp_rate(t_s: float) -> float:
    """2 rps for 6 s, ramp to 20 over 14 s, 20 for 16 s, then 2 (the e2e autoscaling test's ramp)."""
    if t_s < 6:
        return 2.0
    if t_s < 20:
        return 2.0 + 18.0 * (t_s - 6) / 14
    if t_s < 36:
        return 20.0
    return 2.0


@dataclass
class FixedPolicy(AutoscaledPolicy):
    """Always the same replicas (a configuration measured at a fixed replica count)."""

    fixed: tuple[ShareConfig, ...] = ()

    def desired(self, now_s, observed_rps, current):  # type: ignore[no-untyped-def, override]
        self.ticks += 1
        return {s.name: self.fixed for s in self.specs}


def sim_settings(cold_start_s: float, interval_s: float, record: bool = True) -> SimSettings:
    """One device (this machine's CPU), the live loop's interval, the measured cold start."""
    return SimSettings(step_s=STEP_S, control_interval_s=interval_s, cold_start_s=cold_start_s, gpus=1,
                       gpus_per_node=1, device_mem_bytes=16 * 2**30, record_latency=record)


# ---------------------------------------------------------------- I/O: the real platform


async def _play(url: str, sends: Sequence[float]) -> list[Request]:
    import aiohttp

    loop = asyncio.get_running_loop()
    out: list[Request] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = loop.time()

        async def one(sent: float) -> None:
            delay = t0 + sent - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.post(url, data=b"{}", headers={"Content-Type": "application/json"},
                                        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
                    await resp.read()
                    ok = 200 <= resp.status < 300
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            out.append(Request(sent, loop.time() - t0 if ok else math.inf, ok))

        await asyncio.gather(*(one(s) for s in sends))
    return out


def play(url: str, sends: Sequence[float]) -> list[Request]:
    return asyncio.run(_play(url, sends))


def _wait(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


class Real:
    """The local platform with the paced function's image registered."""

    def __init__(self, state_dir: Path) -> None:
        import redis

        from fastgshare import keys
        from fastgshare.platform import Platform
        from fastgshare.provider_client import ProviderClient

        self.platform = Platform(state_dir, port=0)
        self.info = self.platform.start()
        self.redis = redis.Redis.from_url(self.info.redis_url)
        self.redis.hset(keys.images(), IMAGE,
                        json.dumps({"handler_dir": str(HANDLER), "template_dir": str(TEMPLATE)}))
        self.api = ProviderClient(self.info.url, self.info.auth)

    def close(self) -> None:
        self.redis.close()
        self.platform.stop()

    def ready(self, name: str) -> int:
        return sum(1 for r in self.api.replicas_of(name) if r.ready)

    def deploy(self, annotations: Mapping[str, str], wait: bool = True) -> float:
        """Deploy (or update) the function; seconds until its replica is ready (the cold start)."""
        body = {"service": NAME, "image": IMAGE, "annotations": dict(annotations)}
        t0 = time.monotonic()
        self.api.deploy(body)
        if wait:
            _wait(lambda: self.ready(NAME) >= 1, 180, "the replica")
        return time.monotonic() - t0

    def scale(self, replicas: int) -> None:
        self.api.scale(NAME, replicas)
        _wait(lambda: self.ready(NAME) == replicas, 60, f"{replicas} replicas")

    def remove(self) -> None:
        self.api.remove(NAME)
        _wait(lambda: self.ready(NAME) == 0, 60, "the function to go")

    def profile(self, quick: bool) -> ProfileTable:
        from fast_profiler.gateway import Gateway
        from fast_profiler.jobs import profile_and_store
        from fast_profiler.planner import GridSpec
        from fast_profiler.runner import RunSettings
        from fast_profiler.search import SearchSettings

        cores = len(os.sched_getaffinity(0))
        spec = GridSpec(sm_grid=(50, 100), quota_grid=(0.5, 1.0), device_cores=cores)
        search = (SearchSettings(min_duration_s=1.0, min_requests=60, max_duration_s=3.0, rel_tol=0.1,
                                 max_steps=5) if quick else SearchSettings(rel_tol=0.05, max_steps=7))
        gw = Gateway(self.info.url, self.info.auth, self.redis)
        res = profile_and_store(gw, NAME, spec=spec, settings=RunSettings(search=search), slo_ms=SLO_MS,
                                on_progress=lambda p: print(f"  profiling {p.measured}/{p.planned} "
                                                            f"{p.current}", flush=True))
        return res.table


def share_annotations(sm: int, quota: float, slo: bool, lo: int = 1, hi: int = 1) -> dict[str, str]:
    ann = {"fastgshare/gpu_sm_partition": str(sm), "fastgshare/gpu_quota_request": f"{quota:g}",
           "fastgshare/gpu_quota_limit": f"{quota:g}", "com.openfaas.scale.min": str(lo),
           "com.openfaas.scale.max": str(hi)}
    if slo:
        ann["fastgshare/slo_ms"] = f"{SLO_MS:g}"
    return ann


def run_configs(real: Real, table: ProfileTable, quick: bool) -> tuple[list[dict[str, Any]], float]:
    """Each measured (sm, quota) at one replica, rates RATE_FRACS x its table throughput."""
    dur = 8.0 if quick else 15.0
    configs = sorted({(p.sm_pct, p.quota_frac) for p in table.grid() if p.measured and p.batch == 1})
    if quick:
        configs = [c for c in configs if c[0] == min(s for s, _ in configs)]
    rows, colds = [], []
    seed = 1
    for sm, quota in configs:
        colds.append(real.deploy(share_annotations(sm, quota, slo=False)))
        est = table.estimate(sm, quota, 1)
        play(f"{real.info.url}/function/{NAME}", [0.1 * i for i in range(10)])  # warm-up
        time.sleep(1.0)  # an idle second: the arbiter's window as a fresh replica sees it
        for frac in RATE_FRACS:
            rate = frac * est.throughput_rps
            seed += 1
            sends = poisson_schedule(lambda t, r=rate: r, dur, seed)
            reqs = play(f"{real.info.url}/function/{NAME}", sends)
            r_sum = real_summary(reqs, dur, SLO_MS)
            s_sum = sim_fixed(table, sm, quota, rate, sends, dur)
            row = {"sm_pct": sm, "quota": quota, "rate_frac": frac, "rate_rps": rate, "seed": seed,
                   "duration_s": dur,
                   "table_throughput_rps": est.throughput_rps, "table_p99_ms": est.latency_p99_ms,
                   "real": r_sum, "sim": s_sum, "gap": compare(r_sum, s_sum)}
            rows.append(row)
            print(_row_text(f"sm{sm} q{quota:g} x{frac:g}", row), flush=True)
            time.sleep(2.0)  # drain between rates
        real.remove()
    return rows, (sum(colds) / len(colds) if colds else 5.0)


RAMP = {"interval_s": 1.0, "scale_down_delay_s": 5.0, "horizon_s": 8.0, "seed": 7}


def sim_fixed(table: ProfileTable, sm: int, quota: float, rate: float, sends: Sequence[float],
              dur: float) -> dict[str, float]:
    spec = SimFunction(NAME, NAME, table, SLO_MS, 1, 1)
    pol = FixedPolicy("fixed", [spec], AutoscaleSettings(), fixed=(ShareConfig(sm, quota, quota, 1),))
    sim = simulate([spec], trace_from_sends("fixed", sends, dur, lambda t: rate, STEP_S, 30), pol,
                   sim_settings(0.0, 1.0))
    return sim_summary(sim, dur, SLO_MS)


def ramp_row(table: ProfileTable, sends: Sequence[float], dur: float, cold_start_s: float,
             r_sum: dict[str, float], real_series: list[int]) -> dict[str, Any]:
    spec = SimFunction(NAME, NAME, table, SLO_MS, 1, 4)
    pol = this_policy([spec], AutoscaleSettings(scale_down_delay_s=RAMP["scale_down_delay_s"],
                                                horizon_s=RAMP["horizon_s"]))
    sim = simulate([spec], trace_from_sends("ramp", sends, dur, ramp_rate, STEP_S, 30), pol,
                   sim_settings(cold_start_s, RAMP["interval_s"]))
    s_sum = sim_summary(sim, dur, SLO_MS)
    per_s = round(1 / STEP_S)
    sim_series = [max(sim.replicas[i * per_s:(i + 1) * per_s], default=0) for i in range(int(dur))]
    return {"duration_s": dur, "cold_start_s": cold_start_s, "real": r_sum, "sim": s_sum,
            "gap": compare(r_sum, s_sum), "replicas_real": real_series, "replicas_sim": sim_series,
            "replicas_gap": series_error(real_series, sim_series),
            "replicas_peak": {"real": max(real_series, default=0), "sim": max(sim_series, default=0)}}


def resimulate(saved: dict[str, Any]) -> dict[str, Any]:
    """The simulator's side again, for a saved run's table and schedules (seeded: reproducible), e.g.
    after a change to the simulator; the real side is kept as measured."""
    table = ProfileTable.from_json(json.dumps(saved["table"]))
    rows = []
    for i, row in enumerate(saved["configs"]):
        seed, rate = row.get("seed", 2 + i), row["rate_rps"]
        dur = row.get("duration_s", 8.0 if saved["quick"] else 15.0)
        sends = poisson_schedule(lambda t, r=rate: r, dur, seed)
        s_sum = sim_fixed(table, row["sm_pct"], row["quota"], rate, sends, dur)
        rows.append({**row, "seed": seed, "duration_s": dur, "sim": s_sum,
                     "gap": compare(row["real"], s_sum)})
        print(_row_text(f"sm{row['sm_pct']} q{row['quota']:g} x{row['rate_frac']:g}", rows[-1]), flush=True)
    ramp = saved.get("ramp")
    if ramp:
        sends = poisson_schedule(ramp_rate, ramp["duration_s"], RAMP["seed"])
        ramp = ramp_row(table, sends, ramp["duration_s"], ramp["cold_start_s"], ramp["real"],
                        ramp["replicas_real"])
        print(_row_text("ramp (autoscaled)", ramp), flush=True)
    return {**saved, "configs": rows, "ramp": ramp, "summary": _overall(rows, ramp), "resimulated": True}


def run_ramp(real: Real, table: ProfileTable, cold_start_s: float, quick: bool) -> dict[str, Any]:
    """The autoscaled ramp: live scheduler on the platform, ``this_policy`` in the simulator."""
    dur = 44.0 if quick else 62.0
    sm = min(p.sm_pct for p in table.grid())
    interval_s, delay_s, horizon_s = RAMP["interval_s"], RAMP["scale_down_delay_s"], RAMP["horizon_s"]
    real.deploy(share_annotations(sm, 1.0, slo=True, lo=1, hi=4))
    env = dict(os.environ, FASTGSHARE_USER=real.info.user, FASTGSHARE_PASSWORD=real.info.password)
    log = Path(real.info.state_dir) / "calibrate-scheduler.log"
    counts: list[tuple[float, int]] = []
    with open(log, "wb") as out:
        sched = subprocess.Popen(
            [sys.executable, "-m", "fast_scheduler", "--redis-url", real.info.redis_url, "--gateway",
             real.info.url, "--interval-s", str(interval_s), "--scale-down-delay-s", str(delay_s),
             "--horizon-s", str(horizon_s)], env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
    stop = threading.Event()
    t0 = time.monotonic()

    def watch() -> None:
        while not stop.is_set():
            try:
                counts.append((time.monotonic() - t0, real.ready(NAME)))
            except Exception:  # noqa: BLE001 - a missed sample is only a gap in the series
                pass
            stop.wait(0.5)

    try:
        time.sleep(2 * interval_s)  # the loop's first tick only records the counter
        sends = poisson_schedule(ramp_rate, dur, RAMP["seed"])
        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        reqs = play(f"{real.info.url}/function/{NAME}", sends)
        stop.set()
        watcher.join()
    finally:
        sched.terminate()
        sched.wait(10)
    r_sum = real_summary(reqs, dur, SLO_MS)
    real_series = [0] * int(dur)
    for ts, n in counts:
        if 0 <= ts < dur:
            real_series[int(ts)] = max(real_series[int(ts)], n)
    row = ramp_row(table, sends, dur, cold_start_s, r_sum, real_series)
    print(_row_text("ramp (autoscaled)", row), flush=True)
    real.remove()
    return row


def _fmt(x: float, spec: str) -> str:
    return "inf" if math.isinf(x) else format(x, spec)


def _row_text(label: str, row: Mapping[str, Any]) -> str:
    r, s, g = row["real"], row["sim"], row["gap"]
    return (f"{label:<22} {_fmt(r['throughput_rps'], '7.2f')} {_fmt(s['throughput_rps'], '7.2f')} "
            f"{_fmt(g['throughput_ratio'], '6.2f')}  {_fmt(r['p99_ms'], '8.0f')} {_fmt(s['p99_ms'], '8.0f')} "
            f"{_fmt(g['p99_ratio'], '6.2f')}  {100 * r['slo_attainment']:6.1f} "
            f"{100 * s['slo_attainment']:6.1f}")


HEADER = (f"{'run':<22} {'thr real':>7} {'sim':>7} {'s/r':>6}  {'p99 real':>8} {'sim':>8} {'s/r':>6}  "
          f"{'SLO% r':>6} {'sim':>6}")


def plot(result: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    rows = result["configs"]
    labels = [f"sm{r['sm_pct']} q{r['quota']:g}\nx{r['rate_frac']:g}" for r in rows]
    xs = range(len(rows))
    w = 0.38
    axes[0].bar([x - w / 2 for x in xs], [r["real"]["throughput_rps"] for r in rows], w, label="real")
    axes[0].bar([x + w / 2 for x in xs], [r["sim"]["throughput_rps"] for r in rows], w, label="simulator")
    axes[0].set_xticks(list(xs), labels, fontsize=7)
    axes[0].set_ylabel("throughput (rps)")
    axes[0].legend()
    axes[0].set_title("fixed configurations: throughput")
    cap = 5 * SLO_MS

    def clip(v: float) -> float:
        return min(v, cap)

    axes[1].bar([x - w / 2 for x in xs], [clip(r["real"]["p99_ms"]) for r in rows], w, label="real")
    axes[1].bar([x + w / 2 for x in xs], [clip(r["sim"]["p99_ms"]) for r in rows], w, label="simulator")
    axes[1].axhline(SLO_MS, color="k", ls="--", lw=0.8, label="SLO")
    axes[1].set_xticks(list(xs), labels, fontsize=7)
    axes[1].set_ylabel(f"p99 latency (ms, clipped at {cap:g})")
    axes[1].set_yscale("log")
    axes[1].legend()
    axes[1].set_title("fixed configurations: p99")
    ramp = result.get("ramp")
    if ramp:
        t = range(len(ramp["replicas_real"]))
        axes[2].step(t, ramp["replicas_real"], where="post", label="replicas (real)")
        axes[2].step(range(len(ramp["replicas_sim"])), ramp["replicas_sim"], where="post",
                     label="replicas (simulator)")
        ax2 = axes[2].twinx()
        ax2.plot(t, [ramp_rate(x) for x in t], color="grey", lw=0.8, label="rate")
        ax2.set_ylabel("offered rate (rps)")
        axes[2].set_xlabel("time (s)")
        axes[2].set_ylabel("ready replicas")
        axes[2].legend(loc="upper left")
        axes[2].set_title("autoscaled ramp")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser("calibrate", __doc__.splitlines()[0])
    p.add_argument("--no-ramp", action="store_true", help="skip the autoscaled ramp")
    p.add_argument("--resim", type=Path, help="re-run only the simulator side of a saved result JSON")
    args = p.parse_args(argv)
    t_start = time.monotonic()
    if args.resim:
        print(HEADER)
        result = resimulate(json.loads(args.resim.read_text()))
        print("\nsummary:", json.dumps(result["summary"], indent=1))
        write_json(args.json, result)
        png = RESULTS / "calibrate.png" if args.json.parent == RESULTS else args.json.with_suffix(".png")
        plot(result, png)
        print(f"wrote {png}")
        return
    with tempfile.TemporaryDirectory(prefix="fgs-calibrate-") as d:
        real = Real(Path(d))
        try:
            # min 0: no replica of its own, the profiler's shadow replica gets the device to itself
            real.deploy(share_annotations(50, 1.0, slo=True, lo=0), wait=False)
            print(f"profiling {NAME} on this machine (SLO {SLO_MS:g} ms) ...", flush=True)
            t0 = time.monotonic()
            table = real.profile(args.quick)
            profile_s = time.monotonic() - t0
            real.remove()
            print(f"profiled in {profile_s:.0f} s:")
            for pt in table.grid():
                print(f"  sm {pt.sm_pct:3d} quota {pt.quota_frac:4.2f}: {pt.throughput_rps:6.2f} rps, "
                      f"p99 {pt.latency_p99_ms:6.1f} ms{'' if pt.measured else ' (inferred)'}")
            print("\n" + HEADER, flush=True)
            rows, cold_s = run_configs(real, table, args.quick)
            ramp = None if args.no_ramp else run_ramp(real, table, cold_s, args.quick)
        finally:
            real.close()
    result: dict[str, Any] = {
        "function": NAME, "slo_ms": SLO_MS, "quick": args.quick, "profile_seconds": profile_s,
        "table": json.loads(table.to_json()), "configs": rows, "ramp": ramp,
        "summary": _overall(rows, ramp), "seconds": time.monotonic() - t_start,
    }
    print("\nsummary:", json.dumps(result["summary"], indent=1))
    write_json(args.json, result)
    png = RESULTS / "calibrate.png" if args.json.parent == RESULTS else args.json.with_suffix(".png")
    plot(result, png)
    print(f"wrote {png}")


def _overall(rows: Sequence[Mapping[str, Any]], ramp: Mapping[str, Any] | None) -> dict[str, Any]:
    """Median and worst gaps over the runs that were not overloaded (real p99 finite and under 10x SLO)."""
    def finite(x: float) -> bool:
        return not math.isinf(x) and not math.isnan(x)

    ok = [r for r in rows if finite(r["gap"]["p99_ratio"]) and r["real"]["p99_ms"] < 10 * SLO_MS]
    thr = sorted(abs(r["gap"]["throughput_ratio"] - 1) for r in rows if finite(r["gap"]["throughput_ratio"]))
    p99 = sorted(r["gap"]["p99_ratio"] for r in ok)
    out: dict[str, Any] = {
        "throughput_abs_rel_err_median": thr[len(thr) // 2] if thr else None,
        "throughput_abs_rel_err_max": thr[-1] if thr else None,
        "p99_ratio_median": p99[len(p99) // 2] if p99 else None,
        "p99_ratio_min": p99[0] if p99 else None,
        "p99_ratio_max": p99[-1] if p99 else None,
    }
    if ramp:
        out["ramp"] = {**ramp["gap"], **ramp["replicas_gap"], "peak": ramp["replicas_peak"]}
    return out


if __name__ == "__main__":
    main()
