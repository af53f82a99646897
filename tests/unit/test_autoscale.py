"""decide_replicas as a pure function: ramp up, ramp down with hysteresis, zero, infeasible, bounds."""

import math
from collections import Counter

import pytest

from fast_profiler.table import ProfilePoint, synthetic_table
from fast_scheduler.autoscale import (
    AutoscaleContext,
    AutoscaleSettings,
    capacity_at_slo,
    choice_set,
    decide_replicas,
    p99_at_rate_ms,
)
from fast_scheduler.latency import LatencyCurve, LatencyModel

TABLE = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=74.9)
SLO = 69.0


def run(rates, settings=None, lo=1, hi=50, dt=5.0, slo=SLO):
    cur, st, out = (), None, []
    for i, r in enumerate(rates):
        d, st = decide_replicas(AutoscaleContext("f", i * dt, r, TABLE, slo, cur, lo, hi), st, settings)
        cur = d.replicas
        out.append(d)
    return out


def capacity(d):
    return d.capacity_rps


@pytest.mark.parametrize("rate", [1.0, 50.0, 200.0, 800.0])
def test_capacity_meets_target_and_predicted_p99_under_slo(rate):
    d = run([rate] * 3)[-1]
    assert d.feasible and capacity(d) >= d.target_rps - 1e-6
    assert d.predicted_p99_ms <= SLO
    assert d.reason


def test_ramp_up_is_immediate_and_monotone():
    ds = run([10, 50, 100, 200, 400])
    caps = [capacity(d) for d in ds]
    assert caps == sorted(caps)
    assert all(capacity(d) >= d.target_rps - 1e-6 for d in ds)


def test_scale_down_waits_for_the_delay_then_reduces():
    s = AutoscaleSettings(scale_down_delay_s=30)
    ds = run([400] * 3 + [40] * 12, s)
    high = len(ds[2].replicas)
    assert ds[4].replicas == ds[2].replicas and "hold" in ds[4].reason  # within the delay
    assert len(ds[-1].replicas) < high and "scale down" in " ".join(d.reason for d in ds)


def test_scale_to_zero_after_idle_and_back_on_first_request():
    s = AutoscaleSettings(idle_to_zero_s=20, scale_down_delay_s=0)
    ds = run([5, 0, 0, 0, 0, 0, 0, 3], s, lo=0)
    assert ds[0].replicas
    assert any(not d.replicas and "zero" in d.reason for d in ds[1:7])
    assert ds[-1].replicas


@pytest.mark.parametrize("lo, hi, rate", [(3, 10, 1.0), (1, 2, 1000.0)])
def test_bounds_honoured(lo, hi, rate):
    for d in run([rate] * 4, lo=lo, hi=hi):
        assert lo <= len(d.replicas) <= hi


def test_infeasible_slo_reported():
    d = run([10.0], slo=5.0)[-1]
    assert not d.feasible and "infeasible" in d.reason


def test_max_replicas_too_low_reported_infeasible():
    d = run([5000.0], hi=2)[-1]
    assert not d.feasible and len(d.replicas) == 2


MODEL = LatencyModel(profiled_utilisation=0.5, service_spread_share=0.6)
POINT = ProfilePoint(50, 1.0, 1, 10.0, 80.0, 180.0, 200.0)  # 10 rps at p50 80, p99 200 ms


@pytest.mark.parametrize("rate, p99", [
    (10.0, 200.0),  # the table's point: measured at its rate
    (0.0, 152.0),  # light load: p50 + 0.6 x (p99 - p50)
    (5.0, 152.0 + 48.0 / 3),  # rho 0.25: queueing 1/3 of what it is at rho* 0.5
    (15.0, 152.0 + 48.0 * 3),  # rho 0.75: 3 x
    (20.0, math.inf),  # the service rate, 10 / 0.5
])
def test_latency_curve_anchored_at_the_point(rate, p99):
    assert p99_at_rate_ms(POINT, rate, MODEL) == pytest.approx(p99)


@pytest.mark.parametrize("slo, cap", [
    (250.0, 10.0),  # looser than measured: never past the profiled rate
    (200.0, 10.0),
    (168.0, 20.0 * (1 / 3) / (1 + 1 / 3)),  # rho / (1 - rho) = 1/3 at 168 ms
    (151.0, 0.0),  # under the light-load p99: nothing meets it
])
def test_capacity_at_slo_is_the_boundary(slo, cap):
    got = capacity_at_slo(POINT, slo, model=MODEL)
    assert got == pytest.approx(cap)
    if 0 < got < POINT.throughput_rps:
        assert p99_at_rate_ms(POINT, got, MODEL) == pytest.approx(slo)


def test_late_fraction_is_one_percent_at_the_p99():
    c = LatencyCurve.from_point(10.0, 80.0, 200.0, MODEL)
    assert c.late_fraction(10.0, 200.0) == pytest.approx(0.01)
    assert c.late_fraction(10.0, 79.0) == 1.0 and c.late_fraction(25.0, 1e9) == 1.0


def test_capacity_on_the_synthetic_table():
    p = TABLE.point(24, 1.0, 1)
    assert capacity_at_slo(p, SLO) == pytest.approx(p.throughput_rps)


def test_deterministic():
    assert [Counter(d.replicas) for d in run([10, 80, 30, 5])] == [
        Counter(d.replicas) for d in run([10, 80, 30, 5])
    ]


def test_burst_memory_holds_part_of_the_last_step_then_decays():
    # A function that stepped 40 -> 400 and back keeps burst_k of the gap as headroom, decaying.
    s = AutoscaleSettings(burst_k=0.5, burst_memory_s=60.0, scale_down_delay_s=0, burst_round_up=False)
    calm = [40.0] * 3 + [400.0] * 3 + [40.0] * 40
    ds = run(calm, s)
    r = run(calm, AutoscaleSettings(burst_k=0.0, scale_down_delay_s=0))  # reactive only
    held = [d.target_rps - e.target_rps for d, e in zip(ds, r, strict=True)]
    assert held[:6] == pytest.approx([0.0] * 6, abs=1e-6)  # rising and in the burst: nothing extra
    assert held[6] > 0.4 * (400 - 40) * math.exp(-5 / 60)  # first calm tick: ~half the gap
    assert held[7:] == sorted(held[7:], reverse=True) and held[-1] < 0.05 * (400 - 40)  # decays
    # Rounded up (the default): whole replicas of the most efficient config while the headroom holds.
    rounded = run(calm, AutoscaleSettings(burst_k=0.5, burst_memory_s=60.0, scale_down_delay_s=0))
    unit = choice_set(TABLE, SLO, AutoscaleSettings()).choices[0].capacity_rps
    assert rounded[6].target_rps >= ds[6].target_rps - 1e-9
    assert rounded[6].target_rps / unit == pytest.approx(round(rounded[6].target_rps / unit), abs=1e-6)
    # A steady function (only Poisson noise) gets no burst headroom.
    steady = run([200.0] * 10, AutoscaleSettings(burst_k=0))[-1].target_rps
    assert run([200.0] * 10, s)[-1].target_rps == pytest.approx(steady)


def test_jump_gain_extrapolates_a_step_inside_the_tick():
    base = run([40.0] * 3 + [220.0], AutoscaleSettings(burst_k=0))[-1].target_rps
    gain = run([40.0] * 3 + [220.0], AutoscaleSettings(burst_k=0, jump_gain=2.0))[-1].target_rps
    assert gain - base == pytest.approx(180.0 * 1.02, rel=0.02)  # level 40 + 2 x 180, not 220
