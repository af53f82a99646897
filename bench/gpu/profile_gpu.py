"""The GPU check's profiling step: a real profile table of one example function on this machine's
device, through the embedded platform (provider -> sidecar -> worker), on a grid sized for the
check's 15-minute budget, exported as JSON + CSV + PNG.

    python -m bench.gpu.profile_gpu --fn resnet50 --slo-ms 50 --sm 12,24,50,100 --quota 0.25,0.5,1 \
        --out bench/results/gpu/profiles [--quick]

On a GPU machine the node agent registers the GPU (with MPS when its control daemon answers on
``$CUDA_MPS_PIPE_DIRECTORY``) and the table's device type is the GPU's name; on the CPU (the dry run
of ``bench/gpu/run.sh``) it is ``cpu-<n>c``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import platform_with_function
from fast_profiler import store
from fast_profiler.gateway import Gateway
from fast_profiler.jobs import profile_and_store
from fast_profiler.plot import plot_table
from fast_profiler.runner import RunSettings, grid_for_device
from fast_profiler.search import QUICK_SEARCH
from fast_profiler.table import device_type_of, summary

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "function_templates" / "python3-torch"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.profile_gpu", description=__doc__.split("\n")[0])
    ap.add_argument("--fn", required=True, help="an example function under functions/")
    ap.add_argument("--slo-ms", type=float, required=True)
    ap.add_argument("--sm", default="12,24,50,100", help="comma-separated SM shares (%%)")
    ap.add_argument("--quota", default="0.25,0.5,1", help="comma-separated quotas")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu" / "profiles")
    ap.add_argument("--quick", action="store_true", help="the profiler's quick search (shorter steps)")
    args = ap.parse_args(argv)

    with platform_with_function(args.fn, args.slo_ms) as (info, client):
        gw = Gateway(info.url, info.auth, client)
        device = gw.device()
        print(f"{args.fn}: device {device.get('device_id')} ({device_type_of(device)}, "
              f"MPS {device.get('mps')}), "
              f"SLO {args.slo_ms:g} ms, grid sm {args.sm} x quota {args.quota}", flush=True)
        spec = grid_for_device(device, sm_grid=tuple(int(s) for s in args.sm.split(",")),
                               quota_grid=tuple(float(q) for q in args.quota.split(",")))
        settings = RunSettings(search=QUICK_SEARCH) if args.quick else RunSettings()
        t0 = time.monotonic()

        def show(pr) -> None:
            cur = pr.current
            where = "" if cur is None else f" sm {cur.sm_pct}% quota {cur.quota_frac:g}"
            print(f"  [{time.monotonic() - t0:6.1f} s] {pr.measured}/{pr.planned} measured{where}",
                  flush=True)

        result = profile_and_store(gw, args.fn, spec=spec, settings=settings, on_progress=show)
        seconds = time.monotonic() - t0
        table = result.table
        print(summary(table))
        detail = store.load_detail(client, args.fn, table.device_type)
        paths = store.export(table, args.out, detail)
        png = plot_table(table, paths[0].with_suffix(".png"), slo_ms=args.slo_ms)
        print(f"{args.fn}: {len(result.measurements)} of {len(result.points)} points measured in "
              f"{seconds:.1f} s; wrote {', '.join(map(str, paths))}, {png}", flush=True)
        for m in result.measurements:
            print(f"  sm {m.config.sm_pct:3d}% quota {m.config.quota_frac:4g}: {m.throughput_rps:8.1f} rps "
                  f"p99 {m.latency_p99_ms:7.1f} ms busy {m.busy_frac:.2f}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
