"""The batch lever of a burst: the fast path raises the running replicas' batch limit (pure), and the
simulator serves them at it until the new replicas are ready."""

from dataclasses import replace

import pytest

from bench.cluster import tables
from fast_scheduler.autoscale import (
    AutoscaleContext,
    AutoscaleSettings,
    burst_batch,
    decide_replicas,
    fast_scale_up,
)
from fast_scheduler.choices import ShareConfig
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, Trace, simulate

TABLE, SLO = tables()["resnet50"]
NO_STANDBY = AutoscaleSettings(standby_frac=0.0)


def test_burst_batch_is_the_largest_batch_still_inside_the_slo():
    c = ShareConfig(12, 0.995, 1.0, 2)
    b = burst_batch(TABLE, c, SLO)
    assert b > c.batch and b in TABLE.batches
    # A tight SLO leaves nothing to raise to.
    assert burst_batch(TABLE, c, 1.0) == c.batch
    # A standby lives on lent time: never raised.
    assert burst_batch(TABLE, ShareConfig(12, 0.005, 1.0, 2), SLO) == 2


def test_fast_path_raises_the_batch_of_what_runs():
    ctx = AutoscaleContext("f", 0.0, 30.0, TABLE, SLO)
    d, st = decide_replicas(ctx, None, NO_STANDBY)
    step = AutoscaleContext("f", 6.0, 90.0, TABLE, SLO, d.replicas)
    fd, _ = fast_scale_up(step, st, 1.0, NO_STANDBY)
    assert fd is not None and fd.batch_limits
    assert {c for c, _ in fd.batch_limits} == set(d.replicas)
    assert all(b > c.batch for c, b in fd.batch_limits) and "batch raised" in fd.reason
    off, _ = fast_scale_up(step, st, 1.0, replace(NO_STANDBY, batch_lever=False))
    assert off is not None and off.batch_limits == ()


def _step_trace(before: float, after: float, at: int, n: int) -> Trace:
    rates = [before] * at + [after] * (n - at)
    return Trace("step", 1.0, {"f": [round(r) for r in rates]}, {"f": rates})


def test_simulator_serves_a_step_at_the_raised_batch_until_new_replicas_are_ready():
    spec = [SimFunction("f", "resnet50", TABLE, SLO)]
    tr = _step_trace(30.0, 90.0, 31, 60)  # a 3x step 1 s after a tick
    late = {}
    for lever in (True, False):
        pol = this_policy(spec, replace(NO_STANDBY, batch_lever=lever))
        res = simulate(spec, tr, pol, SimSettings(gpus=8, batch_lever=lever, record_latency=True))
        late[lever] = sum(res.functions["f"].late_by_step[31:40])
    assert late[True] < 0.5 * late[False]


def test_raised_batch_goes_back_once_new_replicas_are_ready():
    from fast_scheduler.evaluation import simulator as sim

    spec = [SimFunction("f", "resnet50", TABLE, SLO)]
    seen: list[tuple[float, bool]] = []
    orig = sim._pick_batches

    def spy(ready, *a):
        seen.append((len(ready), any(r.batch_curves for r in ready)))
        return orig(ready, *a)

    sim._pick_batches = spy
    try:
        simulate(spec, _step_trace(30.0, 90.0, 31, 80),
                 this_policy(spec, NO_STANDBY), SimSettings(gpus=8, cold_start_s=5.0))
    finally:
        sim._pick_batches = orig
    assert seen and all(raised for _, raised in seen)  # picked only while raised
    assert len(seen) <= 6  # from the fast sub-tick until the new replicas serve (a cold start)


@pytest.mark.parametrize("lever", [True, False])
def test_batch_lever_changes_nothing_on_steady_load(lever):
    spec = [SimFunction("f", "resnet50", TABLE, SLO)]
    tr = _step_trace(30.0, 30.0, 0, 60)
    pol = this_policy(spec, replace(NO_STANDBY, batch_lever=lever))
    s = simulate(spec, tr, pol, SimSettings(gpus=8, batch_lever=lever)).summary()
    assert s["slo_attainment"] > 0.99


def test_decision_record_carries_each_groups_batch_limit():
    import json

    from fast_scheduler.loop import decision_record

    ctx = AutoscaleContext("f", 0.0, 30.0, TABLE, SLO)
    d, st = decide_replicas(ctx, None, NO_STANDBY)
    fd, _ = fast_scale_up(AutoscaleContext("f", 6.0, 90.0, TABLE, SLO, d.replicas), st, 1.0, NO_STANDBY)
    assert fd is not None
    rec = json.loads(decision_record(fd, None, 6.0, 90.0, "fast"))
    raised = dict(fd.batch_limits)
    for c in rec["configs"]:
        cfg = ShareConfig(c["smPct"], c["quotaRequest"], c["quotaLimit"], c["batch"])
        assert c["batchLimit"] == raised.get(cfg, cfg.batch)
    assert any(c["batchLimit"] > c["batch"] for c in rec["configs"])
