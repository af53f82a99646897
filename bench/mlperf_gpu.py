"""The MLPerf benchmark's GPU variant, sized for ``bench/gpu/run.sh`` (about 3-4 of its 15 minutes):
ResNet-50 + BERT on the GPU under the MLPerf Server bounds (15 ms / 130 ms), every sharing mode,
short LoadGen runs, no autoscaling scenario; then, in the same run, a bare torch loop of the same
handlers (model, precision, batching: ``bench.gpu.bare_loop``) and the platform's exclusive rate at
the bound as a fraction of the bare loop's (``bare_loop`` in mlperf.json, and printed).

    python -m bench.mlperf_gpu --out bench/results/gpu [--quick]

``--quick`` (the CPU dry run of run.sh) uses MobileNet + MiniLM on the CPU with the shortest steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.mlperf.cli import bench_main


def bare_loop_fractions(out: Path, seconds: float) -> dict[str, dict[str, float | int | None]]:
    """The bare loop of every function in ``out/mlperf.json`` at its bound (each in its own
    process, after the platform has stopped), and the platform's exclusive rate as a fraction."""
    path = out / "mlperf.json"
    result = json.loads(path.read_text())
    bounds = result.get("bounds_ms") or {}
    platform_rps = result.get("exclusive_rps") or {}
    fractions: dict[str, dict[str, float | int | None]] = {}
    for fn, bound in bounds.items():
        jp = out / f"bare_loop_{fn}.json"
        proc = subprocess.run([sys.executable, "-m", "bench.gpu.bare_loop", "--fn", fn,
                               "--bound-ms", f"{bound:g}", "--seconds", f"{seconds:g}",
                               "--json", str(jp)], check=False)
        if proc.returncode != 0 or not jp.exists():
            fractions[fn] = {"bare_rate_at_bound": None, "platform_rps": platform_rps.get(fn)}
            continue
        bare = json.loads(jp.read_text())
        rate = bare["rate_at_bound"]
        ours = platform_rps.get(fn)
        fractions[fn] = {"bound_ms": bound, "bare_rate_at_bound": rate,
                         "bare_batch_at_bound": bare["batch_at_bound"], "platform_rps": ours,
                         "fraction": round(ours / rate, 4) if ours and rate else None}
        print(f"{fn}: platform {ours} rps vs bare loop {rate} items/s at {bound:g} ms: "
              f"{fractions[fn]['fraction']}", flush=True)
    result["bare_loop"] = fractions
    path.write_text(json.dumps(result, indent=2, default=str))
    return fractions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    ap.add_argument("--quick", action="store_true", help="the CPU dry run: small models, shortest steps")
    args = ap.parse_args(argv)
    common = ["--json", str(args.out / "mlperf.json"), "--skip-autoscale", "--max-steps", "3"]
    if args.quick:
        rc = bench_main(common + ["--quick", "--device", "cpu", "--step-s", "4"])
    else:
        rc = bench_main(common + ["--device", "gpu", "--functions", "resnet50,bert", "--step-s", "5",
                                  "--window-s", "2"])
    if (args.out / "mlperf.json").exists():
        bare_loop_fractions(args.out, 1.0 if args.quick else 2.0)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
