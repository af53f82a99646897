"""The simulator: determinism, no over-commit by this policy, SLO held on steady load, LP bound below all."""

import pytest

from fast_profiler.table import synthetic_table
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.evaluation.baselines import all_policies, lower_bound_choices
from fast_scheduler.evaluation.lower_bound import GpuLowerBound
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, simulate
from fast_scheduler.evaluation.traces import (
    azure_like_trace,
    bursty_trace,
    load_orcbench_clusters,
    orcbench_models_dir,
    poisson_trace,
)

R = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=74.9, weight_bytes=98 * 2**20)
B = synthetic_table(
    "bert", saturation_sm_pct=50, full_rps=30.0, mem_bytes=1800 * 2**20, weight_bytes=420 * 2**20
)
SPECS = [
    SimFunction(f"f{i}", m, t, slo)
    for i, (m, t, slo) in enumerate([("resnet50", R, 69.0), ("bert", B, 130.0)] * 3)
]
RATES = {s.name: 20.0 + 15 * i for i, s in enumerate(SPECS)}
SET = SimSettings(gpus=64)


def test_deterministic_with_a_seed():
    a = simulate(SPECS, bursty_trace(RATES, 120, seed=3), this_policy(SPECS), SET).summary()
    b = simulate(SPECS, bursty_trace(RATES, 120, seed=3), this_policy(SPECS), SET).summary()
    assert a == b


@pytest.mark.skipif(
    orcbench_models_dir() is None, reason="orcbench not installed (pip install --no-deps orcbench)"
)
def test_traces_deterministic_and_mean_preserving():
    clusters = load_orcbench_clusters()
    t1 = azure_like_trace(RATES, 300, clusters, seed=5)
    t2 = azure_like_trace(RATES, 300, clusters, seed=5)
    assert t1.counts == t2.counts
    for f, r in RATES.items():
        assert sum(t1.rates_rps[f]) / len(t1.rates_rps[f]) == pytest.approx(r, rel=0.05)


def test_this_policy_never_over_commits_and_holds_slo():
    pol = this_policy(SPECS)
    seen = []

    class Checked:
        name = pol.name

        def desired(self, *a):
            return pol.desired(*a)

        def apply(self, snap, adds):
            snap, rej = pol.apply(snap, adds)
            seen.append(snap)
            return snap, rej

        def after(self, snap):
            snap, moved = pol.after(snap)
            seen.append(snap)
            return snap, moved

    res = simulate(SPECS, poisson_trace(RATES, 240, seed=1), Checked(), SET)
    for snap in seen:
        for d in snap.devices:
            by_id = {r.replica_id: r for r in d.replicas}
            assert sum(b.height_pct for b in d.bands) <= 100
            assert all(sum(by_id[m].quota_request_frac for m in b.members) <= 1 + 1e-9 for b in d.bands)
            assert d.area_used <= 1 + 1e-9 and d.mem_used_bytes <= d.mem_bytes
    s = res.summary()
    assert s["rejected_replicas"] == 0 and s["slo_attainment"] >= 0.99


def test_lp_bound_below_every_policy():
    trace = poisson_trace(RATES, 120, seed=2)
    settings = AutoscaleSettings()
    lb = GpuLowerBound(
        {s.name: lower_bound_choices(s, settings) for s in SPECS},
        {s.name: (s.table.mem_bytes - s.table.weight_bytes) / settings.device_mem_bytes for s in SPECS},
        {s.name: s.min_replicas for s in SPECS},
    )
    bound = lb.gpus(RATES)
    assert bound > 0
    for pol in all_policies(SPECS, settings):
        s = simulate(SPECS, trace, pol, SET).summary()
        assert bound <= s["gpus_mean"], pol.name


@pytest.mark.parametrize("area, mem, rate, want", [
    (0.5, 0.1, 40.0, 2.0),  # SM-time binds: 4 replicas x 0.5
    (0.1, 0.5, 40.0, 2.0),  # memory binds: 4 replicas x 0.5
    (0.2, 0.2, 10.0, 0.2),  # one replica; neither resource padded up to the other
])
def test_lp_bound_is_the_larger_resource_not_both(area, mem, rate, want):
    from fast_scheduler.choices import ConfigChoice, ShareConfig

    c = ConfigChoice(ShareConfig(int(area * 100), 1.0, 1.0), 10.0, 10.0, 50.0, max(area, mem))
    lb = GpuLowerBound({"f": [c]}, {"f": mem}, {"f": 1})
    assert lb.gpus({"f": rate}) == pytest.approx(want)


# ---- the fast scale-up path and standby replicas borrowing idle time -------------------------

from fast_scheduler.choices import STANDBY_REQUEST, ShareConfig  # noqa: E402
from fast_scheduler.evaluation.baselines import FastGShareOriginal  # noqa: E402
from fast_scheduler.evaluation.simulator import Trace  # noqa: E402
from fast_scheduler.latency import DEFAULT_MODEL  # noqa: E402
from fast_scheduler.placement import (  # noqa: E402
    DEFAULT_FILTERS,
    Rejection,
    beside_holders,
    evict_lone_standby,
    place,
)


def step_trace(name, before, after, at_s, total_s):
    rates = [before] * at_s + [after] * (total_s - at_s)
    return Trace("step", 1.0, {name: [round(r) for r in rates]}, {name: rates})


STEP_SPEC = [SimFunction("r", "resnet50", R, 69.0)]


@pytest.mark.parametrize("fast_s, better", [(1.0, True), (0.0, False), (5.0, False)])
def test_fast_path_serves_a_step_sooner(fast_s, better):
    # A 4x step up two seconds after a tick: the fast sub-tick adds replicas a second later, the
    # tick would three seconds later; 0 and "not shorter than the tick" are off.
    tr = step_trace("r", 50.0, 200.0, 62, 120)
    no_sb = AutoscaleSettings(standby_frac=0.0)  # the fast path alone (standby would serve the step too)

    def run(fast_interval_s):
        return simulate(STEP_SPEC, tr, this_policy(STEP_SPEC, no_sb),
                        SimSettings(gpus=8, fast_interval_s=fast_interval_s))

    base, res = run(0.0), run(fast_s)
    a, b = base.summary()["slo_attainment"], res.summary()["slo_attainment"]
    assert (b > a + 0.01) == better, (a, b)
    again = run(fast_s)
    assert again.summary() == res.summary()


def test_the_original_heuristic_has_no_fast_path():
    tr = step_trace("r", 50.0, 200.0, 62, 120)
    runs = [simulate(STEP_SPEC, tr, FastGShareOriginal(STEP_SPEC), SimSettings(gpus=8, fast_interval_s=f))
            .summary() for f in (0.0, 1.0)]
    assert runs[0] == runs[1]


class Fixed:
    """A policy that runs a fixed replica set per function, placed with the standby rule."""

    name = "fixed"

    def __init__(self, want):
        self.want = want

    def desired(self, now_s, observed, current):
        return self.want

    def apply(self, snapshot, adds):
        rejected = []
        for r in sorted(adds, key=lambda r: (-r.area, r.replica_id)):
            p = place(r, snapshot, (*DEFAULT_FILTERS, beside_holders))
            if isinstance(p, Rejection):
                rejected.append(r)
            else:
                snapshot = snapshot.with_device(p.device)
        return snapshot, rejected

    def after(self, snapshot):
        return evict_lone_standby(snapshot), 0


ROOM = ShareConfig(25, 1 - STANDBY_REQUEST, 1.0, 1)
SB = ShareConfig(25, STANDBY_REQUEST, 1.0, 1)
TWO = [SimFunction("a", "resnet50", R, 1000.0), SimFunction("b", "resnet50", R, 1000.0)]


@pytest.mark.parametrize(
    "b_set, borrow, a_count, a_busy, served_well",
    [
        ((ROOM,), True, 1, 0.1, False),  # b at 2.5x its replica's profiled rate: over its service rate
        ((ROOM, SB), True, 1, 0.1, True),  # its standby borrows the idle device time and serves it
        ((ROOM, SB), False, 1, 0.1, False),  # no lending: the standby has only its token
        ((ROOM, SB), True, 3, 1.0, False),  # a's three replicas keep the device busy: nothing idle
    ],
)
def test_standby_serves_on_idle_device_time(b_set, borrow, a_count, a_busy, served_well):
    thr = R.estimate(25, 1 - STANDBY_REQUEST, 1).throughput_rps
    mu = thr / DEFAULT_MODEL.profiled_utilisation  # a replica's service rate
    n = 60
    rates = {"a": [a_busy * a_count * mu] * n, "b": [2.5 * thr] * n}
    tr = Trace("t", 1.0, {k: [round(x) for x in v] for k, v in rates.items()}, rates)
    pol = Fixed({"a": (ROOM,) * a_count, "b": b_set})
    res = simulate(TWO, tr, pol, SimSettings(gpus=1, borrow_idle=borrow))
    b = res.functions["b"]
    assert res.summary()["gpus_peak"] == 1
    assert (b.served / b.arrived > 0.95) == served_well, b.served / b.arrived


def test_remembered_standby_refusals_change_no_placement_and_save_the_scans():
    # The policy places standby replicas with ``place_standby`` (devices that refused a standby
    # request are not scanned for it again while unchanged): every placement, tick by tick, is the
    # one a scan of every device gives (``standby_retry_s=0``), with far fewer devices examined.
    rates = {k: 8 * v for k, v in RATES.items()}  # a dozen GPUs: standby replicas placed and refused
    tr = bursty_trace(rates, 240, seed=3)

    def run(retry_s):
        pol = this_policy(SPECS)
        pol.standby_retry_s = retry_s
        applied = []

        class Recorded:
            name = pol.name
            desired, fast, after = pol.desired, pol.fast, pol.after

            def apply(self, snap, adds):
                snap, rejected = pol.apply(snap, adds)
                on = [(d.device_id, sorted(r.replica_id for r in d.replicas)) for d in snap.devices]
                applied.append(([d for d in on if d[1]], sorted(r.replica_id for r in rejected)))
                return snap, rejected

        res = simulate(SPECS, tr, Recorded(), SET)
        return res, applied, pol

    full, full_applied, full_pol = run(0.0)
    mem, mem_applied, mem_pol = run(30.0)
    assert mem_applied == full_applied
    assert mem.summary() == full.summary() and mem.gpus == full.gpus and mem.replicas == full.replicas
    # standby requests both placed and refused
    assert mem_pol.standby_requests == full_pol.standby_requests > full.standby_refused > 0
    assert full_pol.standby_scans == full_pol.standby_requests  # no memory: every request scanned
    assert mem_pol.standby_scans < full_pol.standby_scans
    assert 2 * mem_pol.standby_devices < full_pol.standby_devices


@pytest.mark.parametrize("recent_at_tick, better", [(True, True), (False, False)])
def test_a_step_just_before_a_tick_is_planned_for_on_that_tick(recent_at_tick, better):
    # A 4x step one second before a tick: the tick's 5 s mean dilutes it, and the fast path's
    # reading of that second is reset by the tick; handed to the tick, it is planned for at once.
    tr = step_trace("r", 50.0, 200.0, 64, 120)
    no_sb = AutoscaleSettings(standby_frac=0.0)

    def run(on):
        return simulate(STEP_SPEC, tr, this_policy(STEP_SPEC, no_sb),
                        SimSettings(gpus=8, fast_interval_s=1.0, recent_at_tick=on)).summary()

    base, res = run(False), run(recent_at_tick)
    assert (res["slo_attainment"] > base["slo_attainment"] + 0.005) == better, (base, res)


def test_the_last_sub_window_is_handed_over_before_each_tick():
    seen = []

    class Recorder(Fixed):
        def fast(self, now_s, observed, current, window_s):
            return {}

        def observe_recent(self, now_s, observed, window_s):
            seen.append((now_s, dict(observed), window_s))

    rates = [10.0] * 9 + [30.0] + [10.0] * 10
    tr = Trace("t", 1.0, {"r": [round(r) for r in rates]}, {"r": rates})
    simulate(STEP_SPEC, tr, Recorder({"r": (ROOM,)}), SimSettings(gpus=2, fast_interval_s=1.0))
    assert [s[0] for s in seen] == [5.0, 10.0, 15.0]  # every tick but the first
    assert seen[1][1] == {"r": 30.0} and seen[1][2] == 1.0  # the second before the tick at 10 s
    seen.clear()
    simulate(STEP_SPEC, tr, Recorder({"r": (ROOM,)}), SimSettings(gpus=2, fast_interval_s=0.0))
    assert seen == []  # no fast path: nothing to hand over
