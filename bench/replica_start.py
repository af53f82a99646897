"""Start-to-ready of a replica, phase by phase, for a model whose weights are already stored.

    python -m bench.replica_start [--quick] [--json PATH] [--models mobilenet,resnet50] [--trials N]

The embedded platform on a fresh state directory; each model is deployed with ``fastgshare/model``
(shared weights) and one replica, so its weights are in the node's model store before the first
trial. A trial scales the function to zero, waits until its replica has gone, then scales it to
one and follows the new replica from the outside:

- ``sidecar up``: the scale request -> the sidecar's first log line: the node agent's reaction,
  the interpreter and the sidecar's imports;
- ``listening``: -> the sidecar listens (its log line): Redis, token client, memory guard;
- ``worker spawn``: -> the worker process is started by the sidecar (log line); with the node's
  warm pool (``fast_manager.warm_pool``, on by default) it is forked from the pool, torch already
  imported, before the sidecar's own imports (``fast_manager.sidecar_start``), so this phase may
  end before ``listening``;
- ``worker load``: -> the worker says it is ready (its log line): interpreter and torch import
  (cold only), the handler's ``load()`` with weights from the store, and its warm-up inference;
- ``noticed``: -> the sidecar has seen the worker ready (its probe);
- ``routed``: -> the provider lists the replica ready and the first invocation through it
  answered 200 (the first inference included);
- and the first inference against the next ones (warm-up cost).

Beside it, in the same run: a bare interpreter's start (``python -c pass``) and ``import torch``
in a fresh interpreter, the floor of any process that serves a model. Table on stdout, JSON
(default ``bench/results/replica_start.json``), PNG beside it (stacked phases per model).

Target (issue 18, CPU VM): a replica of an already-stored model ready in <= 1 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine, parser, register_image, write_json

PHASES = ("sidecar up", "listening", "worker spawn", "worker load", "noticed", "routed")
_MARKS = {  # phase -> (logger, text) its first line has ("": any); ("", ""): the log's first line
    "sidecar up": ("", ""),
    "listening": ("[sidecar]", "listening on"),
    "worker spawn": ("[sidecar.worker]", "info: worker pid"),
    "worker load": ("", "worker ready on"),
    "noticed": ("[sidecar.worker]", " ready\n"),
}
MODELS = {"mobilenet": "mobilenet-seed0", "resnet50": "resnet50-seed0"}


def _fresh_process_s(code: str, runs: int) -> float:
    """Median wall seconds of ``python -c code`` in a fresh interpreter."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _log_times(log: str) -> dict[str, float]:
    """The Unix time of the first line that ends each phase (lines start with an ISO time)."""
    out: dict[str, float] = {}
    for line in log.splitlines(keepends=True):
        stamp, _, rest = line.partition(" ")
        for phase, (logger, text) in _MARKS.items():
            if phase not in out and rest.startswith(logger) and text in rest:
                try:
                    out[phase] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    pass
    return out


def trial(client: Any, state_dir: Path, name: str) -> dict[str, float]:
    """One scale 0 -> 1 of ``name``: the end of each phase, in seconds after the scale request."""
    client.scale(name, 0)
    deadline = time.monotonic() + 60
    while client.replicas_of(name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the replica did not go in 60 s")
        time.sleep(0.05)
    t0 = time.time()
    client.scale(name, 1)
    replica_id = None
    while True:  # until the provider lists it ready (polled: an invocation would wait inside)
        if time.time() - t0 > 120:
            raise RuntimeError(f"{name}: not ready within 120 s of the scale")
        reps = client.replicas_of(name)
        if reps:
            replica_id = reps[0].replica_id
            if reps[0].ready:
                break
        time.sleep(0.01)
    resp = client.invoke(name, b"{}")
    routed = time.time()
    if resp.status_code != 200:
        raise RuntimeError(f"{name}: the first invocation answered {resp.status_code}")
    first_ms = float(resp.elapsed.total_seconds() * 1000.0)
    steady = []
    for _ in range(5):
        r = client.invoke(name, b"{}")
        steady.append(r.elapsed.total_seconds() * 1000.0)
    out = {"routed": routed - t0, "first_ms": first_ms, "steady_ms": statistics.median(steady)}
    logs = list((state_dir / "logs").rglob(f"{replica_id}.log")) if replica_id else []
    if logs:
        out |= {k: v - t0 for k, v in _log_times(logs[0].read_text()).items()}
    return out


def plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.7 * len(rows)))
    colors = plt.get_cmap("tab10")
    labelled: set[str] = set()
    for i, med in enumerate(rows.values()):
        prev = 0.0
        # In the order the phases ended (a warm-pool worker is forked before the sidecar listens).
        ends = sorted((med[p], j, p) for j, p in enumerate(PHASES) if p in med)
        for end, j, phase in ends:
            ax.barh(i, end - prev, left=prev, color=colors(j),
                    label=None if phase in labelled else phase)
            labelled.add(phase)
            prev = end
    ax.axvline(1.0, color="k", ls="--", lw=1, label="target 1 s")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel("seconds after the scale request (median of the trials)")
    ax.set_title("replica start-to-ready by phase, stored model: warm pool and cold")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _one_platform(args: Any, trials: int, result: dict[str, Any], label: str) -> None:
    """Each model on one embedded platform: deployed, first started, then ``trials`` scale-ups."""
    import redis

    from fastgshare.platform import Platform
    from fastgshare.provider_client import ProviderClient

    state_dir = Path(tempfile.mkdtemp(prefix="bench-replica-start-"))
    platform = Platform(state_dir, port=0)
    info = platform.start()
    try:
        client = ProviderClient(info.url, info.auth, timeout_s=120)
        store = redis.Redis.from_url(info.redis_url)
        for name in args.models.split(","):
            register_image(store, f"bench/{name}", ROOT / "functions" / name)
            client.deploy({"service": name, "image": f"bench/{name}",
                           "annotations": {"fastgshare/model": MODELS.get(name, f"{name}-seed0")}})
            print(f"{name}{label}: first start (stores the weights) ...", flush=True)
            t0 = time.monotonic()
            while (resp := client.invoke(name, b"{}")).status_code != 200:
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"{name} did not start in 300 s: {resp.status_code} "
                                       f"{resp.text[:300]}")
                time.sleep(0.2)
            result.setdefault("first_start_s", {})[name] = round(time.monotonic() - t0, 2)
            rows = []
            for k in range(trials):
                row = trial(client, state_dir, name)
                rows.append(row)
                print(f"  trial {k + 1}/{trials}: " + "  ".join(
                    f"{p} {row[p]:.2f}" for p in PHASES if p in row)
                    + f"  first {row['first_ms']:.0f} ms, then {row['steady_ms']:.0f} ms", flush=True)
            result.setdefault("trials", {})[name] = rows
            keys = sorted({k for r in rows for k in r})
            result.setdefault("median", {})[name] = {
                k: round(statistics.median(r[k] for r in rows if k in r), 3) for k in keys}
            client.remove(name)
    finally:
        platform.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser("replica_start", __doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--trials", type=int, default=None, help="scale-ups per model (5; quick 2)")
    ap.add_argument("--pool", default="on,off",
                    help="with the node's warm pool (on), without it (off: every worker starts "
                         "cold, the baseline), or both in this order (default on,off)")
    args = ap.parse_args(argv)
    trials = args.trials or (2 if args.quick else 5)

    load_before = os.getloadavg()
    print("floor: a fresh interpreter, and import torch in one ...", flush=True)
    runs = 3 if args.quick else 5
    python_s = _fresh_process_s("pass", runs)
    torch_s = _fresh_process_s("import torch", runs) - python_s
    result: dict[str, Any] = {"python_start_s": round(python_s, 3), "torch_import_s": round(torch_s, 3),
                              "trials": {}, "median": {}, "pool": args.pool}
    for pool in args.pool.split(","):
        os.environ["FASTGSHARE_WARM_POOL"] = pool  # the node agent reads it at its start
        # The platform as it runs by default (pool on) is the result; cold is the baseline.
        _one_platform(args, trials, result if pool == "on" else result.setdefault(
            "baseline_cold", {}), "" if pool == "on" else " (cold: no warm pool)")
    os.environ.pop("FASTGSHARE_WARM_POOL", None)
    cold_median = result.get("baseline_cold", {}).get("median", {})
    for name in args.models.split(","):
        warm, cold = result["median"].get(name), cold_median.get(name)
        if warm and cold and warm.get("routed") and cold.get("routed"):
            result.setdefault("warm_over_cold", {})[name] = round(warm["routed"] / cold["routed"], 3)
    result["machine"] = machine() | {"load_average_before_after": [
        round(x, 2) for x in load_before + os.getloadavg()]}
    print_table(result)
    write_json(args.json, result)
    png = args.json.with_suffix(".png")
    plot(result["median"] | {f"{k} (cold)": v for k, v in cold_median.items()}, png)
    print(f"wrote {png}")
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"\nfloor: interpreter {r['python_start_s']:.2f} s, import torch {r['torch_import_s']:.2f} s "
          f"(load average before/after {r['machine']['load_average_before_after']})")
    print("\nseconds after the scale request at which each phase ended (median):")
    print(f"{'model':<18}" + "".join(f"{p:>14}" for p in PHASES) + f"{'1st inf ms':>12}{'then ms':>9}")
    rows = r["median"] | {f"{k} (cold)": v for k, v in r.get("baseline_cold", {}).get("median", {}).items()}
    for name, med in rows.items():
        print(f"{name:<18}" + "".join(f"{med.get(p, float('nan')):14.2f}" for p in PHASES)
              + f"{med.get('first_ms', float('nan')):12.0f}{med.get('steady_ms', float('nan')):9.0f}")
    for name, ratio in r.get("warm_over_cold", {}).items():
        print(f"{name}: routed with the warm pool / cold, same run: {ratio:.2f}")
    print("target: routed <= 1 s for a stored model (issue 18)")


if __name__ == "__main__":
    main()
