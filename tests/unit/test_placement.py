"""Filters with reasons, scores, no over-admission, model sharing, re-pack planning."""

import random

import pytest

from fast_scheduler.placement import (
    Device,
    Placed,
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
        assert isinstance(p, Placed)
        s = s.with_device(p.device)
    p = place(req(99, *new), s)
    assert isinstance(p, Placed) is fits
    if not fits:
        assert isinstance(p, Rejection) and p.reasons and "no device admits r99" in p.message


def test_memory_filter_and_model_sharing():
    s = snap(1, mem=4 * GIB - 1)
    for i in range(3):  # 1.5 GiB each, 1 GiB of it shared weights: 1.5 + 0.5 + 0.5
        p = place(req(i, 10, 0.2, mem=3 * GIB // 2, weight=GIB), s)
        assert isinstance(p, Placed)
        s = s.with_device(p.device)
    assert s.devices[0].mem_used_bytes == 5 * GIB // 2
    p = place(req(9, 10, 0.2, model="other", mem=3 * GIB // 2, weight=GIB), s)
    assert isinstance(p, Rejection) and p.reasons == {"memory": 1}


def test_prefers_fuller_device_and_same_model():
    s = snap(3)
    s = s.with_device(s.devices[1].with_replica(req(1, 30, 1.0, model="a")))
    s = s.with_device(s.devices[2].with_replica(req(2, 30, 1.0, model="b")))
    p = place(req(3, 20, 1.0, model="b"), s)
    assert isinstance(p, Placed) and p.device_id == "gpu2"


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
        if isinstance(p, Placed):
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


# Model affinity from the node agent's model store registry: a device whose store already holds the
# model (for a replica this snapshot does not list) wins over an equally full one without it.
@pytest.mark.parametrize(
    "stored, model, want",
    [
        ({"gpu1": (("m", 2 * GIB),)}, "m", "gpu1"),  # the store holds m on gpu1
        ({"gpu0": (("o", 2 * GIB),), "gpu1": (("m", 2 * GIB),)}, "m", "gpu1"),  # beats a fuller device
        ({"gpu1": (("o", 2 * GIB),)}, "m", "gpu1"),  # another model: no affinity; the fuller device
        ({}, "m", "gpu0"),  # nothing stored anywhere
        ({"gpu0": (("m", GIB),), "gpu1": (("m", GIB),)}, "m", "gpu0"),  # both: tie to the lowest id
    ],
)
def test_affinity_to_models_in_the_device_store(stored, model, want):
    devs = []
    for i in range(2):
        d = Device(f"gpu{i}", "n0", 16 * GIB, stored_models=stored.get(f"gpu{i}", ()))
        devs.append(d.with_replica(ReplicaRequest(f"x{i}", "g", "x", 50, 1.0, GIB)))
    p = place(req(9, 25, 1.0, model=model, mem=3 * GIB, weight=2 * GIB), Snapshot(tuple(devs)))
    assert isinstance(p, Placed) and p.device_id == want
    if model in dict(stored.get(want, ())):
        assert p.scores["model_affinity"] == 100.0
        # Its weights are already there (counted once): only its activations are new memory.
        assert p.device.mem_used_bytes == GIB + max(dict(stored[want])[model], 2 * GIB) + GIB


def test_stored_weights_count_once_and_make_room():
    # 4 GiB device whose store holds m's 2 GiB weights: a 3 GiB replica of m (2 GiB weights) fits,
    # one of another model does not.
    dev = Device("gpu0", "n0", 4 * GIB, stored_models=(("m", 2 * GIB),))
    s = Snapshot((dev,))
    assert isinstance(place(req(1, 50, 1.0, model="m", mem=3 * GIB, weight=2 * GIB), s), Placed)
    r = place(req(2, 50, 1.0, model="o", mem=3 * GIB, weight=2 * GIB), s)
    assert isinstance(r, Rejection) and "memory" in r.reasons


def test_live_snapshot_carries_the_store_registry():
    # The live loop reads keys.device_models per device (model_store_redis) into its DeviceViews, and
    # control.snapshot_of hands them to placement; models without a live user are not loaded.
    from fast_manager.devices import DeviceInfo, DeviceKind
    from fast_manager.model_store import ModelUsage
    from fast_scheduler.control import snapshot_of
    from fast_scheduler.loop import as_device_view

    info = DeviceInfo("gpu:abc", DeviceKind.GPU, "n0", "H100", 0, 16 * GIB)
    view = as_device_view(info, {"m": ModelUsage(2 * GIB, 2), "gone": ModelUsage(GIB, 0)})
    assert view.stored_models == (("m", 2 * GIB),)
    (dev,) = snapshot_of([], [view]).devices
    assert dev.models == {"m"} and dev.mem_used_bytes == 2 * GIB


def test_carried_candidates_match_a_fresh_snapshot():
    # with_device carries the candidate list over; it must be what a fresh snapshot computes.
    rng = random.Random(4)
    kinds = [(), (("m", GIB),)]
    s = Snapshot(tuple(Device(f"gpu{i:02d}", "n0", 8 * GIB, stored_models=kinds[i % 3 == 0])
                       for i in range(30)))
    _ = s.candidates
    for i in range(200):
        if rng.random() < 0.8:
            p = place(req(i, rng.choice([6, 12, 25, 50]), rng.choice([0.2, 0.5, 1.0]),
                          model=rng.choice("mn"), mem=GIB, weight=GIB // 2), s)
            if isinstance(p, Placed):
                s = s.with_device(p.device)
        else:
            used = [d for d in s.devices if d.replicas]
            if used:
                d = rng.choice(used)
                s = s.with_device(d.without(d.replicas[0].replica_id))
        assert s.candidates == Snapshot(s.devices).candidates


# ---- standby replicas ------------------------------------------------------------------------

from fast_scheduler.choices import STANDBY_REQUEST  # noqa: E402
from fast_scheduler.placement import (  # noqa: E402
    DEFAULT_FILTERS,
    beside_holders,
    evict_lone_standby,
    standby_room,
)


def standby(i, sm=25, function="g"):
    return ReplicaRequest(f"s{i}", function, "m", sm, STANDBY_REQUEST, GIB, 0, 1.0)


def on(dev, *reqs):
    for r in reqs:
        dev = dev.with_replica(r)
        assert dev is not None
    return dev


@pytest.mark.parametrize(
    ("holders", "fits"),
    [
        ((), False),  # an empty device: a standby would be the reason it is in use
        (("standby",), False),  # only standby there
        (((25, 1.0),) * 4, False),  # four full strips: no token left for it (no over-admission)
        (((25, 1 - STANDBY_REQUEST),) * 4, True),  # room configs leave exactly its token
        (((25, 1.0),) * 3, False),  # SM room, but a standby never opens a strip of its own
        (((25, 1 - STANDBY_REQUEST),) * 3, True),  # it joins a strip with its token free
    ],
)
def test_standby_goes_only_beside_planned_replicas_within_the_rule(holders, fits):
    dev = Device("gpu0", "n0", 16 * GIB)
    for i, h in enumerate(holders):
        dev = on(dev, standby(90 + i) if h == "standby" else req(i, *h))
    s = standby(0)
    got = place(s, Snapshot((dev,)), (*DEFAULT_FILTERS, beside_holders), ((standby_room, 1.0),))
    assert isinstance(got, Placed) == fits
    if fits:
        feasible(got.device)


def test_standby_prefers_idle_devices_and_spreads_a_function():
    busy = on(Device("gpu0", "n0", 16 * GIB), *(req(i, 25, 1 - STANDBY_REQUEST) for i in range(3)))
    idle = on(Device("gpu1", "n0", 16 * GIB), req(9, 25, 1 - STANDBY_REQUEST))
    f = (*DEFAULT_FILTERS, beside_holders)
    p = place(standby(0), Snapshot((busy, idle)), f, ((standby_room, 1.0),))
    assert isinstance(p, Placed) and p.device_id == "gpu1"
    # With three of its standbys on the idle device, the next one goes to the other.
    idle = on(idle, standby(1), standby(2), standby(3))
    p = place(standby(4), Snapshot((busy, idle)), f, ((standby_room, 1.0),))
    assert isinstance(p, Placed) and p.device_id == "gpu0"


def test_evict_lone_standby_frees_the_device():
    lone = on(Device("gpu0", "n0", 16 * GIB), standby(0), standby(1))
    mixed = on(Device("gpu1", "n0", 16 * GIB), req(0, 25, 1 - STANDBY_REQUEST), standby(2))
    out = evict_lone_standby(Snapshot((lone, mixed)))
    assert not out.devices[0].replicas and not out.devices[0].bands
    assert out.devices[1] == mixed and out.used_devices == 1
