"""decide_replicas as a pure function: ramp up, ramp down with hysteresis, zero, infeasible, bounds."""

import math
from collections import Counter

import pytest

from fast_profiler.table import ProfilePoint, synthetic_table
from fast_scheduler.autoscale import AutoscaleContext, AutoscaleSettings, decide_replicas
from fast_scheduler.choices import capacity_at_slo, choice_set, p99_at_rate_ms
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


@pytest.mark.parametrize("calm_s, trimmed_by_s", [(10.0, 15.0), (30.0, 35.0)])
def test_calm_function_trims_spare_replicas_after_the_calm_delay(calm_s, trimmed_by_s):
    # Steady 200 rps with three replicas more than it needs (added on a noisy tick, say): nothing in
    # its burst memory, so the spare goes after ``calm_scale_down_delay_s``, not the full delay.
    s = AutoscaleSettings(scale_down_delay_s=30, calm_scale_down_delay_s=calm_s)
    d, st = decide_replicas(AutoscaleContext("f", 0.0, 200.0, TABLE, SLO, (), 1, 50), None, s)
    cur = d.replicas + (d.replicas[0],) * 3
    gone_at = None
    for i in range(1, 10):
        d, st = decide_replicas(AutoscaleContext("f", 5.0 * i, 200.0, TABLE, SLO, cur, 1, 50), st, s)
        if len(d.replicas) < len(cur) and gone_at is None:
            gone_at = 5.0 * i
        cur = d.replicas
    assert gone_at is not None and gone_at <= trimmed_by_s and gone_at >= 5.0 + calm_s - 1e-9


def test_a_function_that_stepped_keeps_the_full_delay():
    s = AutoscaleSettings(scale_down_delay_s=30, calm_scale_down_delay_s=5)
    ds = run([400] * 3 + [40] * 12, s)
    assert ds[4].replicas == ds[2].replicas and "of 30 s" in ds[4].reason


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


# ---- the fast scale-up path and warm standby ------------------------------------------------

from fast_scheduler.autoscale import fast_scale_up, split_standby, standby_set, with_standby  # noqa: E402
from fast_scheduler.choices import (  # noqa: E402
    STANDBY_REQUEST,
    ShareConfig,
    candidate_points,
    config_choices,
    is_standby,
)


def after_ticks(rates, settings=None, dt=5.0):
    """(current replicas, state) after ticks at ``rates``."""
    cur, st = (), None
    for i, r in enumerate(rates):
        d, st = decide_replicas(AutoscaleContext("f", i * dt, r, TABLE, SLO, cur, 1, 50), st, settings)
        cur = d.replicas
    return cur, st


@pytest.mark.parametrize(
    ("over", "adds"),
    [
        (-2.0, False),  # under the capacity: nothing
        (2.5, False),  # above it by 2.5 sigma of a 1 s count: noise
        (3.5, True),  # beyond 3 sigma: a step
        (40.0, True),
    ],
)
def test_fast_path_adds_only_beyond_noise_and_covers_the_rate(over, adds):
    cur, st = after_ticks([100.0] * 4)
    cap = st.choice_set.totals(cur)[1]
    rate_1s = cap  # solve rate = cap + over * sqrt(rate) (sigma of a 1 s Poisson count)
    for _ in range(50):
        rate_1s = cap + over * math.sqrt(max(rate_1s, 1.0))
    ctx = AutoscaleContext("f", 16.0, rate_1s, TABLE, SLO, cur, 1, 50)
    d, st2 = fast_scale_up(ctx, st, 1.0)
    assert (d is not None) == adds
    if d is None:
        assert st2 is st
        return
    assert d.replicas[: len(cur)] == cur and len(d.replicas) > len(cur)  # keeps all, adds
    assert d.capacity_rps >= rate_1s and d.capacity_rps > cap
    assert "fast scale up" in d.reason and d.changed
    assert st2.level_rps == st.level_rps and st2.low_since_s is None  # smoothing left to the ticks


@pytest.mark.parametrize(
    ("state", "hi", "why"),
    [("none", 50, "no tick yet"), ("ticked", 1, "at max replicas")],
)
def test_fast_path_does_nothing_before_a_tick_or_at_max(state, hi, why):
    cur, st = after_ticks([10.0] * 2)
    if state == "none":
        cur, st = (), None
    ctx = AutoscaleContext("f", 11.0, 500.0, TABLE, SLO, cur, 1, hi)
    d, _ = fast_scale_up(ctx, st, 1.0)
    assert d is None, why


def test_fast_path_then_tick_holds_and_scales_down_only_after_the_delay():
    s = AutoscaleSettings(scale_down_delay_s=30)
    cur, st = after_ticks([50.0] * 3, s)
    d, st = fast_scale_up(AutoscaleContext("f", 11.0, 300.0, TABLE, SLO, cur, 1, 50), st, 1.0, s)
    assert d is not None
    grown = d.replicas
    # The next tick sees the step diluted over its window: no removal right away.
    d2, st = decide_replicas(AutoscaleContext("f", 15.0, 150.0, TABLE, SLO, grown, 1, 50), st, s)
    assert Counter(d2.replicas) >= Counter(grown) or len(d2.replicas) >= len(grown)


@pytest.mark.parametrize(
    ("cfg", "standby"),
    [
        (ShareConfig(12, STANDBY_REQUEST, 1.0, 2), True),
        (ShareConfig(12, 0.05, 0.05, 2), False),  # no limit above its request: cannot borrow
        (ShareConfig(12, 0.2, 1.0, 2), False),
        (ShareConfig(25, 1.0, 1.0, 1), False),
    ],
)
def test_is_standby(cfg, standby):
    assert is_standby(cfg) == standby
    planned, sb = split_standby((cfg, ShareConfig(25, 1.0, 1.0, 1)))
    assert (len(sb) == 1) == standby and len(planned) + len(sb) == 2


@pytest.mark.parametrize(
    ("frac", "target", "room", "maxn", "want"),
    [
        (0.0, 100.0, 10, 8, 0),  # off
        (1.0, 0.0, 10, 8, 0),  # nothing planned
        (1.0, 100.0, 10, 8, None),  # ceil(100 / capacity of the best config)
        (1.0, 10_000.0, 10, 8, 8),  # at most standby_max
        (1.0, 10_000.0, 3, 8, 3),  # at most the room under max replicas
    ],
)
def test_standby_set_counts(frac, target, room, maxn, want):
    s = AutoscaleSettings(standby_frac=frac, standby_max=maxn)
    cs = choice_set(TABLE, SLO, s, candidate_points(TABLE, True))
    got = standby_set(cs, target, room, s)
    if want is None:
        want = math.ceil(target / cs.choices[0].capacity_rps)
    assert len(got) == want
    assert all(is_standby(c) and c.sm_pct == cs.choices[0].config.sm_pct for c in got)


def test_standby_follows_the_remembered_peak_when_quiet():
    s = AutoscaleSettings(standby_frac=1.0, standby_max=50)
    cur, st = after_ticks([300.0] * 3 + [5.0] * 3, s)
    d, st = decide_replicas(AutoscaleContext("f", 30.0, 5.0, TABLE, SLO, cur, 1, 50), st, s)
    with_sb = with_standby(d, st, 50, s)
    _, sb = split_standby(with_sb.replicas)
    assert st.peak_rps > 100 and len(sb) * st.choice_set.choices[0].capacity_rps >= st.peak_rps
    assert with_standby(d, st, 50, AutoscaleSettings(standby_frac=0.0)) is d  # off


def test_standby_room_points_leave_a_token_and_borrow_it_back():
    s = AutoscaleSettings()
    pts = candidate_points(TABLE, True)
    assert pts and all(p.quota_frac <= 1 - STANDBY_REQUEST + 1e-9 for p in pts)
    full = {(p.sm_pct, p.batch) for p in candidate_points(TABLE) if p.quota_frac == 1.0}
    room = {(p.sm_pct, p.batch) for p in pts if abs(p.quota_frac - (1 - STANDBY_REQUEST)) < 1e-9}
    assert room == full
    for c in config_choices(TABLE, SLO, s, pts):
        if c.config.quota_request_frac > 0.9:
            assert c.config.quota_limit_frac == 1.0  # the standby's token is lent back


@pytest.mark.parametrize("sm, quota, plain, tiled", [
    (25, 0.995, 0.24875, 0.25),  # a whole strip either way (the standby's token is not counted)
    (25, 0.6, 0.15, 0.25),  # the 0.4 left beside it fits nothing of its kind
    (25, 0.4, 0.1, 0.125),  # two share a strip, 0.2 left
    (24, 0.2, 0.05, 0.05),  # five fill a 24 % strip, which costs a quarter device
])
def test_quota_tiling_footprint(sm, quota, plain, tiled):
    from fast_scheduler.choices import tiled_area

    cfg = ShareConfig(sm, quota, 1.0)
    assert tiled_area(cfg) == pytest.approx(plain)
    assert tiled_area(cfg, quota_tiling=True) == pytest.approx(tiled)


def test_fast_path_adds_capacity_to_drain_the_backlog_of_a_step():
    cur, st = after_ticks([50.0] * 3)
    cap = st.choice_set.totals(cur)[1]
    ctx = AutoscaleContext("f", 16.0, 300.0, TABLE, SLO, cur, 1, 50)
    plain = AutoscaleSettings(fast_round_up=False)
    d0, _ = fast_scale_up(ctx, st, 1.0, plain)
    drain = AutoscaleSettings(fast_round_up=False, backlog_drain_s=10.0, start_s=1.0)
    d1, _ = fast_scale_up(ctx, st, 1.0, drain)
    assert d0 is not None and d1 is not None
    # What queued over the 1 s window and queues for the 1 s start, drained within 10 s.
    assert d1.target_rps == pytest.approx(d0.target_rps + (300.0 - cap) * (1.0 + 1.0) / 10.0)
    assert d1.capacity_rps >= d1.target_rps > d0.target_rps


def test_volatility_headroom_is_capped_at_a_fraction_of_the_forecast():
    steps = [100.0, 300.0] * 6 + [100.0]  # a forecast error far beyond Poisson noise every tick
    free = run(steps, AutoscaleSettings(burst_k=0.0))[-1]
    capped = run(steps, AutoscaleSettings(burst_k=0.0, volatility_max_frac=0.1))[-1]
    assert free.target_rps > 1.3 * 100.0  # uncapped: twice the smoothed error on top
    assert capped.target_rps <= 100.0 * (1 + 0.02 + 0.1) + 1e-6 < free.target_rps


@pytest.mark.parametrize(("recent", "scales_up"), [(None, False), (150.0, False), (400.0, True)])
def test_a_step_in_the_last_sub_window_is_planned_for_on_the_tick(recent, scales_up):
    # Four seconds at 100 rps and the last one at ``recent``: the tick's mean is within what runs,
    # so only the last second looked at on its own shows a step beyond it (and its noise).
    s = AutoscaleSettings(burst_k=0.0, volatility_k=0.0)
    cur, st = after_ticks([100.0] * 4, s)
    cap = st.choice_set.totals(cur)[1]
    mean = (4 * 100.0 + (recent or 100.0)) / 5
    assert mean < cap
    ctx = AutoscaleContext("f", 20.0, mean, TABLE, SLO, cur, 1, 50, recent_rps=recent,
                           recent_window_s=1.0 if recent is not None else 0.0)
    d, _ = decide_replicas(ctx, st, s)
    assert (d.capacity_rps > cap) == scales_up
    if scales_up:
        assert d.capacity_rps >= 400.0 * 1.02 - 1e-6
