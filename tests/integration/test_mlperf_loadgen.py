"""The MLPerf benchmark's LoadGen adapter against a real function through the real platform
(provider -> sidecar -> worker), with --quick-like settings: short Server runs, real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from bench.mlperf import lgen
from bench.mlperf import modes as md
from bench.mlperf import platform_io as pio
from fast_profiler.store import load
from fast_profiler.table import device_type_of, synthetic_table
from fastgshare import keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pio.Target, str]]:
    with pio.embedded(Path(tmp_path_factory.mktemp("mlperf")), scheduler=False) as t:
        pio.register_images(t.redis_url, ["noop"])
        (group,) = md.phases(md.Mode.EXCLUSIVE, ["noop"], window_s=2.0)
        pio.deploy_all(t, group)
        yield t, group[0].service
        pio.remove_all(t, group)


def test_server_run_over_real_http(target):
    t, service = target
    probe = pio.UsageProbe(t)
    before = probe.sample([service])
    out = lgen.run_server({"noop": t.function_url(service)}, {"noop": 20.0}, {"noop": 2000.0}, 3.0)
    after = probe.sample([service])
    probe.close()
    (r,) = out.runs
    assert r.errors == 0 and r.skipped == 0
    # LoadGen issued a Poisson stream at about 20 rps for its minimum duration; every query answered
    assert 30 <= len(r.latencies_ms) <= 120
    assert all(0 < x < 2000 for x in r.latencies_ms)
    assert out.loadgen.get("result") in ("VALID", "INVALID")
    assert float(out.loadgen["scheduled_qps"]) == pytest.approx(20.0, rel=0.5)
    assert out.wall_s < 15
    # the sidecar counted the work and the worker's CPU time is readable
    assert after is not None and before is not None
    assert len(after.busy_ms) == 1 and after.cpu_s
    cpu, busy, sm_time = pio.utilisation(before, after, 2)
    assert cpu is not None and busy is not None and sm_time == pytest.approx(busy)


def test_clearly_failing_run_stops_early(target):
    t, service = target
    # an impossible bound: every request is late, so the run is cut short and its rest skipped
    out = lgen.run_server({"noop": t.function_url(service)}, {"noop": 40.0}, {"noop": 0.001}, 3.0)
    (r,) = out.runs
    assert r.skipped > 0
    assert "our_early_stop" in out.loadgen
    assert out.wall_s < 10


def test_replicas_endpoint_shows_the_exclusive_share(target):
    t, service = target
    (fn,) = [f for f in pio.replicas(t) if f["name"] == service]
    assert fn["availableReplicas"] == 1
    assert fn["share"]["fastgshare/gpu_sm_partition"] == "100"



def test_seed_profile_only_for_this_device_type(target, tmp_path):
    t, _ = target
    client = redis.Redis.from_url(t.redis_url)
    here = device_type_of(json.loads(next(iter(client.hvals(keys.devices())))))
    path = tmp_path / "table.json"
    table = synthetic_table("mobilenet", saturation_sm_pct=50, full_rps=20)
    path.write_text(replace(table, device_type=here).to_json())
    assert pio.seed_profile(t, "mobilenet-as", path) == here
    stored = load(client, "mobilenet-as", here)
    assert stored is not None and stored.function == "mobilenet-as"
    path.write_text(replace(table, device_type="some-gpu").to_json())
    assert pio.seed_profile(t, "other-as", path) is None
    client.close()
