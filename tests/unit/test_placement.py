"""Filters with reasons, scores, no over-admission, model sharing, re-pack planning."""

import random

import pytest

from fast_scheduler.placement import (
    Device,
    Placement,
    Rejection,
    ReplicaRequest,
    Snapshot,
    place,
    plan_repack,
    wasted_devices,
)

GIB = 2**30


def req(i, sm, q, model="m", mem=GIB, weight=0):
    return ReplicaRequest(f"r{i}", "f", model, sm, q, mem, weight)


def snap(n=2, mem=16 * GIB):
    return Snapshot(tuple(Device(f"gpu{i}", "n0", mem) for i in range(n)))


def feasible(dev):
    by_id = {r.replica_id: r for r in dev.replicas}
    assert sum(b.height_pct for b in dev.bands) <= 100
    for b in dev.bands:
        assert sum(by_id[m].quota_request_frac for m in b.members) <= 1 + 1e-9
        assert all(by_id[m].sm_pct <= b.height_pct for m in b.members)
    assert sorted(m for b in dev.bands for m in b.members) == sorted(by_id)
    assert dev.mem_used_bytes <= dev.mem_bytes


@pytest.mark.parametrize(
    "existing, new, fits",
    [
        ([(60, 1.0)], (40, 1.0), True),  # spatial: SM sum 100
        ([(60, 1.0)], (50, 1.0), False),  # SM sum 110 with full quotas
        ([(100, 0.5)], (100, 0.5), True),  # temporal: quota sum 1
        ([(100, 0.5)], (100, 0.6), False),
        ([(60, 0.5)], (70, 0.5), True),  # one band of height 70, quotas 0.5 + 0.5
        ([(60, 0.5), (40, 1.0)], (70, 0.6), False),
    ],
)
def test_admission(existing, new, fits):
    s = snap(1)
    for i, (sm, q) in enumerate(existing):
        p = place(req(i, sm, q), s)
        assert isinstance(p, Placement)
        s = s.with_device(p.device)
    p = place(req(99, *new), s)
    assert isinstance(p, Placement) is fits
    if not fits:
        assert isinstance(p, Rejection) and p.reasons and "no device admits r99" in p.message


def test_memory_filter_and_model_sharing():
    s = snap(1, mem=4 * GIB - 1)
    for i in range(3):  # 1.5 GiB each, 1 GiB of it shared weights: 1.5 + 0.5 + 0.5
        p = place(req(i, 10, 0.2, mem=3 * GIB // 2, weight=GIB), s)
        assert isinstance(p, Placement)
        s = s.with_device(p.device)
    assert s.devices[0].mem_used_bytes == 5 * GIB // 2
    p = place(req(9, 10, 0.2, model="other", mem=3 * GIB // 2, weight=GIB), s)
    assert isinstance(p, Rejection) and p.reasons == {"memory": 1}


def test_prefers_fuller_device_and_same_model():
    s = snap(3)
    s = s.with_device(s.devices[1].with_replica(req(1, 30, 1.0, model="a")))
    s = s.with_device(s.devices[2].with_replica(req(2, 30, 1.0, model="b")))
    p = place(req(3, 20, 1.0, model="b"), s)
    assert isinstance(p, Placement) and p.device_id == "gpu2"


def test_never_over_commits_random():
    rng = random.Random(7)
    s = snap(6)
    for i in range(300):
        p = place(
            req(
                i,
                rng.choice([6, 12, 24, 50, 60, 100]),
                rng.choice([0.2, 0.4, 0.6, 1.0]),
                model=rng.choice("abc"),
                mem=GIB,
            ),
            s,
        )
        if isinstance(p, Placement):
            s = s.with_device(p.device)
        if i % 5 == 0 and any(d.replicas for d in s.devices):  # remove one now and then
            d = rng.choice([d for d in s.devices if d.replicas])
            s = s.with_device(d.without(rng.choice(d.replicas).replica_id))
        for d in s.devices:
            feasible(d)


def test_repack_frees_wasted_devices_without_losing_replicas():
    s = snap(4)
    for i, d in enumerate(s.devices):
        s = s.with_device(d.with_replica(req(i, 24, 0.5)))
    assert wasted_devices(s) == 3
    plan = plan_repack(s)
    assert len(plan.freed) == 3 and plan.snapshot.used_devices == 1
    assert sorted(r.replica_id for d in plan.snapshot.devices for r in d.replicas) == ["r0", "r1", "r2", "r3"]
    for d in plan.snapshot.devices:
        feasible(d)
