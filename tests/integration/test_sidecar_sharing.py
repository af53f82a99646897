"""Real sidecars with the arbiter on: Redis stopped and started under load, memory limits.

Each replica is a real ``python -m fast_manager.sidecar`` process in front of the python3-torch
runtime, sharing one device's arbiter in a real (embedded) Redis of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fast_manager.memory import MemoryGuard
from fast_manager.sidecar_worker import free_port
from fastgshare.redis_server import EmbeddedRedis

REPO = Path(__file__).resolve().parents[2]
CORE = max(os.sched_getaffinity(0))

HANDLER = """
import time

held = []

def handle(event, context):
    if event.path == "/grow":
        mb = int(event.query.get("mb", "0"))
        held.append(b"\\1" * (mb << 20))  # written, so resident
        time.sleep(float(event.query.get("hold_s", "0")))
        return f"holding {sum(map(len, held)) >> 20} MiB"
    time.sleep(float(event.query.get("s", "0.005")))
    return "ok"
"""


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_/stats", timeout=5).json()


def start_replica(tmp_path: Path, name: str, **env: str) -> Replica:
    fn = tmp_path / f"fn-{name}"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent(HANDLER))
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
    base.pop("REDIS_URL", None)
    full_env = base | {"FASTGSHARE_PORT": str(port), "FASTGSHARE_HANDLER_DIR": str(fn),
                       "FASTGSHARE_FUNCTION": "f", "FASTGSHARE_REPLICA": name,
                       "FASTGSHARE_CPU_CORES": str(CORE), "FASTGSHARE_DEVICE": "cpu:0"} | env
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "fast_manager.sidecar"], env=full_env,
                            cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    r = Replica(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"{r.url}/_/health", timeout=1).status_code == 200:
                return r
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("sidecar not healthy:\n" + log.read_text())


def stop_replica(r: Replica) -> None:
    if r.proc.poll() is None:
        r.proc.send_signal(signal.SIGTERM)
        try:
            r.proc.wait(15)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    yield server
    server.stop()


# ---- the arbiter seam ------------------------------------------------------------------------


def test_redis_url_turns_the_arbiter_on_and_the_opt_out_turns_it_off(
        tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    shared = start_replica(tmp_path, "shared", REDIS_URL=own_redis.url)
    unmanaged = start_replica(tmp_path, "unmanaged", REDIS_URL=own_redis.url,
                              FASTGSHARE_ARBITER="off")
    try:
        for r in (shared, unmanaged):
            assert requests.get(r.url + "/", timeout=10).text == "ok"
        assert shared.stats()["token_mode"] == "shared"
        assert unmanaged.stats()["token_mode"] == "unmanaged"
        text = requests.get(shared.url + "/_/metrics", timeout=5).text
        assert re.search(r'fastgshare_replica_token_mode\{[^}]*mode="shared"[^}]*\} 1\.0', text)
        assert "token mode shared" in shared.log.read_text()
    finally:
        stop_replica(shared)
        stop_replica(unmanaged)


# ---- Redis stopped and started during load ---------------------------------------------------

CLEAR = {200, 429, 503, 504}
"""Answers that are not a dropped request: served, or refused with a status that says why."""


def test_redis_stop_and_start_during_load_answers_every_request(
        tmp_path: Path, own_redis: EmbeddedRedis) -> None:
    env = {"REDIS_URL": own_redis.url, "FASTGSHARE_QUOTA_REQUEST": "0.4",
           "FASTGSHARE_QUOTA_LIMIT": "1", "FASTGSHARE_QUEUE_MAX": "4",
           "FASTGSHARE_QUEUE_TIMEOUT_S": "5"}
    replicas = [start_replica(tmp_path, f"r{i}", **env) for i in range(2)]
    outcomes: list[tuple[str, float, int | str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(r: Replica) -> None:
        with requests.Session() as s:
            while not stop.is_set():
                t = time.monotonic()
                try:
                    code: int | str = s.get(r.url + "/?s=0.005", timeout=30).status_code
                except requests.RequestException as e:  # dropped or hung: the failure we look for
                    code = type(e).__name__
                with lock:
                    outcomes.append((r.url, t, code))

    threads = [threading.Thread(target=client, args=(r,)) for r in replicas for _ in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        down_at = time.monotonic()
        own_redis.stop()
        time.sleep(3.0)
        modes_down = {r.stats()["token_mode"] for r in replicas}  # noticed by now
        up_at = time.monotonic()
        own_redis.start()
        time.sleep(3.0)  # the probe (every 1 s) finds Redis again
        stop.set()
        for t in threads:
            t.join(40)
        assert not any(t.is_alive() for t in threads), "a request hung"
        final = [r.stats() for r in replicas]
    finally:
        stop.set()
        for r in replicas:
            stop_replica(r)

    codes = Counter(code for _, _, code in outcomes)
    assert set(codes) <= CLEAR, codes
    during = [c for _, t, c in outcomes if down_at + 0.5 < t < up_at]
    after = [c for _, t, c in outcomes if t > up_at + 2.0]
    assert during.count(200) > 10, Counter(during)  # served locally while Redis was down
    assert after.count(200) > 10, Counter(after)
    assert modes_down == {"local-fallback"}
    for st, r in zip(final, replicas, strict=True):
        assert st["token_mode"] == "shared", st
        assert st["token_fallbacks"] >= 1
        text = r.log.read_text()
        assert "token arbiter unreachable" in text and "reachable again" in text


# ---- memory limits ---------------------------------------------------------------------------

LIMIT_MB = 160
"""Well above the runtime's own footprint (~25 MiB without torch), well below the machine."""


def test_a_memory_limit_breach_is_confined_to_its_replica(tmp_path: Path) -> None:
    env = {"FASTGSHARE_MEM_BYTES": str(LIMIT_MB << 20), "FASTGSHARE_QUEUE_TIMEOUT_S": "30"}
    greedy = start_replica(tmp_path, "greedy", **env)
    neighbour = start_replica(tmp_path, "neighbour", **env)
    try:
        mode = greedy.stats()["memory"]["enforcement"]
        expected = MemoryGuard.open(LIMIT_MB << 20, f"probe-{os.getpid()}")
        expected.close()
        assert mode == expected.mode.value  # what this machine allows, reported as such
        pid = greedy.stats()["worker"]["pid"]
        served: list[int] = []
        stop = threading.Event()

        def neighbour_load() -> None:
            while not stop.is_set():
                served.append(requests.get(neighbour.url + "/", timeout=10).status_code)

        t = threading.Thread(target=neighbour_load)
        t.start()
        try:
            r = requests.get(greedy.url + f"/grow?mb={2 * LIMIT_MB}&hold_s=0.5", timeout=60)
        finally:
            time.sleep(0.3)
            stop.set()
            t.join(20)
        assert r.status_code == 502, r.text
        assert f"exceeded its memory limit of {LIMIT_MB} MiB" in r.text
        assert set(served) == {200} and len(served) > 5
        # Only the greedy replica's worker was killed, and it is back.
        assert requests.get(greedy.url + "/", timeout=60).text == "ok"
        st = greedy.stats()
        assert st["worker"]["pid"] != pid and st["memory"]["breaches"] == 1
        assert neighbour.stats()["worker"]["restarts"] == 0
        assert neighbour.stats()["memory"]["breaches"] == 0
        assert "exceeded its memory limit" in greedy.log.read_text()
        # Within the limit is fine.
        assert requests.get(greedy.url + f"/grow?mb={LIMIT_MB // 4}", timeout=30).status_code == 200
    finally:
        stop_replica(greedy)
        stop_replica(neighbour)


def test_rss_watch_is_the_reported_best_effort(tmp_path: Path) -> None:
    r = start_replica(tmp_path, "watched", FASTGSHARE_MEM_BYTES=str(LIMIT_MB << 20),
                      FASTGSHARE_MEM_ENFORCE="rss")
    try:
        assert r.stats()["memory"]["enforcement"] == "rss-watch"
        resp = requests.get(r.url + f"/grow?mb={2 * LIMIT_MB}&hold_s=1", timeout=60)
        assert resp.status_code == 502 and "exceeded its memory limit" in resp.text
        assert "rss-watch" in resp.text
        assert requests.get(r.url + "/", timeout=60).text == "ok"
        assert "best effort" in r.log.read_text()
    finally:
        stop_replica(r)
