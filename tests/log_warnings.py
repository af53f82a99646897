"""Python warnings printed into the logs of the processes a test started (replicas, the provider,
the node agent, the profiler, the scheduler): pytest's ``filterwarnings = error`` only sees this
process, so a warning in a child's log would otherwise pass unnoticed and reach users'
``faas-cli logs``."""

from __future__ import annotations

import os
import re
from pathlib import Path

WARNING_LINE = re.compile(r"^\S.*:\d+: (?:[A-Za-z_][\w.]*)?Warning: ")
"""What ``warnings.showwarning`` prints: ``path:lineno: Category: message``."""


def new_warnings(root: Path, offsets: dict[Path, int]) -> list[str]:
    """Warning lines written to any ``*.log`` under ``root`` since ``offsets`` (updated in place)."""
    found = []
    for path in _logs(root):
        start = offsets.get(path, 0)
        try:
            size = path.stat().st_size
            if size <= start:
                offsets[path] = min(start, size)
                continue
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read(size - start)
        except OSError:
            continue
        cut = chunk.rfind(b"\n") + 1  # a partly written last line is read next time
        offsets[path] = start + cut
        for line in chunk[:cut].decode(errors="replace").splitlines():
            if WARNING_LINE.match(line):
                found.append(f"{path}: {line}")
    return found


def _logs(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(Path(dirpath) / f for f in files if f.endswith(".log"))
    return out
