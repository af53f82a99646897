"""The batch as the first lever of a burst, live: the scheduler changes a configuration group's
batch with the same group id, and the running replica takes it without a restart (the node agent
sends it to the sidecar with the replica's control token; the sidecar tells its worker)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from fastgshare.provider_client import ProviderClient
from tests.integration.platform_helpers import HANDLERS, start_platform
from tests.waiting import wait_for

IMAGE = "test/mlp:latest"
pytestmark = pytest.mark.slow


def _group(batch: int) -> dict:
    return {"configId": "g1", "replicas": 1, "batch": batch,
            "share": {"fastgshare/gpu_sm_partition": "100", "fastgshare/gpu_quota_request": "1",
                      "fastgshare/gpu_quota_limit": "1"}}


def test_a_group_batch_change_reaches_the_running_replica(tmp_path: Path) -> None:
    platform, info = start_platform(tmp_path / "state", {IMAGE: HANDLERS / "mlp"})
    try:
        client = ProviderClient(info.url, info.auth)
        client.deploy({"service": "mlp", "image": IMAGE,
                       "labels": {"com.openfaas.scale.min": "0"}})
        client.scale("mlp", 0)
        client.apply_configurations("mlp", [_group(1)])

        def ready() -> list:
            return [r for r in client.replicas_of("mlp") if r.ready]

        reps = wait_for(ready, timeout_s=120, what="the group's replica ready")
        pid, url = reps[0].pid, reps[0].url

        def stats() -> dict:
            return requests.get(f"{url}/_/stats", timeout=5).json()

        assert stats()["batching"]["max_batch"] == 1
        client.apply_configurations("mlp", [_group(4)])  # the same group, a bigger batch
        wait_for(lambda: stats()["batching"]["max_batch"] == 4, timeout_s=30,
                 what="the sidecar to take batch 4")
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: client.invoke("mlp", b"{}"), range(16)))
        assert all(r.status_code == 200 for r in answers)
        assert max(int(r.headers.get("X-Fastgshare-Batch", "1")) for r in answers) > 1
        now = client.replicas_of("mlp")
        assert [(r.pid, r.url) for r in now] == [(pid, url)]  # the same process: no restart
        client.apply_configurations("mlp", [_group(1)])  # and back, when the burst is over
        wait_for(lambda: stats()["batching"]["max_batch"] == 1, timeout_s=30,
                 what="the sidecar to take batch 1 again")
    finally:
        platform.stop()
