"""``python -m bench.mlperf`` / ``fastgshare bench``: the MLPerf-based comparison of sharing modes
on the real platform, then the autoscaling scenario, in one command.

    python -m bench.mlperf [--quick] [--json PATH] [--functions a,b] [--gateway URL --user U
                           --password P --redis-url R] [--skip-modes] [--skip-autoscale]

Steps (progress printed as it goes; details in docs/benchmark.md):
1. ``exclusive``: each function alone with the whole device: single-stream latency (which sets the
   CPU bound), then the highest Poisson rate with p99 under the bound (MLPerf LoadGen, Server);
2. ``time_sharing``, ``spatio_temporal``, ``unmanaged``: all functions at once, each offered an
   equal share of a normalised load L (rate = L x its exclusive rate / n); the highest L at which
   every function keeps p99 under its bound is the mode's normalised throughput;
3. autoscaling: a ramp and an Azure-like trace against one function with the scheduler on.
Every figure is also given as a ratio to ``time_sharing`` measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, write_json
from bench.mlperf import aggregate as agg
from bench.mlperf import lgen
from bench.mlperf import modes as md
from bench.mlperf import platform_io as pio
from bench.mlperf import samples as smp
from fastgshare.stats import percentile

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[mlperf {time.monotonic() - T0:5.0f}s] {msg}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.mlperf", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a few minutes: MobileNet + MiniLM stand in for ResNet-50 + BERT, short steps")
    p.add_argument("--json", type=Path, default=RESULTS / "mlperf.json",
                   help="where to write the JSON result (default bench/results/mlperf.json)")
    p.add_argument("--functions", default=None, help="folders under functions/ (default resnet50,bert)")
    p.add_argument("--device", default=None, help="cpu or gpu (default: gpu when torch sees CUDA)")
    p.add_argument("--step-s", type=float, default=None, help="seconds per LoadGen run (default 6 quick, 20)")
    p.add_argument("--max-steps", type=int, default=None, help="LoadGen runs per search (default 4 quick, 7)")
    p.add_argument("--slo-factor", type=float, default=md.DEFAULT_CPU_SLO_FACTOR,
                   help="CPU bound = this x single-stream p50 (default %(default)s)")
    p.add_argument("--window-s", type=float, default=None, help="arbiter window (default 2 quick, 5)")
    p.add_argument("--trace-s", type=float, default=None,
                   help="seconds per autoscaling trace (45 quick, 180)")
    p.add_argument("--profile-table", type=Path, default=None,
                   help="profiler table for the autoscaled function (default "
                   "bench/results/profiles/<fn>.<device type>.json if present)")
    p.add_argument("--autoscale-function", default=None,
                   help="function of the autoscaling scenario (default: the first; one with a profiler "
                   "table in bench/results/profiles/ lets the scheduler act)")
    p.add_argument("--skip-modes", action="store_true", help="only the autoscaling scenario")
    p.add_argument("--skip-autoscale", action="store_true", help="only the sharing modes")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="embedded platform state (default: temporary)")
    p.add_argument("--gateway", default=None, help="a running platform's URL instead of the embedded one")
    p.add_argument("--user", default=os.environ.get("FASTGSHARE_USER", "admin"))
    p.add_argument("--password", default=os.environ.get("FASTGSHARE_PASSWORD"))
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                   help="with --gateway: its Redis (image registration and device counters)")
    return p


@contextmanager
def platform(args: argparse.Namespace, *, scheduler: bool) -> Iterator[pio.Target]:
    if args.gateway:
        yield pio.Target(args.gateway.rstrip("/"), (args.user, args.password) if args.password else None,
                         args.redis_url)
        return
    with tempfile.TemporaryDirectory(prefix="mlperf-") as d:
        state = args.state_dir / ("sched" if scheduler else "modes") if args.state_dir else Path(d)
        with pio.embedded(state, scheduler=scheduler) as t:
            yield t


def _cdf(latencies: tuple[float, ...] | list[float], points: int = 101) -> list[float]:
    return [round(percentile(latencies, i * 100 / (points - 1), empty=0.0), 2) for i in range(points)]


class ModeRunner:
    def __init__(self, t: pio.Target, args: argparse.Namespace, fns: list[str], gpu: bool,
                 ncores: int) -> None:
        self.t, self.args, self.fns, self.gpu, self.ncores = t, args, fns, gpu, ncores
        self.probe = pio.UsageProbe(t)
        self.bounds: dict[str, float] = {}
        self.bound_source: dict[str, str] = {}
        self.single: dict[str, dict[str, float]] = {}
        self.solo_rps: dict[str, float] = {}
        self.cdfs: dict[str, dict[str, list[float]]] = {}
        self.loadgen: dict[str, Any] = {}
        self.samples = {f: smp.request_for(f) for f in fns}
        """What each query sends: preprocessed binary tensors (bench.mlperf.samples)."""
        self.step_s: dict[str, list[float]] = {}

    def _step(self, mode: str, group: list[md.Deployment], rates: dict[str, float]):
        services = [d.service for d in group]
        urls = {d.function: self.t.function_url(d.service) for d in group}
        before = self.probe.sample(services)
        duration_s = agg.step_duration_s(rates, self.args.step_s)
        self.step_s.setdefault(mode, []).append(duration_s)
        run = lgen.run_server(urls, rates, self.bounds, duration_s,
                              samples={urls_fn: self.samples[urls_fn] for urls_fn in urls})
        after = self.probe.sample(services)
        util, busy, sm_time = pio.utilisation(before, after, self.ncores)
        time.sleep(0.5)
        return run, (busy if self.gpu else util), sm_time

    def _search(self, mode: str, group: list[md.Deployment], settings: agg.LoadSearchSettings, rates_of):
        history: list[tuple[float, bool]] = []
        notes: list[tuple[float, bool, str]] = []
        best = None
        while (x := agg.next_load(history, settings)) is not None:
            rates = rates_of(x)
            run, util, sm_time = self._step(mode, group, rates)
            ok, why = agg.step_passes(run.runs, self.bounds, settings)
            history.append((x, ok))
            notes.append((x, ok, why))
            say(f"  {mode}: load {x:.3f} (" + ", ".join(f"{f} {r:.2f} rps" for f, r in rates.items())
                + f") -> {'PASS' if ok else 'fail'}: "
                + ", ".join(f"{r.function} p50 {percentile(r.latencies_ms, 50, empty=0.0):.0f} "
                            f"p99 {r.p99_ms:.0f}/{self.bounds[r.function]:.0f} ms" for r in run.runs)
                + f"; LoadGen {run.loadgen.get('result', '?')}" + (f"; {why}" if not ok else ""))
            if ok and (best is None or x > best[0]):
                best = (x, run, util, sm_time)
        return best, notes

    def exclusive(self) -> dict[str, Any]:
        runs, utils, sms, notes = [], [], [], []
        for group in md.phases(md.Mode.EXCLUSIVE, self.fns, window_s=self.args.window_s):
            d = group[0]
            say(f"exclusive: deploying {d.service} (whole device)")
            pio.deploy_all(self.t, group)
            try:
                ss = pio.single_stream(self.t, d.service, 12 if self.args.quick else 40,
                                       sample=self.samples[d.function])
                p50 = percentile(ss, 50, empty=0.0)
                self.single[d.function] = {"p50_ms": round(p50, 2),
                                           "p90_ms": round(percentile(ss, 90, empty=0.0), 2)}
                self.bounds[d.function], self.bound_source[d.function] = md.bound_ms(
                    d.function, gpu=self.gpu, single_stream_p50_ms=p50, cpu_slo_factor=self.args.slo_factor)
                if p50 >= self.bounds[d.function]:
                    say(f"exclusive: WARNING: {d.function}'s single-stream p50 through the platform is "
                        "already over its bound: no rate can pass")
                cap = 1000.0 / p50
                say(f"exclusive: {d.function} single-stream p50 {p50:.1f} ms -> bound "
                    f"{self.bounds[d.function]:.1f} ms ({self.bound_source[d.function]})")
                # Batching in every mode: the function declares its bound as its SLO (the
                # single-stream figure above is batch 1, as MLPerf's single-stream scenario).
                pio.remove_all(self.t, group)  # a fresh replica, not an old one still answering
                group = md.phases(md.Mode.EXCLUSIVE, [d.function], window_s=self.args.window_s,
                                  slo_ms=self.bounds)[0]
                pio.deploy_all(self.t, group)
                pio.single_stream(self.t, d.service, 1, warm=2, sample=self.samples[d.function])
                settings = agg.LoadSearchSettings(start=0.5 * cap, max_steps=self.args.max_steps + 2,
                                              min_load=0.02 * cap, max_load=4 * cap)
                best, note = self._search("exclusive", group, settings, lambda x, f=d.function: {f: x})
                if best is None:
                    raise RuntimeError(f"{d.function}: no rate met its bound alone; nothing to normalise by")
                self.solo_rps[d.function] = best[0]
                runs.extend(best[1].runs)
                self.loadgen.setdefault("exclusive", {})[d.function] = best[1].loadgen
                utils.append(best[2])
                sms.append(best[3])
                notes.extend(note)
            finally:
                pio.remove_all(self.t, group)
        n = len(self.fns)
        util = sum(utils) / n if all(u is not None for u in utils) else None
        sm = sum(sms) / n if all(s is not None for s in sms) else None
        res = agg.ModeResult("exclusive", 1.0, tuple(runs), util, sm, tuple(notes))
        self.cdfs["exclusive"] = {r.function: _cdf(r.latencies_ms) for r in runs}
        return agg.summarise_mode(res, self.bounds, time_share=1.0 / n)

    def drift_check(self) -> dict[str, Any]:
        """Single-stream p50 again, after every mode: the machine's speed drifted by this much while
        the modes ran one after another (other tenants on a shared machine), so ratios between modes
        carry at least this uncertainty."""
        out: dict[str, Any] = {}
        for group in md.phases(md.Mode.EXCLUSIVE, self.fns, window_s=self.args.window_s):
            d = group[0]
            pio.deploy_all(self.t, group)
            try:
                ss = pio.single_stream(self.t, d.service, 12 if self.args.quick else 20,
                                       sample=self.samples[d.function])
            finally:
                pio.remove_all(self.t, group)
            p50 = percentile(ss, 50, empty=0.0)
            ratio = p50 / self.single[d.function]["p50_ms"]
            out[d.function] = {"p50_ms_start": self.single[d.function]["p50_ms"], "p50_ms_end": round(p50, 2),
                               "end_over_start": round(ratio, 3)}
            start = self.single[d.function]["p50_ms"]
            say(f"drift check: {d.function} single-stream p50 {start:.1f} ms at the start, "
                f"{p50:.1f} ms at the end (x{ratio:.2f})"
                + ("  WARNING: the machine's speed changed; ratios between modes are unreliable"
                   if not 0.8 <= ratio <= 1.25 else ""))
        return out

    def shared(self, mode: md.Mode) -> dict[str, Any]:
        group = md.phases(mode, self.fns, window_s=self.args.window_s, slo_ms=self.bounds)[0]
        say(f"{mode.value}: deploying " + ", ".join(
            f"{d.service} sm={d.body['annotations']['fastgshare/gpu_sm_partition']}" for d in group))
        pio.deploy_all(self.t, group)
        try:
            placed = {f["name"]: [{k: r.get(k) for k in ("device", "cores", "smPct")}
                                  for r in f.get("replicaStatus", [])]
                      for f in pio.replicas(self.t) if f["name"] in {d.service for d in group}}
            say(f"{mode.value}: replicas {placed}")
            if self.gpu and not all(str(r["device"]).startswith("gpu:") for v in placed.values() for r in v):
                say(f"{mode.value}: WARNING: replicas are not on a GPU device record, so their SM share is "
                    "not applied through MPS (the workers still use CUDA)")
            for d in group:  # warm: first requests allocate
                pio.single_stream(self.t, d.service, 1, warm=2, sample=self.samples[d.function])
            settings = agg.LoadSearchSettings(start=0.8, grow=1.3, max_steps=self.args.max_steps,
                                          min_load=0.05, max_load=4.0 * len(self.fns))
            best, notes = self._search(mode.value, group, settings,
                                       lambda x: md.mix_rates(x, self.solo_rps))
        finally:
            pio.remove_all(self.t, group)
        if best is None:
            runs: tuple[agg.FunctionRun, ...] = ()
            res = agg.ModeResult(mode.value, 0.0, runs, None, None, tuple(notes))
        else:
            res = agg.ModeResult(mode.value, best[0], best[1].runs, best[2], best[3], tuple(notes))
            self.loadgen[mode.value] = best[1].loadgen
        self.cdfs[mode.value] = {r.function: _cdf(r.latencies_ms) for r in res.runs}
        out = agg.summarise_mode(res, self.bounds)
        out["placement"] = placed
        return out


def run_modes(args: argparse.Namespace, fns: list[str], gpu: bool, ncores: int) -> dict[str, Any]:
    with platform(args, scheduler=False) as t:
        if t.redis_url:
            pio.register_images(t.redis_url, fns)
        r = ModeRunner(t, args, fns, gpu, ncores)
        modes: dict[str, Any] = {}
        try:
            load_before = os.getloadavg()[0]
            modes["exclusive"] = r.exclusive()
            modes["exclusive"]["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            for mode in md.MODES[1:]:
                load_before = os.getloadavg()[0]
                modes[mode.value] = r.shared(mode)
                modes[mode.value]["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            drift = r.drift_check()
        except Exception as e:  # keep what was measured: a GPU run that cannot meet a bound says so
            say(f"modes stopped: {e}")
            return {"error": str(e), "modes_partial": modes, "bounds_ms": r.bounds,
                    "bound_source": r.bound_source, "single_stream": r.single, "exclusive_rps": r.solo_rps}
        finally:
            r.probe.close()
    return {"modes": modes, "bounds_ms": r.bounds, "bound_source": r.bound_source,
            "requests": {f: {"bytes": len(b), "headers": h} for f, (b, h) in r.samples.items()},
            "batching": "every mode: each function declares its bound as fastgshare/slo_ms",
            "step_s_by_mode": r.step_s,
            "single_stream": r.single, "exclusive_rps": r.solo_rps, "latency_cdf_ms": r.cdfs,
            "loadgen": r.loadgen, "drift": drift,
            "ratios_vs_time_sharing": agg.ratios_vs(modes, md.BASELINE.value)}


def run_autoscale(args: argparse.Namespace, fn: str, capacity_rps: float | None, slo_ms: float | None,
                  ncores: int, gpu: bool) -> dict[str, Any]:
    have_loop = importlib.util.find_spec("fast_scheduler.__main__") is not None
    duration = args.trace_s or (45.0 if args.quick else 180.0)
    out: dict[str, Any] = {"function": fn, "scheduler_module_present": have_loop, "traces": {}}
    with platform(args, scheduler=True) as t:
        if t.redis_url:
            pio.register_images(t.redis_url, [fn])
        if capacity_rps is None or slo_ms is None:  # not among the modes' functions: measure it here
            say(f"autoscale: measuring {fn} alone first (single-stream latency and exclusive rate)")
            r = ModeRunner(t, args, [fn], gpu, ncores)
            out["exclusive"] = r.exclusive()
            r.probe.close()
            capacity_rps, slo_ms = r.solo_rps[fn], r.bounds[fn]
            out["bound_source"] = r.bound_source[fn]
        out.update({"slo_ms": slo_ms, "capacity_rps": round(capacity_rps, 3)})
        service = f"{fn}-as"
        body = {"service": service, "image": md.image_of(fn),
                "annotations": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "0.5",
                                "fastgshare/gpu_quota_limit": "1", "fastgshare/slo_ms": f"{slo_ms:g}",
                                "fastgshare/model": f"{fn}-bench"},
                "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": str(max(2, ncores * 2))}}
        if args.window_s:
            body["envVars"] = {"FASTGSHARE_ARBITER_WINDOW_S": f"{args.window_s:g}"}
        table = args.profile_table or next(iter(sorted(RESULTS.glob(f"profiles/{fn}.*.json"))), None)
        seeded = pio.seed_profile(t, service, table) if table and table.exists() else None
        out["profile_table"] = {"path": str(table) if table else None, "seeded_for": seeded}
        say(f"autoscale: profile table {table} -> " + (f"seeded for {seeded}" if seeded else
            "NOT seeded (none for this device type): the scheduler leaves a function without a table alone"))
        pio.deploy(t, body)
        pio.wait_ready(t, [service])
        pio.single_stream(t, service, 1, warm=2)
        from bench.mlperf import scenario as sc

        traces = {"ramp": sc.ramp_trace(0.9 * capacity_rps, duration),
                  "azure": sc.azure_trace(0.45 * capacity_rps, duration, seed=1, bin_s=duration / 12)}
        for name, rates in traces.items():
            say(f"autoscale {name}: {duration:.0f} s, mean {sum(rates) / len(rates):.2f} rps, "
                f"peak {max(rates):.2f} rps, SLO {slo_ms:.0f} ms")
            res = sc.run_trace(t, service, name, rates, slo_ms, ncores, seed=3, progress=say)
            out["traces"][name] = res.summary()
            s = out["traces"][name]
            say(f"autoscale {name}: SLO attainment {s['slo_attainment']:.3f}, replicas max "
                f"{s['replicas_max']}, mean share {s['device_share_mean']}")
        out["scheduler_decision"] = pio.scheduler_decision(t, service)
        proc = getattr(t.platform, "_procs", {}).get("scheduler") if t.platform else None
        if proc is not None:
            rc = proc.poll()
            out["scheduler_running"] = rc is None
            if rc is not None:
                log = (t.log_dir / "scheduler.log") if t.log_dir else None
                out["scheduler_exit"] = {"rc": rc, "log_tail": log.read_text()[-600:]
                                         if log and log.exists() else ""}
        pio.remove(t, service)
    return out


def print_table(result: dict[str, Any]) -> None:
    modes, ratios = result["modes"], result["ratios_vs_time_sharing"]
    print(f"\n{' + '.join(result['functions'])} on {result['device']} ({result['cores']} cores); "
          f"bounds " + ", ".join(f"{f} {b:.1f} ms" for f, b in result["bounds_ms"].items()))
    print(f"{'mode':16} {'rps':>8} {'norm thr':>8} {'p99/bnd':>8} {'util':>6} {'sm-time':>7} | "
          f"{'x rps':>6} {'x norm':>6} {'x util':>6} {'x sm':>6} {'x p99':>6}")

    def f(v: Any, w: int, p: int = 2) -> str:
        return f"{v:{w}.{p}f}" if isinstance(v, int | float) else f"{'-':>{w}}"
    for name, m in modes.items():
        r = ratios[name]
        print(f"{name:16} {f(m['throughput_rps'], 8)} {f(m['normalised_throughput'], 8, 3)} "
              f"{f(m['p99_over_bound'], 8)} {f(m['device_utilisation'], 6)} {f(m['sm_time'], 7)} | "
              f"{f(r['throughput_rps'], 6)} {f(r['normalised_throughput'], 6)} "
              f"{f(r['device_utilisation'], 6)} "
              f"{f(r['sm_time'], 6)} {f(r['p99_over_bound'], 6)}")
    print("(x = ratio to time_sharing in this run; norm thr = devices' worth of work at the bounds)")
    for fn, d in result.get("drift", {}).items():
        print(f"drift: {fn} single-stream p50 {d['p50_ms_start']:.1f} -> {d['p50_ms_end']:.1f} ms "
              f"(x{d['end_over_start']:.2f}); 1-min load average per mode: "
              + ", ".join(f"{m} {v.get('loadavg_1m')}" for m, v in result["modes"].items()))


def print_autoscale(a: dict[str, Any]) -> None:
    print(f"\nautoscaling {a['function']} (SLO {a['slo_ms']:.0f} ms; scheduler "
          f"{'running' if a.get('scheduler_running') else 'NOT running'})")
    print(f"{'trace':8} {'mean rps':>8} {'peak':>6} {'SLO att':>7} {'p99 ms':>7} {'rep max':>7} "
          f"{'rep mean':>8} {'share':>6} {'util':>6}")
    for name, s in a["traces"].items():
        u = s["device_utilisation_mean"]
        print(f"{name:8} {s['mean_rate_rps']:8.2f} {s['peak_rate_rps']:6.2f} {s['slo_attainment']:7.3f} "
              f"{s['p99_ms']:7.0f} {s['replicas_max']:7d} {s['replicas_mean']:8.2f} "
              f"{s['device_share_mean']:6.2f} {('-' if u is None else f'{u:.2f}'):>6}")


def bench_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fns = (args.functions.split(",") if args.functions else
           ["mobilenet", "minilm"] if args.quick else ["resnet50", "bert"])
    if args.device is None:
        import torch

        args.device = "gpu" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "gpu"
    args.step_s = args.step_s or (6.0 if args.quick else 20.0)
    args.max_steps = args.max_steps or (4 if args.quick else 7)
    args.window_s = args.window_s or (2.0 if args.quick else 5.0)
    ncores = len(os.sched_getaffinity(0))
    say(f"functions {fns} on {args.device} ({ncores} cores), {args.step_s:g} s per LoadGen run, "
        f"<= {args.max_steps} runs per search")
    result: dict[str, Any] = {"functions": fns, "device": args.device, "cores": ncores, "quick": args.quick,
                              "step_s": args.step_s, "window_s": args.window_s, "slo_factor": args.slo_factor,
                              "machine": machine(), "stand_ins": {f: md.STAND_IN_FOR[f] for f in fns
                                                                  if f in md.STAND_IN_FOR}}
    previous = json.loads(args.json.read_text()) if args.skip_modes and args.json.exists() else {}
    if not args.skip_modes:
        result.update(run_modes(args, fns, gpu, ncores))
        if "error" in result:
            write_json(args.json, result)
            return 1
        print_table(result)
    elif "modes" in previous:
        for k in ("modes", "bounds_ms", "bound_source", "single_stream", "exclusive_rps", "latency_cdf_ms",
                  "loadgen", "ratios_vs_time_sharing"):
            result[k] = previous[k]
    if not args.skip_autoscale:
        fn = args.autoscale_function or fns[0]
        cap = result.get("exclusive_rps", {}).get(fn)
        slo = result.get("bounds_ms", {}).get(fn)
        result["autoscale"] = run_autoscale(args, fn, cap, slo, ncores, gpu)
        print_autoscale(result["autoscale"])
    result["runtime_s"] = round(time.monotonic() - T0, 1)
    write_json(args.json, result)
    from bench.mlperf.plots import plot_all

    for p in plot_all(result, args.json):
        print(f"wrote {p}")
    return 0
