"""Shared weights per forward: the worker's ``X-Fastgshare-Busy-Ms`` with and without
``fastgshare/model``, in one run.

Three python3-torch workers of one example function, started on one model store:

- ``private``: the function's own copy of the weights (``FASTGSHARE_MODEL_SHARING=off``);
- ``shared``: the weights mapped read-only from the model store (the default with
  ``fastgshare/model``): kept read-only by the mapping's protection, nothing per op;
- ``guard``: shared, with ``FASTGSHARE_MODEL_GUARD=on`` (a debugging aid: every weight is a
  ``SharedWeight`` whose ``__torch_function__`` refuses in-place writes in Python, on every op).

They take turns in rounds (a rotating order; each sends ``--requests`` single-stream requests
straight to its worker, one thread, the same input), so all three meet this machine's noise alike.
Per round, each worker's median Busy-Ms (the device time its executions reported); the figure is
the median over rounds of the per-round ratio to ``private``, with its range. Issue 17's target:
shared weights cost nothing measurable per forward (``shared`` / ``private`` within the noise,
which the ``private`` rounds' own spread shows).

    python -m bench.shared_weights [--quick] [--json PATH] [--functions mobilenet,resnet50]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import RESULTS, parser, write_json
from bench.model_sharing import start_worker

CONFIGS: dict[str, dict[str, Any]] = {
    "private": {"shared": False, "env": {}},
    "shared": {"shared": True, "env": {"FASTGSHARE_MODEL_GUARD": "off"}},
    "guard": {"shared": True, "env": {"FASTGSHARE_MODEL_GUARD": "on"}},
}
MODELS = {"mobilenet": "mobilenetv2-0.5-seed0", "resnet50": "resnet50-seed0"}


def busy_ms(session: requests.Session, url: str) -> float:
    r = session.post(url, data=b"{}", headers={"Content-Type": "application/json"}, timeout=120)
    r.raise_for_status()
    return float(r.headers["X-Fastgshare-Busy-Ms"])


def maps_store(pid: int, store: Path) -> bool:
    """Whether the process maps a file of the model store (its weights, shared)."""
    return any(str(store) in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def run_function(fn: str, rounds: int, n: int, tmp: Path, log) -> dict[str, Any]:
    store = tmp / f"store-{fn}"
    procs, urls, mapped = [], {}, {}
    try:
        for name, cfg in CONFIGS.items():  # shared ones after private: the store file exists
            proc, url, start_s = start_worker(
                fn, store, f"sw-{fn}-{name}", cfg["shared"], tmp / f"{fn}-{name}.log",
                model=MODELS[fn], extra_env={"OMP_NUM_THREADS": "1", **cfg["env"]})
            procs.append(proc)
            urls[name] = url
            mapped[name] = maps_store(proc.pid, store)
            log(f"{fn} {name}: ready in {start_s:.1f} s, "
                f"{'maps the store' if mapped[name] else 'its own weights'}")
            if mapped[name] != cfg["shared"]:  # the comparison would be of nothing
                raise RuntimeError(f"{fn} {name}: store mapped {mapped[name]}, expected "
                                   f"{cfg['shared']} ({tmp / f'{fn}-{name}.log'})")
        per_round: dict[str, list[float]] = {name: [] for name in CONFIGS}
        names = list(CONFIGS)
        with requests.Session() as s:
            for url in urls.values():  # warm-up, not counted
                for _ in range(5):
                    busy_ms(s, url)
            for k in range(rounds):
                for name in names[k % 3:] + names[:k % 3]:
                    per_round[name].append(statistics.median(
                        busy_ms(s, urls[name]) for _ in range(n)))
                log(f"{fn} round {k + 1}/{rounds}: " + ", ".join(
                    f"{name} {per_round[name][-1]:.2f} ms" for name in names))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
    out: dict[str, Any] = {"model": MODELS[fn], "requests_per_round": n, "configs": {}}
    for name in names:
        ratios = [a / b for a, b in zip(per_round[name], per_round["private"], strict=True)]
        out["configs"][name] = {
            "maps_store": mapped[name],
            "round_medians_ms": [round(x, 3) for x in per_round[name]],
            "busy_ms_median": round(statistics.median(per_round[name]), 3),
            "ratio_to_private_median": round(statistics.median(ratios), 4),
            "ratio_to_private_range": [round(min(ratios), 4), round(max(ratios), 4)],
        }
    priv = per_round["private"]
    # the noise floor: how far a private round strays from the private median
    out["private_round_spread"] = round((max(priv) - min(priv)) / statistics.median(priv), 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser("shared_weights", __doc__.split("\n")[0])
    ap.add_argument("--functions", default=None,
                    help="comma-separated example functions (default mobilenet,resnet50; "
                         "--quick: mobilenet)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 10; --quick 4)")
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per worker per round (default 60; --quick 25)")
    args = ap.parse_args(argv)
    fns = (args.functions or ("mobilenet" if args.quick else "mobilenet,resnet50")).split(",")
    unknown = [f for f in fns if f not in MODELS]
    if unknown:
        ap.error(f"--functions: unknown {unknown}; allowed: {sorted(MODELS)}")
    rounds = args.rounds or (4 if args.quick else 10)
    n = args.requests or (25 if args.quick else 60)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:5.0f}s] {msg}", flush=True)

    load_before = os.getloadavg()
    result: dict[str, Any] = {"rounds": rounds, "functions": {}}
    with tempfile.TemporaryDirectory() as d:
        for fn in fns:
            result["functions"][fn] = run_function(fn, rounds, n, Path(d), log)
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    print(f"\nBusy-Ms per forward (batch 1, 1 thread), {rounds} rounds; load average before "
          f"{load_before[0]:.2f}, after {result['loadavg_after'][0]:.2f}")
    print(f"{'function':10} {'config':8} {'busy ms':>8} {'x private':>9} {'range':>15}")
    for fn, r in result["functions"].items():
        for name, c in r["configs"].items():
            lo, hi = c["ratio_to_private_range"]
            print(f"{fn:10} {name:8} {c['busy_ms_median']:8.2f} "
                  f"{c['ratio_to_private_median']:9.3f} {lo:7.3f}-{hi:.3f}")
        print(f"{fn:10} private rounds' own spread: {r['private_round_spread']:.1%} of their median")
    write_json(args.json, result)
    plot(result, args.json.with_suffix(".png") if args.json.parent != RESULTS
         else RESULTS / "shared_weights.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fns = list(result["functions"])
    fig, axes = plt.subplots(1, len(fns), figsize=(4.5 * len(fns), 3.6), squeeze=False)
    for ax, fn in zip(axes[0], fns, strict=True):
        cfg = result["functions"][fn]["configs"]
        ax.boxplot([cfg[n]["round_medians_ms"] for n in cfg], tick_labels=list(cfg))
        ax.set_title(f"{fn}: Busy-Ms per forward, per round")
        ax.set_ylabel("ms (median of a round)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
