"""bench/cluster's pure helpers: synthetic tables read as profiled, the reaction-window share."""

import pytest

from bench.cluster import _synthetic_tables, as_profiled, make_specs, reaction_window_share
from fast_scheduler.evaluation.simulator import Trace
from fast_scheduler.evaluation.traces import poisson_trace
from fast_scheduler.latency import LatencyCurve, LatencyModel


def test_profiled_view_serves_at_the_synthetic_rate_again():
    model = LatencyModel(profiled_utilisation=0.5)
    raw, _slo = _synthetic_tables()["bert"]
    prof = as_profiled(raw, model)
    for p, q in zip(raw.points, prof.points, strict=True):
        assert q.throughput_rps == pytest.approx(0.5 * p.throughput_rps)
        assert q.latency_p50_ms >= p.latency_p50_ms and q.latency_p99_ms > p.latency_p99_ms
        # The simulator drains a replica at profiled rate / utilisation: the synthetic service rate.
        c = LatencyCurve.from_point(q.throughput_rps, q.latency_p50_ms, q.latency_p99_ms, model)
        assert c.service_rps == pytest.approx(p.throughput_rps)


@pytest.mark.parametrize("rates, window_s, want", [
    ([10.0] * 10, 3.0, 0.0),  # no step
    ([10.0] * 5 + [30.0] * 5, 3.0, 90 / 200),  # 3 steps of 30 after the step, of 200 arrivals
    ([10.0] * 5 + [12.0] * 5, 3.0, 0.0),  # +20 %: not a step
])
def test_reaction_window_share(rates, window_s, want):
    counts = [int(r) for r in rates]
    tr = Trace("t", 1.0, {"f": counts}, {"f": rates})
    assert reaction_window_share(tr, window_s) == pytest.approx(want)


def test_gap_probe_splits_this_policys_gpus():
    from bench.cluster import GapProbe, lower_bound_values, make_specs
    from fast_scheduler.evaluation.policies import this_policy
    from fast_scheduler.evaluation.simulator import SimSettings, simulate
    from fast_scheduler.evaluation.traces import poisson_trace

    specs, rates = make_specs(4, 1, 20.0, 60.0)
    settings = SimSettings(gpus=32)
    tr = poisson_trace(rates, 120.0, seed=1)
    whole, lp, ahead = lower_bound_values(specs, tr, settings, 5, 6)
    assert all(w >= v - 1e-9 for w, v in zip(whole, lp, strict=True))
    assert all(a >= w for a, w in zip(ahead, whole, strict=True))  # the window's peak >= its first rate
    probe = GapProbe(this_policy(specs), specs, skip_s=20.0)
    res = simulate(specs, tr, probe, settings)
    gap = probe.decomposition(tr, lp, res.gpus)
    # Each device's strips are at least as tall as what they guarantee; draining devices count too.
    assert gap["gpus"] >= gap["devices"] >= gap["height"] >= gap["planned_area"] + gap["standby_area"] - 1e-9
    assert gap["running_capacity_over_rate"] >= 1.0 and gap["lp"] > 0


def test_foresight_reference_serves_a_step_the_reactive_policy_is_late_for():
    """The perfect-foresight reference starts replicas a reaction window before a step up, so it
    serves the step on time, where this (reactive) policy is late for part of it."""
    from bench.cluster import Foresight, make_specs
    from fast_scheduler.evaluation.policies import this_policy
    from fast_scheduler.evaluation.simulator import SimSettings, simulate

    specs, rates = make_specs(1, 1, 40.0, 40.0)
    name = specs[0].name
    rate = [40.0] * 60 + [400.0] * 60
    tr = Trace("step", 1.0, {name: [int(r) for r in rate]}, {name: rate})
    settings = SimSettings(gpus=32, fast_interval_s=0.0, record_latency=True)
    ahead = round((settings.control_interval_s + settings.cold_start_s) / settings.step_s) + 1
    fs = simulate(specs, tr, Foresight(specs, tr, ahead, 0.0, settings.device_mem_bytes), settings)
    re = simulate(specs, tr, this_policy(specs), settings)
    def late_share(res):  # late of the arrivals in the 10 s after the step
        f = res.functions[name]
        return sum(f.late_by_step[60:70]) / sum(tr.counts[name][60:70])

    # At its capacity a replica is late for ~1 % of requests by design (the table's p99).
    assert late_share(fs) < 0.02
    assert late_share(re) > 5 * late_share(fs)
    assert fs.functions[name].slo_attainment > re.functions[name].slo_attainment


def test_worst_seed_is_the_lowest_slo_and_checks_the_targets():
    from bench.cluster_seeds import worst_seed

    def entry(this_gpus, slo, fs, base_gpus):
        pol = {"gpus_mean": this_gpus, "slo_attainment": slo, "slo_attainment_min_function": slo - 0.01}
        return {"lower_bound_gpus": 1.0, "foresight_gpus": fs, "policies": {
            "this": pol, "mps_equal": {**pol, "gpus_mean": base_gpus}}}

    by_seed = {"1": {"bursty": entry(11.0, 0.992, 10.0, 12.0)},
               "2": {"bursty": entry(12.0, 0.985, 10.0, 13.0)},
               "3": {"bursty": entry(11.4, 0.995, 10.0, 11.0)}}
    w = worst_seed(by_seed)["bursty"]
    assert w["seed"] == 2 and w["slo_attainment"] == 0.985 and not w["meets_slo"]
    assert w["gpus_vs_foresight"] == pytest.approx(1.2) and w["worst_gpus_vs_foresight"] == pytest.approx(1.2)
    assert not w["meets_gpus"] and not w["fewer_gpus_than_every_baseline_every_seed"]  # seed 3


def test_policy_settings_follow_the_replica_start_time():
    from fast_scheduler.start_tuning import START_TUNED, for_start_time

    (s0, a), (s1, b) = START_TUNED
    lo, hi, mid = for_start_time(s0 / 2), for_start_time(2 * s1), for_start_time((s0 + s1) / 2)
    for st, want in ((lo, a), (hi, b)):  # clamped outside the tuned points
        assert {k: getattr(st, k) for k in want} == want
    assert (lo.start_s, hi.start_s) == (s0 / 2, 2 * s1)
    assert mid.burst_k == pytest.approx((a["burst_k"] + b["burst_k"]) / 2)
    assert mid.headroom_frac == pytest.approx((a["headroom_frac"] + b["headroom_frac"]) / 2)
    assert lo.calm_scale_down_delay_s <= lo.scale_down_delay_s
    # The backlog drain goes as a rate: half-way from "10 s" to "off" drains in 20 s, not 5 s.
    assert a["backlog_drain_s"] > 0 and b["backlog_drain_s"] == 0
    assert mid.backlog_drain_s == pytest.approx(2 * a["backlog_drain_s"])


def test_repack_cadence_follows_the_start_time_for_policy_and_reference():
    from bench.cluster_refs import Foresight
    from fast_scheduler.evaluation.policies import this_policy
    from fast_scheduler.repack import REPACK_TUNED, every_ticks_for_start
    from fast_scheduler.start_tuning import for_start_time

    (s0, n0), (s1, n1) = REPACK_TUNED
    assert (every_ticks_for_start(s0 / 2), every_ticks_for_start(s1 * 2)) == (n0, n1)
    assert n0 <= every_ticks_for_start((s0 + s1) / 2) <= n1
    specs, rates = make_specs(3, 1, 5.0, 10.0)
    tr = poisson_trace(rates, 20.0, seed=1)
    for start in (s0, s1):
        pol = this_policy(specs, for_start_time(start))
        fs = Foresight(specs, tr, 7, 0.0, 32 * 2**30, start)
        assert pol.repack_every_ticks == fs.policy.repack_every_ticks == every_ticks_for_start(start)
    assert Foresight(specs, tr, 7, 0.0, 32 * 2**30, s0, 6).policy.repack_every_ticks == 6


def test_start_time_from_a_replica_start_result(tmp_path):
    import json

    from bench.cluster_seeds import measured_start_s

    p = tmp_path / "replica_start.json"
    p.write_text(json.dumps({"median": {"a": {"routed": 1.2, "worker load": 1.0}, "b": {"routed": 2.5}}}))
    assert measured_start_s(p) == 2.5
    p.write_text(json.dumps({"median": {}}))
    with pytest.raises(SystemExit):
        measured_start_s(p)
