"""What every benchmark shares: argument parsing, tables, JSON output, machine description."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="a short run (for CI smoke and development)")
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json",
                   help=f"where to write the JSON result (default bench/results/{name}.json)")
    return p


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("machine", machine())
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {path}")


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process: shared pages counted by share."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")
