"""SLO-aware batching against fixed batch sizes, in one run: what a function that only declares its
SLO gets.

One MobileNet replica (sidecar + python3-torch worker, the whole device; the example opts in to the
fast path, which on a CPU means channels_last inputs) at a time, under each configuration:

- ``batch1``: no batching (neither ``FASTGSHARE_BATCH`` nor an SLO);
- ``fixed2`` .. ``fixed16``: ``FASTGSHARE_BATCH=B`` (the fixed-size batcher: up to B, 2 ms delay;
  the sidecar keeps 2 x B in flight);
- ``slo``: only ``FASTGSHARE_SLO_MS`` (the function's ``fastgshare/slo_ms``), no batch size: the
  worker batches by deadline (``fastgshare_batch_policy``).

Load is open-loop Poisson (``bench.openloop``, its own process; latency counted from each
request's scheduled arrival). For every configuration the benchmark searches the highest rate
whose p99 stays within the SLO (steps up by ``--step-factor`` until one fails, then one bisection),
and for ``batch1`` and ``slo`` it also runs a low load (a tenth of batch1's rate at the SLO) and
compares their p50: batching must not make a lone request wait. Ratios are taken within the run
(the machine is shared and noisy). The replica is alone on its device, so by default it runs
without the arbiter (``--arbiter on``: tokens from a real arbiter in Redis; on this machine the
token round trips per request then weigh on batch1 far more than on the batched modes, whose
in-flight requests share one token).

    python -m bench.batching [--quick] [--json PATH] [--slo-ms 100] [--function mobilenet]

Targets (issue 17, 2-core VM): slo >= 2.5x batch1 at p99 within the SLO and >= the best fixed
size; at a tenth of batch1's capacity, slo's p50 within 10 % of batch1's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench import replicas as rp
from bench.common import RESULTS, parser, write_json
from fastgshare.redis_server import EmbeddedRedis

FIXED = (2, 4, 8, 16)


def configs(slo_ms: float) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = [("batch1", {})]
    out += [(f"fixed{b}", {"FASTGSHARE_BATCH": str(b)}) for b in FIXED]
    out.append(("slo", {"FASTGSHARE_SLO_MS": f"{slo_ms:g}"}))
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("inf")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q / 100 * len(s) // 1)) - 1))
    return s[k]


def poisson_step(url: str, rate_rps: float, duration_s: float, seed: int,
                 body: str = "{}") -> dict[str, Any]:
    """One open-loop run: every request's latency (inf: no answer / error) and status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.openloop", "--url", url, "--rate-rps", f"{rate_rps:.3f}",
         "--duration-s", f"{duration_s:g}", "--seed", str(seed), "--body", body,
         "--timeout-s", "10"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=rp.ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("load generator did not start")
    proc.stdin.write("\n")
    proc.stdin.flush()
    out = json.loads(proc.stdout.readline())
    proc.wait(30)
    lat = [v if (v is not None and s == 200) else float("inf")
           for v, s in zip(out["latency_ms"], out["status"], strict=True)]
    return {"rate_rps": round(rate_rps, 2), "n": len(lat),
            "errors": sum(1 for s in out["status"] if s != 200),
            "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
            "send_lag_p99_ms": round(percentile(out["lag_ms"], 99), 2)}


def batch_sizes(url: str) -> dict[str, Any]:
    return requests.get(f"{url}/_/stats", timeout=10).json().get("batching", {})


def search(url: str, slo_ms: float, start_rps: float, step_factor: float, duration_s: float,
           max_steps: int, seed: int, log: Any) -> tuple[float, list[dict[str, Any]]]:
    """The highest rate tried whose p99 was within ``slo_ms``, and every step."""
    history: list[dict[str, Any]] = []
    ok_rate, bad_rate = 0.0, None
    rate = start_rps
    for i in range(max_steps):
        before = batch_sizes(url.rstrip("/"))
        step = poisson_step(url, rate, duration_s, seed + i)
        after = batch_sizes(url.rstrip("/"))
        step["mean_batch"] = _mean_batch(before, after)
        step["pass"] = step["p99_ms"] <= slo_ms and step["errors"] == 0
        history.append(step)
        log(f"    {rate:7.1f} rps: p50 {step['p50_ms']:7.1f} p99 {step['p99_ms']:8.1f} ms, "
            f"mean batch {step['mean_batch']}, {'ok' if step['pass'] else 'over'}")
        if step["pass"]:
            ok_rate = max(ok_rate, rate)
        else:
            bad_rate = rate if bad_rate is None else min(bad_rate, rate)
        if bad_rate is None:
            rate *= step_factor
        elif ok_rate == 0.0:
            rate /= step_factor
        elif bad_rate / ok_rate > 1 + (step_factor - 1) / 3:
            rate = (ok_rate * bad_rate) ** 0.5
        else:
            break
    return ok_rate, history


def _mean_batch(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    b = {int(k): v for k, v in (before.get("requests_by_size") or {}).items()}
    a = {int(k): v for k, v in (after.get("requests_by_size") or {}).items()}
    diff = {s: a.get(s, 0) - b.get(s, 0) for s in a}
    n = sum(diff.values())
    batches = sum(c / s for s, c in diff.items() if c > 0)
    return round(n / batches, 2) if batches else None


def warm(url: str, n: int) -> None:
    with requests.Session() as s:
        for _ in range(n):
            s.post(url, data=b"{}", timeout=30)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser("batching", __doc__.split("\n")[0])
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--function", default="mobilenet")
    ap.add_argument("--step-s", type=float, default=None, help="seconds per load step")
    ap.add_argument("--step-factor", type=float, default=1.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arbiter", choices=("on", "off"), default="off")
    args = ap.parse_args(argv)
    step_s = args.step_s or (6.0 if args.quick else 20.0)
    low_s = 2 * step_s
    max_steps = 6 if args.quick else 9
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f}s] {msg}", flush=True)

    cores = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    low: dict[str, dict[str, Any]] = {}
    best1 = None
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d) / "redis", persist=False) as srv:
        for name, extra in configs(args.slo_ms):
            spec = {"name": f"batching-{name}", "REDIS_URL": srv.url,
                    "FASTGSHARE_HANDLER_DIR": str(rp.ROOT / "functions" / args.function),
                    "FASTGSHARE_DEVICE": f"cpu:batching-{name}",
                    "FASTGSHARE_CPU_CORES": ",".join(map(str, cores)),
                    "FASTGSHARE_QUOTA_REQUEST": "1", "FASTGSHARE_QUOTA_LIMIT": "1",
                    "FASTGSHARE_QUEUE_MAX": "4096", "FASTGSHARE_ARBITER": args.arbiter, **extra}
            (rep,) = rp.start_replicas([spec], Path(d) / name)
            try:
                url = rep.url + "/"
                warm(url, 40)
                if best1 is None:  # batch1 first: its single-stream p50 sets the first step
                    lat = []
                    with requests.Session() as s:
                        for _ in range(30):
                            t = time.perf_counter()
                            s.post(url, data=b"{}", timeout=30)
                            lat.append((time.perf_counter() - t) * 1000)
                    start = 0.5 * 1000.0 / statistics.median(lat)
                    log(f"{name}: single stream p50 {statistics.median(lat):.1f} ms")
                else:
                    start = max(1.0, 1.5 * best1)
                log(f"{name}: searching from {start:.1f} rps")
                best, history = search(url, args.slo_ms, start, args.step_factor, step_s,
                                       max_steps, args.seed, log)
                if name == "batch1":
                    best1 = best
                if name in ("batch1", "slo") and best1:
                    rate = 0.1 * best1
                    step = poisson_step(url, rate, max(low_s, 150 / rate), args.seed + 100)
                    low[name] = step
                    log(f"  low load {rate:.1f} rps: p50 {step['p50_ms']} p99 {step['p99_ms']} ms")
                at_best = next((h for h in history if h["rate_rps"] == round(best, 2)), None)
                results[name] = {"env": extra, "max_rps_at_slo": round(best, 2),
                                 "at_max": at_best, "steps": history,
                                 "batching": batch_sizes(rep.url)}
                log(f"{name}: {best:.1f} rps within p99 {args.slo_ms:g} ms")
            finally:
                rp.stop_replicas([rep])
    base = results["batch1"]["max_rps_at_slo"] or float("nan")
    best_fixed = max(results[f"fixed{b}"]["max_rps_at_slo"] for b in FIXED)
    for r in results.values():
        r["ratio_vs_batch1"] = round(r["max_rps_at_slo"] / base, 3) if base == base else None
    slo = results["slo"]["max_rps_at_slo"]
    low_ratio = (low["slo"]["p50_ms"] / low["batch1"]["p50_ms"]
                 if low.get("slo") and low.get("batch1") else None)
    result = {
        "function": args.function, "slo_ms": args.slo_ms, "step_s": step_s, "cores": cores,
        "arbiter": args.arbiter,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runtime_s": round(time.perf_counter() - t0, 1), "configs": results, "low_load": low,
        "targets": {
            "slo_vs_batch1": round(slo / base, 3) if base == base else None,
            "slo_vs_batch1_target": 2.5,
            "slo_vs_best_fixed": round(slo / best_fixed, 3) if best_fixed else None,
            "best_fixed_rps": best_fixed,
            "low_load_p50_ratio": round(low_ratio, 3) if low_ratio else None,
            "low_load_p50_ratio_target": 1.1,
        },
    }
    print(f"\n{args.function}, {len(cores)} cores, p99 bound {args.slo_ms:g} ms, Poisson arrivals, "
          f"{step_s:g} s per step; load average before {load_before[0]:.2f}")
    print(f"{'config':8} {'rps@SLO':>8} {'x batch1':>8} {'p50 ms':>7} {'p99 ms':>7} {'mean b':>6}")
    for name, r in results.items():
        m = r["at_max"] or {}
        print(f"{name:8} {r['max_rps_at_slo']:8.1f} {r['ratio_vs_batch1'] or 0:8.2f} "
              f"{m.get('p50_ms', float('nan')):7.1f} {m.get('p99_ms', float('nan')):7.1f} "
              f"{m.get('mean_batch') or 1:6.2f}")
    if low_ratio:
        print(f"low load ({0.1 * base:.1f} rps): p50 batch1 {low['batch1']['p50_ms']} ms, "
              f"slo {low['slo']['p50_ms']} ms (ratio {low_ratio:.3f}, target <= 1.10)")
    print(f"slo / batch1 {result['targets']['slo_vs_batch1']} (target >= 2.5); "
          f"slo / best fixed {result['targets']['slo_vs_best_fixed']} (target >= 1)")
    write_json(args.json, result)
    plot(result, args.json.with_suffix(".png") if args.json.parent != RESULTS
         else RESULTS / "batching.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["configs"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(cfg)
    a.bar(names, [cfg[n]["max_rps_at_slo"] for n in names],
          color=["tab:grey"] + ["tab:blue"] * len(FIXED) + ["tab:green"])
    a.set_ylabel(f"rps with p99 <= {result['slo_ms']:g} ms")
    a.set_title(f"{result['function']}: rate at the SLO")
    for n in names:
        steps = sorted(cfg[n]["steps"], key=lambda s: s["rate_rps"])
        b.plot([s["rate_rps"] for s in steps], [min(s["p99_ms"], 10 * result["slo_ms"])
                                                for s in steps], marker="o", label=n)
    b.axhline(result["slo_ms"], color="grey", lw=0.8)
    b.set_yscale("log")
    b.set_xlabel("offered rps (Poisson)")
    b.set_ylabel("p99 ms")
    b.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
