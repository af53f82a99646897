"""Seasonal forecasts: each function's period learned from its own history, to pre-scale ahead of a
predicted step. Pure (numpy only; no clock, no I/O, no service).

Azure Functions traffic is strongly periodic (timer triggers, diurnal shapes). A reactive policy
serves a step with what ran before it for a tick plus a cold start; a function whose steps come on
a schedule can have its replicas started before the step instead. ``detect_period`` finds a period
in a series of rate bins by autocorrelation (computed with an FFT); ``SeasonalForecaster`` keeps
each function's recent rate in bins, re-detects its period now and then, and answers "what is the
highest rate expected over the next ``ahead_s``" from the same phase of the last periods. A
function with no period found gets ``None`` and stays with the reactive policy
(``AutoscaleContext.predicted_rps``).

Bins are ``bin_s`` (10 s by default) rather than minutes: a one-minute timer is one minute bin and
has no phase to pre-scale at; ten-second bins see steps of timers from 30 s up to the history's
half (``history_s``, one hour: diurnal shapes need a longer history and minute bins, a setting).

The forecaster is a mutable object holding one ring of bins per function (copying a frozen history
into a new state each tick would cost more than the decision itself at 10,000 functions); its
answers depend only on what it was given.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SeasonalSettings:
    """Tuning of the period detector and the seasonal forecast."""

    bin_s: float = 5.0
    """Width of a history bin (the detector's time resolution)."""
    history_s: float = 3600.0
    """History kept per function; periods up to half of it can be found."""
    min_period_s: float = 30.0
    """Shortest period looked for (shorter ones are within a tick plus a cold start anyway)."""
    min_cycles: float = 2.5
    """A period is looked for only once the history holds this many of it."""
    min_strength: float = 0.7
    """Autocorrelation at the period (1: the series repeats exactly) needed to call it a period.
    A two-state random burst process decays to ~0.3 within one burst and has no such peak."""
    max_backtest_error: float = 0.35
    """The last period predicted from the one before must miss by at most this share of the mean
    rate (mean absolute error): a period that does not forecast is not used."""
    min_variation: float = 0.25
    """Coefficient of variation of the history below which there is no step to pre-scale for
    (constant load: left to the reactive policy)."""
    redetect_s: float = 60.0
    """How often a function's period is looked for again."""
    periods_used: int = 2
    """The forecast at a phase is the mean of the last this many periods at that phase."""


@dataclass(frozen=True)
class Period:
    """A detected period: its length in bins and the autocorrelation there."""

    bins: int
    strength: float


def autocorrelation(series: Sequence[float] | np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of ``series`` at lags 0..n-1 (FFT, zero-padded; each lag divided by
    its overlap so long lags are not biased towards 0). All zeros for a constant series."""
    x = np.asarray(series, dtype=float)
    n = x.size
    if n == 0:
        return np.zeros(0)
    x = x - x.mean()
    var = float(np.dot(x, x))
    if var <= 1e-12 * max(1.0, n):
        return np.zeros(n)
    f = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(f * np.conj(f), 2 * n)[:n]
    overlap = np.arange(n, 0, -1, dtype=float)
    return (acf / overlap) / (var / n)


def detect_period(
    series: Sequence[float] | np.ndarray, min_bins: int = 3, min_strength: float = 0.6,
    min_cycles: float = 2.5,
) -> Period | None:
    """The period of ``series`` in bins, or None: the shortest lag in ``[min_bins, n / min_cycles]``
    that is a local maximum of the autocorrelation with a value of at least ``min_strength`` and
    within 10 % of the highest such peak (so the fundamental wins over its multiples)."""
    x = np.asarray(series, dtype=float)
    n = x.size
    max_lag = int(n / max(min_cycles, 1.0))
    if max_lag < min_bins + 1:
        return None
    acf = autocorrelation(x)
    lags = np.arange(max(min_bins, 1), max_lag + 1)
    a = acf[lags]
    left = acf[lags - 1]
    right = acf[np.minimum(lags + 1, n - 1)]
    peak = (a >= left) & (a >= right) & (a >= min_strength)
    if not peak.any():
        return None
    best = float(a[peak].max())
    for lag, v, p in zip(lags, a, peak, strict=True):
        if p and v >= 0.9 * best:
            return Period(int(lag), float(v))
    return None  # unreachable: the best peak itself passes


def backtest_error(series: np.ndarray, period_bins: int) -> float:
    """Mean absolute error of predicting the last period of ``series`` by the one before it (and
    the one before by its predecessor, where held: the worse of the two), as a share of the
    series' mean (inf when there is not enough history or no load)."""
    n = series.size
    if n < 2 * period_bins or period_bins <= 0:
        return math.inf
    mean = float(series.mean())
    if mean <= 0:
        return math.inf
    errs = []
    for k in range(1, min(3, n // period_bins)):  # the last period, and the one before where held
        last = series[n - k * period_bins:n - (k - 1) * period_bins]
        before = series[n - (k + 1) * period_bins:n - k * period_bins]
        errs.append(float(np.abs(last - before).mean()) / mean)
    return max(errs)


@dataclass
class _History:
    bins: np.ndarray
    """A ring of rate bins (requests per second averaged over each bin)."""
    start: int = -1
    """Absolute index of the oldest bin held (-1: nothing yet)."""
    end: int = -1
    """Absolute index one past the newest bin with data."""
    period: Period | None = None
    checked_s: float = -math.inf


@dataclass
class SeasonalForecaster:
    """Per-function rate history in bins, a period per function, and the forecast ahead."""

    settings: SeasonalSettings = field(default_factory=SeasonalSettings)
    _hist: dict[str, _History] = field(default_factory=dict)
    found: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Per function, when a period was first found and its length in bins (what the evaluation
    reports: which functions the forecaster acted on)."""

    @property
    def _size(self) -> int:
        return max(8, int(self.settings.history_s / self.settings.bin_s))

    def observe(self, function: str, now_s: float, rate_rps: float, span_s: float) -> None:
        """``rate_rps`` was seen over ``[now_s - span_s, now_s)``: spread into the bins it covers."""
        if span_s <= 0:
            return
        bs = self.settings.bin_s
        h = self._hist.get(function)
        if h is None:
            # Functions re-detect at staggered times (a stable hash of the name), so that 10,000 of
            # them do not all run their FFT on the same tick.
            stagger = (zlib.crc32(function.encode()) % 997) / 997
            h = self._hist[function] = _History(np.zeros(self._size),
                                                checked_s=now_s - self.settings.redetect_s * stagger)
        t0 = now_s - span_s
        b0, b1 = int(math.floor(t0 / bs + 1e-9)), int(math.ceil(now_s / bs - 1e-9))
        size = h.bins.size
        if h.start < 0:
            h.start = h.end = b0
        for b in range(max(b0, h.end - size + 1), b1):
            if b >= h.end:  # a new bin: clear the slot it reuses
                for nb in range(h.end, b + 1):
                    h.bins[nb % size] = 0.0
                h.end = b + 1
            lo, hi = max(t0, b * bs), min(now_s, (b + 1) * bs)
            if hi > lo:
                h.bins[b % size] += rate_rps * (hi - lo) / bs
        h.start = max(h.start, h.end - size)

    def series(self, function: str, upto_s: float | None = None) -> np.ndarray:
        """The function's complete bins, oldest first (the bin still filling is left out)."""
        h = self._hist.get(function)
        if h is None or h.end <= h.start:
            return np.zeros(0)
        end = h.end - 1 if upto_s is None else min(h.end, int(math.floor(upto_s / self.settings.bin_s)))
        idx = np.arange(h.start + 1, end)  # the first bin may be partial too
        if idx.size == 0:
            return np.zeros(0)
        return h.bins[idx % h.bins.size]

    def period(self, function: str, now_s: float) -> Period | None:
        """The function's period (re-detected every ``redetect_s``), or None."""
        h = self._hist.get(function)
        if h is None:
            return None
        if now_s - h.checked_s < self.settings.redetect_s:
            return h.period
        h.checked_s = now_s
        h.period = None
        x = self.series(function, now_s)
        st = self.settings
        if x.size < 8 or x.mean() <= 0 or x.std() < st.min_variation * x.mean():
            return None
        p = detect_period(x, max(2, int(math.ceil(st.min_period_s / st.bin_s))), st.min_strength,
                          st.min_cycles)
        if p is not None and backtest_error(x, p.bins) <= st.max_backtest_error:
            h.period = p
            self.found.setdefault(function, (now_s, p.bins))
        return h.period

    def ahead(self, function: str, now_s: float, ahead_s: float) -> float | None:
        """The highest rate expected over ``[now_s, now_s + ahead_s]`` (one bin of slack each side
        for phase jitter) from the same phase of the last ``periods_used`` periods; None when the
        function has no period."""
        p = self.period(function, now_s)
        h = self._hist.get(function)
        if p is None or h is None:
            return None
        bs, size = self.settings.bin_s, h.bins.size
        first = int(math.floor(now_s / bs)) - 1
        last = int(math.floor((now_s + ahead_s) / bs)) + 1
        best = 0.0
        for b in range(first, last + 1):
            vals = [h.bins[(b - k * p.bins) % size] for k in range(1, self.settings.periods_used + 1)
                    if h.start < b - k * p.bins < h.end - 1]
            if vals:
                best = max(best, sum(vals) / len(vals))
        return best

    def periods(self) -> dict[str, Period | None]:
        """Every function's last detected period (None: none found)."""
        return {f: h.period for f, h in self._hist.items()}
