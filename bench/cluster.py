"""Cluster simulation: every policy and the LP lower bound on the same traces.

    python -m bench.cluster [--quick] [--json PATH] [--seed N]

Profile tables are SYNTHETIC (``fast_profiler.table.synthetic_table``: the paper's curve shapes on a
V100) until the profiler produces real ones; read the numbers as a comparison of policies under one
model, not as a prediction of a real cluster. ``synthetic_table`` gives a device's service rate and
light-load latencies; ``as_profiled`` turns them into what the profiler records (the rate at the
latency model's profiled utilisation and the latencies there), so the scheduler and the simulator
read them as they read real tables.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.cluster_refs import Foresight, GapProbe
from bench.cluster_seeds import load_tables, measured_start_s, print_seeds, seed_summary, worst_seed
from bench.common import RESULTS, parser, write_json
from fast_profiler.table import ProfilePoint, ProfileTable, synthetic_table
from fast_scheduler.autoscale import (
    AutoscaleContext,
    AutoscaleSettings,
    AutoscaleState,
    decide_replicas,
    fast_scale_up,
    split_standby,
    with_standby,
)
from fast_scheduler.choices import ChoiceSet, candidate_points, choice_set
from fast_scheduler.evaluation.baselines import all_policies, lower_bound_choices, mps_equal
from fast_scheduler.evaluation.lower_bound import GpuLowerBound
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, simulate
from fast_scheduler.evaluation.traces import (
    azure_like_trace,
    bursty_trace,
    load_orcbench_clusters,
    orcbench_models_dir,
    poisson_trace,
)
from fast_scheduler.latency import DEFAULT_MODEL, LatencyModel
from fast_scheduler.placement import (
    DEFAULT_FILTERS,
    Device,
    Rejection,
    ReplicaRequest,
    Snapshot,
    beside_holders,
    place,
    standby_room,
)
from fast_scheduler.start_tuning import for_start_time

MIB = 2**20
ORDER = ["exclusive", "time_sharing", "mps_equal", "fastgshare_original", "this"]
PREVIOUS_REPACK_EVERY_TICKS = 6
"""The re-pack cadence of this policy and the reference before it followed the start time: where
they now differ, the reference is run at it too (``foresight_previous_gpus``)."""
BURST_K_SWEEP = (0.0, 1.0)
"""Burst headroom (``AutoscaleSettings.burst_k``) swept for the GPUs-vs-SLO curves of this policy and
MPS-equal (which runs the same autoscaler), besides the policies' own (``for_start_time``: 0.35 at
a 5 s start, 0.1 at 1 s), which is ``policies.this`` / ``mps_equal``."""


def as_profiled(table: ProfileTable, model: LatencyModel = DEFAULT_MODEL) -> ProfileTable:
    """What the profiler would record on a device whose truth is ``table``'s service rate ``mu`` and
    light-load latencies, with M/D/1 queueing: the rate ``rho* mu`` (``model.profiled_utilisation``)
    and p50 / p95 / p99 there (light-load values plus the M/D/1 waiting quantiles, heavy-traffic
    tail P(W > t) = rho exp(-2 mu (1 - rho) t / rho)). The simulator then serves at ``mu`` again."""
    rho = model.profiled_utilisation

    def wait_ms(mu: float, q: float) -> float:
        if mu <= 0 or rho * (1 - q) <= 0 or q <= 1 - rho:
            return 0.0
        return math.log(rho / (1 - q)) * rho / (2 * mu * (1 - rho)) * 1000

    pts = tuple(
        ProfilePoint(p.sm_pct, p.quota_frac, p.batch, rho * p.throughput_rps,
                     p.latency_p50_ms + wait_ms(p.throughput_rps / p.batch, 0.50),
                     p.latency_p95_ms + wait_ms(p.throughput_rps / p.batch, 0.95),
                     p.latency_p99_ms + wait_ms(p.throughput_rps / p.batch, 0.99), p.measured)
        for p in table.points
    )
    return ProfileTable(table.function, table.device_type, pts, table.weight_bytes, table.mem_bytes,
                        synthetic=True)


def tables() -> dict[str, Any]:
    raw = _synthetic_tables()
    return {k: (as_profiled(t), slo) for k, (t, slo) in raw.items()}


def _synthetic_tables() -> dict[str, Any]:
    return {
        # ResNet-50: saturates near 24 % SMs, 74.9 RPS on a V100; model sharing 1525 -> 1427 MiB.
        "resnet50": (
            synthetic_table(
                "resnet50", saturation_sm_pct=24, full_rps=74.9, mem_bytes=1525 * MIB, weight_bytes=98 * MIB
            ),
            69.0,
        ),
        # BERT: saturates near 50 % SMs; MLPerf p99 130 ms.
        "bert": (
            synthetic_table(
                "bert", saturation_sm_pct=50, full_rps=30.0, mem_bytes=1800 * MIB, weight_bytes=420 * MIB
            ),
            130.0,
        ),
        # ViT-huge-like: 4735 -> 2101 MiB with sharing; a loose 300 ms SLO (its service time is ~30 ms).
        "vit_huge": (
            synthetic_table(
                "vit_huge", saturation_sm_pct=60, full_rps=35.0, mem_bytes=4735 * MIB, weight_bytes=2634 * MIB
            ),
            300.0,
        ),
    }


def make_specs(
    n: int, seed: int, lo_rps: float, hi_rps: float, tabs: dict[str, Any] | None = None
) -> tuple[list[SimFunction], dict[str, float]]:
    """``n`` functions over the tables (``tables()``, or ``tabs``: name -> (table, SLO ms)) in turn,
    each with a mean rate drawn log-uniform in [lo, hi] from ``seed``."""
    rng = np.random.default_rng(seed)
    tabs = tabs or tables()
    models = list(tabs)
    specs, rates = [], {}
    for i in range(n):
        m = models[i % len(models)]
        t, slo = tabs[m]
        name = f"{m}-{i:02d}"
        specs.append(SimFunction(name, m, t, slo, min_replicas=1, max_replicas=1000))
        rates[name] = float(math.exp(rng.uniform(math.log(lo_rps), math.log(hi_rps))))
    return specs, rates


def lower_bound_values(
    specs: list[SimFunction], trace: Any, settings: SimSettings, every: int, window_steps: int = 0
) -> tuple[list[int], list[float], list[int]]:
    """Per step, evaluated every ``every`` steps on the trace's true rate: the bound in whole GPUs
    (the LP's ceiling: devices are whole), the LP's fractional value, and (``window_steps`` > 0)
    the LP's ceiling at each function's highest rate over the next ``window_steps`` steps: what a
    policy that sees a step only when it comes must already run to serve the window after it at
    the SLO (a reference for reactive policies, not a bound: a policy may serve some of that window
    late and still hold 99 %)."""
    asettings = AutoscaleSettings(device_mem_bytes=settings.device_mem_bytes)
    choices = {s.name: lower_bound_choices(s, asettings) for s in specs}
    act = {s.name: (s.table.mem_bytes - s.table.weight_bytes) / settings.device_mem_bytes for s in specs}
    lb = GpuLowerBound(choices, act, {s.name: s.min_replicas for s in specs})
    whole: list[int] = []
    frac: list[float] = []
    ahead: list[int] = []
    for k in range(0, trace.steps, every):
        v = lb.gpus({s.name: trace.rates_rps[s.name][k] for s in specs})
        n = min(every, trace.steps - k)
        whole.extend([math.ceil(v - 1e-7)] * n)
        frac.extend([v] * n)
        if window_steps > 0:
            peak = {s.name: max(trace.rates_rps[s.name][k:k + window_steps]) for s in specs}
            ahead.extend([lb.gpus_int(peak)] * n)
    return whole, frac, ahead


def reaction_window_share(trace: Any, window_s: float, jump: float = 1.3) -> float:
    """Share of arrivals within ``window_s`` after a step up of the rate by >= ``jump`` x: what a
    reactive policy serves with the capacity it had before (a tick plus a cold start later it can
    have more). Bounds what any reactive policy reaches on the trace without standing headroom."""
    w = max(1, round(window_s / trace.step_s))
    hit = total = 0.0
    for f, rates in trace.rates_rps.items():
        counts = trace.counts[f]
        until = -1
        for k in range(min(len(rates), len(counts))):
            if k and rates[k] > jump * rates[k - 1]:
                until = k + w
            total += counts[k]
            if k < until:
                hit += counts[k]
    return hit / total if total else 0.0


def decision_time(n_functions: int, n_gpus: int) -> dict[str, float]:
    """One control tick for ``n_functions`` on ``n_gpus``: every function decides (with its standby
    replicas), changes are placed (standby ones with the standby rule); then one fast sub-tick
    (every function's rate over 1 s against its capacity, the steps among them re-planned and
    placed)."""
    rng = np.random.default_rng(3)
    specs, rates = make_specs(n_functions, 5, 0.5, 6.0)
    settings = AutoscaleSettings()
    room = settings.standby_frac > 0
    cache: dict[tuple[int, float], ChoiceSet] = {}
    states = {}
    for s in specs:  # choices depend only on (table, SLO): the loop computes them once per table
        key = (id(s.table), s.slo_ms)
        if key not in cache:
            # The configs this policy and the live loop choose from (grid + tiling shares).
            cache[key] = choice_set(s.table, s.slo_ms, settings, candidate_points(s.table, room), "this",
                                    candidate_points(s.table) if room else None)
        states[s.name] = AutoscaleState(choice_set=cache[key])
    current = {}
    for s in specs:
        d, states[s.name] = decide_replicas(
            AutoscaleContext(s.name, 0.0, rates[s.name], s.table, s.slo_ms), states[s.name], settings
        )
        current[s.name] = with_standby(d, states[s.name], s.max_replicas, settings).replicas
    devices = [Device(f"gpu{i:04d}", f"node{i // 8}", 32 * 2**30) for i in range(n_gpus)]
    snap = Snapshot(tuple(devices))
    t0, c0 = time.perf_counter(), time.process_time()
    adds = []
    for s in specs:
        rate = rates[s.name] * float(rng.uniform(0.8, 1.3))
        planned, _sb = split_standby(current[s.name])
        d, states[s.name] = decide_replicas(
            AutoscaleContext(s.name, 5.0, rate, s.table, s.slo_ms, planned), states[s.name], settings
        )
        d = with_standby(d, states[s.name], s.max_replicas, settings)
        if d.replicas != current[s.name]:  # most ticks hold: same objects, compared by identity
            adds += _requests(s, Counter(d.replicas) - Counter(current[s.name]), "1")
        current[s.name] = d.replicas
    t_decide = time.perf_counter() - t0
    snap, placed = _place_all(snap, adds)
    t_total = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # A fast sub-tick: 1 s of Poisson counts per function; a few functions step up 3x.
    t1 = time.perf_counter()
    fast_adds = []
    for s in specs:
        step = 3.0 if rng.random() < 0.01 else 1.0
        obs = float(rng.poisson(rates[s.name] * step))
        planned, sb = split_standby(current[s.name])
        d, st = fast_scale_up(AutoscaleContext(s.name, 6.0, obs, s.table, s.slo_ms, planned, 1,
                                               s.max_replicas - len(sb)), states[s.name], 1.0, settings)
        if d is not None and st is not None:
            states[s.name] = st
            fast_adds += _requests(s, Counter(d.replicas) - Counter(planned), "2")
    snap, fast_placed = _place_all(snap, fast_adds)
    t_fast = time.perf_counter() - t1
    return {
        "functions": n_functions,
        "gpus": n_gpus,
        "decide_s": t_decide,
        "placed": placed,
        "decision_time_s": t_total,
        "decision_cpu_s": cpu,
        "fast_subtick_s": t_fast,
        "fast_placed": fast_placed,
    }


def _requests(s: SimFunction, new: Counter, tag: str) -> list[ReplicaRequest]:
    return [
        ReplicaRequest(f"{s.name}#{tag}.{j}.{i}", s.name, s.model, c.sm_pct, c.quota_request_frac,
                       s.table.mem_bytes, s.table.weight_bytes, c.quota_limit_frac, c.batch)
        for j, (c, n) in enumerate(sorted(new.items(), key=lambda kv: -kv[0].area)) for i in range(n)
    ]


def _mechanism(s: dict[str, Any], lb_mean: float) -> dict[str, Any]:
    """A ``mechanisms`` entry: a run's GPUs and SLO, and its GPUs over the bound."""
    out = {m: s[m] for m in ("gpus_mean", "gpus_peak", "slo_attainment", "slo_attainment_min_function")}
    out["gpus_vs_lower_bound"] = s["gpus_mean"] / lb_mean if lb_mean else math.nan
    return out


def _place_all(snap: Snapshot, reqs: list[ReplicaRequest]) -> tuple[Snapshot, int]:
    """Place planned replicas (largest first), then standby ones beside them (the policies' order)."""
    placed = 0
    sb_filters = (*DEFAULT_FILTERS, beside_holders)
    for r in sorted(reqs, key=lambda r: (r.standby, -r.area)):
        p = place(r, snap, sb_filters, ((standby_room, 1.0),)) if r.standby else place(r, snap)
        if not isinstance(p, Rejection):
            snap = snap.with_device(p.device)
            placed += 1
    return snap, placed


def main(argv: list[str] | None = None) -> None:
    ap = parser("cluster", __doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3",
                    help="workload seeds, comma-separated (default 1,2,3): each seeds the functions' rates "
                         "and its three traces (10 x SEED + 1, 2, 3); the first gets the full report "
                         "(sweeps, mechanisms, gap), every one the policies; the worst seed per trace "
                         "is printed and in the JSON (worst_seed)")
    ap.add_argument("--seed", type=int, default=None,
                    help="one seed only (as before; its default --json is bench/results/cluster_seedN.json "
                         "unless N is 1)")
    ap.add_argument("--tables", type=Path, default=None,
                    help="a folder of profile tables as the GPU script writes them (*.json, e.g. "
                         "bench/results/gpu/profiles): the functions use these instead of the synthetic "
                         "ones, each with the SLO its profile was taken at")
    ap.add_argument("--cold-start-s", type=float, default=SimSettings.cold_start_s,
                    help="start-to-ready of a replica in the simulator (default %(default)s s; feed the "
                         "measured one, bench.replica_start)")
    ap.add_argument("--start-json", type=Path, default=None,
                    help="take the start time from a bench.replica_start result (the slowest model's "
                         "median start-to-ready, its 'routed' phase) instead of --cold-start-s")
    ap.add_argument("--no-seasonal", action="store_true",
                    help="the autoscaled policies without the seasonal forecaster")
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else [int(x) for x in args.seeds.split(",") if x]
    if args.seed not in (None, 1) and args.json == RESULTS / "cluster.json":
        args.json = RESULTS / f"cluster_seed{args.seed}.json"
    if args.quick:
        n_fn, duration_s, lo, hi, gpus, dt_fns = 20, 180.0, 5.0, 60.0, 192, 2000
    else:
        n_fn, duration_s, lo, hi, gpus, dt_fns = 24, 1200.0, 40.0, 300.0, 512, 10000
    start_s = measured_start_s(args.start_json) if args.start_json else args.cold_start_s
    settings = SimSettings(gpus=gpus, cold_start_s=start_s)
    tabs = load_tables(args.tables) if args.tables else None
    result: dict[str, Any] = {
        "synthetic_tables": tabs is None,
        "tables": str(args.tables) if args.tables else "synthetic",
        "cold_start_s": settings.cold_start_s,
        "cold_start_from": str(args.start_json) if args.start_json else "--cold-start-s",
        "seasonal": not args.no_seasonal,
        "seed": seeds[0],
        "seeds": seeds,
        "functions": n_fn,
        "duration_s": duration_s,
        "gpus_available": gpus,
        "traces": {},
        "by_seed": {},
    }
    series: dict[str, dict[str, list[int]]] = {}
    for si, seed in enumerate(seeds):
        print(f"\n===== seed {seed} =====")
        specs, rates = make_specs(n_fn, seed, lo, hi, tabs)
        entries = run_seed(specs, rates, seed, duration_s, settings, series if si == 0 else None,
                           full=si == 0, seasonal=not args.no_seasonal)
        if si == 0:
            result["traces"] = entries
        result["by_seed"][str(seed)] = {t: seed_summary(e) for t, e in entries.items()}
    result["worst_seed"] = worst_seed(result["by_seed"])

    # Top-level keys of issue 5, taken from the Azure-like trace.
    az = result["traces"].get("azure") or result["traces"]["bursty"]
    result["headline_trace"] = az is result["traces"].get("azure") and "azure" or "bursty"
    result["lower_bound_gpus"] = az["lower_bound_gpus"]
    result["lower_bound_gpus_lp"] = az["lower_bound_gpus_lp"]
    result["policies"] = {
        k: {m: az["policies"][k][m] for m in ("gpus_mean", "gpus_peak", "slo_attainment")} for k in ORDER
    }
    print(f"\ndecision time: {dt_fns} functions on {dt_fns // 10} GPUs ...")
    # The machine is shared: the best of 3 runs is the tick's cost, the others say how noisy it was.
    runs = [decision_time(dt_fns, dt_fns // 10) for _ in range(3)]
    dt = min(runs, key=lambda r: r["decision_time_s"])
    result["decision"] = {**dt, "runs_wall_s": [r["decision_time_s"] for r in runs],
                          "runs_cpu_s": [r["decision_cpu_s"] for r in runs]}
    result["decision_time_s"] = dt["decision_time_s"]
    print(f"  {dt['decision_time_s']:.2f} s best of 3 ({dt['decide_s']:.2f} s deciding, {dt['placed']} "
          f"placements; wall {', '.join(f'{r:.2f}' for r in result['decision']['runs_wall_s'])} s, "
          f"CPU {', '.join(f'{r:.2f}' for r in result['decision']['runs_cpu_s'])} s); "
          f"fast sub-tick {dt['fast_subtick_s']:.3f} s ({dt['fast_placed']} placed)")

    print_table(result)
    print_seeds(result)
    plot(series, args.json.with_suffix(".png"), result)
    write_json(args.json, result)


def run_seed(specs: list[SimFunction], rates: dict[str, float], seed: int, duration_s: float,
             settings: SimSettings, series: dict[str, dict[str, list[int]]] | None, full: bool,
             seasonal: bool = True) -> dict[str, Any]:
    """Every policy on the seed's traces; with ``full``, this policy's mechanisms, the ``burst_k``
    sweep and the perfect-foresight references too. Returns the traces' entries."""
    print(
        f"{len(specs)} functions, {duration_s:.0f} s, {settings.gpus} GPUs available; "
        f"mean demand {sum(rates.values()):.0f} rps"
    )
    s10 = 10 * seed
    traces = [poisson_trace(rates, duration_s, seed=s10 + 1), bursty_trace(rates, duration_s, seed=s10 + 2)]
    if orcbench_models_dir() is None:
        print("SKIPPED the Azure-like trace: orcbench is not installed "
              "(pip install --no-deps orcbench==0.1.4)")
    else:
        traces.append(azure_like_trace(rates, duration_s, load_orcbench_clusters(), seed=s10 + 3))
    every = max(1, round(settings.control_interval_s / settings.step_s))
    out: dict[str, Any] = {}
    for tr in traces:
        t0 = time.perf_counter()
        fast_steps = max(1, round((settings.fast_interval_s + settings.cold_start_s) / settings.step_s))
        lbs, lps, ahead = lower_bound_values(specs, tr, settings, every, fast_steps)
        lb_mean = sum(lbs) / len(lbs)
        print(
            f"\n[{tr.name}] lower bound: mean {lb_mean:.1f} (LP {sum(lps) / len(lps):.2f}), "
            f"peak {max(lbs)} GPUs; reactive reference {sum(ahead) / len(ahead):.1f} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        window_s = settings.control_interval_s + settings.cold_start_s
        fast_window_s = settings.fast_interval_s + settings.cold_start_s
        entry: dict[str, Any] = {
            "lower_bound_gpus": lb_mean,
            "lower_bound_gpus_lp": sum(lps) / len(lps),
            "lower_bound_gpus_peak": max(lbs),
            "reactive_reference_gpus": sum(ahead) / len(ahead),
            "reaction_window_s": window_s,
            "reaction_window_share": reaction_window_share(tr, window_s),
            "fast_reaction_window_s": fast_window_s,
            "fast_reaction_window_share": reaction_window_share(tr, fast_window_s),
            "policies": {},
        }
        print(f"  arrivals within {window_s:.0f} s of a rate step up: "
              f"{100 * entry['reaction_window_share']:.1f} % (within {fast_window_s:.0f} s: "
              f"{100 * entry['fast_reaction_window_share']:.1f} %)")
        if series is not None:
            series[tr.name] = {"lower_bound": lbs}
        base = for_start_time(settings.cold_start_s, AutoscaleSettings(
            device_mem_bytes=settings.device_mem_bytes, seasonal_forecast=seasonal))
        for pol in all_policies(specs, base):
            t0 = time.perf_counter()
            probe = GapProbe(pol, specs) if pol.name == "this" else None
            res = simulate(specs, tr, probe or pol, settings)
            if probe is not None:
                entry["gap"] = probe.decomposition(tr, lps, res.gpus)
                print("  this, gap to the bound (time means): " + ", ".join(
                    f"{k} {v:.3f}" for k, v in entry["gap"].items()))
            s = res.summary()
            s["wall_s"] = time.perf_counter() - t0
            s["slo_attainment_per_function"] = {n: f.slo_attainment for n, f in res.functions.items()}
            if hasattr(pol, "dropped_checks"):
                s["maxrects_refusals"] = pol.dropped_checks
            entry["policies"][pol.name] = s
            if series is not None:
                series[tr.name][pol.name] = res.gpus
            print(
                f"  {pol.name:20s} GPUs mean {s['gpus_mean']:7.1f} peak {s['gpus_peak']:4d}  "
                f"SLO {100 * s['slo_attainment']:6.2f} %  util {s['device_utilisation']:.2f}  "
                f"({s['wall_s']:.1f} s)"
            )
        ahead_steps = round((settings.control_interval_s + settings.cold_start_s) / settings.step_s) + 1
        fs = Foresight(specs, tr, ahead_steps, 0.0, settings.device_mem_bytes, settings.cold_start_s)
        s = simulate(specs, tr, fs, replace(settings, fast_interval_s=0.0)).summary()
        entry["foresight_gpus"] = s["gpus_mean"]
        entry["foresight_slo_attainment"] = s["slo_attainment"]
        entry["foresight_repack_every_ticks"] = fs.policy.repack_every_ticks
        print(f"  {'foresight (reference)':26s} GPUs mean {s['gpus_mean']:7.1f} peak {s['gpus_peak']:4d}  "
              f"SLO {100 * s['slo_attainment']:6.2f} %  (re-pack every {fs.policy.repack_every_ticks} ticks)")
        if fs.policy.repack_every_ticks != PREVIOUS_REPACK_EVERY_TICKS:
            # The reference as runs before the cadence followed the start time had it (continuity).
            fs = Foresight(specs, tr, ahead_steps, 0.0, settings.device_mem_bytes, settings.cold_start_s,
                           PREVIOUS_REPACK_EVERY_TICKS)
            s = simulate(specs, tr, fs, replace(settings, fast_interval_s=0.0)).summary()
            entry["foresight_previous_gpus"] = s["gpus_mean"]
            print(f"  {'foresight, re-pack every 6':26s} GPUs mean {s['gpus_mean']:7.1f} "
                  f"peak {s['gpus_peak']:4d}  SLO {100 * s['slo_attainment']:6.2f} %")
        _ratios(entry, lb_mean)
        out[tr.name] = entry
        if not full:
            continue
        entry["burst_sweep"] = {}
        for name, make in (("this", this_policy), ("mps_equal", mps_equal)):
            pts = entry["burst_sweep"][name] = []
            for k in sorted({*BURST_K_SWEEP, base.burst_k}):
                if k == base.burst_k:
                    s = entry["policies"][name]
                else:
                    t0 = time.perf_counter()
                    s = simulate(specs, tr, make(specs, replace(base, burst_k=k)), settings).summary()
                    print(f"  {name + f' burst_k {k:g}':20s} GPUs mean {s['gpus_mean']:7.1f} "
                          f"peak {s['gpus_peak']:4d}  SLO {100 * s['slo_attainment']:6.2f} %  "
                          f"({time.perf_counter() - t0:.1f} s)")
                vs_lb = s["gpus_mean"] / lb_mean if lb_mean else math.nan
                pts.append({"burst_k": k, "default": k == base.burst_k,
                            **{m: s[m] for m in ("gpus_mean", "gpus_peak", "slo_attainment")},
                            "gpus_vs_lower_bound": vs_lb})
        # This policy without its burst mechanisms, same run: the tick-only policy of the previous
        # revision (no fast path, no standby) and the fast path alone.
        entry["mechanisms"] = {}
        for label, a_set, s_set in (
            ("tick_only", replace(base, standby_frac=0.0), replace(settings, fast_interval_s=0.0)),
            ("fast_path", replace(base, standby_frac=0.0), settings),
        ):
            t0 = time.perf_counter()
            s = simulate(specs, tr, this_policy(specs, a_set), s_set).summary()
            print(f"  {'this ' + label:20s} GPUs mean {s['gpus_mean']:7.1f} peak {s['gpus_peak']:4d}  "
                  f"SLO {100 * s['slo_attainment']:6.2f} %  ({time.perf_counter() - t0:.1f} s)")
            entry["mechanisms"][label] = _mechanism(s, lb_mean)
        entry["mechanisms"]["foresight"] = _mechanism(
            {"gpus_mean": entry["foresight_gpus"], "gpus_peak": 0, "slo_attainment":
             entry["foresight_slo_attainment"], "slo_attainment_min_function": math.nan}, lb_mean)
        for label, delay in ((f"foresight_{base.scale_down_delay_s:g}s_delay", base.scale_down_delay_s),):
            t0 = time.perf_counter()
            fs = Foresight(specs, tr, ahead_steps, delay, settings.device_mem_bytes, settings.cold_start_s)
            s = simulate(specs, tr, fs, replace(settings, fast_interval_s=0.0)).summary()
            print(f"  {label:26s} GPUs mean {s['gpus_mean']:7.1f} peak {s['gpus_peak']:4d}  "
                  f"SLO {100 * s['slo_attainment']:6.2f} %  ({time.perf_counter() - t0:.1f} s)")
            entry["mechanisms"][label] = _mechanism(s, lb_mean)
        entry["mechanisms"]["fast_path_and_standby"] = _mechanism(entry["policies"]["this"], lb_mean)
    return out


def _ratios(entry: dict[str, Any], lb_mean: float) -> None:
    orig = entry["policies"]["fastgshare_original"]["gpus_mean"]
    fs = entry.get("foresight_gpus") or math.nan
    for s in entry["policies"].values():
        s["gpus_vs_original"] = s["gpus_mean"] / orig if orig else math.nan
        s["gpus_vs_lower_bound"] = s["gpus_mean"] / lb_mean if lb_mean else math.nan
        s["gpus_vs_foresight"] = s["gpus_mean"] / fs

def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'trace':8s} {'policy':26s} GPUs mean  peak   SLO %    util   SM occ  rps/GPU  vs orig  vs LB")
    for tname, e in result["traces"].items():
        for k in ORDER:
            s = e["policies"][k]
            print(
                f"{tname:8s} {k:26s} {s['gpus_mean']:9.1f} {s['gpus_peak']:5d} "
                f"{100 * s['slo_attainment']:7.2f} "
                f"{s['device_utilisation']:7.2f} {s['sm_occupancy']:7.2f} {s['throughput_per_gpu_rps']:8.1f} "
                f"{s['gpus_vs_original']:8.2f} {s['gpus_vs_lower_bound']:6.2f}"
            )
        print(
            f"{tname:8s} {'LP lower bound':26s} {e['lower_bound_gpus']:9.1f} {e['lower_bound_gpus_peak']:5d}"
        )
        for label, m in e.get("mechanisms", {}).items():
            print(f"{tname:8s} {'this ' + label:26s} {m['gpus_mean']:9.1f} {m['gpus_peak']:5d} "
                  f"{100 * m['slo_attainment']:7.2f} {'':32s} {m['gpus_vs_lower_bound']:6.2f}")
        for name, pts in e.get("burst_sweep", {}).items():
            for p in pts:
                label = f"{name} burst_k {p['burst_k']:g}"
                print(f"{tname:8s} {label:26s} {p['gpus_mean']:9.1f} {p['gpus_peak']:5d} "
                      f"{100 * p['slo_attainment']:7.2f} {'':32s} {p['gpus_vs_lower_bound']:6.2f}")


def plot(series: dict[str, dict[str, list[int]]], path: Any, result: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if result else 1
    fig, axes = plt.subplots(rows, len(series), figsize=(6 * len(series), 4 * rows), squeeze=False)
    for ax, (tname, by_pol) in zip(axes[0], series.items(), strict=True):
        for name, ys in by_pol.items():
            ax.plot(range(len(ys)), ys, label=name, linestyle="--" if name == "lower_bound" else "-")
        ax.set_title(f"{tname} trace (synthetic tables)")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("GPUs in use")
    axes[0][0].legend(fontsize=8)
    if result:  # GPUs vs SLO: this policy's burst-headroom curve beside the baselines' points
        for ax, tname in zip(axes[1], series, strict=True):
            e = result["traces"][tname]
            for name, sw in e.get("burst_sweep", {}).items():
                ax.plot([p["gpus_mean"] for p in sw], [100 * p["slo_attainment"] for p in sw], "o-",
                        label=f"{name} (burst_k " + ", ".join(f"{p['burst_k']:g}" for p in sw) + ")")
                for p in sw:
                    ax.annotate(f"{p['burst_k']:g}", (p["gpus_mean"], 100 * p["slo_attainment"]), fontsize=7)
            for k in ("exclusive", "time_sharing", "fastgshare_original"):
                s = e["policies"][k]
                ax.plot([s["gpus_mean"]], [100 * s["slo_attainment"]], "s", label=k)
            fs = e.get("mechanisms", {}).get("foresight")
            if fs:
                ax.plot([fs["gpus_mean"]], [100 * fs["slo_attainment"]], "*", markersize=10,
                        label="this, perfect foresight (reference)")
            ax.axvline(e["lower_bound_gpus"], linestyle="--", color="grey", label="LP bound")
            ax.axvline(1.1 * e["lower_bound_gpus"], linestyle=":", color="grey", label="1.10x the bound")
            ax.axhline(99.0, linestyle=":", color="grey")
            ax.set_xscale("log")
            ax.set_xlabel("GPUs (time mean, log)")
            ax.set_ylabel("SLO attainment (%)")
            ax.set_title(f"{tname}: GPUs vs SLO")
        axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
