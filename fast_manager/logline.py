"""The log line format every replica and node agent writes: ``<RFC3339 UTC timestamp> <text>``.

``/system/logs`` splits lines on the first space and parses the timestamp, so every line,
including each line of a traceback, carries one.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import TextIO


def rfc3339(ts_s: float) -> str:
    """Seconds since the epoch -> ``2026-01-02T03:04:05.678901Z``."""
    return datetime.fromtimestamp(ts_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_lines(ts_s: float, text: str) -> str:
    """Every line of ``text`` prefixed with the timestamp, newline-terminated."""
    stamp = rfc3339(ts_s)
    return "".join(f"{stamp} {line}\n" for line in (text.splitlines() or [""]))


class TimestampFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"[{record.name}] {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return format_lines(record.created, text).rstrip("\n")


def setup_logging(stream: TextIO = sys.stdout, level: int = logging.INFO) -> None:
    """Route this process's logging to ``stream`` in the line format (called once, by ``main``)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TimestampFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
