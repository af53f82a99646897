"""bench.mlperf.modes: what each sharing mode deploys, bounds, mixes and the ramp (pure)."""

from __future__ import annotations

import pytest

from bench.mlperf import modes as md
from fastgshare.resources import parse_share

SM, REQ, LIM = "fastgshare/gpu_sm_partition", "fastgshare/gpu_quota_request", "fastgshare/gpu_quota_limit"


@pytest.mark.parametrize(("mode", "sm", "req", "lim"), [
    (md.Mode.EXCLUSIVE, "100", "1", "1"),
    (md.Mode.TIME_SHARING, "100", "0.5", "1"),
    (md.Mode.SPATIO_TEMPORAL, "50", "0.5", "1"),
    (md.Mode.UNMANAGED, "100", "1", "1"),
])
def test_share_annotations_for_two_functions(mode, sm, req, lim):
    a = md.share_annotations(mode, 2)
    assert (a[SM], a[REQ], a[LIM]) == (sm, req, lim)
    parse_share(a)  # the provider accepts them


def test_spatio_temporal_partitions_sum_to_the_device():
    for n in (1, 2, 3, 4):
        a = md.share_annotations(md.Mode.SPATIO_TEMPORAL, n)
        assert int(a[SM]) * n <= 100
        assert float(a[REQ]) * n == pytest.approx(1.0, abs=1e-3)


def test_only_unmanaged_turns_the_arbiter_off():
    for mode in md.MODES:
        env = md.deployment(mode, "resnet50", 2).body["envVars"]
        assert (env.get("FASTGSHARE_ARBITER") == "off") == (mode is md.Mode.UNMANAGED)


def test_deployment_body_is_one_pinned_replica_of_the_registered_image():
    d = md.deployment(md.Mode.TIME_SHARING, "bert", 2, window_s=2.0)
    assert d.service == "bert-ts" and d.function == "bert"
    assert d.body["image"] == "fastgshare/bert:latest"
    assert d.body["labels"] == {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"}
    assert d.body["envVars"] == {"FASTGSHARE_ARBITER_WINDOW_S": "2"}


def test_exclusive_runs_one_function_per_phase_others_all_at_once():
    fns = ["resnet50", "bert"]
    groups = md.phases(md.Mode.EXCLUSIVE, fns)
    assert [[d.service for d in g] for g in groups] == [["resnet50-ex"], ["bert-ex"]]
    for mode in md.MODES[1:]:
        (group,) = md.phases(mode, fns)
        assert [d.function for d in group] == fns
        assert len({d.service for d in group}) == 2


def test_bounds_gpu_mlperf_and_stand_ins_cpu_scaled():
    assert md.bound_ms("resnet50", gpu=True, single_stream_p50_ms=3) == (
        15.0, "MLPerf Server bound of resnet50")
    assert md.bound_ms("bert", gpu=True, single_stream_p50_ms=3)[0] == 130.0
    assert md.bound_ms("minilm", gpu=True, single_stream_p50_ms=3)[0] == 130.0
    bound, why = md.bound_ms("resnet50", gpu=False, single_stream_p50_ms=100.0, cpu_slo_factor=4)
    assert bound == 400.0 and "single-stream p50" in why
    with pytest.raises(ValueError):
        md.bound_ms("resnet50", gpu=False, single_stream_p50_ms=0.0)


def test_mix_rates_give_each_function_an_equal_share_of_the_device():
    rates = md.mix_rates(1.2, {"a": 10.0, "b": 2.0})
    assert rates == pytest.approx({"a": 6.0, "b": 1.2})
    assert sum(r / s for r, s in zip(rates.values(), (10.0, 2.0), strict=True)) == pytest.approx(1.2)


def test_ramp_is_the_originals_shape_scaled():
    r = md.ramp_rates(110.0, 180.0)
    assert len(r) == 180
    assert r[0] == pytest.approx(30.0, abs=1.0)
    assert max(r) == pytest.approx(110.0)
    assert r[-1] == pytest.approx(20.0, abs=1.0)
    peak = r.index(max(r))
    assert all(a <= b for a, b in zip(r[:peak], r[1:peak + 1], strict=True))
    assert md.ramp_rates(11.0, 60.0, step_s=2.0)[15] == pytest.approx(11.0)
