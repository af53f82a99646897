"""The batch lever in the live loop, end to end: a step to 3x the rate on a running function is
absorbed by a batch raise sent by a fast sub-tick, with p99 under the SLO, before any new replica
is ready; the raise goes back once the new replicas are.

Real Redis, provider, node agent, sidecars and workers on loopback; the scheduler runs as the
platform runs it (``python -m fast_scheduler``: ticks 2 s apart, fast sub-ticks every 0.5 s,
standby and re-pack off, ``--jump-sigmas 1``: the step is well past it). The function
(``handlers/paced_batch``) paces itself: 50 ms per request alone (20/s), 40 + 10 n ms for a batch of
n (about 66/s at 8), and ``load`` takes 4 s, so a new replica is ready 5-7 s after its start.

Its table (``TABLE``) makes batch 1 the config to plan with at the 500 ms SLO, and batch 8 the one
to raise to on a step (``autoscale.burst_batch``: it serves more and its light-load p99 is inside
the SLO): the b8 point reads as a fixed-size batcher would measure it (each request waits for its
batch), while the worker forms batches by deadline and so pays for the larger limit only while
requests queue. The running replica is one scheduler group at batch 1 (``GID``, applied by the
test as the scheduler names it), so the step's 30/s is past anything it serves one at a time.

The load is open-loop and paced (not Poisson): 10 requests/s, then 30/s from just after the fast
sub-tick that follows the scheduler's first decided tick. What is asserted, with generous bounds:
- the raise reached the running replica's sidecar (``/_/stats`` ``max_batch`` 8) at most
  ``RAISE_BOUND_S`` after the step (the first sub-tick whose window is the step's, plus the
  provider -> node agent -> sidecar -> worker path), and before any new replica was ready; the
  decision that raised it was a fast sub-tick's, and says so;
- the requests sent before the step were served one at a time (no ``X-Fastgshare-Batch`` above 1),
  and after the raise in batches above 1;
- every request after the step was served (200), and those sent from ``DRAIN_S`` after the raise
  (the backlog of the sub-tick before it served) until the first new replica was ready had a p99
  under the SLO;
- the limit went back (the sidecar at batch 1, the provider's ``batchLimit`` null) once the new
  replicas were ready, not before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import requests

from fast_manager.node_agent import read_devices
from fast_profiler import store
from fast_profiler.table import ProfilePoint, ProfileTable, device_type_of
from fast_scheduler.choices import ShareConfig
from fast_scheduler.control import config_id
from fastgshare import keys
from fastgshare.provider_client import ProviderClient, ProviderError
from fastgshare.stats import percentile
from tests.integration.platform_helpers import HANDLERS, deploy_slo_function, start_platform
from tests.waiting import stepped_load, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IMAGE = "test/paced-batch:latest"
NAME = "pb"
SLO_MS = 500.0
TICK_S = 2.0
FAST_S = 0.5
BASE_RPS = 10.0
STEP_RPS = 30.0
RAISE_BOUND_S = 2 * FAST_S + 1.0
"""The raise reaches the replica within this of the step: the first sub-tick whose whole window
follows the step (at most two sub-ticks away), plus a generous second for the path."""
DRAIN_S = 1.0
"""After the raise, the requests queued in the sub-tick before it are served; those sent from
this long after the raise are the ones the raised replica serves as it stands."""
B1 = ShareConfig(50, 1.0, 1.0, 1)
GID = config_id(B1, 0)


def table(device_type: str) -> ProfileTable:
    return ProfileTable(NAME, device_type, (ProfilePoint(50, 1.0, 1, 16.0, 60.0, 150.0, 200.0),
                                           ProfilePoint(50, 1.0, 8, 45.0, 400.0, 650.0, 700.0)),
                        mem_bytes=200 * 2**20)


@dataclass
class Seen:
    """What the test saw, in epoch seconds."""

    calls: list[tuple[float, float, int, int]] = field(default_factory=list)
    """(sent, latency s, status, ``X-Fastgshare-Batch``) of each request."""
    batch: list[tuple[float, int]] = field(default_factory=list)
    """(when read, ``max_batch``) of the first replica's sidecar."""
    replicas: list[tuple[float, frozenset[str], object]] = field(default_factory=list)
    """(when read, ids of the ready replicas, the group's ``batchLimit``) from the provider."""
    decisions: list[dict] = field(default_factory=list)

    def first_batch(self, pred, after: float = 0.0) -> float | None:
        return next((t for t, b in self.batch if t > after and pred(b)), None)


def test_a_step_is_absorbed_by_a_batch_raise_before_new_replicas_are_ready(tmp_path: Path) -> None:
    platform, info = start_platform(tmp_path / "state", {IMAGE: HANDLERS / "paced_batch"})
    seen, stop = Seen(), threading.Event()
    threads: list[threading.Thread] = []
    pool = ThreadPoolExecutor(48)
    sched = None
    pc = ProviderClient(info.url, info.auth)
    client = redis.Redis.from_url(info.redis_url)
    try:
        d = wait_for(lambda: read_devices(client), 30, "the node agent's device")[0]
        store.save(client, table(device_type_of({"kind": d.kind.value, "name": d.name,
                                                 "cores": list(d.cores)})))
        deploy_slo_function(info, NAME, IMAGE, SLO_MS, scale_min=0, scale_max=3)
        pc.scale(NAME, 0)
        pc.apply_configurations(NAME, [{
            "configId": GID, "replicas": 1, "batch": 1,
            "share": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_request": "1",
                      "fastgshare/gpu_quota_limit": "1"}}])
        first = wait_for(lambda: [r for r in pc.replicas_of(NAME) if r.ready and r.config_id == GID],
                         90, "the group's replica ready")[0]
        assert requests.get(f"{first.url}/_/stats", timeout=5).json()["batching"]["max_batch"] == 1

        def call() -> None:
            t0 = time.time()
            try:
                r = requests.post(f"{info.url}/function/{NAME}", data=b"{}", timeout=30)
                seen.calls.append((t0, time.time() - t0, r.status_code,
                                   int(r.headers.get("X-Fastgshare-Batch", "1"))))
            except requests.RequestException:
                seen.calls.append((t0, time.time() - t0, 0, 0))

        stepped = threading.Event()

        def load() -> None:
            stepped_load(lambda: pool.submit(call), BASE_RPS, STEP_RPS, stepped, stop)

        def watch() -> None:
            last = None
            while not stop.is_set():
                try:
                    b = requests.get(f"{first.url}/_/stats", timeout=5).json()["batching"]["max_batch"]
                    seen.batch.append((time.time(), int(b)))
                    (fn,) = [f for f in pc.replicas() if f["name"] == NAME]
                    limit = next((c.get("batchLimit") for c in fn["configurations"]
                                  if c["configId"] == GID), None)
                    ready = frozenset(r["replica"] for r in fn["replicaStatus"] if r["ready"])
                    seen.replicas.append((time.time(), ready, limit))
                except (requests.RequestException, ProviderError, ValueError, KeyError):
                    pass
                raw = client.hget(keys.scheduler_decisions(), f"openfaas-fn/{NAME}")
                if raw is not None and raw != last:
                    last = raw
                    seen.decisions.append(json.loads(raw))
                stop.wait(0.05)

        threads = [threading.Thread(target=load, daemon=True), threading.Thread(target=watch, daemon=True)]
        for th in threads:
            th.start()
        env = dict(os.environ, FASTGSHARE_USER=info.user, FASTGSHARE_PASSWORD=info.password)
        log_path = Path(info.state_dir) / "scheduler.log"
        with open(log_path, "wb") as out:
            sched = subprocess.Popen(
                [sys.executable, "-m", "fast_scheduler", "--redis-url", info.redis_url,
                 "--gateway", info.url, "--interval-s", str(TICK_S), "--fast-interval-s", str(FAST_S),
                 "--standby-frac", "0", "--scale-down-delay-s", "60", "--repack-every-ticks", "0",
                 "--jump-sigmas", "1"],
                env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT)
        started_s = time.time()
        tick = wait_for(lambda: next((x for x in seen.decisions if x["path"] == "tick"
                                      and x["at_s"] > started_s), None),
                        3 * TICK_S + 15, "the scheduler's first decided tick")
        assert tick["replicas"] == 1, tick  # the running replica holds the base rate
        # Step just after the first sub-tick's read (0.5 s after the tick's), so that the next
        # sub-tick's window is the step's.
        stop.wait(max(0.0, tick["at_s"] + FAST_S + 0.05 - time.time()))
        step_s = time.time()
        stepped.set()
        wait_for(lambda: seen.first_batch(lambda b: b > 1, step_s), 15, "the raise at the replica")
        wait_for(lambda: seen.replicas and len(seen.replicas[-1][1]) >= 2, 40, "a new replica ready")
        wait_for(lambda: seen.replicas and seen.replicas[-1][2] is None
                 and seen.batch[-1][1] == 1, 15, "the raise lowered")
        stop.wait(0.3)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=10)
        pool.shutdown(wait=True, cancel_futures=True)
        if sched is not None:
            sched.terminate()
            sched.wait(10)
        client.close()
        pc.close()
        platform.stop()
    log = log_path.read_text()
    ctx = (seen.decisions[-6:], log[-3000:])

    raise_s = seen.first_batch(lambda b: b > 1, step_s)
    new_ready_s = next(t for t, ready, _ in seen.replicas if t > step_s and ready - {first.replica_id})
    all_ready_s = next(t for t, ready, _ in seen.replicas if t > step_s and len(ready) >= 2)
    lowered_s = seen.first_batch(lambda b: b == 1, raise_s)
    assert raise_s is not None and lowered_s is not None, ctx
    # The raise: a fast sub-tick's, at the replica soon after the step, before any new replica served.
    raised = next(x for x in seen.decisions if "batch raised" in x["reason"])
    assert raised["path"] == "fast" and step_s < raised["at_s"] < new_ready_s, ctx
    assert [c["batchLimit"] for c in raised["configs"]] == [8], raised
    assert raise_s - step_s <= RAISE_BOUND_S, (raise_s - step_s, ctx)
    assert raise_s < new_ready_s, (raise_s, new_ready_s, ctx)
    assert max(b for t, b in seen.batch if raise_s <= t < new_ready_s) == 8
    assert "batch lever" in log and "raised on a step" in log, log[-3000:]
    # Served one at a time before the step, in batches after the raise.
    assert all(b <= 1 for t, _, _, b in seen.calls if t < step_s)
    assert max(b for t, _, _, b in seen.calls if raise_s <= t < new_ready_s) > 1
    # Every request after the step served; once the raised replica stands alone, p99 under the SLO.
    after = [c for c in seen.calls if c[0] >= step_s]
    assert after and all(status == 200 for _, _, status, _ in after), [c for c in after if c[2] != 200][:5]
    held = [lat for t, lat, _, _ in seen.calls if raise_s + DRAIN_S <= t < new_ready_s]
    assert len(held) >= 20, (len(held), raise_s - step_s, new_ready_s - step_s)
    p99_ms = 1000 * percentile(held, 99)
    assert p99_ms < SLO_MS, (p99_ms, sorted(held)[-5:])
    # Lowered once the new replicas were ready, not before: after the provider's last answer
    # that showed one of them not ready yet.
    last_starting_s = max(t for t, ready, _ in seen.replicas if step_s < t < all_ready_s)
    assert lowered_s > last_starting_s, (lowered_s - step_s, last_starting_s - step_s)
    assert seen.replicas[-1][2] is None
    transient = [lat for t, lat, _, _ in seen.calls if step_s <= t < raise_s + DRAIN_S]
    print(f"\nstep at 0: raise decided at +{raised['at_s'] - step_s:.2f} s, at the replica +"
          f"{raise_s - step_s:.2f} s; first new replica ready +{new_ready_s - step_s:.2f} s, all "
          f"+{all_ready_s - step_s:.2f} s; lowered at the replica +{lowered_s - step_s:.2f} s\n"
          f"p99 of the {len(held)} requests the raised replica served alone: {p99_ms:.0f} ms (SLO "
          f"{SLO_MS:g}); the {len(transient)} of the step's first {raise_s + DRAIN_S - step_s:.1f} s: "
          f"p99 {1000 * percentile(transient, 99) if transient else 0:.0f} ms, max "
          f"{1000 * max(transient, default=0):.0f} ms\n{raised['reason']}")
