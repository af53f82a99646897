"""The replica lifecycle under load (issue 16, part 2): each case failed on the provider that
supervised replicas itself (2026-12-04). Real Redis, real processes, real HTTP on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import requests

from fastgshare import keys, local_state
from fastgshare.local_replicas import Replica, stop_process_group
from fastgshare.local_state import FunctionRecord
from fastgshare.redis_server import free_port
from fastgshare.specs import FunctionSpec
from gateway_plugin.app import create_app
from gateway_plugin.local_backend import LocalBackend
from gateway_plugin.settings import ProviderSettings
from tests.fakes import EchoServer
from tests.integration.local_helpers import Supervised
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
SLOW = Path(__file__).parent / "handlers" / "slow"
NS = "openfaas-fn"


def _settings(tmp_path: Path, **kw: float) -> ProviderSettings:
    return ProviderSettings(state_dir=tmp_path, basic_auth=False, **kw)


# ---- stopping a replica: the sidecar drains, then stops its worker -----------------------------

FAKE_SIDECAR = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    out = sys.argv[1]
    worker = subprocess.Popen([sys.executable, "-c", '''
    import signal, sys, time
    def term(*_):
        open(sys.argv[1], "a").write("worker got SIGTERM\\\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    open(sys.argv[1], "a").write("worker up\\\\n")
    while True:
        time.sleep(0.05)
    ''', out])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.02)
    time.sleep(0.4)  # the drain: what it holds finishes first
    open(out, "a").write("sidecar drained\\n")
    worker.terminate()
    worker.wait()
""")


def test_stop_signals_the_sidecar_alone_and_its_worker_only_after_the_drain(tmp_path: Path):
    """The old stop SIGTERMed the whole group: the worker exited before the drain (a request in
    it was answered 502) and got a second SIGTERM from its sidecar."""
    out = tmp_path / "events"
    proc = subprocess.Popen([sys.executable, "-c", FAKE_SIDECAR, str(out)], start_new_session=True)
    wait_for(lambda: out.exists() and "worker up" in out.read_text(), timeout_s=20, what="worker")
    stop_process_group(proc.pid, proc, grace_s=10)
    assert out.read_text().splitlines() == ["worker up", "sidecar drained", "worker got SIGTERM"]


# ---- the provider over records in Redis, no replica processes -----------------------------------


@pytest.fixture
def local(redis_client: redis.Redis, tmp_path: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(redis_client, tmp_path)
    yield backend
    backend.close()


def _function(client: redis.Redis, name: str, replicas: int) -> FunctionRecord:
    fn = FunctionRecord(FunctionSpec(name, "t/none"), replicas, datetime.now(UTC), generation=7)
    local_state.write_function(client, fn)
    return fn


def _replica(client: redis.Redis, name: str, replica_id: str, port: int) -> None:
    local_state.write_replica(client, Replica(replica_id, NS, name, 7, os.getpid(), port, "cpu:0",
                                              (0,), 100, time.time(), ready=True))


def test_a_refused_connection_is_tried_on_another_ready_replica(local, redis_client, tmp_path):
    """A replica that died is still in the table until the node agent notices; the old provider
    answered 502 for every request routed there meanwhile."""
    _function(redis_client, "two", 2)
    with EchoServer() as echo:
        _replica(redis_client, "two", "two-live", int(echo.url.rsplit(":", 1)[1]))
        _replica(redis_client, "two", "two-dead", free_port())  # nothing listens there
        wait_for(lambda: len(local._routing.snapshot.ready.get((NS, "two"), ())) == 2,
                 timeout_s=5, what="both replicas in the routing table")
        client = create_app(local, _settings(tmp_path)).test_client()
        codes = [client.post("/function/two", data=b"x").status_code for _ in range(20)]
    assert codes == [200] * 20


def test_a_scale_to_zero_during_a_cold_start_answers_the_waiting_requests_at_once(
        local, redis_client, tmp_path):
    """No replica ever starts here (no node agent): an invocation scales the function from zero
    and waits; a scale to zero meanwhile must answer it now, not after the 120 s wait."""
    _function(redis_client, "cold", 0)
    client = create_app(local, _settings(tmp_path, scale_from_zero_timeout_s=60.0)).test_client()
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(client.post, "/function/cold", data=b"x") for _ in range(4)]
        wait_for(lambda: local.status(NS, "cold").replicas == 1, timeout_s=5,
                 what="the scale from zero")
        time.sleep(0.3)
        t0 = time.monotonic()
        local.scale(NS, "cold", 0)
        answers = [f.result(timeout=10) for f in waiting]
    assert time.monotonic() - t0 < 2.0
    assert [a.status_code for a in answers] == [503] * 4
    assert "scaled to zero" in answers[0].get_data(as_text=True)


# ---- the node agent's supervisor: adoption -------------------------------------------------------


def test_readoption_stops_a_replica_started_for_another_redis(redis_client, redis_url, tmp_path):
    """The old re-adoption kept a replica whose REDIS_URL named a Redis that had gone: it stayed
    on its local token limiter, outside the arbiter."""
    _function(redis_client, "stale", 1)
    env = {**os.environ, "FASTGSHARE_REPLICA": "stale-1", "REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    try:
        local_state.write_replica(redis_client, Replica("stale-1", NS, "stale", 7, proc.pid,
                                                        free_port(), "cpu:0", (0,), 100, 0.0))
        from fast_manager.replica_supervisor import ReplicaSupervisor

        ReplicaSupervisor(redis_client, tmp_path, redis_url, stop_grace_s=5).adopt()
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert local_state.read_replicas(redis_client, NS, "stale") == []
    finally:
        proc.kill()
        proc.wait()


# ---- real replicas: draining scale-down ------------------------------------------------------------


@pytest.mark.slow
def test_scale_down_drains_and_a_request_right_after_a_scale_to_zero_is_served(
        redis_client, redis_url, state_dir, tmp_path):
    """The old scale-down killed the worker with its sidecar: the request it was running was
    answered 502, and a request sent just after a scale to zero was routed to the dying replica."""
    backend = LocalBackend(redis_client, state_dir)
    supervised = Supervised(redis_url, state_dir)
    try:
        backend.register_image("t/slow", SLOW)
        backend.deploy(FunctionSpec("slow", "t/slow"))
        wait_for(lambda: backend.status(NS, "slow").available_replicas == 1, what="ready")
        client = create_app(backend, _settings(tmp_path)).test_client()

        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(client.post, "/function/slow", json={"sleep_s": 1.5})
                       for _ in range(3)]  # one runs, two queue in the sidecar
            time.sleep(0.5)
            backend.scale(NS, "slow", 0)
            assert [f.result(timeout=60).status_code for f in running] == [200] * 3

        for _ in range(3):  # scale to zero, then a request at once: draining replica or a new one
            backend.scale(NS, "slow", 1)
            wait_for(lambda: backend.status(NS, "slow").available_replicas >= 1,
                     what="a replica")
            backend.scale(NS, "slow", 0)
            resp = client.post("/function/slow", json={})
            assert resp.status_code == 200, resp.get_data(as_text=True)
    finally:
        supervised.stop()
        backend.close()


@pytest.mark.slow
def test_a_draining_replica_does_not_hold_up_the_next_start(redis_client, redis_url, state_dir,
                                                           tmp_path):
    """The old reconcile thread waited for each stop itself: a replica draining a long request
    delayed every start behind it by as long."""
    backend = LocalBackend(redis_client, state_dir)
    supervised = Supervised(redis_url, state_dir)
    try:
        backend.register_image("t/slow", SLOW)
        backend.deploy(FunctionSpec("busy", "t/slow"))
        wait_for(lambda: backend.status(NS, "busy").available_replicas == 1, what="ready")
        client = create_app(backend, _settings(tmp_path)).test_client()
        with ThreadPoolExecutor(1) as pool:
            long = pool.submit(client.post, "/function/busy", json={"sleep_s": 8})
            time.sleep(0.5)
            backend.scale(NS, "busy", 0)  # drains for ~8 s
            t0 = time.monotonic()
            backend.deploy(FunctionSpec("next", "t/slow"))
            wait_for(lambda: backend.status(NS, "next").replica_status, timeout_s=10,
                     what="the next function's replica to start")
            assert time.monotonic() - t0 < 3.0
            assert not long.done()  # the drain is still going on
            assert long.result(timeout=30).status_code == 200
    finally:
        supervised.stop()
        backend.close()


# ---- `fastgshare up` SIGKILLed -----------------------------------------------------------------------

UP = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from fastgshare.platform import Platform
    info = Platform(Path(sys.argv[1]), port=0).start()
    print(json.dumps(info.__dict__), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_replicas_do_not_outlive_a_sigkilled_up(tmp_path: Path):
    """The old replicas were started in new sessions with no parent-death signal: after a
    SIGKILL of `up` they kept running, holding their cores and ports."""
    proc = subprocess.Popen([sys.executable, "-c", UP, str(tmp_path / "state")], cwd=ROOT,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        images = redis.Redis.from_url(info["redis_url"])
        images.hset(keys.images(), "t/slow", json.dumps({
            "handler_dir": str(SLOW), "template_dir": str(ROOT / "function_templates" / "python3-torch")}))
        images.close()
        api = requests.Session()
        api.auth = (info["user"], info["password"])
        assert api.post(f"{info['url']}/system/functions",
                        json={"service": "slow", "image": "t/slow"}).status_code == 202
        wait_for(lambda: api.get(f"{info['url']}/system/function/slow").json()
                 ["availableReplicas"] == 1, what="a ready replica")
        client = redis.Redis.from_url(info["redis_url"])
        (rep,) = local_state.read_replicas(client, NS, "slow")
        client.close()
        sidecar = rep.pid
        worker = requests.get(f"{rep.url}/_/stats", timeout=5).json()["worker"]["pid"]
        pids = [sidecar, worker]
        proc.kill()
        proc.wait()
        wait_for(lambda: not any(_alive(p) for p in pids), timeout_s=30,
                 what=f"replica processes {pids} to exit")
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ---- slow clients -------------------------------------------------------------------------------------


def test_half_sent_requests_do_not_freeze_the_provider(tmp_path: Path):
    """The old provider (one gthread worker, 128 threads, no read timeout): 140 clients that sent
    half a request made /healthz and every invocation wait until they closed."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    port = free_port()
    env = {**os.environ, "basic_auth": "false", "FASTGSHARE_STATE_DIR": str(tmp_path),
           "PYTHONPATH": str(ROOT), "FASTGSHARE_PROVIDER_READ_TIMEOUT_S": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:gateway_plugin.gunicorn_conf",
         "-b", f"127.0.0.1:{port}", "tests.fakes:make_gunicorn_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stalled: list[socket.socket] = []
    try:
        wait_for(lambda: _healthz(port, 1.0), timeout_s=30, what="the provider")
        for _ in range(140):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Le")
            stalled.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        assert _healthz(port, 5.0)
        assert time.monotonic() - t0 < 3.0
        sess = requests.Session()  # one kept-alive connection: one worker's fake backend
        assert sess.post(f"http://127.0.0.1:{port}/system/functions",
                         json={"service": "echo", "image": "echo"}, timeout=5).status_code == 202
        assert sess.post(f"http://127.0.0.1:{port}/function/echo", data=b"hi",
                         timeout=5).status_code == 200
    finally:
        for s in stalled:
            s.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthz(port: int, timeout_s: float) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


