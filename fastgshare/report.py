"""Tables for people: ``fastgshare status`` and the demo's report.

``fastgshare status`` shows what the platform runs, the profiler's shadow functions included (the
provider's contract routes leave them out; ``/system/fastgshare/replicas`` lists them with
``profileOf``), each marked as the profiling run of its function.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgshare.provider_client import ProviderClient


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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


def replica_rows(doc: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One row per replica, from the provider's ``/system/fastgshare/replicas``."""
    rows = []
    for fn in doc:
        shares = {"": fn["share"], **{c["configId"]: c["share"] for c in fn["configurations"]}}
        for r in fn["replicaStatus"]:
            share = shares.get(r["configId"], fn["share"])
            group = r["configId"] or ("profiling" if fn.get("profileOf") else "base")
            rows.append([fn["name"], r["replica"], group, r["device"],
                         ",".join(map(str, r["cores"])) or "-", r["smPct"],
                         f"{share.get('fastgshare/gpu_quota_request', '1')}/"
                         f"{share.get('fastgshare/gpu_quota_limit', '1')}",
                         "yes" if r["ready"] else "no", r["restarts"]])
    return rows


def function_rows(functions: Sequence[dict[str, Any]], doc: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """The users' functions (``/system/functions``), then the platform's profiling runs (in
    ``doc``, the replicas route, only), each marked with the function it profiles."""
    phase = {(f["namespace"], f["name"]): str(f.get("status") or "") for f in doc}
    rows = []
    for f in functions:
        ann = f.get("annotations") or {}
        rows.append([f["name"], f.get("image", ""), phase.get((f.get("namespace"), f["name"]), ""),
                     f.get("replicas", 0), f.get("availableReplicas", 0),
                     ann.get("fastgshare/gpu_sm_partition", "100"),
                     f"{ann.get('fastgshare/gpu_quota_request', '1')}/"
                     f"{ann.get('fastgshare/gpu_quota_limit', '1')}",
                     int(f.get("invocationCount", 0))])
    for s in doc:
        if not s.get("profileOf"):
            continue
        share = s.get("share") or {}
        rows.append([s["name"], s.get("image", ""), f"profiling run of {s['profileOf']}",
                     s.get("replicas", 0), s.get("availableReplicas", 0),
                     share.get("fastgshare/gpu_sm_partition", "100"),
                     f"{share.get('fastgshare/gpu_quota_request', '1')}/"
                     f"{share.get('fastgshare/gpu_quota_limit', '1')}", "-"])
    return rows


def print_status(client: ProviderClient, state_dir: Path | None) -> None:
    """Functions, replicas; with the state dir of a running ``up``, devices and the scheduler's
    decisions too (from its Redis)."""
    functions = client.functions()
    doc = client.replicas()
    print(table(["function", "image", "status", "replicas", "available", "sm%", "quota req/lim",
                 "invocations"], function_rows(functions, doc)))
    print()
    print(table(["function", "replica", "group", "device", "cores", "sm%", "quota req/lim",
                 "ready", "restarts"], replica_rows(doc)))
    platform_json = Path(state_dir) / "platform.json" if state_dir is not None else None
    if platform_json is not None and platform_json.exists():
        print()
        redis_url = json.loads(platform_json.read_text())["redis_url"]
        print(table(["device", "kind", "name", "cores", "mem MiB"], device_rows(redis_url)))
        from fast_scheduler.report import HEADERS, decision_rows

        decisions = decision_rows(redis_url)
        if decisions:
            print("\nscheduler decisions")
            print(table(list(HEADERS), decisions))
