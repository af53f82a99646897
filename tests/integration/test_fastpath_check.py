"""bench.gpu.fastpath_check on the CPU (its --quick form, as bench/gpu/run.sh --cpu-dry-run runs it):
the MobileNet example through the fast path's runner against its eager self, every row in place."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu import fastpath_check


def test_fast_path_check_passes_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "fpc.json"
    fastpath_check.main(["--quick", "--seconds", "0.1", "--json", str(out)])
    r = json.loads(out.read_text())["functions"]["mobilenet"]
    assert r["path"] == "staged-cpu" and r["warm_buckets"] == [8, 4, 2, 1]
    assert set(r["sizes"]) == {"1", "3", "5", "17"}  # 17: two chunks of the largest bucket
    assert all(v["rows_in_place"] and v["ok"] for v in r["sizes"].values())
    assert {"1", "8"} == set(r["timing"])
