"""Model sharing: memory per replica (PSS) and replica start time, 1..N replicas, with and without
sharing, for ResNet-50 and the BERT-base-style encoder (seeded weights, real worker processes).

Each replica is the python3-torch runtime (``index.py``) serving the example function, started one
after another on one model store; after each start every live replica's PSS is read from
``/proc/<pid>/smaps_rollup``. ``pss_bytes_*`` is the mean per replica (total / n). Start time is
spawn -> ``/_/ready`` of the replica just added (the first shared replica writes the store file).

    python -m bench.model_sharing [--quick] [--json PATH]
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


def _start(fn: str, store: Path, replica: str, shared: bool, log: Path) -> tuple[subprocess.Popen,
                                                                                 str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
    env.update({"FASTGSHARE_HANDLER_DIR": str(REPO / "functions" / fn),
                "FASTGSHARE_WORKER_PORT": str(port), "FASTGSHARE_REPLICA": replica,
                "FASTGSHARE_DEVICE": "cpu:0", "FASTGSHARE_MODEL": MODELS[fn],
                "FASTGSHARE_MODEL_STORE_DIR": str(store), "OMP_NUM_THREADS": "1"})
    if not shared:
        env["FASTGSHARE_MODEL_SHARING"] = "off"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(RUNTIME)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{replica} exited: {log.read_text()[-2000:]}")
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


def run_model(fn: str, n_max: int, tmp: Path) -> dict:
    out: dict = {"weights_bytes": weights_bytes(fn), "replicas": []}
    rows: dict[int, dict] = {n: {"n": n} for n in range(1, n_max + 1)}
    for shared in (True, False):
        mode = "shared" if shared else "unshared"
        store = tmp / f"{fn}-{mode}"
        procs: list[subprocess.Popen] = []
        outputs = []
        try:
            for n in range(1, n_max + 1):
                proc, url, start_s = _start(fn, store, f"{fn}-{mode}-{n}", shared,
                                            tmp / f"{fn}-{mode}-{n}.log")
                procs.append(proc)
                outputs.append(requests.post(url, json={}, timeout=120).json())
                time.sleep(0.5)  # let the warm-up's freed memory settle before reading PSS
                total = sum(pss_bytes(p.pid) for p in procs)
                rows[n][f"pss_bytes_{mode}"] = total // n
                rows[n][f"pss_total_bytes_{mode}"] = total
                rows[n][f"start_s_{mode}"] = round(start_s, 3)
                print(f"  {fn} {mode:8s} n={n}: start {start_s:5.2f} s, PSS/replica "
                      f"{total / n / MiB:7.1f} MiB, total {total / MiB:7.1f} MiB", flush=True)
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
    args = p.parse_args(argv)
    n_max = args.replicas or (2 if args.quick else 4)
    tmp = Path(tempfile.mkdtemp(prefix="fastgshare-bench-sharing-"))
    result: dict = {"n_max": n_max, "models": {}}
    try:
        for fn in MODELS:
            print(f"{fn}: 1..{n_max} replicas, shared then unshared", flush=True)
            result["models"][fn] = run_model(fn, n_max, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'model':9s} {'n':>2s} {'PSS/rep shared':>15s} {'unshared':>10s} {'extra shared':>13s} "
          f"{'extra unsh.':>12s} {'start sh.':>10s} {'start unsh.':>12s}")
    for fn, data in result["models"].items():
        w = data["weights_bytes"]
        prev = None
        for r in data["replicas"]:
            extra = ("", "")
            if prev is not None:
                es = r["pss_total_bytes_shared"] - prev["pss_total_bytes_shared"]
                eu = r["pss_total_bytes_unshared"] - prev["pss_total_bytes_unshared"]
                r["extra_bytes_shared"], r["extra_bytes_unshared"] = es, eu
                # What an extra shared replica costs beyond an unshared one's non-weight memory.
                r["extra_model_frac_of_weights"] = round((es - (eu - w)) / w, 4)
                extra = (f"{es / MiB:.1f}", f"{eu / MiB:.1f}")
            print(f"{fn:9s} {r['n']:2d} {r['pss_bytes_shared'] / MiB:15.1f} "
                  f"{r['pss_bytes_unshared'] / MiB:10.1f} {extra[0]:>13s} {extra[1]:>12s} "
                  f"{r['start_s_shared']:10.2f} {r['start_s_unshared']:12.2f}")
            prev = r
        print(f"{fn:9s} weights {w / MiB:.1f} MiB, outputs identical: {data['outputs_identical']}")
    write_json(args.json, result)
    plot(result, RESULTS / "model_sharing.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
