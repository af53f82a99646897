"""The fast scale-up path on the real local platform: with ticks 8 s apart, a step in load gets its
replicas from a 1 s sub-tick before the next tick; with the sub-ticks off it waits for that tick.

Real Redis, provider, sidecars and a torch worker on the CPU (``handlers/paced``); the scheduler runs
as the platform runs it (``python -m fast_scheduler``, ``--interval-s 8``, ``--fast-interval-s`` 1 or
0, standby off so only planned replicas move). An open-loop load of 0.5 request/s over real HTTP
steps to 18 requests/s just after a tick.

The profile table credits a replica with 2 rps (as a profile under a tight profiling SLO would; one
replica of ``paced`` really completes ~20/s). The provider counts invocations when they complete, so
a step beyond what the running replicas complete is seen only up to what they complete: the fast
path adds replicas when that rate exceeds their table capacity by 3 Poisson sigma of a 1 s window
(here 18 - 2 > 3 x sqrt(18) = 12.7: it fires while the replica completes more than 12.7/s, 79 ms a
request), which a table at the replica's full rate would never show.

What is asserted is order and cause, with generous bounds: the decision that first raised the
replicas after the step says it was the fast path (``"path": "fast"`` in the exposed decision, "fast
scale up" in its reason and the log), it and the provider's desired count came before the next
tick's decision, and the replica it added became ready. With ``--fast-interval-s 0`` the same step
raises nothing before that tick (the control that shows the assertion can fail).
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from fast_manager.node_agent import read_devices
from fast_profiler import store
from fast_profiler.runner import device_type_of
from fast_profiler.table import ProfilePoint, ProfileTable
from fastgshare import keys
from fastgshare.platform import Platform, PlatformInfo
from tests.integration.test_autoscale_e2e import HANDLER, IMAGE, REPO, TEMPLATE, replicas_of
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

SLO_MS = 600.0
TICK_S = 8.0
BASE_RPS = 0.5
STEP_RPS = 18.0
TABLE_RPS = 2.0
"""A replica's capacity as the table says (what the fast path compares the completion rate with)."""


def low_table(name: str, device_type: str) -> ProfileTable:
    """One config, one core at full quota, credited with ``TABLE_RPS``; a single SM share, so that
    the replica the fast path adds fits beside the first on a 2-core device."""
    return ProfileTable(name, device_type, (ProfilePoint(50, 1.0, 1, TABLE_RPS, 50.0, 55.0, 60.0),),
                        mem_bytes=200 * 2**20)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, PlatformInfo, str]]:
    p = Platform(tmp_path_factory.mktemp("platform"), port=0)
    info = p.start()
    client = redis.Redis.from_url(info.redis_url)
    client.hset(keys.images(), IMAGE,
                json.dumps({"handler_dir": str(HANDLER), "template_dir": str(TEMPLATE)}))
    devs = wait_for(lambda: read_devices(client), 30, "the node agent's device")
    d = devs[0]
    client.close()
    yield p, info, device_type_of({"kind": d.kind.value, "name": d.name, "cores": list(d.cores)})
    p.stop()


@dataclass
class Watch:
    """What the test saw while the load ran, in epoch seconds (a decision's ``at_s``: when its pass read
    the platform, before it applied anything)."""

    decisions: list[dict] = field(default_factory=list)
    """Each distinct decision record of the function, in the order written."""
    replicas: list[tuple[float, int, int]] = field(default_factory=list)
    """(when read, desired planned replicas, ready planned replicas) as the provider reports them."""

    def ticks_after(self, t: float) -> list[dict]:
        return [d for d in self.decisions if d["path"] == "tick" and d["at_s"] > t]


def run_step(info: PlatformInfo, name: str, fast_interval_s: float) -> tuple[Watch, float, str]:
    """Deploy ``name``, start the scheduler, play 0.5 rps until its first decided tick, then 18 rps
    until the tick after the step; returns what was watched, when the step began and the log."""
    url = info.url
    api = requests.Session()
    api.auth = info.auth
    body = {"service": name, "image": IMAGE,
            "annotations": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "1",
                            "fastgshare/gpu_quota_limit": "1", "fastgshare/slo_ms": str(SLO_MS),
                            "com.openfaas.scale.min": "1", "com.openfaas.scale.max": "2"}}
    assert api.post(f"{url}/system/functions", json=body).status_code == 202
    wait_for(lambda: replicas_of(api, url, name)[1] >= 1, 90, f"the first replica of {name}")

    env = dict(os.environ, FASTGSHARE_USER=info.user, FASTGSHARE_PASSWORD=info.password)
    log_path = Path(info.state_dir) / f"scheduler-{name}.log"
    with open(log_path, "wb") as out:
        sched = subprocess.Popen(
            [sys.executable, "-m", "fast_scheduler", "--redis-url", info.redis_url, "--gateway", url,
             "--interval-s", str(TICK_S), "--fast-interval-s", str(fast_interval_s),
             "--standby-frac", "0", "--scale-down-delay-s", "60"],
            env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(info.redis_url)
    watch, stop = Watch(), threading.Event()
    rate = [BASE_RPS]

    def poll() -> None:
        last = None
        while not stop.is_set():
            raw = client.hget(keys.scheduler_decisions(), f"openfaas-fn/{name}")
            if raw is not None and raw != last:
                last = raw
                watch.decisions.append(json.loads(raw))
            try:
                desired, ready, _sb = replicas_of(api, url, name)
            except requests.RequestException:
                pass
            else:  # stamped once read: the provider showed this by then
                watch.replicas.append((time.time(), desired, ready))
            stop.wait(0.1)

    def call() -> None:
        try:
            requests.post(f"{url}/function/{name}", data=b"{}", timeout=30)
        except requests.RequestException:
            pass

    def load(pool: ThreadPoolExecutor) -> None:
        t = time.monotonic()
        while not stop.is_set():
            pool.submit(call)
            t += 1.0 / rate[0]
            stop.wait(max(0.0, t - time.monotonic()))

    watcher = threading.Thread(target=poll, daemon=True)
    pool = ThreadPoolExecutor(48)
    loader = threading.Thread(target=load, args=(pool,), daemon=True)
    try:
        watcher.start()
        loader.start()
        # The first tick only records the counter; the second decides: step just after it.
        wait_for(lambda: watch.ticks_after(0), 3 * TICK_S + 15, f"the scheduler's first decision on {name}")
        step_s = time.time()
        rate[0] = STEP_RPS
        wait_for(lambda: watch.ticks_after(step_s), 2 * TICK_S + 10, "the tick after the step")
        if fast_interval_s:
            wait_for(lambda: watch.replicas and watch.replicas[-1][2] >= 2, 60,
                     "the added replica to become ready")
        return watch, step_s, log_path.read_text()
    finally:
        stop.set()
        loader.join()
        watcher.join()
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()
        sched.terminate()
        sched.wait(10)
        api.delete(f"{url}/system/functions", json={"functionName": name})


def test_fast_sub_tick_adds_replicas_before_the_next_tick(platform):
    _p, info, device_type = platform
    name = "paced-fast"
    client = redis.Redis.from_url(info.redis_url)
    store.save(client, low_table(name, device_type))
    client.close()
    watch, step_s, log = run_step(info, name, fast_interval_s=1.0)
    next_tick = watch.ticks_after(step_s)[0]
    first_up = next((d for d in watch.decisions if d["at_s"] > step_s and d["replicas"] >= 2), None)
    ctx = (watch.decisions, log[-3000:])
    # The fast path raised the replicas: after the step, before the next tick, and said so.
    assert first_up is not None, ctx
    assert first_up["path"] == "fast" and first_up["reason"].startswith("fast scale up"), ctx
    assert step_s < first_up["at_s"] < next_tick["at_s"], ctx
    assert "[fast]: fast scale up" in log, log[-3000:]
    # The provider was told before the next tick (desired planned replicas went to 2).
    raised = [t for t, desired, _ready in watch.replicas if desired >= 2]
    assert raised and step_s < raised[0] < next_tick["at_s"], (watch.replicas, ctx)
    # ... and the added replica served (ready), the load carried on until it did.
    assert max(ready for *_, ready in watch.replicas) >= 2, watch.replicas
    print(f"\nstep at 0; fast decision at +{first_up['at_s'] - step_s:.2f} s, provider desired 2 at "
          f"+{raised[0] - step_s:.2f} s, next tick at +{next_tick['at_s'] - step_s:.2f} s; "
          f"ready 2 at +{next(t for t, _d, r in watch.replicas if r >= 2) - step_s:.2f} s\n"
          f"{first_up['reason']}")


def test_without_sub_ticks_the_step_waits_for_the_next_tick(platform):
    _p, info, device_type = platform
    name = "paced-tick"
    client = redis.Redis.from_url(info.redis_url)
    store.save(client, low_table(name, device_type))
    client.close()
    watch, step_s, log = run_step(info, name, fast_interval_s=0.0)
    next_tick = watch.ticks_after(step_s)[0]
    ctx = (watch.decisions, log[-3000:])
    assert all(d["path"] == "tick" for d in watch.decisions), ctx
    # Nothing moved between the step and the next tick; that tick raised the replicas.
    before = [desired for t, desired, _ready in watch.replicas if step_s < t < next_tick["at_s"]]
    assert before and max(before) == 1, (watch.replicas, ctx)
    assert next_tick["replicas"] >= 2, ctx
    raised = next(t for t, desired, _ready in watch.replicas if desired >= 2)
    print(f"\nstep at 0; next tick (the first raise) at +{next_tick['at_s'] - step_s:.2f} s, "
          f"provider desired 2 at +{raised - step_s:.2f} s")
