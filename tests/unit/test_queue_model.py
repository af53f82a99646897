"""The profiler's queue model: a replica as a FIFO single server, read over the long run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fast_profiler.queue_model import MIN_SAMPLES, final_answer, model_rate, sojourn_quantile
from fast_profiler.search import SearchSettings, record_step, start_search


def _mm1(n: int = 20_000, mean_ms: float = 10.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(seed).exponential(mean_ms, n), np.zeros(n)


def test_mm1_sojourn_quantile_matches_the_formula():
    # M/M/1: the time in system is exponential with rate mu - lambda, so its p99 is ln(100) / (mu - lambda).
    s, p = _mm1()
    for lam in (30.0, 60.0, 80.0):
        want = math.log(100) / (100.0 - lam) * 1000.0
        assert sojourn_quantile(lam, s, p) == pytest.approx(want, rel=0.08)


def test_mm1_rate_at_the_slo_matches_the_formula():
    s, p = _mm1()
    want = 100.0 - math.log(100) / 0.1  # p99 = 100 ms at lambda = mu - ln(100) / 0.1 s
    assert model_rate(s, p, 100.0) == pytest.approx(want, rel=0.04)


def test_quantile_rises_with_rate_and_the_path_adds_on():
    s, p = _mm1()
    qs = [sojourn_quantile(r, s, p) for r in (10.0, 40.0, 70.0, 90.0)]
    assert qs == sorted(qs) and qs[-1] > 3 * qs[0]
    # a constant path outside the server shifts every latency by itself
    assert sojourn_quantile(40.0, s, p + 25.0) == pytest.approx(sojourn_quantile(40.0, s, p) + 25.0)
    # and so lowers the rate at a given SLO
    assert model_rate(s, p + 25.0, 100.0) < model_rate(s, p, 100.0)


def test_no_answer_from_too_few_requests_and_zero_when_idle_is_over_the_slo():
    s, p = _mm1(MIN_SAMPLES - 1)
    assert model_rate(s, p, 100.0) is None
    s, p = _mm1(MIN_SAMPLES)
    assert model_rate(s, p, 100.0) is not None
    assert model_rate(np.full(500, 200.0), np.zeros(500), 100.0) == 0.0
    assert model_rate(s, p[:-1], 100.0) is None  # service and path must pair up


def test_deterministic_service_never_queues_below_saturation_at_even_spacing():
    # Lower variance, lower tail: deterministic service beats exponential at the same mean.
    det = model_rate(np.full(5000, 10.0), np.zeros(5000), 100.0)
    exp_ = model_rate(*_mm1(5000), 100.0)
    assert det is not None and exp_ is not None and det > exp_


def _state(history):
    st = start_search(60.0)
    for r, ok in history:
        st = record_step(st, r, ok)
    return st


def test_final_answer_lowers_the_search_to_the_model_and_reads_its_latencies():
    # The steps passed 80 and failed 84 (short steps see few late requests), but the requests
    # they served are an M/M/1 at mu = 100/s whose long-run p99 reaches 100 ms at ~54 rps.
    s, p = _mm1(3000)
    steps = [(80.0, True), (84.0, False)]
    samples = [(s.tolist(), p.tolist()), ([50.0] * 10, [0.0] * 10)]  # a failed step's requests are not read
    ans = final_answer(_state(steps), steps, [0.9, 1.1], samples, SearchSettings(), 100.0, [20.0] * 100)
    assert ans.searched == pytest.approx(82.0)  # interpolated in the bracket
    assert ans.modelled is not None and ans.rps == ans.modelled < 60.0
    assert ans.latency_ms[2] == pytest.approx(100.0, rel=0.03) and ans.latency_ms[0] < ans.latency_ms[1]


def test_final_answer_keeps_the_search_when_the_model_is_higher_or_missing():
    s, p = _mm1(3000, mean_ms=2.0)  # a fast server: the model allows far more than was tried
    steps = [(40.0, True), (44.0, False)]
    ans = final_answer(_state(steps), steps, [0.5, 1.5], [(s.tolist(), p.tolist()), ([], [])],
                       SearchSettings(), 100.0, [10.0] * 199 + [30.0])
    assert ans.rps == ans.searched == pytest.approx(42.0) and ans.modelled > ans.rps
    assert ans.latency_ms == (10.0, 10.0, 10.0)
    few = [(s[:10].tolist(), p[:10].tolist()), ([], [])]
    ans = final_answer(_state(steps), steps, [0.5, 1.5], few, SearchSettings(), 100.0, [10.0] * 100)
    assert ans.modelled is None and ans.rps == pytest.approx(42.0)


def test_failing_steps_are_read_only_when_asked():
    # At full quota a failing step's requests are service like any other's; at a partial quota
    # they waited for tokens. Here only the failing step has enough requests for the model.
    s, p = _mm1(3000)
    steps = [(80.0, True), (84.0, False)]
    samples = [([10.0] * 10, [0.0] * 10), (s.tolist(), p.tolist())]
    partial = final_answer(_state(steps), steps, [0.9, 1.1], samples, SearchSettings(), 100.0, [20.0] * 100)
    assert partial.modelled is None and partial.rps == pytest.approx(82.0)
    full = final_answer(_state(steps), steps, [0.9, 1.1], samples, SearchSettings(), 100.0, [20.0] * 100,
                        full_quota=True)
    assert full.modelled is not None and full.rps == full.modelled < 60.0


def test_no_model_at_batch_above_one():
    s, p = _mm1(3000)
    steps = [(80.0, True), (84.0, False)]
    ans = final_answer(_state(steps), steps, [0.9, 1.1], [(s.tolist(), p.tolist()), ([], [])],
                       SearchSettings(), 100.0, [20.0] * 100, model=False)
    assert ans.modelled is None and ans.rps == pytest.approx(82.0)


def test_at_full_quota_the_model_also_raises_a_search_that_failed_in_a_busy_minute():
    # The search failed 50 and 35 while other load ran and passed only 17; the requests of its
    # quiet steps are an M/M/1 at mu = 100/s: the model's ~54 rps is the answer, up as well as down.
    s, p = _mm1(3000)
    slow = (s * 3).tolist()  # the busy minute: every execution three times as long
    steps = [(50.0, False), (35.0, False), (17.0, True)]
    samples = [(slow, p.tolist()), (slow, p.tolist()), (s.tolist(), p.tolist())]
    quiet = [False, False, True]
    full = final_answer(_state(steps), steps, [2.0, 1.5, 0.5], samples, SearchSettings(), 100.0, [20.0] * 100,
                        full_quota=True, quiet=quiet)
    assert full.searched == pytest.approx(17.0 + (35.0 - 17.0) * 0.5 / 1.0)
    assert full.rps == full.modelled == pytest.approx(100.0 - math.log(100) / 0.1, rel=0.05)
    # read with the busy steps, the model sees a slower server (and says so)
    mixed = final_answer(_state(steps), steps, [2.0, 1.5, 0.5], samples, SearchSettings(), 100.0,
                         [20.0] * 100, full_quota=True)
    assert mixed.rps < full.rps
    # a partial quota only ever lowers the search's answer
    part = final_answer(_state(steps), steps, [2.0, 1.5, 0.5], samples, SearchSettings(), 100.0, [20.0] * 100,
                        quiet=quiet)
    assert part.rps == part.searched and part.modelled > part.searched


def test_too_few_quiet_requests_read_them_all():
    s, p = _mm1(3000)
    steps = [(50.0, True), (60.0, False)]
    samples = [(s[:50].tolist(), p[:50].tolist()), (s.tolist(), p.tolist())]
    ans = final_answer(_state(steps), steps, [0.9, 1.1], samples, SearchSettings(), 100.0, [20.0] * 100,
                       full_quota=True, quiet=[True, False])
    assert ans.modelled is not None  # 50 quiet requests are too few: all 3,050 were read
