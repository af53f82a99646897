"""The arbiter's arithmetic alone (simulated saturated replicas, no hand-over latency) meets the
isolation target with room to spare; what the benchmark loses beyond it is the machine's."""

from __future__ import annotations

import pytest

from fast_manager.arbiter import model
from fast_manager.arbiter.sim import CASES, max_errors_pp, simulate


def test_default_params_apportion_within_one_pp() -> None:
    held, charged = max_errors_pp(model.ArbiterParams())
    assert held <= 1.0 and charged <= 1.0, (held, charged)


def test_short_windows_stay_within_the_target() -> None:
    held, charged = max_errors_pp(model.ArbiterParams(window_us=2_000_000))
    assert held <= 2.0 and charged <= 2.0, (held, charged)


def test_a_hand_over_latency_is_lost_by_the_receiver_not_charged_away() -> None:
    """Held (from the pick-up) trails charged (from the grant) by the hand-overs' latency."""
    _name, reps, _want = CASES[0]
    p = model.ArbiterParams()
    got = simulate(list(reps), p, 10 * p.window_us, p.window_us, handover_us=2_000)
    for r in reps:
        g = got[r.name]
        lost = g.handovers_in * 2_000 / (9 * p.window_us)
        assert abs((g.charged - g.held) - lost) < 0.002, (r.name, g, lost)


@pytest.mark.parametrize("windows", [3, 10])
@pytest.mark.parametrize("overhead_us", [2_000, 3_000])
def test_a_guaranteed_request_is_met_not_overshot_next_to_a_greedy_neighbour(
        windows: int, overhead_us: int) -> None:
    """bench.isolation's guarantee case (0.7 next to a greedy 0.1/1.0), with each execution's
    turnaround held under the token as a real sidecar's is: the guaranteed replica gets its
    request within 0.5 pp, over the benchmark's measurement (1 window warm-up, 2 measured) and
    a longer one. With whole tokens granted just under the request it got 0.7 + 0.7-1.4 pp
    here (and 0.711-0.720 charged in the real benchmark): the share a replica keeps at its
    request overshoots by the part of a token past it."""
    _name, reps, want = CASES[3]
    p = model.ArbiterParams()
    for seed in range(3):
        got = simulate(list(reps), p, windows * p.window_us, p.window_us,
                       overhead_us=overhead_us, jitter=0.1, seed=seed)
        for r, w in zip(reps, want, strict=True):
            assert abs(got[r.name].charged - w) <= 0.005, (seed, r.name, got[r.name])
            assert abs(got[r.name].held - w) <= 0.005, (seed, r.name, got[r.name])

