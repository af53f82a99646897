"""The worker's batching policy (function_templates/python3-torch/fastgshare_batch_policy.py):
pure, time as input, table-driven."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"))
import fastgshare_batch_policy as p  # noqa: E402

SLO = p.BatchSettings(max_batch=16, slo_ms=100.0)  # budget 90 ms: 10 ms for the path
LEARNT = replace(p.initial_state(SLO), exec_ms=((1, 10.0), (2, 12.0), (4, 16.0), (8, 24.0)))


def busy(gap_ms: float, last_s: float = 0.0) -> p.BatchState:
    """LEARNT, with arrivals every ``gap_ms`` so far, the last at ``last_s``."""
    return replace(LEARNT, gap_s=gap_ms / 1000.0, last_arrival_s=last_s)


@pytest.mark.parametrize(("now_s", "queued", "oldest_s", "state", "take", "waits"), [
    # Nothing learnt yet: run what is there (and learn from it).
    (0.0, 1, 0.0, p.initial_state(SLO), 1, False),
    # A lone request at low load (one every 500 ms, exec 10 ms: load 0.02): never waits.
    (0.0, 1, 0.0, busy(500.0), 1, False),
    # A lone request at high load (one every 5 ms, exec 10 ms: the device would not keep up): waits.
    (0.0, 1, 0.0, busy(5.0), 0, True),
    # High load but the oldest has no slack left for a batch of 2 (90 - 12 ms): go now.
    (0.079, 1, 0.0, busy(5.0, last_s=0.079), 1, False),
    # The cap's worth queued: take it all at once.
    (0.0, 20, 0.0, busy(5.0), 16, False),
    # Eight queued, oldest arrived 80 ms ago (10 ms left): 4 would take 16 ms, 1 takes 10: take 1.
    (0.080, 8, 0.0, busy(5.0, last_s=0.080), 1, False),
    # Oldest already late (100 ms ago): the largest allowed, to catch up.
    (0.100, 8, 0.0, busy(5.0, last_s=0.100), 8, False),
    # Load is high but the next arrival is not expected within the slack (gap 100 ms > ~66 ms).
    (0.0, 1, 0.0, replace(busy(100.0), exec_ms=((1, 60.0), (2, 24.0))), 1, False),
])
def test_decide(now_s, queued, oldest_s, state, take, waits) -> None:
    d = p.decide(now_s, queued, oldest_s, state, SLO)
    assert d.take == take, d
    assert (d.wait_until_s is not None) == waits, d
    if waits:
        # never past the slack: the batch it waits for must still end before the deadline
        deadline = oldest_s + SLO.budget_ms / 1000.0
        bigger = p.estimate_exec_ms(queued + 1, state.exec_ms, SLO.profile_ms)
        assert now_s < d.wait_until_s <= deadline - bigger / 1000.0


def test_a_lone_request_never_waits_past_its_slack() -> None:
    """Whatever the arrival rate and however long it has waited, a lone request's wait ends in
    time for its batch to finish before its deadline."""
    for gap_ms in (0.5, 1, 2, 5, 10, 20, 50, 80):
        for waited_ms in range(0, 100, 3):
            now = waited_ms / 1000.0
            state = busy(gap_ms, last_s=now)
            d = p.decide(now, 1, 0.0, state, SLO)
            if d.take:
                continue
            bigger = p.estimate_exec_ms(2, state.exec_ms, SLO.profile_ms)
            assert d.wait_until_s <= SLO.budget_ms / 1000.0 - bigger / 1000.0 + 1e-12
            assert d.wait_until_s <= now + SLO.wait_gaps * gap_ms / 1000.0 + 1e-12


def test_silence_lowers_the_rate_estimate() -> None:
    """Arrivals were 5 ms apart, but none for 300 ms: the next is not expected, so no waiting."""
    assert p.decide(0.300, 1, 0.300, busy(5.0, last_s=0.0), SLO).take == 1


def test_observed_p99_over_budget_stops_voluntary_waits() -> None:
    state = replace(busy(5.0), latencies_ms=(200.0,) * 50)
    assert p.decide(0.0, 1, 0.0, state, SLO).take == 1


@pytest.mark.parametrize(("settings", "now_s", "queued", "take", "wait_until_s"), [
    (p.BatchSettings(max_batch=4, fixed_delay_ms=2.0), 0.0, 1, 0, 0.002),
    (p.BatchSettings(max_batch=4, fixed_delay_ms=2.0), 0.002, 2, 2, None),
    (p.BatchSettings(max_batch=4, fixed_delay_ms=2.0), 0.0, 9, 4, None),
    (p.BatchSettings(max_batch=1), 0.0, 3, 1, None),
    (p.BatchSettings(max_batch=1, slo_ms=50.0), 0.0, 3, 1, None),  # SLO but batch 1: no batching
])
def test_fixed_size_mode(settings, now_s, queued, take, wait_until_s) -> None:
    d = p.decide(now_s, queued, 0.0, p.initial_state(settings), settings)
    assert (d.take, d.wait_until_s) == (take, wait_until_s)


@pytest.mark.parametrize(("size", "observed", "profile", "expected"), [
    (4, ((4, 16.0),), (), 16.0),  # seen
    (8, ((4, 16.0),), (), 32.0),  # above the largest seen: linear from it (an upper bound)
    (2, ((4, 16.0),), (), 16.0),  # below a seen size: at most that
    (6, ((4, 16.0), (8, 20.0)), (), 20.0),  # between: the tighter bound
    (3, (), ((1, 10.0), (4, 16.0)), 14.0),  # profile interpolated
    (8, (), ((1, 10.0), (4, 16.0)), 24.0),  # profile extrapolated by its last slope
    (2, (), ((4, 16.0),), 8.0),  # below the profile's smallest: proportional
    (2, (), (), None),  # nothing known
])
def test_estimate_exec_ms(size, observed, profile, expected) -> None:
    assert p.estimate_exec_ms(size, observed, profile) == expected


@pytest.mark.parametrize(("profile", "budget_ms", "ceiling", "expected"), [
    (((1, 10.0), (4, 20.0), (8, 40.0), (16, 90.0)), 90.0, 16, 8),
    (((1, 10.0), (4, 20.0), (8, 40.0), (16, 90.0)), 90.0, 4, 4),
    (((1, 60.0),), 90.0, 16, 1),
])
def test_max_batch_from_profile(profile, budget_ms, ceiling, expected) -> None:
    assert p.max_batch_from_profile(profile, budget_ms, ceiling) == expected


def test_aimd_cap() -> None:
    s = p.BatchSettings(max_batch=16, slo_ms=100.0)  # half the budget: 45 ms
    state = replace(p.initial_state(s), cap=8)
    state = p.on_batch_done(state, 8, 30.0, [40.0] * 8, s)  # at the cap, fit: +1
    assert state.cap == 9
    state = p.on_batch_done(state, 9, 60.0, [70.0] * 9, s)  # one slow batch is smoothed: fits
    assert state.cap == 10
    for _ in range(2):  # overruns that persist: x0.75 of the size
        state = p.on_batch_done(state, 9, 60.0, [70.0] * 9, s)
    assert state.cap == 6
    state = p.on_batch_done(state, 3, 20.0, [30.0] * 3, s)  # below the cap: unchanged
    assert state.cap == 6
    for _ in range(20):
        state = p.on_batch_done(state, state.cap, 10.0, [10.0], s)
    assert state.cap == 16  # never above B_max


def test_aimd_keeps_the_cap_when_smaller_batches_are_slow_too() -> None:
    """A contended device: every size is over half the budget; cutting would only cost throughput."""
    s = p.BatchSettings(max_batch=16, slo_ms=100.0)
    state = replace(p.initial_state(s), cap=8, exec_ms=((1, 55.0), (4, 56.0), (6, 58.0)))
    assert p.on_batch_done(state, 8, 60.0, [80.0] * 8, s).cap == 8
    fits = replace(state, exec_ms=((1, 10.0), (6, 30.0), (8, 60.0)))
    assert p.on_batch_done(fits, 8, 60.0, [80.0] * 8, s).cap == 6


def test_observations_correct_the_profile_and_smooth() -> None:
    s = p.BatchSettings(max_batch=8, slo_ms=100.0, profile_ms=((4, 16.0),))
    state = p.on_batch_done(p.initial_state(s), 4, 26.0, [30.0] * 4, s)
    assert p.estimate_exec_ms(4, state.exec_ms, s.profile_ms) == pytest.approx(18.0)  # from 16
    state = p.on_batch_done(state, 4, 16.0, [20.0] * 4, s)
    assert p.estimate_exec_ms(4, state.exec_ms, s.profile_ms) == pytest.approx(17.6)
    fresh = p.on_batch_done(p.initial_state(p.BatchSettings(max_batch=8, slo_ms=100.0)), 2, 9.0,
                            [9.0, 9.0], p.BatchSettings(max_batch=8, slo_ms=100.0))
    assert fresh.exec_ms == ((2, 9.0),)  # nothing to start from: the observation


def test_arrival_gap_ewma() -> None:
    s = p.BatchSettings(gap_alpha=0.5)
    state = p.on_arrival(p.initial_state(s), 1.0, s)
    assert state.gap_s is None
    state = p.on_arrival(state, 1.010, s)
    assert state.gap_s == pytest.approx(0.010)
    state = p.on_arrival(state, 1.040, s)
    assert state.gap_s == pytest.approx(0.020)


def test_parse_profile() -> None:
    assert p.parse_profile("8:25, 1:8.5,x:1,4:-1,4:14") == ((1, 8.5), (4, 14.0), (8, 25.0))
    assert p.parse_profile("") == ()


def test_budget() -> None:
    assert p.BatchSettings(slo_ms=100.0).budget_ms == 90.0
    assert p.BatchSettings(slo_ms=10.0).budget_ms == 8.0  # at least 2 ms for the path
    assert p.BatchSettings(slo_ms=10.0, path_ms=9.0).budget_ms == 5.0  # at least half the SLO
