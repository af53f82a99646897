"""The local backend (provider side) with the node agent's replica supervisor, no HTTP provider:
scheduler-chosen replica groups, restarts, and nothing left running after the supervisor stops."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fastgshare import keys
from fastgshare.resources import GpuShare
from fastgshare.specs import FunctionSpec, ReplicaConfig
from gateway_plugin.errors import Invalid
from gateway_plugin.local_backend import LocalBackend
from tests.integration.local_helpers import Supervised
from tests.waiting import wait_for

HANDLER = Path(__file__).parent / "handlers" / "linear"

pytestmark = pytest.mark.slow




@pytest.fixture
def supervised(redis_url, state_dir) -> Iterator[Supervised]:
    s = Supervised(redis_url, state_dir)
    yield s
    s.stop()


@pytest.fixture
def backend(redis_client, state_dir, supervised):
    b = LocalBackend(redis_client, state_dir)
    b.register_image("t/linear", HANDLER)
    yield b
    b.close()


def test_configuration_groups_start_before_dropped_ones_stop(backend: LocalBackend):
    backend.deploy(FunctionSpec("lin", "t/linear", share=GpuShare(sm_pct=100)))
    wait_for(lambda: backend.status("openfaas-fn", "lin").available_replicas == 1, what="base")

    backend.apply_configurations("openfaas-fn", "lin", [
        ReplicaConfig("half", GpuShare(sm_pct=50, quota_request_frac=0.3, quota_limit_frac=0.5), 2,
                      batch=2)])
    wait_for(lambda: backend.status("openfaas-fn", "lin").available_replicas == 3, what="3 ready")
    state = backend.status("openfaas-fn", "lin")
    assert state.replicas == 3 and state.configs[0].batch == 2
    half = [r for r in state.replica_status if r.config_id == "half"]
    assert len(half) == 2 and all(r.sm_pct == 50 and len(r.cores) == 1 for r in half)
    # the group's batch reaches its sidecars (and so its workers); the base group has none
    for rep in state.replica_status:
        env = Path(f"/proc/{rep.pid}/environ").read_bytes().split(b"\0")
        assert (b"FASTGSHARE_BATCH=2" in env) == (rep.config_id == "half")

    # Replace the group: the old group keeps serving until the new one is ready.
    backend.apply_configurations("openfaas-fn", "lin", [ReplicaConfig("quarter", GpuShare(sm_pct=25), 1)])
    seen_gap = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = backend.status("openfaas-fn", "lin")
        ids = {r.config_id for r in state.replica_status}
        if not any(r.ready and r.config_id in ("half", "quarter") for r in state.replica_status):
            seen_gap = True
        if ids == {"", "quarter"} and state.available_replicas == 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"did not converge: {state}")
    assert not seen_gap, "capacity of the scheduler groups dropped to zero during the change"

    with pytest.raises(Invalid):
        backend.apply_configurations("openfaas-fn", "lin", [ReplicaConfig("a", GpuShare(), 1)] * 2)


def test_crashed_replica_is_restarted(backend: LocalBackend, supervised: Supervised):
    backend.deploy(FunctionSpec("crashy", "t/linear"))
    wait_for(lambda: backend.status("openfaas-fn", "crashy").available_replicas == 1, what="ready")
    (rep,) = backend.status("openfaas-fn", "crashy").replica_status
    os.killpg(rep.pid, signal.SIGKILL)
    wait_for(lambda: any(r.pid != rep.pid and r.ready
                         for r in backend.status("openfaas-fn", "crashy").replica_status),
             what="a new replica after the crash")
    # On shutdown nothing is started again behind the stop (the reconcile loop stops first).
    pids = [r.pid for r in backend.status("openfaas-fn", "crashy").replica_status]
    supervised.stop()
    time.sleep(1.5)  # several reconcile periods: a live loop would have started the replica again
    assert backend.status("openfaas-fn", "crashy").replica_status == ()
    assert not any(Path(f"/proc/{p}").exists() for p in pids)


def test_replicas_go_on_the_gpu_with_the_mps_environment(backend: LocalBackend, redis_client):
    """With a GPU in the registry, a replica is placed on it with its MPS share, not a core set.

    No GPU here: the record is written by hand and the worker (CPU torch) runs on the CPU, but
    the placement and the environment the sidecar gives its worker are the real ones.
    """
    redis_client.hset(keys.devices(), "gpu:GPU-test", json.dumps({
        "device_id": "gpu:GPU-test", "kind": "gpu", "node": "n", "name": "Test GPU",
        "mem_bytes": 8 * 2**30, "cores": [], "mps_pipe_dir": "/tmp/fastgshare-test-mps"}))
    backend.deploy(FunctionSpec("ongpu", "t/linear", share=GpuShare(sm_pct=30, mem_bytes=2**30)))
    wait_for(lambda: backend.status("openfaas-fn", "ongpu").available_replicas == 1, what="ready")
    (rep,) = backend.status("openfaas-fn", "ongpu").replica_status
    assert rep.device_id == "gpu:GPU-test" and rep.cores == ()
    worker_pid = requests.get(f"{rep.url}/_/stats", timeout=5).json()["worker"]["pid"]
    env = dict(item.split("=", 1) for item in
               Path(f"/proc/{worker_pid}/environ").read_text().split("\0") if "=" in item)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-test"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/fastgshare-test-mps"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"].endswith("M")
    assert "FASTGSHARE_SLO_MS" not in env


def test_a_function_with_an_slo_gets_deadline_batching(backend: LocalBackend):
    """``fastgshare/slo_ms`` alone reaches the worker as FASTGSHARE_SLO_MS, so it batches by deadline
    (B_max 16, the sidecar admitting 2 x 16) with no batch size declared."""
    backend.register_image("t/mlp", HANDLER.parent / "mlp")  # has handle_batch
    backend.deploy(FunctionSpec("withslo", "t/mlp", share=GpuShare(slo_ms=100)))
    wait_for(lambda: backend.status("openfaas-fn", "withslo").available_replicas == 1, what="ready")
    (rep,) = backend.status("openfaas-fn", "withslo").replica_status
    stats = requests.get(f"{rep.url}/_/stats", timeout=5).json()
    env = dict(item.split("=", 1) for item in
               Path(f"/proc/{stats['worker']['pid']}/environ").read_text().split("\0") if "=" in item)
    assert env["FASTGSHARE_SLO_MS"] == "100"
    answer = requests.post(f"{rep.url}/", data=b"{}", timeout=10)
    assert answer.status_code == 200 and answer.headers.get("X-Fastgshare-Batch") == "1", answer.headers
