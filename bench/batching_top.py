"""The top of bench.batching's race, repeated: SLO batching against the best fixed sizes at the
rates where they leave the race, several trials each, so one noisy step decides nothing.

``bench.batching`` gives each configuration one 15 s step per rate and ends it after two failed
steps in a row; on a shared 2-core machine one step can fail by chance. Here the same replicas
(``bench.batching.configs``: sidecar + python3-torch worker, the example's fast path, arbiter off)
take ``--repeat`` trials at each of ``--rates``, every configuration once per round in a rotating
order, so all meet the machine's noise alike (after an uncounted 5 s at the first rate). Per
configuration and rate: each trial's p99, their median, and how many trials met the SLO. A
configuration's figure is the highest rate whose median p99 is within the SLO with no errors.

    python -m bench.batching_top [--quick] [--json PATH] [--configs slo,fixed8,fixed16]
        [--rates 334,418,523] [--repeat 3] [--from-json bench/results/batching.json]

``--from-json``: the race's rates within 1.3x of where ``slo`` and its best fixed size left it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import batching as race
from bench import replicas as rp
from bench.common import parser, write_json
from fastgshare.redis_server import EmbeddedRedis


def rates_from_race(path: Path) -> list[float]:
    """The rates around where ``slo`` and the best fixed size left the race in ``path``."""
    result = json.loads(path.read_text())
    cfg = result["configs"]
    best_fixed = max((n for n in cfg if n.startswith("fixed")), key=lambda n: cfg[n]["max_rps_at_slo"])
    tops = {cfg[n]["max_rps_at_slo"] for n in ("slo", best_fixed)}
    grid = sorted({s["rate_rps"] for n in cfg for s in cfg[n]["steps"]})
    picked = {r for r in grid if min(tops) / 1.3 <= r <= max(tops) * 1.3}
    return sorted(picked) or sorted(tops)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser("batching_top", __doc__.split("\n")[0])
    ap.add_argument("--configs", default="slo,fixed8,fixed16",
                    help="comma-separated, from bench.batching's (default slo,fixed8,fixed16)")
    ap.add_argument("--rates", default=None, help="comma-separated requests/s")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="take the rates from a bench.batching result")
    ap.add_argument("--repeat", type=int, default=None, help="trials per rate (default 3; quick 2)")
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--function", default="mobilenet")
    ap.add_argument("--step-s", type=float, default=None, help="seconds per trial (default 15)")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    known = dict(race.configs(args.slo_ms))
    names = args.configs.split(",")
    if unknown := [n for n in names if n not in known]:
        ap.error(f"--configs: unknown {unknown}; allowed: {list(known)}")
    if args.rates:
        rates = [float(r) for r in args.rates.split(",")]
    elif args.from_json:
        rates = rates_from_race(args.from_json)
    else:
        ap.error("give --rates or --from-json")
    repeat = args.repeat or (2 if args.quick else 3)
    step_s = args.step_s or (5.0 if args.quick else 15.0)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f}s] {msg}", flush=True)

    cores = sorted(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    trials: dict[str, dict[float, list[dict[str, Any]]]] = {n: {r: [] for r in rates} for n in names}
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d) / "redis", persist=False) as srv:
        specs = [race.replica_spec(f"top-{n}", known[n], srv.url, args.function, cores)
                 for n in names]
        reps = rp.start_replicas(specs, Path(d) / "replicas")
        urls = {n: rep.url for n, rep in zip(names, reps, strict=True)}
        try:
            for url in urls.values():
                race.warm(url + "/", 30)
            for n in names:  # not counted: from idle to the first rate (a cold policy state and
                # cold caches gave every configuration a tail spike in its first trial)
                race.poisson_step(urls[n] + "/", rates[0], min(step_s, 5.0), args.seed)
            k = 0
            for rate in rates:
                for t in range(repeat):
                    order = names[k % len(names):] + names[:k % len(names)]
                    k += 1
                    for n in order:
                        before = race.batch_sizes(urls[n])
                        st = race.poisson_step(urls[n] + "/", rate, step_s, args.seed + k)
                        st["mean_batch"] = race.mean_batch(before, race.batch_sizes(urls[n]))
                        trials[n][rate].append(st)
                        log(f"  {n:8} {rate:7.1f} rps trial {t + 1}/{repeat}: p50 "
                            f"{st['p50_ms']:7.1f} p99 {st['p99_ms']:8.1f} ms, mean batch "
                            f"{st['mean_batch']}, errors {st['errors']}")
        finally:
            rp.stop_replicas(reps)
    table: dict[str, Any] = {}
    for n in names:
        rows = {}
        for rate in rates:
            ts = trials[n][rate]
            p99s = [s["p99_ms"] for s in ts]
            rows[str(rate)] = {
                "p99_ms": p99s, "p99_median_ms": statistics.median(p99s),
                "p50_median_ms": statistics.median(s["p50_ms"] for s in ts),
                "mean_batch": [s["mean_batch"] for s in ts],
                "passed": sum(1 for s in ts if s["p99_ms"] <= args.slo_ms and s["errors"] == 0),
                "errors": sum(s["errors"] for s in ts)}
        ok = [r for r in rates if rows[str(r)]["p99_median_ms"] <= args.slo_ms
              and rows[str(r)]["errors"] == 0]
        table[n] = {"rates": rows, "max_rps_median_p99_at_slo": max(ok, default=0.0)}
    result = {"function": args.function, "slo_ms": args.slo_ms, "step_s": step_s,
              "repeat": repeat, "rates": rates, "cores": cores,
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "runtime_s": round(time.perf_counter() - t0, 1), "configs": table}
    print(f"\n{args.function}, p99 bound {args.slo_ms:g} ms, {repeat} trials of {step_s:g} s per "
          f"rate; load average before {load_before[0]:.2f}")
    print(f"{'rate':>7} " + " ".join(f"{n + ' p99s (passed)':>32}" for n in names))
    for rate in rates:
        cells = []
        for n in names:
            row = table[n]["rates"][str(rate)]
            cells.append(f"{'/'.join(f'{p:.0f}' for p in row['p99_ms'])} ({row['passed']}/{repeat})")
        print(f"{rate:7.1f} " + " ".join(f"{c:>32}" for c in cells))
    for n in names:
        print(f"{n}: highest rate with median p99 <= {args.slo_ms:g} ms: "
              f"{table[n]['max_rps_median_p99_at_slo']:.1f} rps")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
