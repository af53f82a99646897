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


def device_rows(redis_url: str) -> list[list[Any]]:
    """Devices the node agents registered (only the local platform's Redis has them)."""
    import redis

    from fast_manager.node_agent import read_devices

    client = redis.Redis.from_url(redis_url)
    try:
        return [[d.device_id, d.kind, d.name, len(d.cores) or "", d.mem_bytes // 2**20]
                for d in read_devices(client)]
    finally:
        client.close()


def replica_rows(client: Any) -> list[list[Any]]:
    """One row per replica, from the provider's ``/system/fastgshare/replicas``."""
    resp = client.session.get(f"{client.url}/system/fastgshare/replicas", timeout=30)
    resp.raise_for_status()
    rows = []
    for fn in resp.json():
        shares = {"": fn["share"], **{c["configId"]: c["share"] for c in fn["configurations"]}}
        for r in fn["replicaStatus"]:
            share = shares.get(r["configId"], fn["share"])
            rows.append([fn["name"], r["replica"], r["configId"] or "base", r["device"],
                         ",".join(map(str, r["cores"])) or "-", r["smPct"],
                         f"{share.get('fastgshare/gpu_quota_request', '1')}/"
                         f"{share.get('fastgshare/gpu_quota_limit', '1')}",
                         "yes" if r["ready"] else "no", r["restarts"]])
    return rows


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
    print()
    print(table(["function", "replica", "group", "device", "cores", "sm%", "quota req/lim",
                 "ready", "restarts"], replica_rows(client)))
    platform_json = Path(state_dir) / "platform.json"
    if platform_json.exists():
        print()
        redis_url = json.loads(platform_json.read_text())["redis_url"]
        print(table(["device", "kind", "name", "cores", "mem MiB"], device_rows(redis_url)))
        from fast_scheduler.report import HEADERS, decision_rows

        decisions = decision_rows(redis_url)
        if decisions:
            print("\nscheduler decisions")
            print(table(list(HEADERS), decisions))
