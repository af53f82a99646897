"""The live re-pack (``repack.plan_tick_repacking``) as a pure function: a fragmented two-device
state gets a move; the target group is raised first and the source lowered only once the target is
ready; a timeout or an autoscaler change abandons it; nothing moves without a wasted device, on a
fast sub-tick, with re-pack off, or when a device holds something that cannot move."""

import json

import pytest

from fast_profiler.table import ProfilePoint, ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.control import DeviceView, FunctionMemory, FunctionView, RunningReplica, config_id
from fast_scheduler.loop import decision_record, repack_record
from fast_scheduler.repack import (
    RepackSettings,
    RepackState,
    hide_moves,
    plan_tick_repacking,
    settled,
)

D0 = DeviceView("gpu:A", "n0", 16 * 2**30, True, gpu_uuid="A")
D1 = DeviceView("gpu:B", "n0", 16 * 2**30, True, gpu_uuid="B")
DEVICES = [D0, D1]
TABLE = ProfileTable("f", "gpu-x", tuple(ProfilePoint(sm, q, 1, 40.0 * sm / 100 * q, 50.0, 60.0, 70.0)
                                         for sm in (25, 50, 100) for q in (0.5, 1.0)))
TABLES = {"openfaas-fn/f": TABLE}
SET = AutoscaleSettings(scale_down_delay_s=1e9, headroom_frac=0.0, volatility_k=0.0, standby_frac=0.0)
CFG = ShareConfig(25, 0.5, 0.5, 1)  # what 15 rps gets: 3 of them (5 rps each)
G0, G1 = config_id(CFG, 0), config_id(CFG, 1)
BASE = ShareConfig(25, 1.0, 1.0, 1)
RPS = 15.0


def view(t, groups, ready=None, base=0, lo=0, rps=RPS):
    """f at time ``t`` (its counter at ``rps``) with ``groups`` {gid: replicas}; every replica
    running, ready unless ``ready`` gives the ready count of a group."""
    ready = ready or {}
    gs = {gid: (CFG, n, D0.device_id if gid.endswith("d0") else D1.device_id) for gid, n in groups.items()}
    running = [RunningReplica(dev, CFG, gid, i < ready.get(gid, n)) for gid, (_c, n, dev) in gs.items()
               for i in range(n)]
    running += [RunningReplica(D1.device_id, BASE, "", True)] * base
    return FunctionView("f", "openfaas-fn", 500.0, lo, 8, rps * t, BASE, base, gs, tuple(running))


def step(mem, st, t, v, every=1, timeout=30.0, fast=False, rps_table=TABLES):
    return plan_tick_repacking(t, [v], DEVICES, rps_table, mem, SET, st, RepackSettings(every, timeout), fast)


def groups_of(action):
    return {g.config_id: g.replicas for g in action.groups}


def warm(every=1):
    """Memory and re-pack state after the first-sight tick (its ticks counted)."""
    mem: dict[str, FunctionMemory] = {}
    st = RepackState()
    r = step(mem, st, 0.0, view(0.0, {G0: 2, G1: 1}), every)
    assert not r.result.actions and not r.events
    return mem, st


def test_fragmented_two_devices_move_target_first_then_source_once_ready():
    mem, st = warm()
    # 2 + 1 replicas of 1/8 of a device each, on two devices: one device is wasted.
    r = step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}))
    (a,) = r.result.actions
    assert groups_of(a) == {G0: 3, G1: 1}  # make: the target raised, the source untouched
    (e,) = r.events
    assert e.state == "moving"
    assert e.message == "re-pack: moving 1 replica of f from d1 to d0 (device d1 then empty)"
    assert st.moves and st.moves[0].to_count == 3
    # The provider starts it: not ready yet. The autoscaler sees the function as before (no action).
    r = step(mem, st, 4.0, view(4.0, {G0: 3, G1: 1}, ready={G0: 2}))
    assert not r.result.actions and not r.events and st.moves
    assert r.result.decisions["openfaas-fn/f"].replicas == (CFG,) * 3
    # Ready: break: the source group goes (its replica is the one on d1).
    r = step(mem, st, 6.0, view(6.0, {G0: 3, G1: 1}))
    (a,) = r.result.actions
    assert groups_of(a) == {G0: 3}
    (e,) = r.events
    assert e.state == "done" and "(d1 then empty)" in e.message and not st.moves
    # Afterwards: nothing wasted, nothing to do.
    for t in (8.0, 10.0):
        r = step(mem, st, t, view(t, {G0: 3}))
        assert not r.result.actions and not r.events


def test_target_not_ready_in_time_is_abandoned_and_lowered_back():
    mem, st = warm()
    step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}), timeout=10.0)
    r = step(mem, st, 8.0, view(8.0, {G0: 3, G1: 1}, ready={G0: 2}), every=0, timeout=10.0)
    assert not r.result.actions and st.moves
    r = step(mem, st, 12.5, view(12.5, {G0: 3, G1: 1}, ready={G0: 2}), every=0, timeout=10.0)
    (a,) = r.result.actions
    assert groups_of(a) == {G0: 2, G1: 1}  # the target lowered back, the source kept
    (e,) = r.events
    assert e.state == "abandoned" and "not ready after 10 s" in e.message and not st.moves


def test_autoscaler_change_abandons_the_move_with_its_own_groups():
    mem, st = warm()
    step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}))
    # The load more than doubles while the new replica starts: the autoscaler's action wins.
    v = view(4.0, {G0: 3, G1: 1}, ready={G0: 2})
    v = FunctionView(v.name, v.namespace, v.slo_ms, 0, 8, v.invocation_count + 40.0, BASE, 0, v.groups,
                     v.running)
    r = step(mem, st, 4.0, v, every=0)
    (a,) = r.result.actions
    (e,) = r.events
    assert e.state == "abandoned" and "autoscaler" in e.message and not st.moves
    d = r.result.decisions["openfaas-fn/f"]
    assert d.changed and a.groups is not None
    assert sum(g.replicas for g in a.groups) == len(d.replicas)  # what it decided, no held replica on top


def test_fast_sub_ticks_never_repack_nor_complete():
    mem, st = warm()
    r = step(mem, st, 1.0, view(1.0, {G0: 2, G1: 1}), fast=True)
    assert not r.result.actions and not r.events and not st.moves and st.ticks == 1
    step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}))
    r = step(mem, st, 3.0, view(3.0, {G0: 3, G1: 1}), fast=True)  # ready, but a sub-tick: wait
    assert not r.result.actions and not r.events and st.moves
    r = step(mem, st, 4.0, view(4.0, {G0: 3, G1: 1}))
    assert groups_of(r.result.actions[0]) == {G0: 3}


@pytest.mark.parametrize("every, ticks_to_move", [(0, None), (3, 3), (6, 6)])
def test_cadence_and_off(every, ticks_to_move):
    mem, st = warm(every)  # tick 1
    moved_at = None
    for k in range(2, 8):
        r = step(mem, st, 2.0 * k, view(2.0 * k, {G0: 2, G1: 1}), every=every)
        if r.events and moved_at is None:
            moved_at = k
            break
    assert moved_at == ticks_to_move


@pytest.mark.parametrize("groups, base, ready, why", [
    ({G0: 3}, 0, None, "one device in use: nothing wasted"),
    ({G0: 6, G1: 6}, 0, None, "1.5 devices of work on two: nothing wasted"),
    ({G0: 2, G1: 1}, 0, {G1: 0}, "a replica still starting: the function is not settled"),
])
def test_no_move(groups, base, ready, why):
    mem: dict[str, FunctionMemory] = {}
    st = RepackState()
    step(mem, st, 0.0, view(0.0, groups, ready, base, lo=base, rps=RPS * sum(groups.values()) / 3))
    r = step(mem, st, 2.0, view(2.0, groups, ready, base, lo=base, rps=RPS * sum(groups.values()) / 3))
    assert not [e for e in r.events if e.state == "moving"], why
    assert not st.moves, why


def test_hide_moves_shows_the_function_before_the_move_and_holds_its_place():
    mem, st = warm()
    step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}))
    v = view(4.0, {G0: 3, G1: 1}, ready={G0: 2})
    (h,), (held,) = hide_moves([v], st.moves)
    assert h.groups[G0][1] == 2 and sum(r.config_id == G0 for r in h.running) == 2
    assert all(r.ready for r in h.running)  # the starting replica is the one hidden
    assert held.name == "f~moving" and held.groups == {G0: (CFG, 1, D0.device_id)}
    assert settled(h) and not settled(v)


def test_groups_changed_outside_forget_the_move():
    mem, st = warm()
    step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}))
    r = step(mem, st, 4.0, view(4.0, {G0: 2, G1: 1}), every=0)  # someone put the target back
    assert not st.moves and r.events[0].state == "abandoned" and "outside" in r.events[0].message


def test_moves_are_in_the_decision_record():
    mem, st = warm()
    r = step(mem, st, 2.0, view(2.0, {G0: 2, G1: 1}))
    recs = repack_record(st, r.events, 2.0)
    rec = json.loads(decision_record(r.result.decisions["openfaas-fn/f"], None, 2.0, 15.0, "tick",
                                     recs["openfaas-fn/f"]))
    (m,) = rec["repack"]
    assert m["state"] == "moving" and m["from"] == "gpu:B" and m["to"] == "gpu:A" and m["toGroup"] == G0
    r = step(mem, st, 4.0, view(4.0, {G0: 3, G1: 1}, ready={G0: 2}))
    (m,) = repack_record(st, r.events, 4.0)["openfaas-fn/f"]
    assert m["state"] == "waiting" and m["for_s"] == 2.0


def test_a_base_replica_pins_its_device_and_the_other_one_moves_into_it():
    """d1, the emptiest (plan_repack's first pick), holds the base replica (the provider places
    those itself, on the emptiest device): d0's group moves onto d1 instead."""
    mem: dict[str, FunctionMemory] = {}
    st = RepackState()
    step(mem, st, 0.0, view(0.0, {G0: 3}, base=1, lo=1))
    r = step(mem, st, 2.0, view(2.0, {G0: 3}, base=1, lo=1))
    (a,) = r.result.actions
    assert groups_of(a) == {G0: 3, G1: 3}  # make: all three raised on d1, beside the base
    assert [e.message for e in r.events] == [
        "re-pack: moving 1 replica of f from d0 to d1 (device d0 then empty)"] * 3
    r = step(mem, st, 4.0, view(4.0, {G0: 3, G1: 3}, base=1, lo=1))
    assert groups_of(r.result.actions[0]) == {G1: 3}
    assert [e.state for e in r.events] == ["done"] * 3 and "(d0 then empty)" in r.events[-1].message
    assert "(d0 then empty)" not in r.events[0].message
