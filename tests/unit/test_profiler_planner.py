"""The profiler's pure parts: grid planning, saturation skipping, interpolation, early stopping."""

from __future__ import annotations

import math

import pytest

from fast_profiler.interference import CpuMonitor, CpuSample, foreign_cores
from fast_profiler.planner import (
    Config,
    GridSpec,
    Measurement,
    Source,
    fill,
    next_config,
    planned_configs,
    spatial_classes,
    to_table,
)
from fast_profiler.search import (
    SearchSettings,
    StepObservation,
    Verdict,
    answer_rate,
    counted_history,
    disturbed,
    next_rate,
    record_step,
    replay,
    result_rate,
    start_search,
    step_severity,
    step_verdict,
    votes,
)
from fast_profiler.table import ProfileTable
from fastgshare.errors import ValidationError


def m(sm: int, q: float, rps: float, b: int = 1, p99: float = 10.0) -> Measurement:
    return Measurement(Config(sm, q, b), rps, p99 / 2, p99 * 0.9, p99, busy_frac=q * 0.9)


def run_plan(spec: GridSpec, truth) -> dict[Config, Measurement]:
    """Drive the plan to the end with a model of the function instead of a platform."""
    done: dict[Config, Measurement] = {}
    while (c := next_config(spec, done)) is not None:
        assert c not in done
        done[c] = m(c.sm_pct, c.quota_frac, truth(c.sm_pct, c.quota_frac), c.batch)
    return done


@pytest.mark.parametrize("cores, classes", [
    (1, [(6, (6, 12, 24, 50, 60, 80, 100))]),
    (2, [(6, (6, 12, 24, 50, 60)), (80, (80, 100))]),
    (4, [(6, (6, 12, 24)), (50, (50, 60)), (80, (80,)), (100, (100,))]),
    (16, [(6, (6,)), (12, (12,)), (24, (24,)), (50, (50,)), (60, (60,)), (80, (80,)), (100, (100,))]),
    (None, [(s, (s,)) for s in (6, 12, 24, 50, 60, 80, 100)]),
])
def test_spatial_classes_dedupe_shares_with_the_same_cores(cores, classes):
    got = [(c.sm_pct, c.members) for c in spatial_classes(GridSpec(device_cores=cores))]
    assert got == classes


def test_gpu_plan_skips_saturated_sm_and_interpolates_quota():
    # ResNet-50-like: saturates at 24 % SMs; throughput linear in quota.
    def truth(sm, q):
        return 100.0 * min(sm, 24) / 24 * q

    spec = GridSpec()
    done = run_plan(spec, truth)
    # full quota at 6, 12, 24, 50 (50 shows saturation), anchors 0.2 and 0.6 at 6, 12, 24, and the
    # first saturated class (50) at the other anchors too
    assert sorted((c.sm_pct, c.quota_frac) for c in done) == sorted(
        [(6, 1.0), (12, 1.0), (24, 1.0), (50, 1.0)]
        + [(s, q) for s in (6, 12, 24, 50) for q in (0.2, 0.6)])
    assert len(done) == 12 and spec.points_total == 35
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert len(pts) == 35
    assert pts[(24, 0.4)].source is Source.INTERPOLATED
    assert pts[(24, 0.4)].throughput_rps == pytest.approx(truth(24, 0.4))
    assert pts[(80, 0.6)].source is Source.SATURATED
    assert pts[(80, 0.6)].throughput_rps == pytest.approx(truth(24, 0.6))
    assert pts[(50, 1.0)].source is Source.MEASURED and pts[(50, 0.2)].source is Source.MEASURED
    assert pts[(50, 0.6)].source is Source.MEASURED and pts[(50, 0.4)].source is Source.SATURATED
    assert pts[(50, 0.4)].throughput_rps == pytest.approx(truth(24, 0.4))
    assert pts[(100, 0.2)].source is Source.SATURATED and pts[(100, 0.2)].basis == (Config(50, 0.2),)


def test_cpu_two_cores_measures_each_core_count_once():
    spec = GridSpec(device_cores=2)

    def truth(sm, q):
        return (60.0 if sm >= 80 else 35.0) * q

    done = run_plan(spec, truth)
    assert {c.sm_pct for c in done} == {6, 80}
    assert len(done) == 6
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert pts[(50, 1.0)].source is Source.SAME_SHARE and pts[(50, 1.0)].throughput_rps == 35.0
    assert pts[(100, 0.6)].source is Source.SAME_SHARE and pts[(100, 0.6)].throughput_rps == 36.0
    assert pts[(100, 0.8)].source is Source.INTERPOLATED
    table = to_table("f", "cpu-2c", list(pts.values()))
    assert table.is_measured(50, 1.0) and not table.is_measured(100, 0.8)
    assert table.throughput(100, 0.8) == pytest.approx(48.0)


def test_cpu_saturation_after_one_core():
    spec = GridSpec(device_cores=2)
    done = run_plan(spec, lambda sm, q: 30.0 * q)  # a second core buys nothing
    assert sorted((c.sm_pct, c.quota_frac) for c in done) == [(6, 0.2), (6, 0.6), (6, 1.0), (80, 0.2),
                                                             (80, 0.6), (80, 1.0)]
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert pts[(100, 0.2)].source is Source.SAME_SHARE and pts[(100, 0.2)].throughput_rps == 6.0
    assert pts[(100, 0.6)].source is Source.SAME_SHARE and pts[(100, 0.6)].throughput_rps == pytest.approx(18)
    assert pts[(100, 0.8)].source is Source.SATURATED and pts[(100, 0.8)].throughput_rps == pytest.approx(24)


def ql(q: float, q0: float, r0: float, q1: float, r1: float) -> float:
    """What the planner infers between two quotas: time per request (quota / rate) linear in quota."""
    t = (q - q0) / (q1 - q0)
    return q / (q0 / r0 + t * (q1 / r1 - q0 / r0))


@pytest.mark.parametrize("q, anchors, want", [
    # MobileNet at one core, 2026-11-28 (quota 0.2 / 0.6 measured, 0.4 re-measured 15.06 rps): the
    # time per request falls as the rate rises, a line through the rates is 8 % high
    (0.4, (0.2, 6.88, 0.6, 25.78), 15.28),
    (0.4, (0.2, 6.0, 0.6, 18.0), 12.0),  # rate proportional to quota: the same as a line
    (0.4, (0.2, 0.0, 0.6, 12.0), 6.0),  # an anchor serving nothing: linear in the rate
])
def test_quota_axis_interpolates_time_per_request(q, anchors, want):
    from fast_profiler.planner import _quota_lerp

    assert _quota_lerp(q, *anchors) == pytest.approx(want, abs=0.01)


# (sm 6 rps at quota 0.2, 0.6, 1.0; sm 80 rps at quota 0.2, 0.6, 1.0) -> sm 80's inferred 0.4, 0.8
@pytest.mark.parametrize("one, two, inferred", [
    # the 2-core MobileNet case: two cores serve 1.6x more at quota 0.2, 1.2x at 0.6, nothing more at
    # full quota (the ratio is not linear in quota): copying the one-core column was 37 % off at 0.2,
    # interpolating the ratio between the two ends alone 7-19 % off at 0.4
    ((3.7, 28.2, 40.7), (5.92, 34.0, 40.7),
     (ql(0.4, 0.2, 3.7, 0.6, 28.2) * (1.6 + 34.0 / 28.2) / 2,
      ql(0.8, 0.6, 28.2, 1.0, 40.7) * (34.0 / 28.2 + 1.0) / 2)),
    # saturated at every anchor: a plain copy of the growing class
    ((6.0, 18.0, 30.0), (6.0, 18.0, 30.0), (12.0, 24.0)),
    # slower at full quota on two cores (the platform shares them) but faster at the smallest quota
    ((4.0, 24.0, 40.0), (6.0, 24.0, 20.0),
     (ql(0.4, 0.2, 4.0, 0.6, 24.0) * 1.25, ql(0.8, 0.6, 24.0, 1.0, 40.0) * 0.75)),
])
def test_first_saturated_class_is_measured_at_the_anchors_and_scales_the_column(one, two, inferred):
    spec = GridSpec(device_cores=2)
    truth = {(6, 0.2): one[0], (6, 0.6): one[1], (6, 1.0): one[2],
             (80, 0.2): two[0], (80, 0.6): two[1], (80, 1.0): two[2]}
    plan = []
    done: dict[Config, Measurement] = {}
    while (c := next_config(spec, done)) is not None:
        plan.append((c.sm_pct, c.quota_frac))
        done[c] = m(c.sm_pct, c.quota_frac, truth[(c.sm_pct, c.quota_frac)])
    # full quota up the SM axis, the growing class's anchors, then the saturated class's
    assert plan == [(6, 1.0), (80, 1.0), (6, 0.2), (6, 0.6), (80, 0.2), (80, 0.6)]
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    for sm in (80, 100):
        for (q, want), nbrs in zip(zip((0.4, 0.8), inferred, strict=True), ((0.2, 0.6), (0.6, 1.0)),
                                   strict=True):
            p = pts[(sm, q)]
            assert p.source is Source.SATURATED and p.throughput_rps == pytest.approx(want)
            assert all(Config(80, n) in p.basis for n in nbrs)
        for k, q in enumerate((0.2, 0.6, 1.0)):
            assert pts[(sm, q)].throughput_rps == two[k]
    assert pts[(80, 0.2)].source is Source.MEASURED and pts[(100, 0.2)].source is Source.SAME_SHARE
    table = to_table("f", "cpu-2c", list(pts.values()))
    assert table.is_measured(100, 0.6) and not table.is_measured(100, 0.4)


def test_saturated_column_without_a_ratio_is_interpolated_between_its_own_measurements():
    # one core meets no SLO at quota 0.2 (0 rps): the ratio is undefined there
    spec = GridSpec(device_cores=2)
    truth = {(6, 0.2): 0.0, (6, 0.6): 12.0, (6, 1.0): 30.0, (80, 0.2): 4.0, (80, 0.6): 16.0,
             (80, 1.0): 30.0}
    done = {}
    while (c := next_config(spec, done)) is not None:
        done[c] = m(c.sm_pct, c.quota_frac, truth[(c.sm_pct, c.quota_frac)])
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert pts[(80, 0.4)].throughput_rps == pytest.approx(ql(0.4, 0.2, 4.0, 0.6, 16.0))
    assert pts[(80, 0.4)].basis == (Config(80, 0.2), Config(80, 0.6))
    # where the ratio is defined (0.6 and 1.0) it is used: the one-core column's 0.8, x 4/3 -> 1
    want = ql(0.8, 0.6, 12.0, 1.0, 30.0) * (16.0 / 12.0 + 1.0) / 2
    assert pts[(80, 0.8)].throughput_rps == pytest.approx(want)


@pytest.mark.parametrize("cores, measured, planned, nxt", [
    # nothing yet: the full-quota axis and every class's anchors (no saturation known)
    (2, [], 2 + 2 * 2, Config(6, 1.0)),
    # the second core gains: both classes' anchors, no extra point
    (2, [(6, 1.0, 20.0), (80, 1.0, 30.0)], 2 + 2 * 2, Config(6, 0.2)),
    # saturated: the anchors of the last growing class and of the first saturated one
    (2, [(6, 1.0, 20.0), (80, 1.0, 20.0)], 2 + 2 + 2, Config(6, 0.2)),
    (2, [(6, 1.0, 20.0), (80, 1.0, 20.0), (6, 0.2, 5.0), (6, 0.6, 12.0)], 6, Config(80, 0.2)),
    (2, [(6, 1.0, 20.0), (80, 1.0, 20.0), (6, 0.2, 5.0), (6, 0.6, 12.0), (80, 0.2, 7.0)], 6,
     Config(80, 0.6)),
    (2, [(6, 1.0, 20.0), (80, 1.0, 20.0), (6, 0.2, 5.0), (6, 0.6, 12.0), (80, 0.2, 7.0),
         (80, 0.6, 15.0)], 6, None),
    # one core: one class, nothing can saturate
    (1, [(6, 1.0, 20.0)], 3, Config(6, 0.2)),
    # a GPU (every share its own class), saturated at 24 %
    (None, [(6, 1.0, 10.0), (12, 1.0, 20.0), (24, 1.0, 40.0), (50, 1.0, 40.0)], 4 + 3 * 2 + 2,
     Config(6, 0.2)),
    (None, [(6, 1.0, 10.0), (12, 1.0, 10.0)], 2 + 2 + 2, Config(6, 0.2)),
])
def test_plan_size_and_next_point(cores, measured, planned, nxt):
    spec = GridSpec(device_cores=cores)
    done = {Config(s, q): m(s, q, r) for s, q, r in measured}
    assert len(planned_configs(spec, done)) == planned
    assert next_config(spec, done) == nxt
    assert spec.points_total == 35
    if nxt is None:
        assert len(fill(spec, done)) == 35


def test_progress_counts_the_extra_point():
    """``profile_function`` shows len(measured) / len(planned): it never goes backwards past the end
    and ends at measured == planned, the extra point included."""
    spec = GridSpec(device_cores=2)
    done: dict[Config, Measurement] = {}
    seen = []
    while (c := next_config(spec, done)) is not None:
        seen.append((len(done), len(planned_configs(spec, done))))
        done[c] = m(c.sm_pct, c.quota_frac, 20.0 * c.quota_frac)  # the second core buys nothing
    assert seen[-1] == (5, 6) and len(done) == len(planned_configs(spec, done)) == 6
    assert all(d < p for d, p in seen)


def test_plan_shrinks_as_saturation_is_found_and_resumes():
    spec = GridSpec()
    assert len(planned_configs(spec, {})) == 7 + 7 * 2
    partial = {c: m(c.sm_pct, c.quota_frac, 50.0) for c in [Config(6, 1.0), Config(12, 1.0)]}
    assert len(planned_configs(spec, partial)) == 2 + 1 * 2 + 2
    assert next_config(spec, partial) == Config(6, 0.2)


def test_batches_are_planned_independently():
    spec = GridSpec(sm_grid=(50, 100), quota_grid=(0.5, 1.0), batches=(1, 4), device_cores=2)
    done = run_plan(spec, lambda sm, q: 10.0 * q * (2 if sm == 100 else 1))
    assert {c.batch for c in done} == {1, 4} and len(done) == 8
    assert len(fill(spec, done)) == spec.points_total == 8


def test_skip_rules_apply_per_batch():
    # 4 cores (shares -> 1, 2, 3, 4 cores): batch 1 gains nothing past one core, batch 4 up to 3.
    spec = GridSpec(sm_grid=(6, 50, 80, 100), quota_grid=(0.25, 0.5, 0.75, 1.0), batches=(1, 4),
                    quota_anchors=(0.25, 1.0), device_cores=4)

    def truth(b):
        def f(sm, q):
            cores = {6: 1, 50: 2, 80: 3, 100: 4}[sm]
            return q * (10.0 if b == 1 else 25.0 * min(cores, 3))
        return f

    done: dict[Config, Measurement] = {}
    while (c := next_config(spec, done)) is not None:
        done[c] = m(c.sm_pct, c.quota_frac, truth(c.batch)(c.sm_pct, c.quota_frac), c.batch)
    by_batch = {b: sorted((c.sm_pct, c.quota_frac) for c in done if c.batch == b) for b in (1, 4)}
    # batch 1: one class with its anchors, the next class at full quota shows saturation (and is
    # measured at the smallest quota too)
    assert by_batch[1] == [(6, 0.25), (6, 1.0), (50, 0.25), (50, 1.0)]
    # batch 4: 1 -> 2 -> 3 cores gain (anchors measured in each), the 4th core does not
    assert by_batch[4] == [(6, 0.25), (6, 1.0), (50, 0.25), (50, 1.0), (80, 0.25), (80, 1.0), (100, 0.25),
                           (100, 1.0)]
    points = {(p.config.sm_pct, p.config.quota_frac, p.config.batch): p for p in fill(spec, done)}
    assert len(points) == spec.points_total
    assert points[(80, 0.5, 1)].source is Source.SATURATED and points[(80, 0.5, 1)].throughput_rps == 5.0
    assert points[(100, 0.25, 4)].source is Source.MEASURED
    sat = points[(100, 0.5, 4)]
    assert sat.source is Source.SATURATED and sat.throughput_rps == pytest.approx(37.5)
    # interpolation stays inside its batch: batch 4's 0.5 quota from batch 4's anchors only
    p = points[(50, 0.5, 4)]
    assert p.source is Source.INTERPOLATED and p.throughput_rps == pytest.approx(25.0)
    assert {c.batch for c in p.basis} == {4}
    table = to_table("f", "cpu-4c", tuple(points.values()))
    assert table.throughput(80, 1.0, 4) == 75 and table.throughput(80, 1.0, 1) == 10


def test_fill_refuses_an_unfinished_plan_and_bad_grids():
    with pytest.raises(ValidationError):
        fill(GridSpec(), {})
    with pytest.raises(ValidationError):
        GridSpec(sm_grid=(0, 50))
    with pytest.raises(ValidationError):
        GridSpec(quota_anchors=(0.4, 1.0))


def test_table_round_trips_through_json():
    spec = GridSpec(device_cores=2)
    done = run_plan(spec, lambda sm, q: 20.0 * q)
    table = to_table("f", "cpu-2c", fill(spec, done))
    again = ProfileTable.from_json(table.to_json())
    assert again == table and again.is_measured(6, 0.2) == table.is_measured(6, 0.2)


# ---- early stopping and the rate search ------------------------------------------------------

S = SearchSettings(min_duration_s=1.0, min_requests=100, max_duration_s=5.0)


@pytest.mark.parametrize("obs, verdict", [
    # overload: the budget (1 % of 100 planned, +1) is spent in the first few requests
    (StepObservation(100, 0.2, [5.0] * 10 + [80.0, 90.0, 95.0] * 2), Verdict.FAIL),
    # ... but not on the odd late request early in the step
    (StepObservation(100, 0.2, [5.0] * 10 + [80.0, 90.0, 95.0]), Verdict.CONTINUE),
    # requests still waiting past the SLO count too
    (StepObservation(100, 0.2, [5.0] * 10, waiting_ages_ms=[60.0, 70.0, 200.0] * 2), Verdict.FAIL),
    (StepObservation(100, 0.2, [5.0] * 10, errors=6), Verdict.FAIL),
    (StepObservation(100, 0.5, [5.0] * 50), Verdict.CONTINUE),
    (StepObservation(100, 1.0, [5.0] * 100), Verdict.PASS),
    (StepObservation(100, 1.0, [5.0] * 99 + [60.0]), Verdict.PASS),
    (StepObservation(100, 1.0, [5.0] * 98 + [60.0, 61.0]), Verdict.FAIL),
    # a slow rate decides at max_duration on what it saw
    (StepObservation(5, 5.0, [5.0] * 25), Verdict.PASS),
    (StepObservation(5, 4.0, [5.0] * 20), Verdict.CONTINUE),
    # more device time than the quota: fails however fast the answers are
    (StepObservation(30, 0.5, [5.0] * 10, busy_ms_per_request=10.0, quota_frac=0.25), Verdict.FAIL),
    (StepObservation(20, 0.5, [5.0] * 10, busy_ms_per_request=10.0, quota_frac=0.25), Verdict.CONTINUE),
    # ... the arbiter charges the token's held time (execution + linger), above the busy time at
    # light load: 7 rps x 15 ms busy fits a 0.2 quota, 7 x 30 ms held does not
    (StepObservation(7, 0.5, [5.0] * 3, busy_ms_per_request=15.0, quota_frac=0.2), Verdict.CONTINUE),
    (StepObservation(7, 0.5, [5.0] * 3, busy_ms_per_request=15.0, quota_frac=0.2, held_ms_per_request=30.0),
     Verdict.FAIL),
    (StepObservation(5, 0.5, [5.0] * 3, busy_ms_per_request=15.0, quota_frac=0.2, held_ms_per_request=30.0),
     Verdict.CONTINUE),
    # held below busy (a batch's token shared by its requests): the larger one counts
    (StepObservation(14, 0.5, [5.0] * 3, busy_ms_per_request=15.0, quota_frac=0.2, held_ms_per_request=5.0),
     Verdict.FAIL),
    # at full quota nothing is charged against a cap
    (StepObservation(40, 0.5, [5.0] * 3, busy_ms_per_request=15.0, held_ms_per_request=30.0),
     Verdict.CONTINUE),
])
def test_step_verdict(obs, verdict):
    assert step_verdict(obs, 50.0, S) is verdict


def search(capacity: float, true_rate: float, **over):
    settings = SearchSettings(**over)
    state = start_search(capacity)
    while (r := next_rate(state, settings)) is not None:
        state = record_step(state, r, r <= true_rate)
    return state


@pytest.mark.parametrize("capacity, true_rate", [(100, 95), (100, 80), (100, 40), (100, 100), (50, 12)])
def test_search_brackets_the_rate_within_tolerance(capacity, true_rate):
    st = search(capacity, true_rate)
    assert st.pass_rps <= true_rate
    converged = st.steps < SearchSettings().max_steps
    assert st.pass_rps >= true_rate / (1 + SearchSettings().rel_tol if converged else 1.2) - 1e-9
    # near capacity (the usual case) in 3-4 steps plus reruns of lone failures and the answer's
    # confirmation; far below the step budget may run out (the answer is then within 1.2x)
    assert st.steps <= (7 if true_rate >= 0.85 * capacity else SearchSettings().max_steps)
    quick = search(capacity, true_rate, confirm_fails=1, rel_tol=0.08)
    assert true_rate / 1.08 - 1e-9 <= quick.pass_rps <= true_rate


def test_a_lone_failure_that_decides_is_run_again():
    # A hiccup fails the first step at 85: it is run again, passes, and a third step settles it.
    hiccup = iter([False, True, True])
    st = start_search(100)
    rates = []
    while (r := next_rate(st, SearchSettings())) is not None and len(rates) < 4:
        rates.append(round(r, 1))
        st = record_step(st, r, next(hiccup, r <= 95))
    assert rates[:3] == [85.0, 85.0, 85.0] and votes(st.history, 85.0) == (2, 1)
    # every failure counts with confirm_fails=1: the search steps down by down_frac at once
    st = record_step(start_search(100), 85.0, False)
    assert next_rate(st, SearchSettings(confirm_fails=1)) == pytest.approx(85.0 * 0.7)


def test_search_looks_above_a_low_capacity_estimate():
    # The probe ran in a busy moment: the function really serves 2.5x its estimate.
    st = search(40, 100)
    assert 100 / 1.25 <= st.pass_rps <= 100


def test_search_decides_a_rate_by_majority():
    # The function really serves 95; a lucky step passes 99.6 once, its confirmation and the
    # tie-break fail, so the answer stays at a rate that passed twice.
    lucky = iter([True, True, True, False, False, False])  # 85, 94.5, 99.6, 102.3, 99.6, 99.6
    st = start_search(100)
    rates = []
    while (r := next_rate(st, SearchSettings(confirm_passes=2, confirm_fails=1))) is not None:
        rates.append(round(r, 1))
        st = record_step(st, r, next(lucky, r <= 95))
    assert rates == [85.0, 94.5, 99.6, 102.3, 99.6, 99.6, 97.0, 94.5]
    assert votes(st.history, st.history[2][0]) == (1, 2)
    assert round(st.pass_rps, 1) == 94.5 and votes(st.history, st.pass_rps) == (2, 0)


def test_a_split_search_answers_the_highest_pass_below_the_unanimous_failures():
    # The load drifted up mid-search: 35.9 and 37.8 passed once, then lost their votes.
    st = start_search(42)
    for r, ok in [(35.9, True), (39.9, False), (37.8, True), (37.8, False), (37.8, False),
                  (35.9, False), (35.9, False)]:
        st = record_step(st, r, ok)
    assert st.pass_rps == 0 and result_rate(st) == 37.8
    assert result_rate(record_step(start_search(10), 8.5, False)) == 0.0


def test_a_disturbed_step_is_told_from_an_overloaded_one():
    s = SearchSettings()
    assert disturbed(14.0, 10.0, s)  # executions stretched: something else had the cores
    assert not disturbed(11.0, 10.0, s)  # the function's own cost at this rate
    assert not disturbed(None, 10.0, s) and not disturbed(14.0, None, s)


@pytest.mark.parametrize("steps, counted, left_out", [
    # the 01:02 repeat of MobileNet at one core: two failures at 40.6 rps at 17-18 ms per request
    # while another job ran, then quiet passes at 13.8 ms at 37-39 rps: found out afterwards
    ([(40.6, False, 17.3), (40.6, False, 17.1), (28.4, True, 16.2), (33.9, True, 14.6),
      (37.1, True, 13.9), (38.8, True, 13.8)],
     [(28.4, True), (33.9, True), (37.1, True), (38.8, True)], (0, 1)),
    # quiet throughout (12.9-14.5 ms): an overloaded rate's failures count
    ([(48.1, False, 12.9), (48.1, True, 14.3), (48.1, False, 14.4), (33.7, True, 14.1)],
     [(48.1, False), (48.1, True), (48.1, False), (33.7, True)], ()),
    # the reference is a step at a similar or higher rate: a light step's quiet busy time says
    # nothing of a heavy one (the platform's own load stretches executions as the rate rises)
    ([(50.0, False, 17.0), (30.0, True, 13.0), (40.0, True, 16.0)],
     [(50.0, False), (30.0, True), (40.0, True)], ()),
    ([(50.0, False, 21.0), (30.0, True, 13.0), (46.0, True, 16.0)], [(30.0, True), (46.0, True)], (0,)),
    # passes are never left out
    ([(30.0, True, 25.0), (40.0, True, 12.0)], [(30.0, True), (40.0, True)], ()),
    # a node that stays busy is measured busy: at most max_reruns (3) failures, the most stretched
    ([(50.0, False, 30.0), (35.0, False, 18.0), (25.0, False, 25.0), (17.5, False, 16.0),
      (50.0, True, 10.0)], [(17.5, False), (50.0, True)], (0, 1, 2)),
    # no busy time known (too few requests): nothing to judge by
    ([(50.0, False, None), (35.0, True, None)], [(50.0, False), (35.0, True)], ()),
])
def test_disturbed_failures_are_left_out_also_when_the_quiet_steps_come_later(steps, counted, left_out):
    got, out = counted_history(steps, SearchSettings())
    assert list(got) == counted and out == left_out
    state = replay(42.0, got, len(got))
    assert state.steps == len(counted) and state.history == tuple(counted)


def test_partial_quotas_search_coarser_and_without_confirming_passes():
    s = SearchSettings()
    assert s.for_quota(1.0) is s and s.confirm_passes == 2
    m = s.for_quota(1.0, modelled=True)  # the queue model answers: one vote per rate
    assert (m.confirm_passes, m.confirm_fails, m.rel_tol) == (1, 1, s.rel_tol)
    p = s.for_quota(0.2)
    assert (p.confirm_passes, p.rel_tol, p.max_duration_s) == (1, 0.08, 5.0)
    assert p.min_requests == s.min_requests and p.max_steps == s.max_steps
    quick = SearchSettings(rel_tol=0.1, max_duration_s=3.0, confirm_passes=1).for_quota(0.6)
    assert (quick.rel_tol, quick.max_duration_s) == (0.1, 3.0)  # never finer or longer than asked
    # a quota-bound answer of 6.5 rps: the bracket's lone failure is run again in both, then one
    # pass decides within 8 % at a partial quota; at full quota the 5 % bracket (6.8 % apart) bisects
    st = record_step(record_step(start_search(7.6), 6.46, True), 6.9, False)
    assert next_rate(st, p) == next_rate(st, s) == 6.9
    st = record_step(st, 6.9, False)
    assert next_rate(st, p) is None and next_rate(st, s) == pytest.approx(math.sqrt(6.46 * 6.9))


def test_replay_counts_the_steps_spent_and_continues_the_search():
    s = SearchSettings()
    hist = [(40.6, False), (28.4, True)]
    state = replay(47.8, hist, 2)
    assert state.pass_rps == 28.4 and state.fail_rps == 40.6
    # the first step's lone failure is run again (confirm_fails), as for a search built step by step
    assert next_rate(state, s) == 40.6
    assert next_rate(replay(47.8, hist, s.max_steps), s) is None


def test_search_gives_up_when_even_light_load_fails():
    st = search(100, 0.0)
    assert st.pass_rps == 0.0 and st.steps <= SearchSettings().max_steps


# ---- other load on the node ------------------------------------------------------------------

def _fake_proc(root, busy_ticks: int, idle_ticks: int, procs: dict[int, tuple[int, int]]):
    """A /proc with a cpu line and processes pid -> (ppid, utime+stime ticks)."""
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(f"cpu  {busy_ticks} 0 0 {idle_ticks} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    for pid, (ppid, ticks) in procs.items():
        d = root / str(pid)
        d.mkdir(exist_ok=True)
        # the command may hold spaces and parentheses: fields are counted after the last ")"
        (d / "stat").write_text(f"{pid} (odd (name) x) S {ppid} 0 0 0 0 0 0 0 0 0 {ticks} 0 0 0 20\n")


def test_cpu_monitor_tells_other_load_from_the_platforms_own(tmp_path):
    proc = tmp_path / "proc"
    clock = iter([0.0, 2.0])
    mon = CpuMonitor(10, proc=proc, clock=lambda: next(clock))
    tick = mon.tick
    # 10 = the profiler, 11 its platform, 12 the platform's worker; 20 someone else's job
    _fake_proc(proc, 1000, 5000, {10: (1, 100), 11: (10, 50), 12: (11, 300), 20: (1, 40)})
    a = mon.sample()
    # in 2 s: the node did 300 ticks of work, the platform's tree 200 of them (the worker 150)
    _fake_proc(proc, 1300, 5100, {10: (1, 120), 11: (10, 80), 12: (11, 450), 20: (1, 140)})
    b = mon.sample()
    assert a is not None and b is not None
    assert b.own_s - a.own_s == pytest.approx(200 * tick)
    assert foreign_cores(a, b) == pytest.approx(100 * tick / 2.0)
    assert foreign_cores(b, b) == 0.0  # no time passed
    # the platform's tree used more than the node reports (ticks counted at different moments): 0
    assert foreign_cores(a, CpuSample(2.0, a.busy_s, a.own_s + 1.0)) == 0.0
    assert CpuMonitor(10, proc=tmp_path / "missing").sample() is None


def _searched(history, severity):
    st = start_search(60.0)
    for r, ok in history:
        st = record_step(st, r, ok)
    return st, severity


@pytest.mark.parametrize("history, severity, want", [
    # bracket 50 (p99 at 0.8 of the SLO) .. 52.5 (1.2 x): the crossing is half-way
    ([(50.0, True), (52.5, False)], {50.0: [0.8], 52.5: [1.2]}, 51.25),
    # a rate's steps are read by their median severity
    ([(50.0, True), (50.0, True), (52.5, False)], {50.0: [0.5, 0.9, 0.9], 52.5: [1.1]}, 51.25),
    # the ends do not straddle 1 (a vote against its own severity): the highest pass stands
    ([(50.0, True), (52.5, False)], {50.0: [1.1], 52.5: [1.3]}, 50.0),
    ([(50.0, True), (52.5, False)], {50.0: [0.8], 52.5: [0.95]}, 50.0),
    # no failure above the answer, or no severity known: the highest pass
    ([(50.0, True)], {50.0: [0.5]}, 50.0),
    ([(50.0, True), (52.5, False)], {}, 50.0),
    # nothing passed: 0
    ([(50.0, False)], {50.0: [2.0]}, 0.0),
])
def test_answer_rate_reads_the_bracket_where_severity_crosses_one(history, severity, want):
    st, sev = _searched(history, severity)
    assert answer_rate(st, sev, SearchSettings()) == pytest.approx(want)
    assert answer_rate(st, sev, SearchSettings(interpolate=False)) == result_rate(st)


@pytest.mark.parametrize("obs, want", [
    # p99 (LoadGen's nearest rank: of 100, the slowest) over the SLO; requests still waiting count
    # at their age
    (StepObservation(100, 1.0, [10.0] * 98 + [40.0, 45.0]), 45.0 / 50.0),
    (StepObservation(100, 1.0, [10.0] * 98, waiting_ages_ms=[75.0, 80.0]), 80.0 / 50.0),
    (StepObservation(200, 1.0, [10.0] * 197 + [40.0, 45.0, 47.0]), 45.0 / 50.0),  # index 198
    # a partial quota: the charged time over the quota when it is the larger (7 x 40 ms / 0.2)
    (StepObservation(7, 5.0, [10.0] * 35, busy_ms_per_request=15.0, quota_frac=0.2,
                     held_ms_per_request=40.0), 7 * 40.0 / 1000.0 / 0.2),
    # ... and the latency when that is
    (StepObservation(7, 5.0, [100.0] * 35, busy_ms_per_request=15.0, quota_frac=0.2), 2.0),
])
def test_step_severity(obs, want):
    assert step_severity(obs, 50.0, S) == pytest.approx(want)
