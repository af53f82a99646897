"""The scheduler's latest decisions as table rows for ``fastgshare status``.

Reads the Redis hash ``keys.scheduler_decisions()`` that the control loop writes (one JSON record per
``<namespace>/<name>``, format in docs/scheduler.md). ``decision_rows`` does the I/O; ``rows_from``
is the pure formatting, so it is tested without Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from fastgshare import keys

HEADERS = ("function", "replicas", "configs", "rps obs/target/cap", "util", "p99 pred/slo ms",
           "feasible", "age s", "reason")


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    try:
        return fmt.format(float(x))
    except (TypeError, ValueError):
        return "-"


def _configs(configs: Any) -> str:
    if not isinstance(configs, list) or not configs:
        return "-"
    parts = []
    for c in configs:
        try:
            parts.append(f"{int(c.get('count', 1))}x sm{int(c['smPct'])} "
                         f"q{float(c['quotaRequest']):g}/{float(c['quotaLimit']):g} "
                         f"b{int(c.get('batch', 1))}")
        except (KeyError, TypeError, ValueError, AttributeError):
            parts.append("?")
    return ", ".join(parts)


def rows_from(records: Mapping[str, str | bytes], now_s: float, reason_chars: int = 80) -> list[list[Any]]:
    """One row per function, sorted by key; an unreadable record is shown as such, never raised."""
    rows: list[list[Any]] = []
    for key in sorted(records):
        raw = records[key]
        try:
            d = json.loads(raw)
            if not isinstance(d, dict):
                raise ValueError("not an object")
        except ValueError:
            rows.append([key, "-", "-", "-", "-", "-", "-", "-", "unreadable decision record"])
            continue
        reason = str(d.get("reason", ""))
        if len(reason) > reason_chars:
            reason = reason[: reason_chars - 3] + "..."
        at = d.get("at_s")
        rows.append([
            key,
            d.get("replicas", "-"),
            _configs(d.get("configs")),
            f"{_num(d.get('observed_rps'))}/{_num(d.get('target_rps'))}/{_num(d.get('capacity_rps'))}",
            _num(d.get("predicted_utilisation"), "{:.0%}"),
            f"{_num(d.get('predicted_p99_ms'), '{:.0f}')}/{_num(d.get('slo_ms'), '{:.0f}')}",
            "yes" if d.get("feasible", True) else "NO",
            _num(now_s - float(at), "{:.0f}") if isinstance(at, int | float) else "-",
            reason,
        ])
    return rows


def decision_rows(redis_url: str) -> list[list[Any]]:
    """The scheduler's latest decision per function (columns ``HEADERS``); [] when it has made none."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hgetall(keys.scheduler_decisions())
    finally:
        client.close()
    records = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    return rows_from(records, time.time())
