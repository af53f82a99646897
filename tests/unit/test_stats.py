"""The one percentile (``fastgshare.stats``): LoadGen's nearest rank, as a table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastgshare.stats import percentile

ONE_TO_100 = [float(v) for v in range(1, 101)]


@pytest.mark.parametrize(("values", "pct", "want"), [
    (ONE_TO_100, 50, 51.0),        # index floor(0.5 * 100) = 50: LoadGen's, one above ceil's 50
    (ONE_TO_100, 99, 100.0),       # p99 of 100 samples is their maximum, as in LoadGen
    (ONE_TO_100, 90, 91.0),
    (ONE_TO_100, 57, 58.0),        # 0.57 * 100 is 56.99999999999999 in floating point
    (ONE_TO_100, 99.9, 100.0),
    (ONE_TO_100, 0, 1.0),
    (ONE_TO_100, 100, 100.0),
    ([float(v) for v in range(1, 1001)], 99, 991.0),
    ([float(v) for v in range(1, 51)], 99, 50.0),   # 49.5: not whole, so ceil's rank 50
    ([3.0, 1.0, 2.0], 50, 2.0),    # unsorted input
    ([5.0], 99, 5.0),
    ([2.0, 2.0, 9.0], 66, 2.0),    # index floor(1.98) = 1
    ([2.0, 2.0, 9.0], 67, 9.0),    # index floor(2.01) = 2
])
def test_percentile_table(values: list[float], pct: float, want: float) -> None:
    assert percentile(values, pct) == want
    assert percentile(np.asarray(values), pct) == want
    assert percentile(sorted(values), pct, presorted=True) == want


def test_empty_is_the_callers_choice() -> None:
    assert math.isnan(percentile([], 99))
    assert percentile([], 99, empty=0.0) == 0.0
    assert percentile(np.asarray([]), 99, empty=math.inf) == math.inf


@pytest.mark.parametrize("pct", [-1, 100.5, math.nan])
def test_outside_0_100_is_refused(pct: float) -> None:
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], pct)


def test_agrees_with_loadgen_index_on_random_samples() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 7, 100, 999):
        xs = rng.exponential(size=n)
        s = np.sort(xs)
        for pct in (50, 90, 95, 99, 99.9):
            assert percentile(xs, pct) == s[min(n - 1, int(n * pct / 100))]
