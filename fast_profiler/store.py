"""Profile tables in Redis (for the scheduler), as JSON and CSV files, and the profiler's status.

Redis holds two strings per function and device type: the table itself (``keys.profile``, exactly
``ProfileTable.to_json()``, whose ``version`` field versions the layout) and the detail of how it
was made (``keys.profile_detail``: per point its source, busy fraction and error rate, plus when and
how long). The status hash (``keys.profile_status``) is what ``fastgshare profile NAME`` and the
function's status read while a profile runs.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

import redis

from fast_profiler.planner import FilledPoint
from fast_profiler.table import ProfileTable
from fastgshare import keys

DETAIL_VERSION = 1
"""Version of the detail JSON layout."""

CSV_FIELDS = ("function", "device_type", "sm_pct", "quota_frac", "batch", "throughput_rps",
              "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "busy_frac", "error_rate",
              "measured", "source")


class ProfileState(StrEnum):
    QUEUED = "queued"
    PROFILING = "profiling"
    DONE = "done"
    FAILED = "failed"


def detail_json(points: Sequence[FilledPoint], *, seconds: float, slo_ms: float, measured: int,
                created_s: float | None = None, code_identity: str = "") -> str:
    """``code_identity``: what code was measured (``fast_profiler.shadow.code_identity``); a
    redeploy of other code invalidates the table (``invalidate``)."""
    return json.dumps({
        "version": DETAIL_VERSION, "created_s": time.time() if created_s is None else created_s,
        "seconds": seconds, "slo_ms": slo_ms, "points_measured": measured, "points_total": len(points),
        "code_identity": code_identity,
        "points": [{"sm_pct": p.config.sm_pct, "quota_frac": p.config.quota_frac, "batch": p.config.batch,
                    "busy_frac": p.busy_frac, "error_rate": p.error_rate, "source": p.source.value,
                    "basis": [[b.sm_pct, b.quota_frac, b.batch] for b in p.basis]} for p in points],
    })


def save(client: redis.Redis, table: ProfileTable, detail: str | None = None) -> None:
    """Write the table (and its detail) for the scheduler, atomically."""
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.profile(table.function, table.device_type), table.to_json())
    if detail is not None:
        pipe.set(keys.profile_detail(table.function, table.device_type), detail)
    pipe.execute()


def load(client: redis.Redis, function: str, device_type: str) -> ProfileTable | None:
    raw = client.get(keys.profile(function, device_type))
    return None if raw is None else ProfileTable.from_json(raw.decode() if isinstance(raw, bytes) else raw)


def load_detail(client: redis.Redis, function: str, device_type: str) -> dict[str, object] | None:
    raw = client.get(keys.profile_detail(function, device_type))
    return None if raw is None else dict(json.loads(raw))


def has_table(client: redis.Redis, function: str, device_type: str) -> bool:
    return bool(client.exists(keys.profile(function, device_type)))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def device_types(client: redis.Redis, function: str) -> list[str]:
    """The device types ``function`` has a table or a detail record for."""
    found = set()
    for make in (keys.profile, keys.profile_detail):
        head, tail = make(function, "\0").split("\0")
        for key in client.scan_iter(match=make(function, "*"), count=500):
            k = _text(key)
            if k.startswith(head) and k.endswith(tail):
                found.add(k[len(head):len(k) - len(tail)])
    return sorted(found)


def recorded_identities(client: redis.Redis, function: str) -> dict[str, str | None]:
    """Per device type, the code identity its table was measured with (None: not recorded)."""
    out: dict[str, str | None] = {}
    for device_type in device_types(client, function):
        detail = load_detail(client, function, device_type) or {}
        out[device_type] = str(detail.get("code_identity") or "") or None
    return out


def invalidate(client: redis.Redis, namespace: str, function: str) -> list[str]:
    """Drop every table of ``function`` (and its detail) and its profile status, so that the
    scheduler stops using it and the watcher profiles the function again. Returns the device
    types dropped."""
    dropped = device_types(client, function)
    pipe = client.pipeline(transaction=True)
    for device_type in dropped:
        pipe.delete(keys.profile(function, device_type), keys.profile_detail(function, device_type))
    pipe.delete(keys.profile_status(namespace, function))
    pipe.execute()
    return dropped


def image_record(client: redis.Redis, image: str) -> dict[str, object] | None:
    """Local mode's registry entry of ``image`` (``keys.images``), matched as the local backend
    matches it (with or without ``:latest``); None when not registered."""
    for candidate in (image, image.removesuffix(":latest"), f"{image}:latest"):
        raw = client.hget(keys.images(), candidate)
        if raw:
            return dict(json.loads(raw))
    return None


def to_csv(table: ProfileTable, detail: Mapping[str, object] | None = None) -> str:
    """One row per grid point (throughput through the table's monotone envelope)."""
    extra: dict[tuple[int, float, int], dict[str, object]] = {}
    for d in (detail or {}).get("points", []) or []:  # type: ignore[union-attr]
        extra[(int(d["sm_pct"]), round(float(d["quota_frac"]), 6), int(d["batch"]))] = d
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_FIELDS)
    for p in table.grid():
        e = extra.get((p.sm_pct, round(p.quota_frac, 6), p.batch), {})
        w.writerow([table.function, table.device_type, p.sm_pct, f"{p.quota_frac:g}", p.batch,
                    f"{p.throughput_rps:.3f}", f"{p.latency_p50_ms:.3f}", f"{p.latency_p95_ms:.3f}",
                    f"{p.latency_p99_ms:.3f}", f"{float(e.get('busy_frac', 0.0)):.4f}",  # type: ignore[arg-type]
                    f"{float(e.get('error_rate', 0.0)):.4f}", int(p.measured),  # type: ignore[arg-type]
                    e.get("source", "measured" if p.measured else "interpolated")])
    return out.getvalue()


def export(table: ProfileTable, folder: Path,
           detail: Mapping[str, object] | None = None) -> tuple[Path, Path]:
    """``<function>.<device>.json`` (the table, plus ``detail`` when given) and ``.csv`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{table.function}.{table.device_type}".replace("/", "_").replace(" ", "_")
    jpath, cpath = folder / f"{stem}.json", folder / f"{stem}.csv"
    doc = json.loads(table.to_json())
    if detail is not None:
        doc["detail"] = detail
    jpath.write_text(json.dumps(doc, indent=1))
    cpath.write_text(to_csv(table, detail))
    return jpath, cpath


def table_from_export(text: str) -> ProfileTable:
    """Read a file written by ``export`` (the table's own JSON, with an optional ``detail``)."""
    doc = json.loads(text)
    doc.pop("detail", None)
    return ProfileTable.from_json(json.dumps(doc))


# ---- status ----------------------------------------------------------------------------------

def set_status(client: redis.Redis, namespace: str, name: str, state: ProfileState, *, measured: int = 0,
               planned: int = 0, current: str = "", message: str = "", elapsed_s: float = 0.0,
               device_type: str = "") -> None:
    client.hset(keys.profile_status(namespace, name), mapping={
        "state": state.value, "measured": measured, "planned": planned, "current": current,
        "message": message, "elapsed_s": f"{elapsed_s:.1f}", "device_type": device_type,
        "updated_s": f"{time.time():.3f}",
    })


def get_status(client: redis.Redis, namespace: str, name: str) -> dict[str, str]:
    raw = client.hgetall(keys.profile_status(namespace, name))
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


def forget_status(client: redis.Redis, namespace: str, name: str) -> None:
    """The function is gone (or its run was cancelled): no status, so that a later deploy of the
    same name is profiled again (``claim`` takes only a function without one)."""
    client.delete(keys.profile_status(namespace, name))


def claim(client: redis.Redis, namespace: str, name: str) -> bool:
    """Take the job of profiling ``name`` (one watcher at a time): True if this caller got it."""
    return bool(client.hsetnx(keys.profile_status(namespace, name), "state", ProfileState.QUEUED.value))
