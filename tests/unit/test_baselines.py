"""Baselines: the original heuristic (MaxRects, residual rule, nothing dropped silently), sharing modes."""

from collections import Counter

import pytest

from fast_profiler.table import synthetic_table
from fast_scheduler.autoscale import split_standby
from fast_scheduler.evaluation.baselines import (
    FastGShareOriginal,
    exclusive,
    maxrects_fits,
    mps_equal,
    time_sharing,
)
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, empty_cluster
from fast_scheduler.placement import ReplicaRequest, Snapshot

TABLE = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=74.9)
SPECS = [SimFunction("f", "resnet50", TABLE, 69.0)]


@pytest.mark.parametrize(
    "rects, fits",
    [
        ([(1000, 50), (1000, 50)], True),
        ([(600, 60), (600, 60)], False),  # area 72 % but no geometric packing
        ([(500, 100), (500, 100)], True),
        ([(1000, 100), (1, 1)], False),
    ],
)
def test_maxrects_checks_dropped_rectangles(rects, fits):
    assert maxrects_fits(rects) is fits


def test_original_most_efficient_then_smallest_sufficient_residual():
    o = FastGShareOriginal(SPECS)
    configs = o._configs(SPECS[0])
    best = max(configs, key=lambda c: c[1] / c[0].area)
    plan = o._fill(configs, best[1] * 3 + 1.0)
    assert Counter(plan[:3]) == Counter({best[0]: 3}) and len(plan) == 4
    resid = plan[-1]
    assert resid.area == min(c.area for c, thr in configs if thr >= 1.0)


def test_original_drops_nothing_silently():
    o = FastGShareOriginal(SPECS)
    snap = empty_cluster(SimSettings(gpus=2))
    adds = [ReplicaRequest(f"r{i}", "f", "resnet50", 60, 0.6, 2**30) for i in range(8)]
    snap2, rejected = o.apply(snap, adds)
    placed = {r.replica_id for d in snap2.devices for r in d.replicas}
    assert placed | {r.replica_id for r in rejected} == {a.replica_id for a in adds}
    assert not placed & {r.replica_id for r in rejected}
    assert rejected  # 2 GPUs cannot hold 8 of these
    for d in snap2.devices:  # what was placed really packs
        assert maxrects_fits([(round(r.quota_request_frac * 1000), r.sm_pct) for r in d.replicas])


@pytest.mark.parametrize(
    "make, sm, quota", [(exclusive, {100}, {1.0}), (mps_equal, {25}, {1.0}), (time_sharing, {100}, None)]
)
def test_sharing_modes_restrict_configs(make, sm, quota):
    p = make(SPECS)
    want, standby = split_standby(p.desired(0.0, {"f": 150.0}, {"f": ()})["f"])
    assert want and {c.sm_pct for c in want} <= sm
    if quota:
        assert {c.quota_request_frac for c in want} <= quota
    # The autoscaler's standby replicas come in the mode's SM share (placed only where they fit).
    assert standby and {c.sm_pct for c in standby} <= sm


def test_exclusive_one_replica_per_gpu():
    p = exclusive(SPECS)
    snap = empty_cluster(SimSettings(gpus=4))
    adds = [ReplicaRequest(f"r{i}", "f", "resnet50", 100, 1.0, 2**30) for i in range(3)]
    snap2, rejected = p.apply(snap, adds)
    assert not rejected and all(len(d.replicas) <= 1 for d in snap2.devices)
    assert isinstance(snap2, Snapshot)
