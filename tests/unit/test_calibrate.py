"""The calibration bench's pure comparison code (``bench.calibrate``): schedules, traces, summaries,
gaps, and the simulator's latency recording it relies on."""

from __future__ import annotations

import math

import pytest

from bench.calibrate import (
    NAME,
    FixedPolicy,
    Request,
    compare,
    poisson_schedule,
    ramp_rate,
    real_summary,
    series_error,
    sim_settings,
    sim_summary,
    trace_from_sends,
)
from fast_profiler.table import ProfilePoint, ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.evaluation.simulator import SimFunction, latency_quantile_ms, simulate


def table() -> ProfileTable:
    pts = [ProfilePoint(sm, q, 1, 18.0 * q, 50.0, 60.0, 70.0) for sm in (50, 100) for q in (0.5, 1.0)]
    return ProfileTable(NAME, "cpu-2c", tuple(pts), mem_bytes=2**28)


def test_poisson_schedule_is_seeded_and_follows_the_rate() -> None:
    a = poisson_schedule(lambda t: 10.0, 100.0, 3)
    assert a == poisson_schedule(lambda t: 10.0, 100.0, 3) != poisson_schedule(lambda t: 10.0, 100.0, 4)
    assert 900 < len(a) < 1100 and all(0 <= x < 100 for x in a) and a == sorted(a)
    ramp = poisson_schedule(ramp_rate, 62.0, 7)
    during_peak = sum(1 for t in ramp if 20 <= t < 36) / 16
    assert 15 < during_peak < 25 and sum(1 for t in ramp if t < 6) < 25
    assert poisson_schedule(lambda t: 0.0, 10.0, 1) == []


def test_trace_from_sends_counts_each_send_once_with_a_silent_tail() -> None:
    tr = trace_from_sends("x", [0.1, 0.5, 1.2, 2.999], 3.0, lambda t: 2.0, tail_s=2.0)
    assert list(tr.counts[NAME]) == [2, 1, 1, 0, 0]
    assert list(tr.rates_rps[NAME]) == [2.0, 2.0, 2.0, 0.0, 0.0]


def test_real_summary() -> None:
    reqs = [Request(i * 0.1, i * 0.1 + 0.05, True) for i in range(98)]
    reqs += [Request(9.8, 10.5, True), Request(9.9, math.inf, False)]
    s = real_summary(reqs, 10.0, slo_ms=100.0)
    assert s["requests"] == 100 and s["error_rate"] == pytest.approx(0.01)
    assert s["throughput_rps"] == pytest.approx(9.8)  # the one finishing at 10.5 is outside the window
    # LoadGen's p99 of 100 requests is their slowest (fastgshare.stats): the failure.
    assert s["p99_ms"] == math.inf
    assert s["slo_attainment"] == pytest.approx(0.98)


def test_compare_and_series_error() -> None:
    real = {"throughput_rps": 10.0, "p99_ms": 100.0, "slo_attainment": 0.99}
    sim = {"throughput_rps": 9.0, "p99_ms": 150.0, "slo_attainment": 1.0}
    g = compare(real, sim)
    assert g["throughput_ratio"] == pytest.approx(0.9) and g["p99_ratio"] == pytest.approx(1.5)
    assert g["slo_attainment_diff"] == pytest.approx(0.01)
    inf = compare({**real, "p99_ms": math.inf}, {**sim, "p99_ms": math.inf})
    assert inf["p99_ratio"] == 1.0
    assert compare({**real, "throughput_rps": 0.0}, {**sim, "throughput_rps": 0.0})["throughput_ratio"] == 1
    e = series_error([1, 2, 3, 3], [1, 1, 3])
    assert e == {"mean_abs_diff": pytest.approx(1 / 3), "real_mean": 2.0, "sim_mean": pytest.approx(5 / 3)}


def test_latency_quantile_of_a_mixture() -> None:
    # 99 requests at exactly 10 ms and 1 at 500 ms: the p99 is 10 ms; 2 at 500 ms: 500 ms.
    assert latency_quantile_ms([(99, 10.0, 0, 0), (1, 500.0, 0, 0)], 0.99) == pytest.approx(10.0, abs=1e-6)
    assert latency_quantile_ms([(98, 10.0, 0, 0), (2, 500.0, 0, 0)], 0.99) == pytest.approx(500.0, abs=1e-6)
    # An exponential tail: P(L > 50 + t) = 0.5 exp(-0.01 t) -> 1 % at t = 100 ln(50).
    want = 50 + 100 * math.log(50)
    assert latency_quantile_ms([(1, 50.0, 0.5, 0.01)], 0.99) == pytest.approx(want, rel=1e-6)
    assert latency_quantile_ms([], 0.99) == 0.0


def test_simulated_fixed_replica_light_and_overloaded() -> None:
    t = table()
    spec = SimFunction(NAME, NAME, t, 250.0, 1, 1)
    conf = ShareConfig(50, 1.0, 1.0, 1)

    def run(rate: float) -> dict[str, float]:
        sends = poisson_schedule(lambda _: rate, 20.0, 5)
        pol = FixedPolicy("fixed", [spec], AutoscaleSettings(), fixed=(conf,))
        res = simulate([spec], trace_from_sends("f", sends, 20.0, lambda _: rate, 0.1, 30), pol,
                       sim_settings(0.0, 1.0))
        again = simulate([spec], trace_from_sends("f", sends, 20.0, lambda _: rate, 0.1, 30),
                         FixedPolicy("fixed", [spec], AutoscaleSettings(), fixed=(conf,)),
                         sim_settings(0.0, 1.0))
        assert again.functions[NAME].latency_terms == res.functions[NAME].latency_terms  # deterministic
        return sim_summary(res, 20.0, 250.0)

    light = run(5.0)
    assert light["throughput_rps"] == pytest.approx(light["requests"] / 20.0)
    # Light load: near the curve's light-load p99 (50 + 0.3 x (70 - 50) = 56 ms), under the table's 70.
    assert 55.0 <= light["p99_ms"] < 70.0 and light["slo_attainment"] > 0.99
    over = run(45.0)  # profiled at 18 rps, the replica drains 18 / 0.5 = 36: capped, p99 far past the SLO
    assert over["throughput_rps"] == pytest.approx(36.0, rel=0.02)
    assert over["p99_ms"] > 2000 and over["slo_attainment"] < 0.7
