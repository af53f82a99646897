"""plan_tick as a pure function: counters to rates, groups on devices, base kept at min, CPU cores."""

from fast_profiler.table import ProfilePoint, ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings, ReplicaConfig
from fast_scheduler.control import (
    DeviceView,
    FunctionMemory,
    FunctionView,
    RunningReplica,
    config_id,
    effective_sm_pct,
    live_points,
    observed_rate,
    plan_tick,
)

CPU = DeviceView("cpu:0", "n0", 8 * 2**30, False, cores=4)
TABLE = ProfileTable(
    "f", "cpu-4c",
    tuple(ProfilePoint(sm, 1.0, 1, 10.0 * min(sm, 50) / 25, 50.0, 60.0, 70.0) for sm in (6, 25, 50, 75, 100)),
)
BASE = ReplicaConfig(25, 1.0, 1.0, 1)
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
    # Area on the 4-core device never exceeds it.
    assert sum(effective_sm_pct(g.config.sm_pct, CPU) * g.replicas for g in a.groups) + 25 <= 100


def test_scale_down_drops_groups_and_keeps_min_base():
    mem: dict[str, FunctionMemory] = {}
    cfg = ReplicaConfig(50, 1.0, 1.0, 1)
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


def test_config_id_is_a_short_dns_label():
    cid = config_id(ReplicaConfig(100, 0.35, 1.0, 16), 12)
    assert len(cid) <= 20 and cid == cid.lower() and cid.replace("-", "").isalnum()


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
