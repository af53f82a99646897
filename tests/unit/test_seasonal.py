"""The seasonal forecaster: the period detector on periodic and aperiodic series, the forecast
ahead of a step, and the timer trace it is shown on."""

import numpy as np
import pytest

from fast_scheduler.evaluation.traces import TIMER_PERIODS_S, timer_trace
from fast_scheduler.seasonal import (
    SeasonalForecaster,
    SeasonalSettings,
    autocorrelation,
    backtest_error,
    detect_period,
)

RNG = np.random.default_rng(0)


def _timer(n: int, period: int, on: int, base: float = 5.0, burst: float = 40.0, noise: bool = True):
    x = np.where((np.arange(n) % period) < on, burst, base)
    return RNG.poisson(x).astype(float) if noise else x.astype(float)


@pytest.mark.parametrize("period, on", [(6, 2), (12, 3), (18, 1), (30, 4)])
def test_finds_the_period_of_a_timer_with_poisson_noise(period, on):
    p = detect_period(_timer(120, period, on), min_bins=3)
    assert p is not None and p.bins == period and p.strength > 0.7


def test_finds_a_sine_period():
    x = 20 + 10 * np.sin(2 * np.pi * np.arange(200) / 25) + RNG.normal(0, 1, 200)
    p = detect_period(x)
    assert p is not None and p.bins == 25


@pytest.mark.parametrize("series", [
    np.full(120, 7.0),  # constant
    RNG.poisson(20.0, 240).astype(float),  # stationary Poisson
    np.cumsum(RNG.normal(0, 1, 240)) + 50,  # random walk
])
def test_no_period_in_aperiodic_series(series):
    assert detect_period(series, min_strength=0.7) is None


def test_no_period_in_random_on_off_bursts():
    # A two-state process with exponential sojourns (the bursty trace's shape): no period.
    x, k, on = np.zeros(360), 0, False
    while k < 360:
        n = max(1, int(RNG.exponential(3 if on else 12)))
        x[k:k + n] = 40.0 if on else 5.0
        k, on = k + n, not on
    assert detect_period(RNG.poisson(x).astype(float), min_strength=0.7) is None


def test_too_short_a_history_has_no_period():
    assert detect_period(_timer(20, 12, 3)) is None  # under 2.5 periods


def test_autocorrelation_and_backtest():
    x = _timer(60, 10, 3, noise=False)
    acf = autocorrelation(x)
    assert acf[0] == pytest.approx(1.0) and acf[10] == pytest.approx(1.0)
    assert backtest_error(x, 10) == pytest.approx(0.0)
    assert backtest_error(x, 7) > 0.5


def _fed(period_s: float, on_s: float, until_s: float, tick_s: float = 5.0) -> SeasonalForecaster:
    f = SeasonalForecaster(SeasonalSettings())
    t = tick_s
    while t <= until_s:
        rate = 40.0 if ((t - tick_s) % period_s) < on_s else 2.0
        f.observe("fn", t, rate, tick_s)
        t += tick_s
    return f


def test_forecast_pre_scales_ahead_of_the_next_step():
    f = _fed(120.0, 20.0, 600.0)  # steps at 0, 120, ..., 600 (the next at 720)
    p = f.period("fn", 600.0)
    assert p is not None and p.bins * f.settings.bin_s == pytest.approx(120.0)
    assert f.ahead("fn", 710.0, 11.0) == pytest.approx(40.0)  # the step at 720 is seen coming
    assert f.ahead("fn", 670.0, 11.0) == pytest.approx(2.0)  # mid-calm: the base rate


def test_forecast_leaves_an_aperiodic_function_alone():
    f = SeasonalForecaster()
    for i, r in enumerate(RNG.poisson(20.0, 200)):
        f.observe("fn", 5.0 * (i + 1), float(r), 5.0)
    assert f.ahead("fn", 1000.0, 11.0) is None and f.periods()["fn"] is None


def test_timer_trace_is_half_periodic_and_keeps_means():
    rates = {f"f{i}": 10.0 + i for i in range(6)}
    tr = timer_trace(rates, 900.0, seed=2)
    assert tr.counts == timer_trace(rates, 900.0, seed=2).counts
    for i, (f, r) in enumerate(rates.items()):
        x = np.asarray(tr.rates_rps[f])
        assert x.mean() == pytest.approx(r, rel=1e-6)
        bins = x.reshape(-1, 5).mean(axis=1)  # 5 s bins, as the forecaster's
        p = detect_period(bins, min_bins=6, min_strength=0.7)
        if i % 2 == 0:
            assert p is not None and p.bins * 5 in TIMER_PERIODS_S
        else:
            assert p is None


def test_the_live_tick_pre_scales_a_periodic_function():
    """``control.plan_tick`` feeds each tick's rate to the function's forecaster: a function that
    bursts every 120 s is planned for the burst 10 s before it comes, and for its calm rate between."""
    from fast_scheduler.autoscale import AutoscaleSettings
    from fast_scheduler.control import plan_tick
    from tests.unit.test_control import CPU, TABLE, view

    mem: dict = {}
    count = 0.0
    before = between = None
    for k in range(0, 161):  # 5 s ticks over 800 s; a 20 s burst at 40 rps every 120 s, else 2 rps
        now = 5.0 * k
        r = plan_tick(now, [view(count)], [CPU], {"openfaas-fn/f": TABLE}, mem, AutoscaleSettings())
        count += (40.0 if (now % 120.0) < 20.0 else 2.0) * 5.0
        d = r.decisions.get("openfaas-fn/f")
        if d is not None and now > 600 and now % 120.0 == 110.0:  # 10 s before a burst
            before = d
        if d is not None and now > 600 and now % 120.0 == 60.0:
            between = d
    assert mem["openfaas-fn/f"].seasonal.periods()["openfaas-fn/f"] is not None
    assert before is not None and "season ahead" in before.reason and before.target_rps >= 40.0
    assert between is not None and between.target_rps < 40.0
