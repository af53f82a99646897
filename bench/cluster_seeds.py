"""What ``bench.cluster`` reports across seeds (the worst seed per trace, against the targets of
issue 18), and the real profile tables it can run on instead of the synthetic ones."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fast_profiler.table import ProfileTable

TARGET_SLO = 0.99
"""SLO attainment every trace and seed must reach."""
TARGET_VS_FORESIGHT = {"poisson": 1.05, "bursty": 1.15, "azure": 1.15}
"""GPUs of this policy over the perfect-foresight reference's, at most (issue 18)."""
POLICIES = ("exclusive", "time_sharing", "mps_equal", "fastgshare_original", "this")


def load_tables(folder: Path) -> dict[str, tuple[ProfileTable, float]]:
    """The profile tables in ``folder`` (``*.json`` as ``fast_profiler.store.export`` writes them,
    e.g. the GPU script's ``bench/results/gpu/profiles``), by function name, each with the SLO it
    was profiled at (its ``detail.slo_ms``; 100 ms when the file does not say)."""
    out: dict[str, tuple[ProfileTable, float]] = {}
    for f in sorted(Path(folder).glob("*.json")):
        text = f.read_text()
        table = ProfileTable.from_json(text)
        slo = float((json.loads(text).get("detail") or {}).get("slo_ms") or 100.0)
        out[table.function] = (table, slo)
    if not out:
        raise SystemExit(f"no profile table (*.json) in {folder}")
    return out


def measured_start_s(path: Path) -> float:
    """The start time a ``bench.replica_start`` result measured: the slowest model's median time
    from the scale request to its replica routed and answering (``median[model]["routed"]``, s)."""
    d = json.loads(Path(path).read_text())
    starts = [float(m["routed"]) for m in (d.get("median") or {}).values() if "routed" in m]
    if not starts:
        raise SystemExit(f"{path}: no median start-to-ready ('routed') in it")
    return max(starts)


def seed_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One trace of one seed: each policy's GPUs and SLO, the bound and the foresight reference."""
    pols = {k: {m: v.get(m) for m in ("gpus_mean", "slo_attainment", "slo_attainment_min_function")}
            for k, v in entry["policies"].items()}
    return {"lower_bound_gpus": entry["lower_bound_gpus"], "foresight_gpus": entry.get("foresight_gpus"),
            "foresight_slo_attainment": entry.get("foresight_slo_attainment"),
            "foresight_previous_gpus": entry.get("foresight_previous_gpus"), "policies": pols}


def worst_seed(by_seed: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per trace, the seed where this policy's SLO attainment is lowest, with its GPUs over the
    foresight reference, the worst ratio over all seeds, and whether every baseline used more GPUs
    on every seed."""
    out: dict[str, dict[str, Any]] = {}
    traces = sorted({t for v in by_seed.values() for t in v})
    for t in traces:
        rows = [(seed, v[t]) for seed, v in by_seed.items() if t in v]
        seed, e = min(rows, key=lambda r: r[1]["policies"]["this"]["slo_attainment"])
        ratios = {sd: r["policies"]["this"]["gpus_mean"] / r["foresight_gpus"]
                  for sd, r in rows if r.get("foresight_gpus")}
        previous = {sd: r["policies"]["this"]["gpus_mean"] / r["foresight_previous_gpus"]
                    for sd, r in rows if r.get("foresight_previous_gpus")}
        fewest = all(r["policies"]["this"]["gpus_mean"] < r["policies"][k]["gpus_mean"]
                     for _, r in rows for k in r["policies"] if k != "this")
        this = e["policies"]["this"]
        out[t] = {
            "seed": int(seed), "slo_attainment": this["slo_attainment"],
            "slo_attainment_min_function": this["slo_attainment_min_function"],
            "gpus_mean": this["gpus_mean"], "gpus_vs_foresight": ratios.get(seed, math.nan),
            "worst_gpus_vs_foresight": max(ratios.values(), default=math.nan),
            "slo_per_seed": {sd: r["policies"]["this"]["slo_attainment"] for sd, r in rows},
            "gpus_vs_foresight_per_seed": ratios,
            "gpus_vs_previous_foresight_per_seed": previous,
            "fewer_gpus_than_every_baseline_every_seed": fewest,
            "meets_slo": this["slo_attainment"] >= TARGET_SLO,
            "meets_gpus": max(ratios.values(), default=math.inf) <= TARGET_VS_FORESIGHT.get(t, 1.15),
        }
    return out


def print_seeds(result: dict[str, Any]) -> None:
    """The per-seed table of this policy and the worst seed per trace."""
    by_seed = result["by_seed"]
    print(f"\n{'trace':8s} {'seed':>4s} {'this GPUs':>9s} {'x foresight':>11s} {'x prev. ref':>11s} "
          f"{'SLO %':>7s} {'worst fn %':>10s} {'best baseline GPUs':>18s}")
    for seed, traces in by_seed.items():
        for t, e in traces.items():
            this = e["policies"]["this"]
            base = min((v["gpus_mean"], k) for k, v in e["policies"].items() if k != "this")
            fs = e.get("foresight_gpus") or math.nan
            prev = e.get("foresight_previous_gpus") or fs
            print(f"{t:8s} {seed:>4s} {this['gpus_mean']:9.1f} {this['gpus_mean'] / fs:11.2f} "
                  f"{this['gpus_mean'] / prev:11.2f} "
                  f"{100 * this['slo_attainment']:7.2f} {100 * this['slo_attainment_min_function']:10.2f} "
                  f"{base[0]:11.1f} ({base[1]})")
    print("\nworst seed per trace (this policy; targets: SLO >= 99 %, GPUs <= 1.05x / 1.15x / 1.15x "
          "the foresight reference):")
    for t, w in result["worst_seed"].items():
        print(f"  {t:8s} seed {w['seed']}: SLO {100 * w['slo_attainment']:.2f} % "
              f"({'met' if w['meets_slo'] else 'MISSED'}), {w['gpus_mean']:.1f} GPUs = "
              f"{w['gpus_vs_foresight']:.2f}x foresight; worst ratio over seeds "
              f"{w['worst_gpus_vs_foresight']:.2f}x ({'met' if w['meets_gpus'] else 'MISSED'}); "
              "fewer GPUs than every baseline on every seed: "
              f"{w['fewer_gpus_than_every_baseline_every_seed']}")
