"""A mixed-GPU cluster: two device types, a profile table per type, this policy placed type-aware
against the same policy blind to types.

    python -m bench.cluster_mixed [--quick] [--json PATH] [--tables DIR] [--seed N]

Types: the synthetic V100 tables (``bench.cluster``) and the real H200 tables the GPU script wrote
(``--tables``, default the saved run ``bench/results/gpu_h200_2026-11-27/profiles``: ResNet-50 and
BERT, batch 1), half the cluster each. Functions are ResNet-50 and BERT only (the types with a
table for both), at the synthetic tables' SLOs (69 / 130 ms).

- **type-blind**: plans every function with its V100 table and places replicas on any device; a
  replica serves at the table of the device it lands on (``SimFunction.serve_tables``): on an H200
  it has capacity the plan does not count.
- **type-aware**: each function is given the type where it is relatively cheapest
  (``assign_types``: comparative advantage, the H200 share filled first with the functions that
  gain most from it, up to its devices), plans with that type's table and is placed only there
  (``placement.fits_device_type``).

Reported per trace: GPUs in use per type, SLO attainment; JSON and a PNG beside it.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.cluster import make_specs, tables
from bench.cluster_seeds import load_tables
from bench.common import RESULTS, parser, write_json
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import candidate_points, config_choices
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, simulate
from fast_scheduler.evaluation.traces import bursty_trace, poisson_trace

GIB = 2**30
SAVED_H200 = RESULTS / "gpu_h200_2026-11-27" / "profiles"


def cost_per_rps(spec: SimFunction, settings: AutoscaleSettings) -> float:
    """Devices per rps of ``spec``'s most efficient config (its own table, its SLO)."""
    ch = config_choices(spec.table, spec.slo_ms, settings, candidate_points(spec.table))
    return min((c.footprint / c.capacity_rps for c in ch if c.capacity_rps > 0), default=math.inf)


def assign_types(by_type: dict[str, list[SimFunction]], rates: dict[str, float],
                 devices: dict[str, int], settings: AutoscaleSettings, fill: float = 0.6) -> dict[str, str]:
    """Each function's device type, by comparative advantage between two types (``a``, ``b``: the
    second is the one filled first): functions sorted by their cost on ``b`` over their cost on
    ``a``, cheapest first, go to ``b`` while its expected devices (rate x cost) stay under ``fill``
    of its devices; the rest to ``a``."""
    a, b = list(by_type)
    cost = {t: {s.name: cost_per_rps(s, settings) for s in specs} for t, specs in by_type.items()}
    names = sorted(cost[a], key=lambda n: cost[b][n] / cost[a][n])
    out, used = {}, 0.0
    for n in names:
        need = rates[n] * cost[b][n]
        if used + need <= fill * devices[b] and cost[b][n] < math.inf:
            out[n], used = b, used + need
        else:
            out[n] = a
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser("cluster_mixed", __doc__.splitlines()[0])
    ap.add_argument("--tables", type=Path, default=SAVED_H200,
                    help="the second type's tables (*.json; default the saved H200 run)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--b-devices", type=int, default=None,
                    help="devices of the second type (default 2 quick, 6 full: fewer than the load "
                         "needs, so which functions get them matters)")
    args = ap.parse_args(argv)
    real = load_tables(args.tables)
    syn = {k: v for k, v in tables().items() if k in real}
    if not syn:
        raise SystemExit(f"no function of {sorted(real)} has a synthetic table too")
    n_fn, dur, lo, hi, n_a = (8, 180.0, 5.0, 60.0, 24) if args.quick else (16, 1200.0, 40.0, 300.0, 128)
    n_b = args.b_devices if args.b_devices is not None else (2 if args.quick else 6)
    type_a = "V100"
    type_b = next(iter(real.values()))[0].device_type
    base_specs, rates = make_specs(n_fn, args.seed, lo, hi, syn)
    specs_a = [replace(s, device_type=type_a, serve_tables=((type_b, real[s.model][0]),)) for s in base_specs]
    specs_b = [replace(s, table=real[s.model][0], device_type=type_b, serve_tables=((type_a, s.table),))
               for s in base_specs]
    blind = [replace(s, device_type="") for s in specs_a]
    st = AutoscaleSettings(device_mem_bytes=32 * GIB)
    types = assign_types({type_a: specs_a, type_b: specs_b}, rates, {type_a: n_a, type_b: n_b}, st)
    aware = [sb if types[sa.name] == type_b else sa for sa, sb in zip(specs_a, specs_b, strict=True)]
    settings = SimSettings(device_types=((type_a, n_a, 32 * GIB), (type_b, n_b, 141 * GIB)))
    s10 = 10 * args.seed
    print(f"{n_fn} functions ({', '.join(sorted(syn))}), {dur:.0f} s; {n_a} {type_a} + {n_b} "
          f"{type_b}; type-aware: {sum(t == type_b for t in types.values())} functions on {type_b}")
    result: dict[str, Any] = {"types": [type_a, type_b], "devices": [n_a, n_b], "seed": args.seed,
                              "tables": str(args.tables), "assignment": types, "traces": {}}
    for tr in (poisson_trace(rates, dur, seed=s10 + 1), bursty_trace(rates, dur, seed=s10 + 2)):
        entry = result["traces"][tr.name] = {}
        for label, specs in (("type_blind", blind), ("type_aware", aware)):
            t0 = time.perf_counter()
            res = simulate(specs, tr, this_policy(specs, st), settings)
            s = res.summary()
            by_type = {t: sum(v) / len(v) for t, v in res.gpus_by_type.items()}
            entry[label] = {"gpus_mean": s["gpus_mean"], "gpus_by_type": by_type,
                            "slo_attainment": s["slo_attainment"], "rejected": s["rejected_replicas"],
                            "slo_attainment_min_function": s["slo_attainment_min_function"]}
            print(f"  {tr.name:8s} {label:11s} GPUs {s['gpus_mean']:6.1f} ("
                  + ", ".join(f"{t} {g:.1f}" for t, g in by_type.items())
                  + f")  SLO {100 * s['slo_attainment']:6.2f} % (worst function "
                  f"{100 * s['slo_attainment_min_function']:.2f} %)  ({time.perf_counter() - t0:.1f} s)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
