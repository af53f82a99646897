"""GPU model sharing check (prepared for a GPU machine; never run on the development machine).

Starts the GPU model holder (``fast_manager.model_store_gpu``) for GPU 0 and N replica processes of
ResNet-50 (or BERT) through the python3-torch runtime, first with sharing (weights on the GPU once,
mapped by CUDA IPC) then without (each replica ``.to("cuda")``s its own copy), and reads every
process's device memory from NVML. Prints a table and writes JSON.

    python -m bench.gpu.model_sharing_gpu [--fn resnet50] [--replicas 3] [--json PATH]

Exit status 0 when the shared run's per-extra-replica device memory is below the unshared one's by
at least 90 % of the weights (the issue's target), 1 otherwise, 2 when there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "function_templates" / "python3-torch" / "index.py"
sys.path.insert(0, str(REPO))
from bench.model_sharing import start_worker  # noqa: E402

MiB = 2**20


def gpu_uuid() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        u = pynvml.nvmlDeviceGetUUID(h)
        return u.decode() if isinstance(u, bytes) else u
    except Exception:  # no NVML, no GPU
        return None


def device_mem_by_pid() -> dict[int, int]:
    import pynvml

    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
    return {p.pid: int(p.usedGpuMemory or 0) for p in procs}


def device_used_bytes() -> int:
    """The whole device's used memory: a cross-check that needs no per-process accounting."""
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)


def start_replica(fn: str, store: Path, uuid: str, shared: bool, n: int, log: Path):
    return start_worker(fn, store, f"{fn}-{n}", shared, log, device=f"gpu:{uuid}",
                        model=f"{fn}-seed0", extra_env={"CUDA_VISIBLE_DEVICES": uuid})


def run(fn: str, n_max: int, uuid: str, tmp: Path, shared: bool) -> list[dict]:
    store = tmp / ("shared" if shared else "unshared")
    store.mkdir(parents=True, exist_ok=True)
    holder = None
    if shared:
        sock = store / f"gpu-{uuid}.sock"
        holder = subprocess.Popen([sys.executable, "-m", "fast_manager.model_store_gpu", "--socket",
                                   str(sock)], cwd=REPO, env=dict(os.environ,
                                                                  CUDA_VISIBLE_DEVICES=uuid))
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
    procs, rows, outputs = [], [], []
    used0 = device_used_bytes()
    try:
        for n in range(1, n_max + 1):
            proc, url, start_s = start_replica(fn, store, uuid, shared, n, tmp / f"{shared}-{n}.log")
            procs.append(proc)
            outputs.append(requests.post(url, json={}, timeout=120).json())
            time.sleep(1.0)
            mem = device_mem_by_pid()
            replicas = sum(mem.get(p.pid, 0) for p in procs)
            held = mem.get(holder.pid, 0) if holder else 0
            rows.append({"n": n, "replicas_device_bytes": replicas, "holder_device_bytes": held,
                         "total_device_bytes": replicas + held, "start_s": round(start_s, 2),
                         "device_used_delta_bytes": device_used_bytes() - used0})
            print(f"  {'shared' if shared else 'unshared'} n={n}: replicas {replicas / MiB:.0f} MiB,"
                  f" holder {held / MiB:.0f} MiB,"
                  f" device used +{rows[-1]['device_used_delta_bytes'] / MiB:.0f} MiB,"
                  f" start {start_s:.1f} s", flush=True)
        assert all(o == outputs[0] for o in outputs), "replicas disagree"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        if holder:
            holder.terminate()
            holder.wait(30)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.model_sharing_gpu")
    p.add_argument("--fn", default="resnet50", choices=["resnet50", "bert", "mobilenet"])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "model_sharing_gpu.json")
    args = p.parse_args()
    uuid = gpu_uuid()
    if uuid is None:
        print("no GPU (NVML unavailable): nothing to measure")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fastgshare-gpu-sharing-"))
    shared = run(args.fn, args.replicas, uuid, tmp, True)
    unshared = run(args.fn, args.replicas, uuid, tmp, False)
    import torch

    sys.path.insert(0, str(REPO / "functions" / args.fn))
    sys.path.insert(0, str(RUNTIME.parent))
    import handler  # noqa: E402

    with torch.device("meta"):
        m = handler.build()
    weights = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    def extra(rows: list[dict]) -> float:
        return (rows[-1]["total_device_bytes"] - rows[0]["total_device_bytes"]) / max(1, len(rows) - 1)

    def extra_used(rows: list[dict]) -> float:
        first, last = rows[0]["device_used_delta_bytes"], rows[-1]["device_used_delta_bytes"]
        return (last - first) / max(1, len(rows) - 1)

    extra_s, extra_u = extra(shared), extra(unshared)
    result = {"fn": args.fn, "gpu": uuid, "weights_bytes": weights, "shared": shared,
              "unshared": unshared, "extra_replica_bytes_shared": extra_s,
              "extra_replica_bytes_unshared": extra_u,
              "saving_frac_of_weights": (extra_u - extra_s) / weights,
              "extra_replica_used_bytes_shared": extra_used(shared),
              "extra_replica_used_bytes_unshared": extra_used(unshared)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"weights {weights / MiB:.0f} MiB; extra replica: shared {extra_s / MiB:.0f} MiB, "
          f"unshared {extra_u / MiB:.0f} MiB; saving {result['saving_frac_of_weights']:.0%} of the "
          f"weights; wrote {args.json}")
    return 0 if result["saving_frac_of_weights"] >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
