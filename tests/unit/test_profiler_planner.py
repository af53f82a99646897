"""The profiler's pure parts: grid planning, saturation skipping, interpolation, early stopping."""

from __future__ import annotations

import pytest

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
    disturbed,
    next_rate,
    quantile,
    record_step,
    result_rate,
    start_search,
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
    # full quota at 6, 12, 24, 50 (50 shows saturation), anchors 0.2 and 0.6 at 6, 12, 24
    assert sorted((c.sm_pct, c.quota_frac) for c in done) == sorted(
        [(6, 1.0), (12, 1.0), (24, 1.0), (50, 1.0)] + [(s, q) for s in (6, 12, 24) for q in (0.2, 0.6)])
    assert len(done) == 10 and spec.points_total == 35
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert len(pts) == 35
    assert pts[(24, 0.4)].source is Source.INTERPOLATED
    assert pts[(24, 0.4)].throughput_rps == pytest.approx(truth(24, 0.4))
    assert pts[(80, 0.6)].source is Source.SATURATED
    assert pts[(80, 0.6)].throughput_rps == pytest.approx(truth(24, 0.6))
    assert pts[(50, 1.0)].source is Source.MEASURED
    assert pts[(50, 0.2)].source is Source.SATURATED


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
    assert sorted((c.sm_pct, c.quota_frac) for c in done) == [(6, 0.2), (6, 0.6), (6, 1.0), (80, 1.0)]
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert pts[(100, 0.2)].source is Source.SATURATED and pts[(100, 0.2)].throughput_rps == pytest.approx(6.0)


def test_saturated_partial_quota_scales_with_the_faster_request():
    """Full quota stops growing at the second core (something else limits it), but each request
    runs 1.6x faster there: a partial quota, which limits device time, serves 1.6x more."""
    spec = GridSpec(device_cores=2)
    busy = {6: 40.0, 80: 25.0}
    done: dict[Config, Measurement] = {}
    while (c := next_config(spec, done)) is not None:
        rps = min(20.0, c.quota_frac * 1000.0 / busy[c.sm_pct])
        done[c] = Measurement(c, rps, 5.0, 9.0, 10.0, busy_frac=rps * busy[c.sm_pct] / 1000,
                              busy_ms_per_request=busy[c.sm_pct])
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in fill(spec, done)}
    assert pts[(6, 0.2)].throughput_rps == pytest.approx(5.0)
    assert pts[(100, 0.2)].source is Source.SATURATED
    assert pts[(100, 0.2)].throughput_rps == pytest.approx(8.0)  # 5.0 x 40/25
    assert pts[(100, 0.8)].throughput_rps == pytest.approx(20.0)  # capped by the full-quota rate
    assert pts[(80, 1.0)].source is Source.MEASURED


def test_plan_shrinks_as_saturation_is_found_and_resumes():
    spec = GridSpec()
    assert len(planned_configs(spec, {})) == 7 + 7 * 2
    partial = {c: m(c.sm_pct, c.quota_frac, 50.0) for c in [Config(6, 1.0), Config(12, 1.0)]}
    assert len(planned_configs(spec, partial)) == 2 + 1 * 2
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
    # batch 1: one class with its anchors, the next class at full quota shows saturation
    assert by_batch[1] == [(6, 0.25), (6, 1.0), (50, 1.0)]
    # batch 4: 1 -> 2 -> 3 cores gain (anchors measured in each), the 4th core does not
    assert by_batch[4] == [(6, 0.25), (6, 1.0), (50, 0.25), (50, 1.0), (80, 0.25), (80, 1.0), (100, 1.0)]
    points = {(p.config.sm_pct, p.config.quota_frac, p.config.batch): p for p in fill(spec, done)}
    assert len(points) == spec.points_total
    assert points[(80, 0.5, 1)].source is Source.SATURATED and points[(80, 0.5, 1)].throughput_rps == 5.0
    sat = points[(100, 0.25, 4)]
    assert sat.source is Source.SATURATED and sat.throughput_rps == 18.75
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
    # near capacity (the usual case) in 3-4 steps plus reruns of lone failures; far below more
    assert st.steps <= (6 if true_rate >= 0.85 * capacity else 8)
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
    assert not disturbed(12.0, 10.0, s)  # the function's own cost at this rate
    assert not disturbed(None, 10.0, s) and not disturbed(14.0, None, s)


def test_search_gives_up_when_even_light_load_fails():
    st = search(100, 0.0)
    assert st.pass_rps == 0.0 and st.steps <= SearchSettings().max_steps


def test_quantile_nearest_rank():
    assert quantile([], 0.99) == 0.0
    assert quantile(list(range(1, 101)), 0.99) == 99
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
