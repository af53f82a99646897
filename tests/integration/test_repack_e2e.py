"""The live re-pack on the real local platform: a replica moves between two devices make-before-break
while an open-loop load runs, and no request fails.

This machine has one CPU device; two stand-in GPU records (``gpu:GPU-fake-repack-*``, as
``test_device_faults`` uses one) are registered beside it, so the provider places each scheduler
group on "its" GPU (``FASTGSHARE_DEVICE``; the CPU build of torch runs the ``paced`` handler
whatever the record says). The function's two replicas are put on the two devices by hand (half a
device each: one device is wasted), and the scheduler loop, run in-process tick by tick, moves one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from fast_manager.devices import DeviceInfo, DeviceKind
from fast_manager.node_agent import register
from fast_profiler import store
from fast_profiler.table import ProfilePoint, ProfileTable, device_type_of
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.control import config_id
from fast_scheduler.loop import LoopSettings, SchedulerLoop
from fastgshare import keys
from fastgshare.platform import Platform, PlatformInfo
from fastgshare.provider_client import ProviderClient
from tests.integration.platform_helpers import deploy_slo_function, start_platform
from tests.waiting import wait_for

HANDLER = Path(__file__).parent / "handlers" / "paced"
TEMPLATE = Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"
IMAGE = "test/paced:latest"
GPUS = [DeviceInfo(f"gpu:GPU-fake-repack-{i}", DeviceKind.GPU, "local", "stand-in GPU", i, 16 * 2**30)
        for i in range(2)]
CFG = ShareConfig(50, 1.0, 1.0, 1)
RATE_RPS = 5.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, PlatformInfo]]:
    p, info = start_platform(tmp_path_factory.mktemp("platform"), {IMAGE: HANDLER})
    client = redis.Redis.from_url(info.redis_url)
    register(client, GPUS, ttl_s=900)
    dt = device_type_of({"kind": "gpu", "name": GPUS[0].name, "cores": []})
    store.save(client, ProfileTable("paced", dt, tuple(ProfilePoint(sm, 1.0, 1, 18.0, 52.0, 60.0, 70.0)
                                                       for sm in (50, 100)), mem_bytes=200 * 2**20))
    client.close()
    yield p, info
    p.stop()


def groups(api: requests.Session, url: str) -> tuple[dict[str, int], list[tuple[str, str, bool]]]:
    """Desired replicas by group, and (group, device, ready) of each running replica."""
    r = api.get(f"{url}/system/fastgshare/replicas", timeout=5)
    r.raise_for_status()
    (f,) = [f for f in r.json() if f["name"] == "paced"]
    want = {str(c["configId"]): int(c["replicas"]) for c in f.get("configurations") or []}
    running = [(str(s.get("configId") or ""), str(s.get("device")), bool(s["ready"]))
               for s in f["replicaStatus"]]
    return want, running


def test_a_replica_moves_to_the_other_device_without_a_failed_request(platform):
    _p, info = platform
    url = info.url
    api = deploy_slo_function(info, "paced", IMAGE, 600, scale_min=0, scale_max=4)
    g0, g1 = config_id(CFG, 0), config_id(CFG, 1)
    share = {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "1",
             "fastgshare/gpu_quota_limit": "1"}
    confs = [{"configId": gid, "replicas": 1, "node": "local", "gpuUuid": d.device_id.split(":", 1)[1],
              "batch": 1, "share": share} for gid, d in ((g0, GPUS[0]), (g1, GPUS[1]))]
    r = api.put(f"{url}/system/fastgshare/configurations/paced", json={"configurations": confs})
    assert r.status_code < 300, r.text
    wait_for(lambda: sorted(d for _g, d, ok in groups(api, url)[1] if ok) == [g.device_id for g in GPUS],
             120, "one ready replica on each stand-in GPU")

    client = redis.Redis.from_url(info.redis_url)
    settings = LoopSettings(interval_s=1.0, fast_interval_s=0.0, repack_every_ticks=1, repack_timeout_s=90.0,
                            autoscale=AutoscaleSettings(scale_down_delay_s=1e6, idle_to_zero_s=1e6,
                                                        standby_frac=0.0))
    loop = SchedulerLoop(ProviderClient(url, info.auth, timeout_s=10.0), client, settings)
    results: list[int] = []
    stop = threading.Event()

    def call() -> None:
        try:
            results.append(requests.post(f"{url}/function/paced", data=b"{}", timeout=30).status_code)
        except requests.RequestException:
            results.append(0)

    def load() -> None:  # open loop: one request every 1/RATE s whatever the answers take
        with ThreadPoolExecutor(16) as pool:
            t0, k = time.monotonic(), 0
            while not stop.is_set():
                k += 1
                time.sleep(max(0.0, t0 + k / RATE_RPS - time.monotonic()))
                pool.submit(call)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    events: list[str] = []
    trace: list[str] = []
    try:
        time.sleep(2.0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = loop.tick()
            rec = json.loads(client.hget(keys.scheduler_decisions(), "openfaas-fn/paced") or b"{}")
            events += [m["state"] for m in rec.get("repack", [])]
            want, running = groups(api, url)
            trace.append(f"{rec.get('reason')} | {[m['message'] for m in rec.get('repack', [])]} | "
                         f"{result.actions} | {want} {running}")
            if "done" in events and sorted(want.values()) == [2] and len({d for _g, d, _ok in running}) == 1:
                break
            time.sleep(1.0)
        time.sleep(3.0)  # the load goes on over the stopped replica's last requests
    finally:
        stop.set()
        loader.join(30)
        client.close()
    want, running = groups(api, url)
    assert "moving" in events and "done" in events and "abandoned" not in events, trace
    # Both replicas on one device (the emptiest, lowest id first, is evacuated: d0 into d1).
    (gid,) = want
    assert want == {gid: 2} and gid in (g0, g1), trace
    ready = [d for _g, d, ok in running if ok]
    assert len(ready) == 2 and len(set(ready)) == 1, trace
    assert results and all(code == 200 for code in results), [c for c in results if c != 200][:10]
    print(f"\n{len(results)} requests at {RATE_RPS:g}/s, all 200; re-pack states seen: "
          f"{sorted(set(events))}")
