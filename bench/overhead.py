"""How much latency the platform adds to a no-op function: worker alone, through its sidecar,
and through provider + sidecar, measured in one run with the same client; plus the sidecar's PSS.

Closed loop, one request at a time over kept-alive connections, so the figures are per-request
overheads and not queueing. Targets (issue 2): provider + sidecar add <= 1 ms p50, <= 3 ms p99;
sidecar PSS <= 60 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import urllib3

from bench.common import parser, pss_bytes, register_image, wait_http, write_json
from fastgshare.platform import Platform
from fastgshare.provider_client import ProviderClient
from fastgshare.redis_server import free_port
from fastgshare.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
NOOP = ROOT / "functions" / "noop"
RUNTIME = ROOT / "function_templates" / "python3-torch" / "index.py"


def measure(http: urllib3.PoolManager, url: str, n: int, label: str) -> np.ndarray:
    for _ in range(min(200, n)):  # warm up connections and code paths
        http.request("POST", url, body=b"{}")
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        resp = http.request("POST", url, body=b"{}")
        out[i] = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{label}: HTTP {resp.status}: {resp.data[:200]!r}")
    return out * 1000


def main() -> None:
    args = parser("overhead", __doc__.split("\n\n")[0]).parse_args()
    n = 300 if args.quick else 3000
    http = urllib3.PoolManager(maxsize=2, retries=False)
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, FASTGSHARE_HANDLER_DIR=str(NOOP), PYTHONUNBUFFERED="1")
    try:
        print(f"[1/3] worker alone ({n} requests)", flush=True)
        wport = free_port()
        procs.append(subprocess.Popen([sys.executable, str(RUNTIME)], stdout=subprocess.DEVNULL,
                                      env=dict(env, FASTGSHARE_WORKER_PORT=str(wport))))
        wait_http(f"http://127.0.0.1:{wport}/_/ready")
        direct = measure(http, f"http://127.0.0.1:{wport}/", n, "direct")

        print(f"[2/3] through the sidecar ({n} requests)", flush=True)
        sport = free_port()
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "fast_manager.sidecar"], stdout=subprocess.DEVNULL, cwd=ROOT,
            env=dict(env, FASTGSHARE_PORT=str(sport), FASTGSHARE_FUNCTION="noop",
                     FASTGSHARE_REPLICA="noop-bench", FASTGSHARE_RUNTIME=str(RUNTIME),
                     FASTGSHARE_DEVICE="cpu:0"))
        procs.append(sidecar)
        wait_http(f"http://127.0.0.1:{sport}/_/health")
        via_sidecar = measure(http, f"http://127.0.0.1:{sport}/", n, "sidecar")
        sidecar_pss = pss_bytes(sidecar.pid)

        print(f"[3/3] through provider + sidecar ({n} requests)", flush=True)
        with tempfile.TemporaryDirectory() as tmp, Platform(Path(tmp), port=0) as info:
            client = redis.Redis.from_url(info.redis_url)
            register_image(client, "bench/noop", NOOP)
            provider = ProviderClient(info.url, info.auth)
            provider.deploy({"service": "noop", "image": "bench/noop"})
            wait_http(provider.function_url("noop"), timeout_s=120)
            via_provider = measure(http, provider.function_url("noop"), n, "provider")
            pids = [r.pid for r in provider.replicas_of("noop") if r.pid]
            platform_sidecar_pss = pss_bytes(pids[0]) if pids else None
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)

    rows = [("worker (direct)", direct), ("sidecar", via_sidecar), ("provider + sidecar", via_provider)]
    print(f"\n{'path':<20} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, xs in rows:
        print(f"{label:<20} {percentile(xs, 50):8.3f} {percentile(xs, 99):8.3f} {xs.mean():8.3f}")
    result = {
        "requests_per_path": n,
        "paths": {label: {"p50_ms": percentile(xs, 50), "p99_ms": percentile(xs, 99),
                          "mean_ms": float(xs.mean())} for label, xs in rows},
        "p50_added_ms": percentile(via_provider, 50) - percentile(direct, 50),
        "p99_added_ms": percentile(via_provider, 99) - percentile(direct, 99),
        "sidecar_p50_added_ms": percentile(via_sidecar, 50) - percentile(direct, 50),
        "sidecar_pss_bytes": sidecar_pss,
        "platform_sidecar_pss_bytes": platform_sidecar_pss,
    }
    print(f"\nprovider + sidecar add {result['p50_added_ms']:.3f} ms at p50, "
          f"{result['p99_added_ms']:.3f} ms at p99 (targets 1 / 3 ms)")
    print(f"sidecar PSS {sidecar_pss / 2**20:.1f} MiB (target 60 MB)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
