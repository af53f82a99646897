"""The batch lever in the live loop (pure): a fast sub-tick's raise goes to the provider as the
group's ``batchLimit`` in the same pass, every action keeps it while the function's new replicas
start, and the pass that finds them all ready lowers it."""

from dataclasses import replace

import pytest

from fast_profiler.table import ProfilePoint, ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.control import (
    DeviceView,
    FunctionMemory,
    FunctionView,
    GroupSpec,
    RunningReplica,
    batch_limits_after,
    config_id,
    plan_tick,
    with_batch_limits,
)
from fast_scheduler.loop import as_function_view, group_json

CPU = DeviceView("cpu:0", "n0", 8 * 2**30, False, cores=2)
CPU1 = DeviceView("cpu:1", "n1", 8 * 2**30, False, cores=2)
SLO = 500.0
# b1 plans best at the SLO; b8 serves more per second and its light-load p99 is inside the SLO
# (``burst_batch``), so a step raises b1 to b8.
TABLE = ProfileTable("f", "cpu-2c", (ProfilePoint(50, 1.0, 1, 16.0, 60.0, 150.0, 200.0),
                                     ProfilePoint(50, 1.0, 8, 45.0, 400.0, 650.0, 700.0)),
                     mem_bytes=200 * 2**20)
B1 = ShareConfig(50, 1.0, 1.0, 1)
GID = config_id(B1, 0)
SET = AutoscaleSettings(standby_frac=0.0, scale_down_delay_s=60, jump_sigmas=1.5)
KEY = "openfaas-fn/f"


def view(count: float, n: int = 1, ready: int = 1, limits: dict[str, int] | None = None,
         groups: dict | None = None, running: tuple = ()) -> FunctionView:
    reps = running or tuple(RunningReplica("cpu:0", B1, GID, i < ready) for i in range(max(n, ready)))
    return FunctionView("f", "openfaas-fn", SLO, 0, 4, count, B1, 0,
                        groups if groups is not None else {GID: (B1, n, "cpu:0")}, reps,
                        batch_limits=limits or {})


def run(mem, now, v, fast=False, settings=SET, devs=(CPU,)):
    r = plan_tick(now, [v], devs, {KEY: TABLE}, mem, settings, fast=fast)
    return with_batch_limits(r, [v], devs)


def steady(mem, settings=SET, devs=(CPU,)) -> None:
    """Ticks at 10 rps, 2 s apart, up to t = 10 s (counter 100): one b1 replica holds."""
    for i in range(6):
        r = run(mem, 2.0 * i, view(20.0 * i), settings=settings, devs=devs)
        assert not r.actions


def test_a_step_is_raised_in_the_sub_tick_kept_while_replicas_start_and_lowered_once_ready():
    mem: dict[str, FunctionMemory] = {}
    steady(mem)
    # 3x the rate over the next second: the same sub-tick adds a replica and raises what runs.
    r = run(mem, 11.0, view(130), fast=True)
    (a,) = r.actions
    d = r.decisions[KEY]
    assert d.batch_limits == ((B1, 8),) and "fast scale up" in d.reason
    (g,) = a.groups
    assert (g.config_id, g.replicas, g.batch_limit) == (GID, 2, 8)
    # The provider has it; the added replica starts: passes of either kind keep the raise.
    assert not run(mem, 12.0, view(160, n=2, ready=1, limits={GID: 8})).actions
    assert not run(mem, 13.0, view(190, n=2, ready=1, limits={GID: 8}), fast=True).actions
    # Both ready: the next pass (a sub-tick here) lowers it, re-sending the groups as they are.
    (a,) = run(mem, 14.0, view(220, n=2, ready=2, limits={GID: 8}), fast=True).actions
    (g,) = a.groups
    assert (g.config_id, g.replicas, g.batch_limit) == (GID, 2, None) and a.base_replicas is None
    assert not run(mem, 14.5, view(235, n=2, ready=2), fast=True).actions


def test_without_the_lever_the_step_only_adds_replicas():
    off = replace(SET, batch_lever=False)
    mem: dict[str, FunctionMemory] = {}
    steady(mem, off)
    (a,) = run(mem, 11.0, view(130), fast=True, settings=off).actions
    assert [(g.replicas, g.batch_limit) for g in a.groups] == [(2, None)]


def test_an_action_during_the_raise_carries_the_limit():
    mem: dict[str, FunctionMemory] = {}
    two = (CPU, CPU1)
    steady(mem, devs=two)
    run(mem, 11.0, view(130), fast=True, devs=two)
    # Another step while the first added replica starts: the groups sent again keep the raise
    # (an action without it would lower the running replicas' batch mid-burst); the new group
    # on the other device starts at its own batch.
    r = run(mem, 12.0, view(200, n=2, ready=1, limits={GID: 8}), fast=True, devs=two)
    (a,) = r.actions
    assert {g.config_id: (g.replicas, g.batch_limit) for g in a.groups} == {
        GID: (2, 8), config_id(B1, 1): (2, None)}


def test_a_function_with_nothing_raised_costs_no_action():
    v = view(0)
    r = with_batch_limits(plan_tick(0.0, [v], [CPU], {KEY: TABLE}, {}, SET), [v], [CPU])
    assert r.actions == ()


B8 = ShareConfig(50, 1.0, 1.0, 8)
SB = ShareConfig(50, 0.005, 1.0, 1)


def _g(gid: str, cfg: ShareConfig, n: int) -> GroupSpec:
    return GroupSpec(gid, cfg, n, "cpu:0", "n0", "")


@pytest.mark.parametrize("groups, base, running, limits, raised, want", [
    # raised: each group running a raised config (one replica ready) takes it at once
    ([_g("a", B1, 2)], 0, [("a", True)], {}, [(B1, 8)], {"a": 8}),
    # ... never lowered by a smaller raise
    ([_g("a", B1, 2)], 0, [("a", True)], {"a": 16}, [(B1, 8)], {"a": 16}),
    # a group none of whose replicas is ready yet is not raised (they start at its own batch)
    ([_g("a", B1, 1), _g("b", B1, 1)], 0, [("a", True), ("b", False)], {}, [(B1, 8)], {"a": 8}),
    # kept while a planned replica starts, in any group ...
    ([_g("a", B1, 1), _g("n", B8, 1)], 0, [("a", True)], {"a": 8}, [], {"a": 8}),
    # ... or in the base
    ([_g("a", B1, 1)], 1, [("a", True)], {"a": 8}, [], {"a": 8}),
    # lowered once all are ready; a standby that starts is no reason to keep it
    ([_g("a", B1, 1), _g("s", SB, 1)], 1, [("a", True), ("", True)], {"a": 8}, [], {}),
    # a group the pass drops loses its limit with it
    ([_g("n", B8, 1)], 0, [("a", True)], {"a": 8}, [], {}),
])
def test_batch_limits_after(groups, base, running, limits, raised, want):
    current = {"a": (B1, 1, "cpu:0"), "b": (B1, 1, "cpu:0")}
    f = FunctionView("f", "openfaas-fn", SLO, 0, 8, 0.0, B1, base, current,
                     tuple(RunningReplica("cpu:0", B1, gid, ok) for gid, ok in running),
                     batch_limits=limits)
    assert batch_limits_after(f, groups, base, raised) == want


def test_the_loop_reads_and_sends_the_provider_field():
    share = {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "1",
             "fastgshare/gpu_quota_limit": "1"}
    fn = {"name": "f", "annotations": {"fastgshare/slo_ms": "500"}}
    reps = {"replicas": 2, "configurations": [
        {"configId": "a", "replicas": 1, "share": share, "batch": 1, "batchLimit": 8},
        {"configId": "b", "replicas": 1, "share": share, "batch": 1, "batchLimit": None}],
        "replicaStatus": []}
    assert as_function_view(fn, reps).batch_limits == {"a": 8}
    assert group_json(_g("a", B1, 1))["batch"] == 1 and "batchLimit" not in group_json(_g("a", B1, 1))
    assert group_json(replace(_g("a", B1, 1), batch_limit=8))["batchLimit"] == 8
