"""End to end: profile a small real torch function through the real platform on the CPU.

A coarse grid (SM 25/50/100 x quota 0.25/1.0) through provider -> sidecar -> worker; the table must
show what the platform enforces (a quarter of the quota serves clearly less than the whole; shares
that map to the same cores are measured once) and survive Redis, JSON and CSV.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from fast_profiler import store
from fast_profiler.gateway import Gateway
from fast_profiler.jobs import Watcher, profile_and_store
from fast_profiler.planner import GridSpec, Source, spatial_classes
from fast_profiler.store import ProfileState
from fast_profiler.table import device_type_of
from fastgshare.platform import PlatformInfo
from tests.integration.platform_helpers import FAST_PROFILE, start_platform

HANDLER = Path(__file__).parent / "handlers" / "matmul"
IMAGE = "test/matmul:latest"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInfo]:
    p, info = start_platform(tmp_path_factory.mktemp("platform"), {IMAGE: HANDLER})
    yield info
    p.stop()


def test_profile_through_the_platform(platform: PlatformInfo, tmp_path: Path) -> None:
    client = redis.Redis.from_url(platform.redis_url)
    gw = Gateway(platform.url, platform.auth, client)
    api = requests.Session()
    api.auth = platform.auth
    # The user's function: asks for autoscaling, so the watcher would pick it up.
    body = {"service": "mm", "image": IMAGE, "annotations": {"fastgshare/slo_ms": "250"}}
    assert api.post(f"{platform.url}/system/functions", json=body).status_code == 202
    watcher = Watcher(gw)
    assert watcher.candidates() == [("openfaas-fn", "mm")]

    cores = len(os.sched_getaffinity(0))
    spec = GridSpec(sm_grid=(25, 50, 100), quota_grid=(0.25, 1.0), device_cores=cores)
    seen: list[int] = []
    result = profile_and_store(gw, "mm", spec=spec, settings=FAST_PROFILE,
                               on_progress=lambda p: seen.append(p.measured))
    table = result.table
    device_type = device_type_of(gw.device())
    pts = {(p.config.sm_pct, p.config.quota_frac): p for p in result.points}

    # Shares that map to the same core count were measured once.
    assert len(result.measurements) <= len(spatial_classes(spec)) * 2
    if cores == 2:
        assert pts[(50, 1.0)].source is Source.SAME_SHARE
        assert table.throughput(25, 1.0) == table.throughput(50, 1.0)
    # The quota is enforced: a quarter of the device time serves clearly less than all of it.
    assert table.throughput(50, 1.0) > 1.6 * table.throughput(50, 0.25) > 0
    assert 0 < pts[(50, 0.25)].busy_frac <= 0.25 * 1.15
    assert all(p.error_rate < 0.05 for p in result.points)
    assert table.latency_p99(50, 1.0) <= 250

    # Progress was reported; status says done; the shadow function is gone; nothing left to profile.
    assert seen and seen[0] == 0
    st = store.get_status(client, "openfaas-fn", "mm")
    assert st["state"] == ProfileState.DONE.value
    assert gw.provider.status("mm-profile") is None
    assert watcher.candidates() == []

    # Round trips: Redis, JSON export, CSV.
    assert store.load(client, "mm", device_type) == table
    detail = store.load_detail(client, "mm", device_type)
    assert detail is not None and detail["points_total"] == spec.points_total
    jpath, cpath = store.export(table, tmp_path, detail)
    assert store.table_from_export(jpath.read_text()) == table
    rows = cpath.read_text().splitlines()
    assert len(rows) == 1 + spec.points_total and rows[0].startswith("function,device_type,sm_pct")
    client.close()
