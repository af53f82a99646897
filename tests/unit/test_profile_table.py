"""ProfileTable: grid validation, bilinear interpolation, monotone envelope, JSON round trip."""

import pytest

from fast_profiler.table import ProfilePoint, ProfileTable, synthetic_table
from fastgshare.errors import ValidationError


def _table(values):
    pts = tuple(
        ProfilePoint(s, q, 1, v, 1.0, 2.0, 3.0, measured=(s, q) != (50, 0.5)) for (s, q), v in values.items()
    )
    return ProfileTable("f", "cpu", pts)


GRID = {(10, 0.5): 10.0, (10, 1.0): 20.0, (50, 0.5): 30.0, (50, 1.0): 40.0}


@pytest.mark.parametrize(
    "sm, quota, want, measured",
    [
        (10, 0.5, 10.0, True),
        (50, 0.5, 30.0, False),
        (30, 0.5, 20.0, False),
        (10, 0.75, 15.0, False),
        (30, 0.75, 25.0, False),
        (100, 1.0, 40.0, False),
    ],
)
def test_bilinear_and_measured_flag(sm, quota, want, measured):
    t = _table(GRID)
    assert t.throughput(sm, quota) == pytest.approx(want)
    assert t.is_measured(sm, quota) is measured


def test_inferred_points_say_where_from():
    e = _table(GRID).estimate(30, 0.75, 1)
    assert not e.measured and "bilinear" in e.source and "10..50" in e.source


def test_monotone_envelope_hides_noise():
    noisy = dict(GRID)
    noisy[(50, 1.0)] = 25.0  # noise: more resources measured slower
    t = _table(noisy)
    assert t.throughput(50, 1.0) == 30.0
    assert t.throughput(50, 0.75) >= t.throughput(50, 0.5)


@pytest.mark.parametrize(
    "bad",
    [
        {(10, 0.5): 1.0, (10, 1.0): 2.0, (50, 0.5): 3.0},  # hole in the grid
    ],
)
def test_incomplete_grid_refused(bad):
    with pytest.raises(ValidationError, match="grid"):
        _table(bad)


@pytest.mark.parametrize("sm, quota, batch", [(5, 0.5, 1), (10, 0.1, 1), (10, 0.5, 2)])
def test_out_of_range_queries_refused(sm, quota, batch):
    with pytest.raises(ValidationError):
        _table(GRID).estimate(sm, quota, batch)


def test_json_round_trip_and_version():
    t = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=74.9)
    back = ProfileTable.from_json(t.to_json())
    assert back == t and back.synthetic
    with pytest.raises(ValidationError, match="version"):
        ProfileTable.from_json(t.to_json().replace('"version": 1', '"version": 99'))


def test_synthetic_shapes_match_the_paper():
    r = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=74.9)
    b = synthetic_table("bert", saturation_sm_pct=50, full_rps=30.0)
    assert r.throughput(24, 1.0) == pytest.approx(r.throughput(100, 1.0))
    assert r.throughput(12, 1.0) < 0.9 * r.throughput(24, 1.0)
    assert b.throughput(24, 1.0) < 0.9 * b.throughput(50, 1.0) == pytest.approx(0.9 * b.throughput(100, 1.0))
    assert r.throughput(100, 0.2) / 0.2 == pytest.approx(96.5, rel=1e-3)
    assert r.throughput(100, 1.0) / 1.0 == pytest.approx(74.9, rel=1e-3)
