"""End to end: profile batch sizes 1 and 4 of a small real torch function on the CPU.

The function is a deep, narrow MLP with ``handle_batch`` (tests/integration/handlers/mlp): a batch of
four costs far less than four single requests on one core, so with dynamic batching (the worker runs
up to FASTGSHARE_BATCH queued requests at once, the sidecar keeps that many in flight) the same
configuration serves more requests per second at batch 4 than at batch 1, within the same SLO.
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
from fast_profiler.jobs import profile_and_store
from fast_profiler.planner import GridSpec
from fast_profiler.table import device_type_of, summary
from fastgshare.platform import PlatformInfo
from tests.integration.platform_helpers import FAST_PROFILE, start_platform

HANDLER = Path(__file__).parent / "handlers" / "mlp"
IMAGE = "test/mlp:latest"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformInfo]:
    p, info = start_platform(tmp_path_factory.mktemp("platform"), {IMAGE: HANDLER})
    yield info
    p.stop()


def test_batch_4_serves_more_requests_than_batch_1(platform: PlatformInfo, tmp_path: Path) -> None:
    client = redis.Redis.from_url(platform.redis_url)
    gw = Gateway(platform.url, platform.auth, client)
    api = requests.Session()
    api.auth = platform.auth
    body = {"service": "mlp", "image": IMAGE, "annotations": {"fastgshare/slo_ms": "250"}}
    assert api.post(f"{platform.url}/system/functions", json=body).status_code == 202

    # One core for the worker (SM 50 % of 2 cores), the other for the platform and the load.
    spec = GridSpec(sm_grid=(50,), quota_grid=(1.0,), batches=(1, 4),
                    device_cores=len(os.sched_getaffinity(0)))
    result = profile_and_store(gw, "mlp", spec=spec, settings=FAST_PROFILE)
    table = result.table
    print(summary(table), os.getloadavg())
    assert table.batches == (1, 4) and len(result.measurements) == 2
    one, four = table.throughput(50, 1.0, 1), table.throughput(50, 1.0, 4)
    assert four > 1.3 * one > 0, (one, four)
    assert table.latency_p99(50, 1.0, 4) <= 250
    assert all(p.error_rate < 0.05 for p in result.points)
    # Device busy per request at batch 4 is a share of a batch, not a whole execution each.
    m1, m4 = sorted(result.measurements, key=lambda m: m.config.batch)
    assert m4.busy_ms_per_request < 0.8 * m1.busy_ms_per_request, (m1, m4)

    device_type = device_type_of(gw.device())
    assert store.load(client, "mlp", device_type) == table
    jpath, _ = store.export(table, tmp_path, store.load_detail(client, "mlp", device_type))
    assert store.table_from_export(jpath.read_text()).throughput(50, 1.0, 4) == four
    client.close()
