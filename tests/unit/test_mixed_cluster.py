"""A mixed-GPU cluster: replicas planned for one device type go only onto it, the simulator serves
each replica at its device's table, and bench.cluster_mixed assigns types by comparative advantage."""

from dataclasses import replace

from bench.cluster import tables
from bench.cluster_mixed import assign_types
from fast_profiler.table import synthetic_table
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, empty_cluster, simulate
from fast_scheduler.evaluation.traces import poisson_trace
from fast_scheduler.placement import Device, ReplicaRequest, Snapshot, fits_device_type, place

GIB = 2**30
SLOW, _ = tables()["resnet50"]
FAST = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=300.0, device_type="FAST",
                       weight_bytes=98 * 2**20)
MIXED = SimSettings(device_types=(("SLOW", 6, 32 * GIB), ("FAST", 2, 80 * GIB)))


def test_a_typed_request_goes_only_to_its_type():
    snap = Snapshot((Device("a", "n", GIB, device_type="SLOW"), Device("b", "n", GIB, device_type="FAST")))
    req = ReplicaRequest("r", "f", "m", 25, 1.0, 2**20, device_type="FAST")
    assert fits_device_type(req, snap.devices[0]) == "device type"
    p = place(req, snap)
    assert getattr(p, "device_id", None) == "b"
    assert fits_device_type(replace(req, device_type=""), snap.devices[0]) is None  # untyped: any


def test_empty_cluster_has_the_types_in_order():
    devs = empty_cluster(MIXED).devices
    assert [d.device_type for d in devs] == ["SLOW"] * 6 + ["FAST"] * 2
    assert devs[-1].mem_bytes == 80 * GIB


def test_type_aware_plans_and_serves_on_its_type():
    spec = SimFunction("f", "resnet50", FAST, 69.0, device_type="FAST", serve_tables=(("SLOW", SLOW),))
    tr = poisson_trace({"f": 150.0}, 60, seed=1)
    res = simulate([spec], tr, this_policy([spec]), MIXED)
    assert sum(res.gpus_by_type["SLOW"]) == 0 and max(res.gpus_by_type["FAST"]) >= 1
    assert res.summary()["slo_attainment"] > 0.99


def test_assignment_by_comparative_advantage():
    st = AutoscaleSettings()
    specs_a = [SimFunction(f"f{i}", "resnet50", SLOW, 69.0) for i in range(4)]
    specs_b = [replace(s, table=FAST) for s in specs_a]
    rates = {"f0": 3000.0, "f1": 3000.0, "f2": 3000.0, "f3": 3000.0}
    types = assign_types({"SLOW": specs_a, "FAST": specs_b}, rates, {"SLOW": 100, "FAST": 1}, st)
    assert 0 < sum(t == "FAST" for t in types.values()) < 4  # FAST fills up, the rest go to SLOW
    everyone = assign_types({"SLOW": specs_a, "FAST": specs_b}, rates, {"SLOW": 100, "FAST": 100}, st)
    assert set(everyone.values()) == {"FAST"}
