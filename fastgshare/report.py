"""Tables for people: ``fastgshare status`` and the demo's report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s) * 1000, q)) if samples_s else float("nan")


def replica_rows(redis_url: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """(devices, replicas) rows from the registry and the replica records in Redis."""
    import redis
    import requests

    from fastgshare import keys

    client = redis.Redis.from_url(redis_url)
    devices = []
    for raw in client.hvals(keys.devices()):
        d = json.loads(raw)
        devices.append([d.get("device_id"), d.get("kind"), d.get("name", ""),
                        len(d.get("cores", [])) or "", d.get("mem_bytes", 0) // 2**20])
    replicas = []
    for fkey in sorted(client.hkeys(keys.functions_index())):
        ns, name = fkey.decode().split("/", 1)
        for rec in client.hvals(keys.replicas(ns, name)):
            r = json.loads(rec)
            stats: dict[str, Any] = {}
            try:
                stats = requests.get(f"http://127.0.0.1:{r['port']}/_/stats", timeout=1).json()
            except (requests.RequestException, ValueError):
                pass
            lat = stats.get("latency_ms", {})
            replicas.append([name, r["replica_id"], r["device_id"],
                             ",".join(map(str, r["cores"])), r["sm_pct"],
                             stats.get("requests", "-"), stats.get("token_mode", "-"),
                             _ms(lat.get("p50")), _ms(lat.get("p99"))])
    client.close()
    return devices, replicas


def _ms(x: Any) -> str:
    return "-" if x is None else f"{float(x):.1f}"


def print_status(client: Any, state_dir: Path) -> None:
    functions = client.functions()
    rows = []
    for f in functions:
        ann = f.get("annotations") or {}
        rows.append([f["name"], f.get("image", ""), f.get("replicas", 0),
                     f.get("availableReplicas", 0), ann.get("fastgshare/gpu_sm_partition", "100"),
                     f"{ann.get('fastgshare/gpu_quota_request', '1')}/"
                     f"{ann.get('fastgshare/gpu_quota_limit', '1')}",
                     int(f.get("invocationCount", 0))])
    print(table(["function", "image", "replicas", "available", "sm%", "quota req/lim",
                 "invocations"], rows))
    platform_json = Path(state_dir) / "platform.json"
    if platform_json.exists():
        devices, replicas = replica_rows(json.loads(platform_json.read_text())["redis_url"])
        print()
        print(table(["device", "kind", "name", "cores", "mem MiB"], devices))
        print()
        print(table(["function", "replica", "device", "cores", "sm%", "requests", "tokens",
                     "p50 ms", "p99 ms"], replicas))
