"""The MLPerf benchmark's GPU variant, sized for ``bench/gpu/run.sh`` (about 3-4 of its 15 minutes):
ResNet-50 + BERT on the GPU under the MLPerf Server bounds (15 ms / 130 ms), every sharing mode,
short LoadGen runs, no autoscaling scenario.

    python -m bench.mlperf_gpu --out bench/results/gpu [--quick]

``--quick`` (the CPU dry run of run.sh) uses MobileNet + MiniLM on the CPU with the shortest steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.mlperf.cli import bench_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    ap.add_argument("--quick", action="store_true", help="the CPU dry run: small models, shortest steps")
    args = ap.parse_args(argv)
    common = ["--json", str(args.out / "mlperf.json"), "--skip-autoscale", "--max-steps", "3"]
    if args.quick:
        return bench_main(common + ["--quick", "--device", "cpu", "--step-s", "4"])
    return bench_main(common + ["--device", "gpu", "--functions", "resnet50,bert", "--step-s", "5",
                                "--window-s", "2"])


if __name__ == "__main__":
    raise SystemExit(main())
