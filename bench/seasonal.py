"""Which functions the seasonal forecaster helped, and which it left alone: this policy with and
without it (``fast_scheduler.seasonal``) on the cluster bench's traces and the timer trace.

    python -m bench.seasonal [--quick] [--json PATH] [--seed N]

Per function: the period found (or none), SLO attainment and SM-time (device-seconds per second,
``FunctionResult.area_s``) reactive against seasonal, and a verdict: *helped* (less SM-time with
the SLO no lower by 0.1 point, or the SLO up by 0.1 point with no more than 2 % more SM-time),
*hurt* (the reverse), *no change*, or *left alone* (no period found: decided as reactive; any
difference comes through placement beside the others). Table on stdout, JSON, PNG beside it.
"""

from __future__ import annotations

import time
from typing import Any

from bench.cluster import make_specs
from bench.common import parser, write_json
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimSettings, simulate
from fast_scheduler.evaluation.traces import (
    azure_like_trace,
    bursty_trace,
    load_orcbench_clusters,
    orcbench_models_dir,
    poisson_trace,
    timer_trace,
)
from fast_scheduler.seasonal import SeasonalForecaster


def verdict(found: bool, slo: tuple[float, float], area: tuple[float, float]) -> str:
    """How the forecaster did on one function (see the module docstring)."""
    if not found:
        return "left alone"
    d_slo, d_area = slo[1] - slo[0], (area[1] - area[0]) / area[0] if area[0] else 0.0
    if (d_area <= -0.02 and d_slo >= -0.001) or (d_slo >= 0.001 and d_area <= 0.02):
        return "helped"
    if (d_area >= 0.02 and d_slo <= 0.001) or (d_slo <= -0.001 and d_area >= -0.02):
        return "hurt"
    return "no change" if abs(d_area) < 0.02 and abs(d_slo) < 0.001 else "mixed"


def main(argv: list[str] | None = None) -> None:
    ap = parser("seasonal", __doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n_fn, dur, lo, hi, gpus = (12, 900.0, 5.0, 60.0, 128) if args.quick else (24, 1800.0, 40.0, 300.0, 512)
    specs, rates = make_specs(n_fn, args.seed, lo, hi)
    s10 = 10 * args.seed
    traces = [poisson_trace(rates, dur, seed=s10 + 1), bursty_trace(rates, dur, seed=s10 + 2)]
    if orcbench_models_dir() is not None:
        traces.append(azure_like_trace(rates, dur, load_orcbench_clusters(), seed=s10 + 3))
    traces.append(timer_trace(rates, dur, seed=s10 + 4))
    settings = SimSettings(gpus=gpus)
    result: dict[str, Any] = {"seed": args.seed, "functions": n_fn, "duration_s": dur, "traces": {}}
    print(f"{n_fn} functions, {dur:.0f} s per trace, seed {args.seed}")
    print(f"{'trace':8s} {'function':14s} {'period s':>8s} {'found at':>8s} {'SLO % reac.':>11s} "
          f"{'seas.':>7s} {'SM-time reac.':>13s} {'seas.':>7s}  verdict")
    for tr in traces:
        t0 = time.perf_counter()
        off = AutoscaleSettings(seasonal_forecast=False)
        reactive = simulate(specs, tr, this_policy(specs, off), settings)
        fc = SeasonalForecaster()
        seasonal = simulate(specs, tr, this_policy(specs, seasonal=fc), settings)
        rows = []
        for s in specs:
            a, b = reactive.functions[s.name], seasonal.functions[s.name]
            at, bins = fc.found.get(s.name, (None, None))
            slo = (a.slo_attainment, b.slo_attainment)
            area = (a.area_s / dur, b.area_s / dur)
            row = {"function": s.name, "period_s": bins * fc.settings.bin_s if bins else None,
                   "found_at_s": at, "slo_reactive": slo[0], "slo_seasonal": slo[1],
                   "sm_time_reactive": area[0], "sm_time_seasonal": area[1],
                   "verdict": verdict(at is not None, slo, area)}
            rows.append(row)
            print(f"{tr.name:8s} {s.name:14s} {row['period_s'] or '-':>8} {at or '-':>8} "
                  f"{100 * slo[0]:11.2f} {100 * slo[1]:7.2f} {area[0]:13.3f} {area[1]:7.3f}  "
                  f"{row['verdict']}")
        sr, ss = reactive.summary(), seasonal.summary()
        result["traces"][tr.name] = {
            "functions": rows,
            "reactive": {k: sr[k] for k in ("gpus_mean", "slo_attainment", "slo_attainment_min_function")},
            "seasonal": {k: ss[k] for k in ("gpus_mean", "slo_attainment", "slo_attainment_min_function")},
            "periods_found": sum(r["found_at_s"] is not None for r in rows),
        }
        print(f"{tr.name:8s} {'ALL':14s} GPUs {sr['gpus_mean']:.2f} -> {ss['gpus_mean']:.2f}, SLO "
              f"{100 * sr['slo_attainment']:.2f} -> {100 * ss['slo_attainment']:.2f} %; periods found "
              f"{result['traces'][tr.name]['periods_found']} of {len(rows)} "
              f"({time.perf_counter() - t0:.0f} s)")
    plot(result, args.json.with_suffix(".png"))
    write_json(args.json, result)


def plot(result: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = result["traces"]
    fig, axes = plt.subplots(1, len(traces), figsize=(4.5 * len(traces), 4), squeeze=False)
    colours = {"helped": "tab:green", "hurt": "tab:red", "mixed": "tab:orange", "no change": "tab:blue",
               "left alone": "lightgrey"}
    for ax, (name, e) in zip(axes[0], traces.items(), strict=True):
        for v, c in colours.items():
            rows = [r for r in e["functions"] if r["verdict"] == v]
            if not rows:
                continue
            ax.scatter([100 * (r["sm_time_seasonal"] / r["sm_time_reactive"] - 1) if r["sm_time_reactive"]
                        else 0 for r in rows],
                       [100 * (r["slo_seasonal"] - r["slo_reactive"]) for r in rows],
                       color=c, label=f"{v} ({len(rows)})", edgecolor="k", linewidth=0.3)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.axvline(0, color="grey", linewidth=0.5)
        ax.set_title(f"{name}: {e['periods_found']} of {len(e['functions'])} with a period")
        ax.set_xlabel("SM-time, seasonal vs reactive (%)")
        ax.set_ylabel("SLO attainment change (points)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
