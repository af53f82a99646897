"""The scheduler's control loop on the real local platform: a load ramp makes replicas rise and fall
with the SLO held.

A real torch function (``handlers/paced``: ~20 requests/s per replica) with an SLO and a profile
table in Redis (written with ``fast_profiler.store``, numbers as a profile of it on this machine
reads); the scheduler runs as the platform runs it (``python -m fast_scheduler``, faster ticks and a
short scale-down delay); an open-loop load goes 2 -> 20 -> 2 requests/s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import requests

from bench.calibrate import ramp_rate as rate_at  # the one ramp, shared with the calibration
from fast_manager.node_agent import read_devices
from fast_profiler import store
from fast_profiler.table import ProfilePoint, ProfileTable, device_type_of
from fast_scheduler.choices import ShareConfig, is_standby
from fastgshare import keys
from fastgshare.platform import Platform, PlatformInfo
from fastgshare.resources import parse_share
from tests.integration.platform_helpers import deploy_slo_function, start_platform
from tests.waiting import wait_for

HANDLER = Path(__file__).parent / "handlers" / "paced"
TEMPLATE = Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"
REPO = Path(__file__).resolve().parents[2]
IMAGE = "test/paced:latest"
SLO_MS = 600.0

pytestmark = pytest.mark.slow




def paced_table(device_type: str) -> ProfileTable:
    """What the profiler measures for ``paced`` at full quota: ~50 ms per request, one at a time, so
    ~18 rps at any core count (more cores buy nothing)."""
    pts = [ProfilePoint(sm, 1.0, 1, 18.0, 52.0, 60.0, 70.0) for sm in (50, 100)]
    return ProfileTable("paced", device_type, tuple(pts), mem_bytes=200 * 2**20)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, PlatformInfo]]:
    p, info = start_platform(tmp_path_factory.mktemp("platform"), {IMAGE: HANDLER})
    client = redis.Redis.from_url(info.redis_url)
    devs = wait_for(lambda: read_devices(client), 30, "the node agent's device")
    d = devs[0]
    device_type = device_type_of({"kind": d.kind.value, "name": d.name, "cores": list(d.cores)})
    store.save(client, paced_table(device_type))
    client.close()
    yield p, info
    p.stop()


def _standby_share(share: dict[str, str]) -> bool:
    g = parse_share({str(k): str(v) for k, v in share.items()})
    return is_standby(ShareConfig(g.sm_pct, g.quota_request_frac, g.quota_limit_frac))


def replicas_of(api: requests.Session, url: str, name: str = "paced") -> tuple[int, int, int]:
    """(desired planned replicas, ready planned replicas, desired standby replicas) of ``name``;
    standby groups (a token quota request, limit above it) are counted apart."""
    r = api.get(f"{url}/system/fastgshare/replicas", timeout=5)
    r.raise_for_status()
    for f in r.json():
        if f["name"] == name:
            confs = f.get("configurations") or []
            sb_ids = {str(c["configId"]) for c in confs if _standby_share(c.get("share") or {})}
            sb = sum(int(c.get("replicas", 0)) for c in confs if str(c["configId"]) in sb_ids)
            ready = sum(1 for s in f["replicaStatus"]
                        if s["ready"] and str(s.get("configId") or "") not in sb_ids)
            return int(f["replicas"]) - sb, ready, sb
    return 0, 0, 0


def test_ramp_makes_replicas_rise_and_fall_with_the_slo_held(platform):
    p, info = platform
    url = info.url
    api = deploy_slo_function(info, "paced", IMAGE, SLO_MS, scale_min=1, scale_max=4)
    wait_for(lambda: replicas_of(api, url)[1] >= 1, 90, "the first replica")

    env = dict(os.environ, FASTGSHARE_USER=info.user, FASTGSHARE_PASSWORD=info.password)
    log_path = Path(info.state_dir) / "scheduler-test.log"
    with open(log_path, "wb") as out:
        sched = subprocess.Popen(
            [sys.executable, "-m", "fast_scheduler", "--redis-url", info.redis_url, "--gateway", url,
             "--interval-s", "1", "--scale-down-delay-s", "5", "--horizon-s", "8",
             "--burst-memory-s", "5"],
            env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
    try:
        results: list[tuple[float, float, int]] = []
        counts: list[tuple[float, int, int, int]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                try:
                    counts.append((time.monotonic() - t0, *replicas_of(api, url)))
                except requests.RequestException:
                    pass
                stop.wait(0.5)

        def call(sent_s: float) -> None:
            try:
                r = requests.post(f"{url}/function/paced", data=b"{}", timeout=30)
                results.append((sent_s, time.monotonic() - t0 - sent_s, r.status_code))
            except requests.RequestException:
                results.append((sent_s, 30.0, 0))

        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        duration_s = 62.0
        with ThreadPoolExecutor(48) as pool:
            t = 0.0
            while t < duration_s:
                now = time.monotonic() - t0
                if t > now:
                    time.sleep(t - now)
                pool.submit(call, t)
                t += 1.0 / rate_at(t)
        stop.set()
        watcher.join()
        sched_log = log_path.read_text()

        client = redis.Redis.from_url(info.redis_url)
        rec = client.hget(keys.scheduler_decisions(), "openfaas-fn/paced")
        client.close()
        assert rec is not None, sched_log[-3000:]
        decision = json.loads(rec)
        assert decision["reason"] and decision["slo_ms"] == SLO_MS

        peak = max((ready for ts, _, ready, _sb in counts if 20 <= ts < 40), default=0)
        end = [desired for ts, desired, _, _sb in counts if ts >= duration_s - 4]
        assert peak >= 2, (counts, sched_log[-3000:])
        assert end and max(end) == 1, (counts, sched_log[-3000:])
        # Standby replicas (token quota, limit 1) ran beside the planned ones: the platform takes them.
        assert max(sb for *_, sb in counts) >= 1, (counts, sched_log[-3000:])
        ok = [lat for _, lat, code in results if code == 200]
        assert len(ok) >= 0.99 * len(results), [c for _, _, c in results if c != 200][:10]
        ok.sort()
        p99_ms = 1000 * ok[int(0.99 * (len(ok) - 1))]
        assert p99_ms <= SLO_MS, (p99_ms, counts)
        print(f"\n{len(results)} requests, p99 {p99_ms:.0f} ms (SLO {SLO_MS:g}); replicas over time: "
              f"{[(round(ts), d, r, sb) for ts, d, r, sb in counts[::4]]}")
    finally:
        sched.terminate()
        sched.wait(10)
