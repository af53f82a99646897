"""plan_tick as a pure function: counters to rates, groups on devices, base kept at min, CPU cores."""

import threading
import time
from dataclasses import replace
from itertools import pairwise

import pytest

from bench.cluster import tables
from fast_profiler.table import ProfilePoint, ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig, is_standby
from fast_scheduler.control import (
    DeviceView,
    FunctionMemory,
    FunctionView,
    RunningReplica,
    config_id,
    effective_sm_pct,
    live_points,
    observed_rate,
    place_standby,
    plan_tick,
)
from fast_scheduler.loop import LoopSettings, SchedulerLoop, demand_count, sub_tick_offsets
from fast_scheduler.placement import (
    STANDBY_FILTERS,
    STANDBY_SCORES,
    Device,
    Rejection,
    ReplicaRequest,
    Snapshot,
    place,
)

CPU = DeviceView("cpu:0", "n0", 8 * 2**30, False, cores=4)
TABLE = ProfileTable(
    "f", "cpu-4c",
    tuple(ProfilePoint(sm, 1.0, 1, 10.0 * min(sm, 50) / 25, 50.0, 60.0, 70.0) for sm in (6, 25, 50, 75, 100)),
)
BASE = ShareConfig(25, 1.0, 1.0, 1)
SET = AutoscaleSettings(scale_down_delay_s=0, headroom_frac=0.0, volatility_k=0.0)


def view(count, base=1, groups=None, running=(), slo=500.0, lo=1, hi=8):
    return FunctionView("f", "openfaas-fn", slo, lo, hi, count, BASE, base, groups or {}, tuple(running))


def tick(mem, now, v, table=TABLE):
    return plan_tick(now, [v], [CPU], {"openfaas-fn/f": table}, mem, SET)


def test_observed_rate_and_counter_reset():
    assert observed_rate(10, 0, 30, 2) == 10
    assert observed_rate(100, 0, 6, 2) == 3  # the provider restarted
    assert observed_rate(1, 5, 2, 5) == 0


def test_cpu_points_are_core_sets():
    assert effective_sm_pct(6, CPU) == 25 and effective_sm_pct(60, CPU) == 50
    sms = sorted({p.sm_pct for p in live_points(TABLE, CPU)})
    assert sms == [25, 50, 75, 100]


def test_first_sight_then_scale_up_into_a_group_on_a_device():
    mem: dict[str, FunctionMemory] = {}
    r = tick(mem, 0.0, view(0))
    assert not r.actions and "first sight" in r.notes["openfaas-fn/f"]
    r = tick(mem, 2.0, view(120))  # 60 rps: more than one 25 % replica serves
    (a,) = r.actions
    assert a.groups and all(g.device_id == "cpu:0" for g in a.groups)
    assert a.base_replicas is None  # the base (min 1) stays
    total = 1 + sum(g.replicas for g in a.groups)
    assert r.decisions["openfaas-fn/f"].capacity_rps >= 60 and total >= 2
    # Area on the 4-core device never exceeds it (standby replicas share their neighbours' strips).
    planned = [g for g in a.groups if not is_standby(g.config)]
    assert sum(effective_sm_pct(g.config.sm_pct, CPU) * g.replicas for g in planned) + 25 <= 100


def test_scale_down_drops_groups_and_keeps_min_base():
    mem: dict[str, FunctionMemory] = {}
    cfg = ShareConfig(50, 1.0, 1.0, 1)
    gid = config_id(cfg, 0)
    running = [RunningReplica("cpu:0", BASE, "", True), RunningReplica("cpu:0", cfg, gid, True)]
    tick(mem, 0.0, view(0, groups={gid: (cfg, 1, "cpu:0")}, running=running))
    r = tick(mem, 2.0, view(0, groups={gid: (cfg, 1, "cpu:0")}, running=running))  # no demand
    (a,) = r.actions
    assert a.groups == () and a.base_replicas is None


def test_no_slo_or_no_table_keeps_static():
    mem: dict[str, FunctionMemory] = {}
    r = plan_tick(0.0, [view(0, slo=None)], [CPU], {}, mem, SET)
    assert not r.actions and "static" in r.notes["openfaas-fn/f"]
    r = plan_tick(0.0, [view(0)], [CPU], {"openfaas-fn/f": None}, mem, SET)
    assert not r.actions and "no profile table" in r.notes["openfaas-fn/f"]


def test_scale_to_zero_with_min_zero():
    mem: dict[str, FunctionMemory] = {}
    s = AutoscaleSettings(idle_to_zero_s=4, scale_down_delay_s=0)
    plan_tick(0.0, [view(5, lo=0)], [CPU], {"openfaas-fn/f": TABLE}, mem, s)
    out = None
    for t in (2.0, 4.0, 6.0, 8.0):
        out = plan_tick(t, [view(5, lo=0)], [CPU], {"openfaas-fn/f": TABLE}, mem, s)
    assert out is not None
    (a,) = out.actions
    assert a.base_replicas == 0 and not out.decisions["openfaas-fn/f"].replicas


@pytest.mark.parametrize("cfg, index", [
    (ShareConfig(100, 0.35, 1.0, 16), 12),
    (ShareConfig(100, 0.995, 1.0, 8), 999),  # a standby's neighbour: permille
    (ShareConfig(12, 0.005, 1.0, 2), 3),  # a standby
])
def test_config_id_is_a_short_dns_label(cfg, index):
    cid = config_id(cfg, index)
    assert len(cid) <= 20 and cid == cid.lower() and cid.replace("-", "").isalnum()


def test_config_ids_of_standby_and_room_configs_are_distinct():
    ids = {config_id(ShareConfig(12, q, 1.0, 2), 0) for q in (0.005, 0.01, 0.995, 0.99, 1.0)}
    assert len(ids) == 5


def test_a_profiled_batch_is_chosen_when_it_serves_more_per_share():
    """Batch 4 serves 3x the rate of batch 1 on the same share: the live loop uses it, and the
    group's config id names it (its replicas get FASTGSHARE_BATCH=4)."""
    pts = [ProfilePoint(sm, 1.0, b, (30.0 if b == 4 else 10.0) * min(sm, 50) / 25, 50.0, 60.0, 70.0)
           for sm in (6, 25, 50, 75, 100) for b in (1, 4)]
    table = ProfileTable("f", "cpu-4c", tuple(pts))
    assert {p.batch for p in live_points(table, CPU)} == {1, 4}
    mem: dict[str, FunctionMemory] = {}
    tick(mem, 0.0, view(0), table)
    r = tick(mem, 2.0, view(120), table)  # 60 rps
    (a,) = r.actions
    assert a.groups and all(g.config.batch == 4 for g in a.groups)
    assert all(g.config_id.startswith("s") and "b4-" in g.config_id for g in a.groups)


# ---- the fast scale-up sub-tick and standby groups -------------------------------------------



@pytest.mark.parametrize(
    "interval, fast, want",
    [(2.0, 1.0, [1.0]), (5.0, 1.0, [1.0, 2.0, 3.0, 4.0]), (2.0, 0.5, [0.5, 1.0, 1.5]), (2.0, 0.0, []),
     (1.0, 1.0, []), (1.0, 2.0, [])],
)
def test_sub_tick_offsets(interval, fast, want):
    assert sub_tick_offsets(interval, fast) == pytest.approx(want)


def fast_tick(mem, now, v):
    return plan_tick(now, [v], [CPU], {"openfaas-fn/f": TABLE}, mem, SET, fast=True)


def test_fast_subtick_adds_on_a_step_only_and_leaves_the_tick_rate_alone():
    mem: dict[str, FunctionMemory] = {}
    assert not fast_tick(mem, 0.0, view(0)).notes and not mem  # before first sight: nothing, no note
    tick(mem, 0.0, view(0))
    r = fast_tick(mem, 1.0, view(5))  # before the first decision: nothing
    assert not r.actions and not r.decisions
    tick(mem, 2.0, view(10))  # 5 rps: the base replica serves it
    r = fast_tick(mem, 3.0, view(70))  # 60 rps over the last second
    (a,) = r.actions
    d = r.decisions["openfaas-fn/f"]
    assert "fast scale up" in d.reason and d.capacity_rps >= 60
    assert a.groups and a.base_replicas is None
    groups = {g.config_id: (g.config, g.replicas, g.device_id) for g in a.groups}
    r = fast_tick(mem, 3.5, view(70, groups=groups))  # no new request: nothing to add
    assert not r.actions and not r.decisions and not r.notes
    r = tick(mem, 4.0, view(70, groups=groups))
    assert r.observed_rps["openfaas-fn/f"] == pytest.approx(30.0)  # (70 - 10) / 2 s: the tick's window


GPUS = [DeviceView(f"gpu:U{i}", "n0", 32 * 2**30, True, gpu_uuid=f"U{i}") for i in range(3)]
RTAB = tables()["resnet50"][0]  # ResNet-50 as the profiler reads it: most efficient at full quota
SB_SET = AutoscaleSettings(scale_down_delay_s=0, standby_frac=1.0, standby_max=4)


def gpu_tick(mem, now, v, fast=False):
    return plan_tick(now, [v], GPUS, {"openfaas-fn/f": RTAB}, mem, SB_SET, fast=fast)


def test_standby_groups_beside_planned_ones_and_kept_apart_from_the_plan():
    mem: dict[str, FunctionMemory] = {}
    v0 = FunctionView("f", "openfaas-fn", 69.0, 1, 20, 0, BASE, 1, {}, (), "resnet", 1525 * 2**20, 98 * 2**20)
    gpu_tick(mem, 0.0, v0)
    r = gpu_tick(mem, 2.0, replace(v0, invocation_count=400))  # 200 rps
    (a,) = r.actions
    sb = [g for g in a.groups if is_standby(g.config)]
    planned = [g for g in a.groups if not is_standby(g.config)]
    assert sb and planned
    assert {g.device_id for g in sb} <= {g.device_id for g in planned} | {"gpu:U0"}  # base is on U0
    assert all(g.config.quota_request_frac < 1 for g in planned)  # room for the standby's token
    # Its standby does not count as capacity: a fast sub-tick at the same rate adds nothing.
    groups = {g.config_id: (g.config, g.replicas, g.device_id) for g in a.groups}
    v1 = replace(v0, invocation_count=600, groups=groups)
    r = gpu_tick(mem, 3.0, v1, fast=True)
    assert not r.actions
    # A standby group left alone on a device (its planned neighbours gone) is moved off it.
    lone = {gid: g for gid, g in groups.items() if is_standby(g[0])}
    gid, (cfg, n, _dev) = next(iter(lone.items()))
    stranded = {**{k: g for k, g in groups.items() if k != gid}, "sbx": (cfg, n, "gpu:U2")}
    stranded = {k: g for k, g in stranded.items() if is_standby(g[0]) or g[2] != "gpu:U2"}
    r = gpu_tick(mem, 4.0, replace(v1, invocation_count=1000, groups=stranded))
    (a,) = r.actions
    assert all(g.device_id != "gpu:U2" for g in a.groups if is_standby(g.config))


@pytest.mark.parametrize("standby_frac", [0.0, 1.5])
def test_a_full_quota_base_counts_as_capacity_when_new_replicas_leave_room(standby_frac):
    # With standby on, new replicas run at 1 - STANDBY_REQUEST; the user's base replica at full
    # quota still serves its rate: a rate it covers adds no planned replica.
    s = AutoscaleSettings(scale_down_delay_s=0, standby_frac=standby_frac)
    mem: dict[str, FunctionMemory] = {}
    plan_tick(0.0, [view(0)], [CPU], {"openfaas-fn/f": TABLE}, mem, s)
    # 1 rps; the base (one core) serves 2.4 (the table's sm 6 point is what one core measured)
    r = plan_tick(2.0, [view(2)], [CPU], {"openfaas-fn/f": TABLE}, mem, s)
    d = r.decisions["openfaas-fn/f"]
    assert d.capacity_rps >= 2.3
    assert not [c for c in d.replicas if not is_standby(c) and c != BASE]


class _RecordingLoop(SchedulerLoop):
    """``run``'s schedule alone: every pass is recorded instead of read from a platform."""

    def __init__(self, settings: LoopSettings, passes: int) -> None:
        super().__init__(provider=None, client=None, settings=settings)  # type: ignore[arg-type]
        self.calls: list[tuple[bool, float]] = []
        self.passes = passes
        self.stop = threading.Event()

    def _safe_tick(self, fast: bool) -> None:
        self.calls.append((fast, time.monotonic()))
        if len(self.calls) >= self.passes:
            self.stop.set()


@pytest.mark.parametrize("fast_s, pattern", [
    (0.01, [False, True, True, True] * 2 + [False]),  # three sub-ticks between 40 ms ticks
    (0.0, [False] * 3),  # fast path off: ticks only
])
def test_run_interleaves_fast_sub_ticks_between_ticks(fast_s, pattern):
    loop = _RecordingLoop(LoopSettings(interval_s=0.04, fast_interval_s=fast_s), len(pattern))
    runner = threading.Thread(target=loop.run, args=(loop.stop,))
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive()
    assert [fast for fast, _ in loop.calls] == pattern
    ticks = [t for fast, t in loop.calls if not fast]
    # ticks keep their interval (40 ms; at least half of it even if a pass is preempted): the
    # sub-ticks wait between passes, they do not run back to back
    assert all(b - a >= 0.02 for a, b in pairwise(ticks))


# ---- refused standby requests are remembered (place_standby) ----------------------------------

GIB = 2**30


def _rep(rid, fn, sm, quota, mem=GIB, limit=1.0):
    return ReplicaRequest(rid, fn, fn, sm, quota, mem, 0, limit)


def _dev(did, *reps, mem=8 * GIB, stored=()):
    d = Device(did, "n0", mem, stored_models=stored)
    for r in reps:
        d = d.with_replica(r)
        assert d is not None
    return d


SB_REQ = _rep("f/new/sb/0", "f", 50, 0.005)  # a standby of f: token quota, limit 1
# Every device refuses it: A's strip is full (an h standby holds the token), B has no token free,
# C keeps its memory for planned replicas (an unrelated model in its store takes most of it).
A = _dev("gpu:A", _rep("g/0", "g", 50, 0.995), _rep("h/sb", "h", 50, 0.005))
B = _dev("gpu:B", _rep("f/0", "f", 100, 1.0))
C = _dev("gpu:C", _rep("f/1", "f", 50, 0.995, mem=2 * GIB), stored=(("big", 3 * GIB),))
REFUSED = Snapshot((A, B, C))


def _swap(snap, dev):
    return Snapshot(tuple(dev if d.device_id == dev.device_id else d for d in snap.devices))


@pytest.mark.parametrize("change, later_s, placed_on, scanned", [
    ("nothing", 5.0, None, 0),
    # the same replicas under other ids, added in another order: a tick rebuilds its snapshot so
    ("renamed", 5.0, None, 0),
    ("a replica removed: A's token freed", 5.0, "gpu:A", 1),
    ("memory freed: C's store dropped a model", 5.0, "gpu:C", 1),
    ("a device added beside a planned replica", 5.0, "gpu:D", 1),
    ("a device that still refuses changed", 5.0, None, 1),
    ("nothing, but the back-off expired", 30.0, None, 3),
])
def test_a_refused_standby_is_tried_again_only_where_a_device_changed(change, later_s, placed_on, scanned):
    refused: dict = {}
    p, n = place_standby(SB_REQ, REFUSED, refused, 0.0, 30.0)
    assert p is None and n == 3 and len(refused) == 1  # refused by all three, remembered
    snap = {
        "nothing": REFUSED,
        "renamed": Snapshot((_dev("gpu:A", _rep("h/x", "h", 50, 0.005), _rep("g/x", "g", 50, 0.995)), B, C)),
        "a replica removed: A's token freed": _swap(REFUSED, A.without("h/sb")),
        "memory freed: C's store dropped a model": _swap(REFUSED, replace(C, stored_models=())),
        "a device added beside a planned replica": Snapshot(
            (A, B, C, _dev("gpu:D", _rep("k/0", "k", 100, 0.995)))),
        "a device that still refuses changed": _swap(REFUSED, A.with_replica(_rep("g/1", "g", 50, 1.0))),
        "nothing, but the back-off expired": REFUSED,
    }[change]
    # another replica of the same request: same function, config and memory, another id
    again = replace(SB_REQ, replica_id="f/new/sb/1")
    p, n = place_standby(again, snap, refused, later_s, 30.0)
    assert n == scanned
    assert (p.device_id if p else None) == placed_on
    # Exactly what a scan of every device finds (same device, same ties).
    full = place(again, snap, STANDBY_FILTERS, STANDBY_SCORES)
    assert (None if isinstance(full, Rejection) else full.device_id) == placed_on


def _standby_ticks(retry_s, mem_gib, rates):
    """A ResNet-50 function on two GPUs over ``rates`` (rps per 2 s tick), each tick's actions
    applied to the next tick's view; returns (groups after each tick, results)."""
    gpus = [DeviceView(f"gpu:U{i}", "n0", mem_gib * GIB, True, gpu_uuid=f"U{i}") for i in range(2)]
    v = FunctionView("f", "openfaas-fn", 69.0, 1, 20, 0, BASE, 1, {}, (), "resnet", 1525 * 2**20, 98 * 2**20)
    mem: dict[str, FunctionMemory] = {}
    count, seen, results = 0.0, [], []
    for k, rate in enumerate(rates):
        count += 2 * rate
        v = replace(v, invocation_count=count)
        r = plan_tick(2.0 * k, [v], gpus, {"openfaas-fn/f": RTAB}, mem, SB_SET, standby_retry_s=retry_s)
        for a in r.actions:
            if a.groups is not None:
                v = replace(v, groups={g.config_id: (g.config, g.replicas, g.device_id) for g in a.groups})
            if a.base_replicas is not None:
                v = replace(v, base_replicas=a.base_replicas)
        seen.append((dict(v.groups), v.base_replicas))
        results.append(r)
    return seen, results


RAMP = [0, 200, 200, 200, 400, 400, 400, 100, 100]


@pytest.mark.parametrize("mem_gib", [8, 32])  # 8: standby refused (memory kept); 32: placed
def test_remembered_refusals_change_no_replica_and_save_the_scans(mem_gib):
    remembered, r_mem = _standby_ticks(30.0, mem_gib, RAMP)
    every_tick, r_all = _standby_ticks(0.0, mem_gib, RAMP)
    assert remembered == every_tick  # planned and standby groups alike, tick by tick
    scans = sum(r.standby_scans for r in r_mem)
    assert scans <= sum(r.standby_scans for r in r_all)
    if mem_gib == 8:
        assert any(r.standby_skipped for r in r_mem) and not any(r.standby_skipped for r in r_all)
        assert 2 * scans <= sum(r.standby_scans for r in r_all)


def test_a_remembered_refusal_is_not_scanned_while_planned_replicas_still_come():
    seen, results = _standby_ticks(30.0, 8, [0, 200, 200, 400])
    hold, step = results[2], results[3]
    # 200 rps again: nothing changed on either device, so no standby request is scanned ...
    assert hold.standby_scans == 0 and hold.standby_skipped >= 1
    assert "not tried again" in hold.decisions["openfaas-fn/f"].reason
    # ... and on the step the planned replicas are added on that same tick (the standby request is
    # tried again only on the device they changed).
    planned = [sum(n for cfg, n, _d in groups.values() if not is_standby(cfg)) for groups, _ in seen]
    assert planned[3] > planned[2]
    assert 0 < step.standby_scans <= 2


@pytest.mark.parametrize("fn, want", [
    # arrivals where the provider counts them: an overloaded replica answers 20/s of 40 arriving
    ({"invocationCount": 200, "fastgshareInvocationsStarted": 400}, 400.0),
    ({"invocationCount": 0, "fastgshareInvocationsStarted": 3}, 3.0),  # none answered yet
    # another provider (faas-netes, the gateway's own listing): answered requests
    ({"invocationCount": 200}, 200.0),
    ({}, 0.0),
])
def test_demand_is_read_from_arrivals_where_the_provider_counts_them(fn, want):
    assert demand_count(fn) == want


def test_the_devices_that_refused_a_placed_standby_are_remembered_too():
    # A refuses (its strip is full); P and Q each have a token free and would take it.
    p_dev = _dev("gpu:P", _rep("g/0", "g", 50, 0.995))
    q_dev = _dev("gpu:Q", _rep("k/0", "k", 50, 0.995))
    snap, refused = Snapshot((A, p_dev, q_dev)), {}
    expect = [("gpu:P", 3), ("gpu:Q", 2), (None, 1), (None, 0)]
    for i, (placed_on, scanned) in enumerate(expect):
        req = replace(SB_REQ, replica_id=f"f/new/sb/{i}")
        full = place(req, snap, STANDBY_FILTERS, STANDBY_SCORES)
        p, n = place_standby(req, snap, refused, float(i), 30.0)
        # 1: only the devices that did not refuse it (P changed: it took the first one) are scanned;
        # 2: only Q, which took the second; 3: nothing changed, every device refused it
        assert ((p.device_id if p else None), n) == (placed_on, scanned)
        assert (None if isinstance(full, Rejection) else full.device_id) == placed_on
        if p is not None:
            snap = _swap(snap, p.device)


def test_a_step_in_the_last_sub_window_before_a_tick_is_planned_for_on_that_tick():
    """A sub-tick read 1 s before the tick: the tick sees the rate of that last second
    (``recent_rps``) besides its 2 s mean, and a step there is planned for at once; without the
    sub-tick's reading the same counters give the mean only."""
    with_sub: dict[str, FunctionMemory] = {}
    without: dict[str, FunctionMemory] = {}
    for mem in (with_sub, without):
        tick(mem, 0.0, view(0))
        tick(mem, 2.0, view(10))  # 5 rps: the base replica serves it
    assert not fast_tick(with_sub, 3.0, view(15)).actions  # still 5 rps: nothing to add
    stepped = view(75)  # 60 rps over the last second, 32.5 over the tick's 2 s
    d_sub = tick(with_sub, 4.0, stepped).decisions["openfaas-fn/f"]
    d_mean = tick(without, 4.0, stepped).decisions["openfaas-fn/f"]
    assert d_sub.capacity_rps >= 60 > d_mean.capacity_rps, (d_sub, d_mean)
