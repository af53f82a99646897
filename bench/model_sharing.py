"""Model sharing: memory per replica (PSS) and replica start time, 1..N replicas, with and without
sharing, for ResNet-50 and the BERT-base-style encoder (seeded weights, real worker processes).

Each replica is the python3-torch runtime (``index.py``) serving the example function, started one
after another on one model store; after each start every live replica's PSS is read from
``/proc/<pid>/smaps_rollup``. ``pss_bytes_*`` is the mean per replica (total / n). Start time is
spawn -> ``/_/ready`` of the replica just added (the first shared replica writes the store file).

Extra model memory (``extra_model_frac_of_weights``, the issue's target: <= 0.10): what replica n
adds to the total with sharing, beyond what it adds without sharing less the weights, i.e. beyond
an unshared replica's non-weight memory, as a fraction of the weights:
``(extra_shared - (extra_unshared - weights)) / weights``. It is computed from the PSS of every
mapping except code and data files (shared libraries, the interpreter, locales): those pages are the
same with and without sharing, but their PSS moves whenever any other process on the machine (other
benchmarks, tests) maps or unmaps libtorch, which is noise of several MiB between two readings.
``extra_model_frac_of_weights_all_pss`` is the same from the whole PSS. Per model, ``fit`` has the
same from the least-squares slope over n = 2..N (every reading at once; replica 1 left out).

    python -m bench.model_sharing [--quick] [--guard on|off] [--json PATH]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import RESULTS, parser, pss_bytes, write_json
from fastgshare.redis_server import free_port

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "function_templates" / "python3-torch" / "index.py"
MODELS = {"resnet50": "resnet50-seed0", "bert": "bert-base-seed0"}
MiB = 2**20


def pss_code_bytes(pid: int, store: Path) -> int:
    """PSS of the process's file mappings outside the model store: code and data files."""
    total = 0
    in_code = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head, _, rest = line.partition(" ")
        if not head.endswith(":"):  # a mapping's header: "lo-hi perms offset dev inode [path]"
            fields = rest.split(maxsplit=4)
            path = fields[4] if len(fields) > 4 else ""
            in_code = path.startswith("/") and not path.startswith(str(store))
        elif in_code and head == "Pss:":
            total += int(rest.split()[0]) * 1024
    return total


def start_worker(fn: str, store: Path, replica: str, shared: bool, log: Path, *,
                 device: str = "cpu:0", model: str | None = None,
                 extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, float]:
    """One python3-torch worker of example function ``fn`` with the model store at ``store``
    (sharing on or off); returns (process, URL, seconds until ready). Also used by the GPU check."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
    env.update({"FASTGSHARE_HANDLER_DIR": str(REPO / "functions" / fn),
                "FASTGSHARE_WORKER_PORT": str(port), "FASTGSHARE_REPLICA": replica,
                "FASTGSHARE_DEVICE": device, "FASTGSHARE_MODEL": model or MODELS[fn],
                "FASTGSHARE_MODEL_STORE_DIR": str(store)} | (extra_env or {}))
    if not shared:
        env["FASTGSHARE_MODEL_SHARING"] = "off"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(RUNTIME)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{replica} exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/_/ready", timeout=5).status_code == 200:
                return proc, url, time.monotonic() - t0
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.1)


def weights_bytes(fn: str) -> int:
    sys.path.insert(0, str(REPO / "functions" / fn))
    sys.path.insert(0, str(RUNTIME.parent))
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{fn}", REPO / "functions" / fn /
                                                  "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    with torch.device("meta"):
        m = module.build()
    return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])


def run_model(fn: str, n_max: int, tmp: Path, guard: str = "off") -> dict:
    out: dict = {"weights_bytes": weights_bytes(fn), "replicas": []}
    rows: dict[int, dict] = {n: {"n": n} for n in range(1, n_max + 1)}
    for shared in (True, False):
        mode = "shared" if shared else "unshared"
        store = tmp / f"{fn}-{mode}"
        procs: list[subprocess.Popen] = []
        outputs = []
        try:
            for n in range(1, n_max + 1):
                proc, url, start_s = start_worker(
                    fn, store, f"{fn}-{mode}-{n}", shared, tmp / f"{fn}-{mode}-{n}.log",
                    extra_env={"FASTGSHARE_MODEL_GUARD": guard, "OMP_NUM_THREADS": "1"})
                procs.append(proc)
                outputs.append(requests.post(url, json={}, timeout=120).json())
                time.sleep(0.5)  # let the warm-up's freed memory settle before reading PSS
                total = code = 0
                for p in procs:  # one pass per process, back to back
                    total += pss_bytes(p.pid)
                    code += pss_code_bytes(p.pid, store)
                rows[n][f"pss_bytes_{mode}"] = total // n
                rows[n][f"pss_total_bytes_{mode}"] = total
                rows[n][f"pss_code_total_bytes_{mode}"] = code
                rows[n][f"start_s_{mode}"] = round(start_s, 3)
                print(f"  {fn} {mode:8s} n={n}: start {start_s:5.2f} s, PSS/replica "
                      f"{total / n / MiB:7.1f} MiB, total {total / MiB:7.1f} MiB (code files "
                      f"{code / MiB:.1f})", flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        assert all(o == outputs[0] for o in outputs), f"{fn} {mode}: replicas disagree"
        out[f"output_{mode}"] = outputs[0]
        out[f"store_left_{mode}"] = sorted(q.name for q in store.glob("*.safetensors")) \
            if store.exists() else []
    out["outputs_identical"] = out.pop("output_shared") == out.pop("output_unshared")
    out["replicas"] = [rows[n] for n in sorted(rows)]
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def fitted_extra(data: dict) -> dict | None:
    """Extra model memory from the slope of total PSS (less code files) over n = 2..n_max: one
    number per model from every reading, less noisy than the step from n-1 to n. Replica 1 is left
    out: the shared one also built the weights and wrote the store file."""
    rows = [r for r in data["replicas"] if r["n"] >= 2]
    if len(rows) < 2:
        return None
    w = data["weights_bytes"]
    ns = [r["n"] for r in rows]
    per = {mode: slope(ns, [r[f"pss_total_bytes_{mode}"] - r[f"pss_code_total_bytes_{mode}"]
                            for r in rows]) for mode in ("shared", "unshared")}
    return {"n_from": ns[0], "n_to": ns[-1], "extra_bytes_shared": round(per["shared"]),
            "extra_bytes_unshared": round(per["unshared"]),
            "extra_model_frac_of_weights": round((per["shared"] - (per["unshared"] - w)) / w, 4)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for fn, data in result["models"].items():
        ns = [r["n"] for r in data["replicas"]]
        for mode, style in (("shared", "-o"), ("unshared", "--s")):
            axes[0].plot(ns, [r[f"pss_total_bytes_{mode}"] / MiB for r in data["replicas"]],
                         style, label=f"{fn} {mode}")
            axes[1].plot(ns, [r[f"start_s_{mode}"] for r in data["replicas"]], style,
                         label=f"{fn} {mode}")
    axes[0].set(xlabel="replicas", ylabel="total PSS (MiB)", title="Memory of n replicas")
    axes[1].set(xlabel="replica added", ylabel="start time (s)", title="Start time of replica n")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = parser("model_sharing", __doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=None, help="max replicas (default 4; 2 quick)")
    p.add_argument("--guard", choices=("on", "off"), default="off",
                   help="FASTGSHARE_MODEL_GUARD of the shared replicas (default off, as the "
                        "runtime's; the runs of 2026-11-27 were on)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default all)")
    args = p.parse_args(argv)
    n_max = args.replicas or (2 if args.quick else 4)
    tmp = Path(tempfile.mkdtemp(prefix="fastgshare-bench-sharing-"))
    result: dict = {"n_max": n_max, "guard": args.guard, "models": {}}
    try:
        for fn in args.models.split(","):
            print(f"{fn}: 1..{n_max} replicas, shared then unshared", flush=True)
            result["models"][fn] = run_model(fn, n_max, tmp, args.guard)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'model':9s} {'n':>2s} {'PSS/rep shared':>15s} {'unshared':>10s} {'extra shared':>13s} "
          f"{'extra unsh.':>12s} {'extra model':>12s} {'(all PSS)':>10s} {'start sh.':>10s} "
          f"{'start unsh.':>12s}")
    for fn, data in result["models"].items():
        w = data["weights_bytes"]
        prev = None
        for r in data["replicas"]:
            extra = ("", "", "", "")
            if prev is not None:
                es = r["pss_total_bytes_shared"] - prev["pss_total_bytes_shared"]
                eu = r["pss_total_bytes_unshared"] - prev["pss_total_bytes_unshared"]
                r["extra_bytes_shared"], r["extra_bytes_unshared"] = es, eu
                # What an extra shared replica costs beyond an unshared one's non-weight memory.
                r["extra_model_frac_of_weights_all_pss"] = round((es - (eu - w)) / w, 4)
                es_nc = es - (r["pss_code_total_bytes_shared"] - prev["pss_code_total_bytes_shared"])
                eu_nc = eu - (r["pss_code_total_bytes_unshared"]
                              - prev["pss_code_total_bytes_unshared"])
                r["extra_model_frac_of_weights"] = round((es_nc - (eu_nc - w)) / w, 4)
                extra = (f"{es / MiB:.1f}", f"{eu / MiB:.1f}",
                         f"{100 * r['extra_model_frac_of_weights']:.1f} %",
                         f"{100 * r['extra_model_frac_of_weights_all_pss']:.1f} %")
            print(f"{fn:9s} {r['n']:2d} {r['pss_bytes_shared'] / MiB:15.1f} "
                  f"{r['pss_bytes_unshared'] / MiB:10.1f} {extra[0]:>13s} {extra[1]:>12s} "
                  f"{extra[2]:>12s} {extra[3]:>10s} "
                  f"{r['start_s_shared']:10.2f} {r['start_s_unshared']:12.2f}")
            prev = r
        fit = data["fit"] = fitted_extra(data)
        if fit:
            print(f"{fn:9s} fit n={fit['n_from']}..{fit['n_to']}: an extra replica adds "
                  f"{fit['extra_bytes_shared'] / MiB:.1f} MiB shared, "
                  f"{fit['extra_bytes_unshared'] / MiB:.1f} MiB unshared: extra model memory "
                  f"{100 * fit['extra_model_frac_of_weights']:.1f} % of the weights")
        print(f"{fn:9s} weights {w / MiB:.1f} MiB, outputs identical: {data['outputs_identical']}")
    write_json(args.json, result)
    plot(result, RESULTS / "model_sharing.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
