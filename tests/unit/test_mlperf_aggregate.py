"""bench.mlperf.aggregate and the pure helpers of lgen/scenario: verdicts, search, ratios (pure)."""

from __future__ import annotations

import math
import random

import pytest

from bench.mlperf import aggregate as agg
from bench.mlperf.lgen import assign_slots, parse_summary
from bench.mlperf.scenario import poisson_times


def run(fn: str, lat: list[float], errors: int = 0, skipped: int = 0, rate: float = 10.0) -> agg.FunctionRun:
    return agg.FunctionRun(fn, rate, tuple(lat), errors, skipped, 10.0)


S = agg.LoadSearchSettings(start=1.0)


def test_step_passes_per_function_bound():
    ok = [10.0] * 200
    assert agg.step_passes([run("a", ok), run("b", [100.0] * 200)], {"a": 20, "b": 150}, S)[0]
    # two late of 200 breaks a p99 (budget is 2.0, strictly more fails), one late does not
    assert agg.step_passes([run("a", ok[:198] + [30.0, 30.0, 30.0])], {"a": 20}, S)[0] is False
    assert agg.step_passes([run("a", ok[:199] + [30.0])], {"a": 20}, S)[0] is True
    passed, why = agg.step_passes([run("a", ok), run("b", [200.0] * 10)], {"a": 20, "b": 150}, S)
    assert not passed and why.startswith("b:")


def test_errors_and_skips_fail_a_step():
    assert not agg.step_passes([run("a", [1.0] * 50, errors=1)], {"a": 20}, S)[0]
    assert not agg.step_passes([run("a", [1.0] * 50, skipped=3)], {"a": 20}, S)[0]
    assert not agg.step_passes([run("a", [])], {"a": 20}, S)[0]


def test_late_budget_grows_with_count():
    assert agg.late_budget(100) == pytest.approx(1 + 3 + 1)
    assert agg.late_budget(10000) > agg.late_budget(100)


def drive(true_capacity: float, settings: agg.LoadSearchSettings) -> tuple[float, list[tuple[float, bool]]]:
    history: list[tuple[float, bool]] = []
    while (x := agg.next_load(history, settings)) is not None:
        history.append((x, x <= true_capacity))
    return agg.best_load(history), history


@pytest.mark.parametrize("capacity", [0.3, 0.9, 1.0, 1.7, 3.0])
def test_search_brackets_the_capacity(capacity):
    s = agg.LoadSearchSettings(start=0.8, grow=1.3, rel_tol=0.05, max_steps=20, min_load=0.01)
    best, history = drive(capacity, s)
    assert best <= capacity
    assert best >= capacity / (1.05 * 1.0001)
    assert len(history) <= 20


def test_search_respects_step_budget_and_floor():
    best, history = drive(1.2, agg.LoadSearchSettings(start=0.8, max_steps=3))
    assert len(history) == 3 and best == pytest.approx(0.8 * 1.4)
    best, history = drive(0.0, agg.LoadSearchSettings(start=1.0, min_load=0.1, max_steps=50))
    assert best == 0.0 and all(not ok for _, ok in history)
    assert min(x for x, _ in history) >= 0.1


def test_ratios_vs_baseline():
    modes = {"time_sharing": {"throughput_rps": 10.0, "device_utilisation": 0.5, "sm_time": None},
             "spatio_temporal": {"throughput_rps": 12.5, "device_utilisation": 0.9, "sm_time": 0.4},
             "unmanaged": {"throughput_rps": 0.0, "device_utilisation": 0.0}}
    r = agg.ratios_vs(modes, "time_sharing", ("throughput_rps", "device_utilisation", "sm_time"))
    assert r["time_sharing"] == {"throughput_rps": 1.0, "device_utilisation": 1.0, "sm_time": None}
    assert r["spatio_temporal"] == {"throughput_rps": 1.25, "device_utilisation": 1.8, "sm_time": None}
    assert r["unmanaged"]["throughput_rps"] == 0.0


def test_summarise_mode_time_share_and_p99_over_bound():
    res = agg.ModeResult("exclusive", 1.0, (run("a", [10.0] * 199 + [18.0], rate=8.0),), 0.7, None,
                         ((8.0, True, "ok"),))
    s = agg.summarise_mode(res, {"a": 20.0}, time_share=0.5)
    assert s["throughput_rps"] == 4.0
    assert s["functions"]["a"]["p99_ms"] == 10.0 and s["p99_over_bound"] == 0.5
    assert s["device_utilisation"] == 0.7 and s["search"] == [{"load": 8.0, "passed": True, "why": "ok"}]


def test_slo_attainment_and_timeline():
    assert agg.slo_attainment([1, 2, 30], 1, 10) == 0.5
    assert agg.slo_attainment([], 0, 10) == 1.0
    tl = agg.timeline([0.5, 1.5, 1.6, 4.0], [5.0, 50.0, math.inf, 5.0], 10.0, 2.0, 4.0)
    assert [r["rps"] for r in tl] == [1.5, 0.0]
    assert tl[0]["attainment"] == pytest.approx(1 / 3, abs=1e-3)
    assert tl[0]["p99_ms"] == 50.0 and tl[1]["attainment"] == 1.0


def test_assign_slots_proportional():
    slots = assign_slots({"a": 3.0, "b": 1.0}, 1000)
    assert len(slots) == 1000 and slots.count("a") == 750
    slots = assign_slots({"a": 1.0, "b": 1.0, "c": 1.0}, 1000)
    assert sorted(slots.count(f) for f in "abc") == [333, 333, 334]
    with pytest.raises(ValueError):
        assign_slots({"a": 0.0})


def test_parse_loadgen_summary():
    text = ("Scenario : Server\nScheduled samples per second : 9.87\nResult is : VALID\n"
            "  Min duration satisfied : Yes\n99.00 percentile latency (ns)   : 123456\n")
    assert parse_summary(text) == {"result": "VALID", "scheduled_qps": "9.87", "p99_ns": "123456",
                                   "min_duration_satisfied": "Yes"}


def test_poisson_times_follow_the_rate_per_second():
    times = poisson_times([0.0, 200.0, 0.0, 50.0], random.Random(1))
    assert all(1 <= t < 2 or 3 <= t < 4 for t in times)
    assert 150 < sum(1 for t in times if t < 2) < 250
    assert times == sorted(times)
