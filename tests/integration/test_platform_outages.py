"""The control plane survives its dependencies (issue 21), on the real local platform: Redis killed
under load is brought back by ``up`` (control plane 503 + Retry-After naming the state store, then
200, nothing lost, sidecars back on the shared arbiter, each outage logged once); a function whose
starts all fail is refused at once with the reason instead of after the scale-from-zero wait."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from fastgshare import local_state
from fastgshare.platform import Platform, PlatformInfo
from tests.integration.platform_helpers import register_images
from tests.waiting import wait_for

HANDLER = Path(__file__).parent / "handlers" / "linear"
IMAGE = "test/linear:latest"
BROKEN_IMAGE = "test/broken:latest"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, PlatformInfo]]:
    broken = tmp_path_factory.mktemp("broken")
    (broken / "handler.py").write_text(
        "def load():\n    raise RuntimeError('weights file missing: /models/w.bin')\n\n"
        "def handle(event, context):\n    return 'never'\n")
    # A Redis that dies is restarted after 3 s here: a window wide enough to look at the outage.
    p = Platform(tmp_path_factory.mktemp("platform"), port=0, redis_restart_backoff_s=(3.0,))
    info = p.start()
    try:
        register_images(info.redis_url, {IMAGE: HANDLER, BROKEN_IMAGE: broken})
        yield p, info
    finally:
        p.stop()


@pytest.fixture
def api(platform: tuple[Platform, PlatformInfo]) -> Iterator[requests.Session]:
    s = requests.Session()
    s.auth = platform[1].auth
    yield s
    s.close()


def _sidecar_modes(redis_url: str, name: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        reps = local_state.read_replicas(client, "openfaas-fn", name)
    finally:
        client.close()
    return [requests.get(f"{r.url}/_/stats", timeout=5).json()["token_mode"] for r in reps if r.ready]


def test_redis_killed_under_load_is_restarted_and_the_control_plane_answers_503_meanwhile(platform, api):
    p, info = platform
    url = info.url
    body = {"service": "steady", "image": IMAGE,
            "annotations": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_limit": "1"}}
    assert api.post(f"{url}/system/functions", json=body).status_code == 202
    assert api.post(f"{url}/system/secrets", json={"name": "kept", "value": "v1"}).status_code == 202
    wait_for(lambda: api.get(f"{url}/system/function/steady").json()["availableReplicas"] == 1,
             what="a ready replica")
    assert _sidecar_modes(info.redis_url, "steady") == ["shared"]
    time.sleep(1.2)  # the append-only file is synced every second

    stop = threading.Event()
    answers: list[int] = []

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    answers.append(s.post(f"{url}/function/steady", json={"x": [1, 2, 3, 4]},
                                          timeout=10).status_code)
                except requests.RequestException:
                    answers.append(-1)
                time.sleep(0.02)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        old_pid = p.redis_pid
        time.sleep(0.3)
        os.kill(old_pid, signal.SIGKILL)
        # (a Response is falsy when not ok: wrapped in a list)
        [outage] = wait_for(lambda: (r := api.get(f"{url}/system/functions")).status_code == 503
                            and [r], timeout_s=3, what="503 while Redis is down")
        assert outage.headers["Retry-After"] == "5" and "state store (Redis)" in outage.text
        for method, path, payload in (("GET", "/system/function/steady", None),
                                      ("POST", "/system/scale-function/steady", {"replicas": 1}),
                                      ("PUT", "/system/functions", body)):
            r = api.request(method, f"{url}{path}", json=payload)
            assert r.status_code == 503 and r.headers.get("Retry-After"), (path, r.status_code, r.text)
        assert requests.get(f"{url}/healthz").status_code == 200
        ready = requests.get(f"{url}/readyz")
        assert ready.status_code == 503 and "Redis" in ready.text
        wait_for(lambda: api.get(f"{url}/system/functions").status_code == 200, timeout_s=15,
                 what="the control plane back")
        assert p.redis_pid != old_pid and p.redis_restarts == 1
        assert requests.get(f"{url}/readyz").status_code == 200
        time.sleep(1.0)  # load through the recovery too
    finally:
        stop.set()
        loader.join()
    # Nothing lost: the function, its spec and the secret came back from the append-only file.
    listed = api.get(f"{url}/system/functions").json()
    assert [f["name"] for f in listed] == ["steady"]
    assert api.get(f"{url}/system/secrets").json() == [{"name": "kept", "namespace": "openfaas-fn"}]
    # Serving never stopped (sidecars keep their local share while the arbiter is gone) and every
    # sidecar is back on the shared arbiter.
    assert answers and set(answers) == {200}, sorted(set(answers))
    wait_for(lambda: _sidecar_modes(info.redis_url, "steady") == ["shared"], timeout_s=10,
             what="sidecars back on the shared arbiter")
    log = (Path(info.state_dir) / "platform-logs" / "platform.log").read_text()
    assert "exited with status -9" in log and "Redis restarted on port" in log
    # Each outage is logged once by each client, and its end once.
    for path in (Path(info.state_dir) / "logs" / "openfaas-fn" / "steady").glob("*.log"):
        text = path.read_text()
        assert text.count("device fault channel unavailable") <= 1, path
        assert text.count("token arbiter unreachable") <= 1, path
    agent = (Path(info.state_dir) / "platform-logs" / "node-agent.log").read_text()
    assert agent.count("replicas keep running as they are") <= 1
    assert api.delete(f"{url}/system/functions", json={"functionName": "steady"}).status_code == 202


def test_a_function_whose_starts_fail_is_refused_at_once_with_the_reason(platform, api):
    _, info = platform
    url = info.url
    body = {"service": "broken", "image": BROKEN_IMAGE}
    assert api.post(f"{url}/system/functions", json=body).status_code == 202

    def refused() -> list[requests.Response] | None:
        t0 = time.monotonic()
        r = requests.post(f"{url}/function/broken", data=b"{}", timeout=150)
        took_s = time.monotonic() - t0
        return [r] if r.status_code == 503 and took_s < 5 and "cannot start" in r.text else None

    [resp] = wait_for(refused, timeout_s=60, what="an immediate 503 naming the start failure")
    assert "weights file missing" in resp.text and resp.headers.get("Retry-After")
    client = redis.Redis.from_url(info.redis_url)
    try:
        record = local_state.read_start_failures(client)[("openfaas-fn", "broken")]
        assert record.failures >= local_state.START_FAILURES_TO_REFUSE
        # A redeploy (a new spec) starts afresh: the record goes, invocations wait again.
        assert api.put(f"{url}/system/functions", json={**body, "envVars": {"X": "1"}}).status_code == 202
        wait_for(lambda: ("openfaas-fn", "broken") not in local_state.read_start_failures(client),
                 timeout_s=10, what="the record cleared by the new generation")
        assert api.delete(f"{url}/system/functions", json={"functionName": "broken"}).status_code == 202
        assert json.loads(api.get(f"{url}/system/functions").text) == []
    finally:
        client.close()


def test_a_memory_limit_no_device_here_holds_is_refused(platform, api):
    _, info = platform
    body = {"service": "huge", "image": IMAGE, "annotations": {"fastgshare/gpu_mem": "16Ti"}}
    resp = api.post(f"{info.url}/system/functions", json=body)
    assert resp.status_code == 400 and resp.text.startswith("fastgshare/gpu_mem"), resp.text
    assert "largest device" in resp.text
    assert api.get(f"{info.url}/system/function/huge").status_code == 404


def test_a_hung_redis_makes_the_control_plane_answer_503_instead_of_hanging(platform, api):
    """Redis stopped (SIGSTOP: it holds its connections and answers nothing): the provider's
    state-store commands time out (``STATE_STORE_TIMEOUT_S``) and the control plane answers 503
    naming the state store; once Redis runs again, 200."""
    from gateway_plugin.readiness import STATE_STORE_TIMEOUT_S

    p, info = platform
    url = info.url
    wait_for(lambda: api.get(f"{url}/system/functions", timeout=10).status_code == 200,
             what="the control plane answering before the test")
    pid = p.redis_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = api.get(f"{url}/system/functions", timeout=60)
        waited_s = time.monotonic() - t0
        assert r.status_code == 503 and "state store (Redis)" in r.text, r.text
        assert waited_s < 4 * STATE_STORE_TIMEOUT_S, f"answered only after {waited_s:.1f} s"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: api.get(f"{url}/system/functions", timeout=10).status_code == 200,
             timeout_s=30, what="200 once Redis runs again")
