"""Two functions on one device under four sharing modes, in one run: what partitions are worth.

The mix is ResNet-50 and the BERT-style encoder from ``functions/`` (``--quick``: MobileNet and
MiniLM, smaller stand-ins), each a real replica (sidecar + python3-torch worker), each driven by
one closed-loop client (one request outstanding). Modes:

- ``exclusive``: one function at a time with the whole device (each alone for half the time);
- ``time_sharing``: both at once, each with the whole device (SM 100 % / all cores), the arbiter
  alternating them (quota request 0.5, limit 1.0 each): only one executes at a time;
- ``spatio_temporal``: both at once, each with half the device (SM 50 % / half the cores,
  disjoint), quotas as above: both execute at once, each in its partition;
- ``unmanaged``: both at once, no arbiter (``FASTGSHARE_ARBITER=off``), both unpinned with every
  thread (on a GPU: no MPS share).

Throughput is normalised per function by its exclusive throughput (so a mode's figure is "how
many devices' worth of work"), and counted only for requests within the p99 latency bound
(``--slo-factor`` x the function's exclusive p50: goodput). Device utilisation on the CPU is the
workers' CPU time over wall time x cores (on a GPU: the busy time the workers reported over wall
time). Ratios are to ``time_sharing``. DESIGN.md's raw-process figures on this kind of 2-core
machine: pinned 1.24x, unmanaged 0.60-0.64x of ideal time-sharing.

    python -m bench.sharing_modes [--quick] [--json PATH] [--device cpu|gpu:<uuid>]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import replicas as rp
from bench.common import RESULTS, parser, write_json
from fastgshare.redis_server import EmbeddedRedis
from fastgshare.stats import percentile

MODES = ("exclusive", "time_sharing", "spatio_temporal", "unmanaged")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replica_specs(mode: str, fns: list[str], args: Any, url: str) -> list[dict[str, str]]:
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    gpu = args.device.startswith("gpu:")
    specs = []
    for i, fn in enumerate(fns):
        spec = {"name": f"{mode}-{fn}", "REDIS_URL": url,
                "FASTGSHARE_HANDLER_DIR": str(rp.ROOT / "functions" / fn),
                "FASTGSHARE_DEVICE": args.device if gpu else f"cpu:{mode}",
                "FASTGSHARE_QUOTA_REQUEST": "0.5", "FASTGSHARE_QUOTA_LIMIT": "1",
                "FASTGSHARE_ARBITER_WINDOW_S": f"{args.window_s:g}"}
        if gpu and args.mps_pipe_dir:
            spec["FASTGSHARE_MPS_PIPE_DIR"] = args.mps_pipe_dir
        if mode == "spatio_temporal":
            spec["FASTGSHARE_SM_PCT"] = "50"
            if not gpu:
                part = cores[i * half:(i + 1) * half] or cores[-half:]
                spec["FASTGSHARE_CPU_CORES"] = ",".join(map(str, part))
        elif mode == "unmanaged":
            spec["FASTGSHARE_ARBITER"] = "off"  # and no core set: unpinned, torch uses all threads
        else:
            spec["FASTGSHARE_SM_PCT"] = "100"
            if not gpu:
                spec["FASTGSHARE_CPU_CORES"] = ",".join(map(str, cores))
        specs.append(spec)
    return specs


def run(specs: list[dict[str, str]], log_dir: Path, warm_s: float,
        measure_s: float) -> list[dict[str, Any]]:
    reps = rp.start_replicas(specs, log_dir)
    try:
        pids = [r.stats()["worker"]["pid"] for r in reps]
        targets = [(r.url + "/", "POST", b"{}") for r in reps]

        async def go() -> tuple[list[float], float, list[rp.Done], list[float]]:
            cpu: list[float] = []

            async def mark_cpu() -> None:
                await asyncio.sleep(warm_s)
                cpu.extend(cpu_seconds(p) for p in pids)
            marker = asyncio.ensure_future(mark_cpu())
            busy, wall_s, done = await rp.busy_over(reps, targets, warm_s, measure_s, 1)
            await marker
            return busy, wall_s, done, [cpu_seconds(p) - c for p, c in zip(pids, cpu, strict=True)]

        busy, wall_s, done, cpu = asyncio.run(go())
        modes = [r.stats()["token_mode"] for r in reps]
    finally:
        rp.stop_replicas(reps)
    out = []
    for k, r in enumerate(reps):
        ok = [d.latency_ms for d in done if d.replica == k and d.status == 200]
        out.append({"function": r.env["FASTGSHARE_HANDLER_DIR"].rsplit("/", 1)[-1],
                    "rps": len(ok) / wall_s, "latencies_ms": ok, "wall_s": wall_s,
                    "errors": sum(1 for d in done if d.replica == k and d.status != 200),
                    "busy_frac": busy[k] / 1000 / wall_s, "cpu_s": cpu[k],
                    "token_mode": modes[k], "cores": r.env.get("FASTGSHARE_CPU_CORES", "all")})
    return out


def summarise(mode: str, rows: list[dict[str, Any]], solo: dict[str, dict[str, float]],
              gpu: bool, ncores: int, share_of_time: float = 1.0) -> dict[str, Any]:
    per_fn = {}
    norm = good_norm = 0.0
    p99s = []
    for r in rows:
        fn = r["function"]
        bound = solo[fn]["bound_ms"]
        lat = r["latencies_ms"]
        good = sum(1 for v in lat if v <= bound) / r["wall_s"]
        p99 = percentile(lat, 99)
        p99s.append(p99)
        # exclusive: each function has the device for ``share_of_time`` of the mix's time
        norm += share_of_time * r["rps"] / solo[fn]["rps"]
        good_norm += share_of_time * good / solo[fn]["rps"]
        per_fn[fn] = {"throughput_rps": round(share_of_time * r["rps"], 2),
                      "goodput_rps": round(share_of_time * good, 2),
                      "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(p99, 2),
                      "p99_bound_ms": round(bound, 2), "errors": r["errors"],
                      "cores": r["cores"], "token_mode": r["token_mode"]}
    if gpu:
        util = sum(share_of_time * r["busy_frac"] for r in rows)
    else:
        util = sum(share_of_time * r["cpu_s"] / (r["wall_s"] * ncores) for r in rows)
    return {"throughput_rps": round(sum(f["throughput_rps"] for f in per_fn.values()), 2),
            "goodput_rps": round(sum(f["goodput_rps"] for f in per_fn.values()), 2),
            "normalised_throughput": round(norm, 3), "normalised_goodput": round(good_norm, 3),
            "p99_ms": round(max(p99s), 2), "device_utilisation": round(util, 3),
            "functions": per_fn}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser("sharing_modes", __doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, or gpu:<uuid> (bench/gpu/run.sh)")
    ap.add_argument("--mps-pipe-dir", default=None)
    ap.add_argument("--functions", default=None, help="two folders under functions/")
    ap.add_argument("--measure-s", type=float, default=None)
    ap.add_argument("--window-s", type=float, default=None)
    ap.add_argument("--slo-factor", type=float, default=4.0,
                    help="p99 bound = this x the function's exclusive p50")
    args = ap.parse_args(argv)
    fns = (args.functions.split(",") if args.functions else
           ["mobilenet", "minilm"] if args.quick else ["resnet50", "bert"])
    measure_s = args.measure_s or (8.0 if args.quick else 30.0)
    args.window_s = args.window_s or (2.0 if args.quick else 5.0)
    warm_s = min(args.window_s, 3.0)
    gpu = args.device.startswith("gpu:")
    ncores = len(os.sched_getaffinity(0))
    t_start = time.perf_counter()
    raw: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d) / "redis", persist=False) as srv:
        for mode in MODES:
            specs = replica_specs(mode, fns, args, srv.url)
            print(f"[{time.perf_counter() - t_start:5.0f}s] {mode}: "
                  + ", ".join(f"{s['name']} cores={s.get('FASTGSHARE_CPU_CORES', 'all')} "
                              f"sm={s.get('FASTGSHARE_SM_PCT', '-')}" for s in specs), flush=True)
            if mode == "exclusive":  # one at a time, each alone with the whole device
                raw[mode] = [run([s], Path(d) / mode, warm_s, measure_s / 2)[0] for s in specs]
            else:
                raw[mode] = run(specs, Path(d) / mode, warm_s, measure_s)
    for r in raw["exclusive"]:  # every ratio is to these: a function that answered nothing alone
        if not r["latencies_ms"]:  # is a broken setup, said as such (not a division by zero)
            raise SystemExit(f"sharing_modes: {r['function']} answered no request alone "
                             f"({r['errors']} errors): see its replica's log")
    solo = {r["function"]: {"rps": r["rps"], "bound_ms": args.slo_factor *
                            percentile(r["latencies_ms"], 50)} for r in raw["exclusive"]}
    modes = {m: summarise(m, raw[m], solo, gpu, ncores, 0.5 if m == "exclusive" else 1.0)
             for m in MODES}
    base = modes["time_sharing"]
    for m in modes.values():
        m["ratio_vs_time_sharing"] = round(m["normalised_goodput"] / base["normalised_goodput"], 3)
        m["throughput_ratio_vs_time_sharing"] = round(
            m["normalised_throughput"] / base["normalised_throughput"], 3)
        m["utilisation_ratio_vs_time_sharing"] = round(
            m["device_utilisation"] / base["device_utilisation"], 3) \
            if base["device_utilisation"] else None
    result = {"functions": fns, "device": args.device, "measure_s": measure_s,
              "window_s": args.window_s, "slo_factor": args.slo_factor,
              "ratio_definition": "normalised goodput (requests within the p99 bound, each "
                                  "function divided by its exclusive throughput) / time_sharing's",
              "design_reference": {"pinned_vs_time_sharing": 1.24,
                                   "unmanaged_vs_time_sharing": [0.60, 0.64]},
              "runtime_s": round(time.perf_counter() - t_start, 1), "modes": modes}
    print(f"\n{fns[0]} + {fns[1]} on {args.device} ({ncores} cores), {measure_s:g} s per mode, "
          f"p99 bound {args.slo_factor:g} x exclusive p50")
    print(f"{'mode':16} {'rps':>7} {'good rps':>8} {'norm':>6} {'p99 ms':>8} {'util':>5} "
          f"{'ratio':>6} {'thr ratio':>9}")
    for name, m in modes.items():
        print(f"{name:16} {m['throughput_rps']:7.2f} {m['goodput_rps']:8.2f} "
              f"{m['normalised_goodput']:6.3f} {m['p99_ms']:8.1f} {m['device_utilisation']:5.2f} "
              f"{m['ratio_vs_time_sharing']:6.3f} {m['throughput_ratio_vs_time_sharing']:9.3f}")
    print("DESIGN.md raw processes: pinned 1.24x, unmanaged 0.60-0.64x of ideal time-sharing")
    write_json(args.json, result)
    plot(modes, args.json.with_suffix(".png") if args.json.parent != RESULTS
         else RESULTS / "sharing_modes.png")
    return result


def plot(modes: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(modes)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [modes[n]["ratio_vs_time_sharing"] for n in names], 0.4,
           label="goodput at the p99 bound")
    ax.bar([i + 0.2 for i in x], [modes[n]["utilisation_ratio_vs_time_sharing"] or 0
                                  for n in names], 0.4, label="device utilisation")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(x), names)
    ax.set_ylabel("ratio to time_sharing")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
