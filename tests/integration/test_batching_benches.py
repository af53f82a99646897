"""bench.batching_top end to end, shortened (real sidecars and MobileNet workers, open-loop load),
and how it picks its rates from a bench.batching race."""

from __future__ import annotations

import json
from pathlib import Path

from bench import batching_top


def _step(rate: float, ok: bool) -> dict:
    return {"rate_rps": rate, "pass": ok}


def test_rates_are_those_around_where_slo_and_the_best_fixed_size_left_the_race(tmp_path: Path):
    grid = [100.0, 125.0, 156.25, 195.31, 244.14, 305.18]
    race = {"configs": {
        "batch1": {"max_rps_at_slo": 100.0, "steps": [_step(r, r <= 100) for r in grid[:3]]},
        "fixed2": {"max_rps_at_slo": 125.0, "steps": [_step(r, r <= 125) for r in grid[:4]]},
        "fixed16": {"max_rps_at_slo": 244.14, "steps": [_step(r, r <= 244.14) for r in grid]},
        "slo": {"max_rps_at_slo": 195.31, "steps": [_step(r, r <= 195.31) for r in grid[:6]]},
    }}
    path = tmp_path / "race.json"
    path.write_text(json.dumps(race))
    # best fixed: fixed16 (244); slo 195: the grid's rates from 195 / 1.3 to 244 x 1.3
    assert batching_top.rates_from_race(path) == [156.25, 195.31, 244.14, 305.18]


def test_batching_top_runs_every_configuration_at_every_rate(tmp_path: Path) -> None:
    out = tmp_path / "top.json"
    batching_top.main(["--quick", "--configs", "slo,fixed2", "--rates", "10,20", "--repeat", "2",
                       "--step-s", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    for name in ("slo", "fixed2"):
        rows = result["configs"][name]["rates"]
        assert set(rows) == {"10.0", "20.0"}
        for row in rows.values():
            assert len(row["p99_ms"]) == 2 and row["errors"] == 0
        # 10 and 20 requests/s are far below what one MobileNet worker serves: both pass
        assert result["configs"][name]["max_rps_median_p99_at_slo"] == 20.0
