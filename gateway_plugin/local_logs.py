"""Replica log files -> ``LogLine`` records, for ``/system/logs`` in local mode.

Each replica writes ``<RFC3339 UTC timestamp> <text>`` lines to
``STATE/logs/<namespace>/<function>/<replica>.log`` (see docs/architecture.md). Lines without a
parsable timestamp (a crash trace written before the sidecar's logging started) keep the
timestamp of the line before them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from gateway_plugin.backend import LogLine

FOLLOW_POLL_S = 0.2
"""How often a followed log checks its files for new lines."""
_EPOCH = datetime.fromtimestamp(0, UTC)


def parse_line(raw: str, previous: datetime) -> tuple[datetime, str]:
    """Split ``<timestamp> <text>``; without a timestamp, the text keeps ``previous``."""
    head, _, rest = raw.partition(" ")
    try:
        ts = datetime.fromisoformat(head.replace("Z", "+00:00"))
    except ValueError:
        return previous, raw
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts, rest


def _read_new(
    path: Path, offset: int, previous: datetime
) -> tuple[list[tuple[datetime, str]], int, datetime]:
    out: list[tuple[datetime, str]] = []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n")
    if end < 0:
        return out, offset, previous
    for raw in data[: end + 1].decode("utf-8", "replace").splitlines():
        previous, text = parse_line(raw, previous)
        out.append((previous, text))
    return out, offset + end + 1, previous


def read_logs(
    log_dir: Path, name: str, namespace: str, *, since: datetime | None, tail: int | None,
    follow: bool, keep_following: Callable[[], bool],
) -> Iterator[LogLine]:
    """Lines of every replica log of one function, merged by time, then new ones while following."""
    offsets: dict[Path, int] = {}
    last_ts: dict[Path, datetime] = {}

    def collect() -> list[LogLine]:
        lines: list[LogLine] = []
        for path in sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []:
            new, offsets[path], last_ts[path] = _read_new(
                path, offsets.get(path, 0), last_ts.get(path, _EPOCH))
            instance = path.stem
            lines.extend(LogLine(name, namespace, instance, ts, text) for ts, text in new
                         if since is None or ts >= since)
        lines.sort(key=lambda ln: ln.timestamp)
        return lines

    first = collect()
    if tail is not None and tail >= 0:
        first = first[-tail:] if tail else []
    yield from first
    while follow and keep_following():
        time.sleep(FOLLOW_POLL_S)
        yield from collect()
