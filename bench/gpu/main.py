"""What ``bench/gpu/run.sh`` runs: the isolation and sharing-modes benchmarks sized for one GPU
within its 15-minute budget, and the short table printed at the end.

    python -m bench.gpu.main isolation|sharing --device gpu:<uuid> [--mps-pipe-dir D] --out DIR
    python -m bench.gpu.main table --out DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("isolation", "sharing", "table"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mps-pipe-dir", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu"))
    ap.add_argument("--quick", action="store_true", help="the CPU dry run: shortest settings")
    args = ap.parse_args(argv)
    mps = ["--mps-pipe-dir", args.mps_pipe_dir] if args.mps_pipe_dir else []
    if args.step == "isolation":
        from bench import isolation

        # The default 5 s window and all four cases: ~100 s on an H200 (a 2 s window measures only
        # 4 s, where one 100 ms token is 2.5 pp of a share).
        isolation.main(["--device", args.device, *mps, "--json", str(args.out / "isolation.json")]
                       + (["--cases", "0,3", "--window-s", "2"] if args.quick else []))
    elif args.step == "sharing":
        from bench import sharing_modes

        sharing_modes.main(["--device", args.device, *mps, "--json", str(args.out / "sharing_modes.json")]
                           + (["--quick"] if args.quick else ["--measure-s", "10", "--window-s", "2"]))
    else:
        table(args.out)


def table(out: Path) -> None:
    print("\n==== FaST-GShare GPU check ====")
    dp = out / "dataplane.json"
    if dp.exists():
        r = json.loads(dp.read_text())
        a = r["added_ms"]
        print(f"data plane (no-op, open loop): provider + sidecar add {a['provider_sidecar_p50']} ms "
              f"p50, {a['provider_sidecar_p99']} ms p99 to the worker alone")
        for name, rps in r["sustained_rps"].items():
            print(f"  {name:18} {rps:8.0f} rps at p99 <= {r['p99_bound_ms']:g} ms")
    else:
        print("data plane: no result")
    iso = out / "isolation.json"
    if iso.exists():
        r = json.loads(iso.read_text())
        print(f"isolation ({r['device']}): max |error| {r['max_abs_error_pp']} pp "
              f"(normalised {r.get('max_abs_error_normalised_pp')} pp), mean {r['mean_abs_error_pp']} pp")
        for c in r["cases"]:
            print(f"  {c['case'][:30]:30} {c['replica']:10} configured {c['configured_share']:.3f} "
                  f"measured {c['measured_share']:.3f}")
        lat = r.get("arbiter_latency", {}).get("sidecar", {})
        if lat:
            print(f"  arbiter latency on an uncontended replica: +{lat['added_p50_ms']} ms p50")
    else:
        print("isolation: no result")
    sm = out / "sharing_modes.json"
    if sm.exists():
        r = json.loads(sm.read_text())
        print(f"sharing modes ({' + '.join(r['functions'])}, {r['device']}):")
        for name, m in r["modes"].items():
            print(f"  {name:16} {m['throughput_rps']:8.1f} rps  p99 {m['p99_ms']:8.1f} ms  "
                  f"util {m['device_utilisation']:.2f}  x{m['ratio_vs_time_sharing']:.2f} vs time_sharing")
    else:
        print("sharing modes: no result")


if __name__ == "__main__":
    main()
