"""Fatal device faults across replicas: real sidecars + workers sharing one device and one Redis.

A stand-in GPU record (``gpu:GPU-fake-...``) with the CPU build of torch: the worker classifies the
error by CUDA's text, so the whole path short of a real MPS server runs here.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from bench.replicas import Replica, start_replicas, stop_replicas, write_handler
from fastgshare import keys
from fastgshare.redis_server import EmbeddedRedis
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

HANDLER = """
import os
import time


def handle(event, context):
    if event.path == "/fault":
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    time.sleep(float(event.query.get("s", "0")))
    return str(os.getpid())
"""


def pid(r: Replica) -> int:
    """The pid of the worker that answered (the handler returns it)."""
    resp = requests.get(f"{r.url}/", timeout=30)
    assert resp.status_code == 200, resp.text
    return int(resp.text)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", persist=False) as srv:
        yield srv


@contextlib.contextmanager
def pair(tmp_path: Path, device: str, redis_url: str) -> Iterator[tuple[Replica, Replica]]:
    """Replicas a and b of two functions on ``device``, both following its fault channel."""
    handler = write_handler(tmp_path / "fn", HANDLER)
    common = {"REDIS_URL": redis_url, "FASTGSHARE_HANDLER_DIR": str(handler),
              "FASTGSHARE_DEVICE": device, "FASTGSHARE_SM_PCT": "50",
              "FASTGSHARE_QUOTA_REQUEST": "0.5", "FASTGSHARE_QUOTA_LIMIT": "1"}
    if device.startswith("cpu:"):
        common["FASTGSHARE_CPU_CORES"] = str(max(os.sched_getaffinity(0)))
    a, b = start_replicas([common | {"name": "a"}, common | {"name": "b"}], tmp_path / "logs", 60)
    client = redis.Redis.from_url(redis_url)
    try:  # both follow the device's fault channel before anything faults
        wait_for(lambda: client.pubsub_numsub(keys.device_faults(device))[0][1] >= 2,
                 what="both sidecars on the fault channel")
        yield a, b
    finally:
        client.close()
        stop_replicas([a, b])


def slow_request(r: Replica, out: list) -> None:
    resp = requests.get(f"{r.url}/?s=2", timeout=60)
    out.append((resp.status_code, resp.text))


def fault_during_slow_request(a: Replica, b: Replica) -> tuple[requests.Response, tuple[int, str]]:
    got: list[tuple[int, str]] = []
    t = threading.Thread(target=slow_request, args=(b, got))
    t.start()
    wait_for(lambda: b.stats()["inflight"] == 1, what="b executing")
    time.sleep(0.3)  # b's worker is inside its 2 s execution (real time of a real request)
    fault = requests.post(f"{a.url}/fault", data=b"{}", timeout=60)
    t.join(90)
    assert got, "the slow request was never answered"
    return fault, got[0]


def test_a_gpu_fault_restarts_every_replica_and_reruns_what_they_ran(tmp_path: Path,
                                                                      server: EmbeddedRedis):
    device = "gpu:GPU-fake-fault-test"
    with pair(tmp_path, device, server.url) as (a, b):
        pid_a, pid_b = pid(a), pid(b)
        fault, (status_b, body_b) = fault_during_slow_request(a, b)
        # the request that faulted is answered, not run again
        assert fault.status_code == 500
        assert "fatal device error" in fault.text and "illegal memory access" in fault.text
        # the neighbour's execution was cut short by its restart and run again on the new worker
        assert status_b == 200, body_b
        assert int(body_b) != pid_b
        assert pid(a) != pid_a  # both workers are new
        assert b.stats()["device_faults"] == 1 and a.stats()["device_faults"] == 1
        faults = [json.loads(x) for x in redis.Redis.from_url(server.url).lrange(
            keys.device_faults(device), 0, -1)]
        assert [(f["replica"], f["device"]) for f in faults] == [("a-0", device)]


def test_on_a_cpu_device_a_fault_is_its_replica_alone(tmp_path: Path, server: EmbeddedRedis):
    device = "cpu:fault-test"
    with pair(tmp_path, device, server.url) as (a, b):
        pid_a, pid_b = pid(a), pid(b)
        fault, (status_b, body_b) = fault_during_slow_request(a, b)
        assert fault.status_code == 500 and "fatal device error" in fault.text
        assert (status_b, int(body_b)) == (200, pid_b)  # untouched, same worker
        assert b.stats()["device_faults"] == 0
        assert pid(a) != pid_a  # the faulted worker restarted (its context would be unusable)
