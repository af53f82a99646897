"""The LP lower bound's column set: what it must contain for the bound to hold (``lower_bound``)."""

import pytest

from bench.cluster import tables
from fast_profiler.table import ProfilePoint
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import candidate_points, config_choices
from fast_scheduler.evaluation.baselines import lower_bound_choices
from fast_scheduler.evaluation.lower_bound import GpuLowerBound
from fast_scheduler.evaluation.simulator import SimFunction

LOOSE = AutoscaleSettings(max_utilisation=1.0)


def _ratio(cs):
    return min(c.config.area / c.capacity_rps for c in cs)


@pytest.mark.parametrize("model", ["resnet50", "bert", "vit_huge"])
def test_columns_hold_the_best_capacity_per_sm_time_of_any_interpolated_config(model):
    table, slo = tables()[model]
    quotas = [round(0.2 + 0.05 * i, 2) for i in range(17)]
    dense = []
    for sm in range(table.sm_grid[0], 101, 2):
        for q in quotas:
            for b in table.batches:
                e = table.estimate(sm, q, b)
                dense.append(ProfilePoint(sm, q, b, e.throughput_rps, e.latency_p50_ms, e.latency_p95_ms,
                                          e.latency_p99_ms, False))
    cols = lower_bound_choices(SimFunction("f", model, table, slo), LOOSE)
    assert _ratio(cols) <= _ratio(config_choices(table, slo, LOOSE, dense)) + 1e-12


def test_columns_include_the_planned_quota_beside_a_standby_without_lowering_the_bound():
    table, slo = tables()["resnet50"]
    spec = SimFunction("f", "resnet50", table, slo)
    with_room = lower_bound_choices(spec, LOOSE)
    assert any(abs(c.config.quota_request_frac - 0.995) < 1e-9 for c in with_room)
    plain = list(config_choices(table, slo, LOOSE, candidate_points(table)))
    act = {"f": (table.mem_bytes - table.weight_bytes) / LOOSE.device_mem_bytes}
    a = GpuLowerBound({"f": with_room}, act, {"f": 1}).gpus({"f": 900.0})
    b = GpuLowerBound({"f": plain}, act, {"f": 1}).gpus({"f": 900.0})
    assert a == pytest.approx(b)
