"""The main job: platform up, example functions deployed, load driven, results shown.

Brings the embedded platform up on a fresh state directory, deploys ``stack.yml``, sends the
same number of requests (``{}``: each example runs on its built-in sample) to every function
from concurrent clients, prints a report and a latency-over-time PNG, and stops everything.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 300.0
"""How long the deployed functions may take to load their models."""


def _wait_ready(client: Any, names: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for f in client.functions():
            if f["name"] in pending and f.get("availableReplicas", 0) >= max(1, f.get("replicas", 1)):
                pending.discard(f["name"])
                print(f"  {f['name']} ready ({time.monotonic() - deadline + READY_TIMEOUT_S:.1f} s)",
                      flush=True)
        time.sleep(0.5)
    if pending:
        raise SystemExit(f"functions not ready after {READY_TIMEOUT_S:.0f} s: {sorted(pending)}")


def _drive(client: Any, name: str, n: int, out: list[tuple[float, float, int]]) -> None:
    for _ in range(n):
        t0 = time.monotonic()
        resp = client.invoke(name, b"{}")
        out.append((t0, time.monotonic() - t0, resp.status_code))


def plot_latency(results: dict[str, list[tuple[float, float, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_min = min(t for rs in results.values() for t, _, _ in rs)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, rs in results.items():
        ax.plot([t - t_min for t, _, _ in rs], [d * 1000 for _, d, _ in rs], ".-", label=name)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("FaST-GShare demo: request latency over time (CPU device)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(stack: Path, *, requests_per_function: int, port: int, state_dir: Path | None) -> int:
    from fastgshare.build import load_stack, register_stack
    from fastgshare.platform import Platform
    from fastgshare.provider_client import ProviderClient
    from fastgshare.report import replica_rows, table
    from fastgshare.stats import percentile

    state = Path(state_dir or tempfile.mkdtemp(prefix="fastgshare-demo-"))
    print(f"[1/4] starting the embedded platform (state: {state})", flush=True)
    platform = Platform(state, port=port)
    info = platform.start()
    try:
        print(f"      provider at {info.url} (user {info.user}, password {info.password})")
        _, functions = load_stack(stack)
        client = ProviderClient(info.url, info.auth, timeout_s=60)
        register_stack(client, stack)
        print(f"[2/4] deploying {len(functions)} functions from {stack}", flush=True)
        for fn in functions:
            client.deploy(fn.body)
        _wait_ready(client, [fn.name for fn in functions])
        print(f"[3/4] sending {requests_per_function} requests to each function, concurrently",
              flush=True)
        results: dict[str, list[tuple[float, float, int]]] = {fn.name: [] for fn in functions}
        threads = [threading.Thread(target=_drive, args=(client, fn.name, requests_per_function,
                                                         results[fn.name])) for fn in functions]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall_s = time.monotonic() - t0
        print("[4/4] report", flush=True)
        status = {f["name"]: f for f in client.functions()}
        cores = {r[0]: r[4] for r in replica_rows(client.replicas())}
        rows = []
        for name, rs in results.items():
            f = status.get(name, {})
            ann = f.get("annotations") or {}
            ok = [d for _, d, code in rs if code == 200]
            rows.append([name, f.get("availableReplicas", 0),
                         f"{ann.get('fastgshare/gpu_sm_partition', '100')}% "
                         f"(cores {cores.get(name, '?')})",
                         f"{ann.get('fastgshare/gpu_quota_request', '1')}/"
                         f"{ann.get('fastgshare/gpu_quota_limit', '1')}",
                         len(rs), len(ok), f"{percentile(ok, 50) * 1000:.1f}",
                         f"{percentile(ok, 99) * 1000:.1f}"])
        print(table(["function", "replicas", "device share", "quota req/lim", "requests", "ok",
                     "p50 ms", "p99 ms"], rows))
        print(f"\n{sum(len(r) for r in results.values())} requests in {wall_s:.1f} s")
        png = state / "demo-latency.png"
        plot_latency(results, png)
        print(f"latency over time: {png}")
        failed = sum(1 for rs in results.values() for _, _, code in rs if code != 200)
        return 1 if failed else 0
    finally:
        print("stopping the platform...", flush=True)
        platform.stop()
