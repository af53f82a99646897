"""End to end on the local backend: the real platform (Redis, node agent, provider under gunicorn,
sidecar and worker processes) and a real torch function, driven over HTTP as faas-cli would."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from fastgshare import keys, local_state
from fastgshare.platform import Platform, PlatformInfo
from tests.integration.platform_helpers import register_images, start_platform
from tests.waiting import wait_for

HANDLER = Path(__file__).parent / "handlers" / "linear"
IMAGE = "test/linear:latest"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, PlatformInfo]]:
    p, info = start_platform(tmp_path_factory.mktemp("platform"), {IMAGE: HANDLER})
    yield p, info
    p.stop()


@pytest.fixture
def api(platform: tuple[Platform, PlatformInfo]) -> requests.Session:
    s = requests.Session()
    s.auth = platform[1].auth
    return s




def fn_status(api: requests.Session, url: str, name: str) -> dict:
    resp = api.get(f"{url}/system/function/{name}")
    assert resp.status_code == 200, resp.text
    return resp.json()


def deploy_like_faas_cli(api: requests.Session, url: str, body: dict) -> None:
    resp = api.put(f"{url}/system/functions", json=body)
    if resp.status_code == 404:
        resp = api.post(f"{url}/system/functions", json=body)
    assert resp.status_code == 202, resp.text


def test_lifecycle(platform, api):
    p, info = platform
    url = info.url
    assert api.post(f"{url}/system/secrets", json={"name": "apikey", "value": "s3cret"}).status_code == 202
    body = {"service": "linear", "image": IMAGE, "secrets": ["apikey"], "envVars": {"GREETING": "hi"},
            "annotations": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_limit": "0.5"}}
    deploy_like_faas_cli(api, url, body)
    wait_for(lambda: fn_status(api, url, "linear")["availableReplicas"] == 1, what="first replica")

    # Correct output from the real torch model: W = [[0,1,2,3],[4,5,6,7]], b = 1.
    resp = requests.post(f"{url}/function/linear", json={"x": [1, 2, 3, 4]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["y"] == [21.0, 61.0]
    assert resp.headers.get("X-Call-Id") and resp.headers.get("X-Duration-Seconds")
    # Secrets and environment reach the function.
    assert requests.post(f"{url}/function/linear", json={"secret": "apikey"}).text == "s3cret"
    assert requests.post(f"{url}/function/linear", json={"env": "GREETING"}).text == "hi"
    status = fn_status(api, url, "linear")
    assert status["annotations"]["fastgshare/gpu_sm_partition"] == "50"
    assert status["invocationCount"] >= 3

    # Scale 1 -> 3: three distinct worker processes answer.
    assert api.post(f"{url}/system/scale-function/linear",
                    json={"serviceName": "linear", "replicas": 3}).status_code == 202
    wait_for(lambda: fn_status(api, url, "linear")["availableReplicas"] == 3, what="3 replicas")
    pids = {requests.post(f"{url}/function/linear", json={}).json()["pid"] for _ in range(12)}
    assert len(pids) == 3

    # Logs carry the handler's output, with the replica as instance.
    logs = api.get(f"{url}/system/logs", params={"name": "linear", "tail": "1000"})
    assert logs.status_code == 200
    lines = [json.loads(ln) for ln in logs.text.splitlines() if ln.strip()]
    assert any("handled x=" in ln["text"] for ln in lines)
    assert {ln["instance"] for ln in lines} >= set()
    assert all(ln["name"] == "linear" for ln in lines)

    # Scale to zero, then the first request wakes it and is served.
    assert api.post(f"{url}/system/scale-function/linear",
                    json={"serviceName": "linear", "replicas": 0}).status_code == 202
    wait_for(lambda: fn_status(api, url, "linear")["availableReplicas"] == 0, what="scale to zero")

    # A request during the drain is served by the leaving replica, as designed: wait until the
    # node agent has stopped it and dropped its record, so that this one must wake the function.
    store = redis.Redis.from_url(info.redis_url)
    wait_for(lambda: not local_state.read_replicas(store, "openfaas-fn", "linear"),
             what="the last replica drained and stopped")
    store.close()
    resp = requests.post(f"{url}/function/linear", json={"x": [0, 0, 0, 1]}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["y"] == [4.0, 8.0]
    assert fn_status(api, url, "linear")["replicas"] >= 1

    # Remove: gone from the list, invocations 404, processes stopped.
    client = redis.Redis.from_url(info.redis_url)
    recorded = [json.loads(r)["pid"] for r in client.hvals(keys.replicas("openfaas-fn", "linear"))]
    assert api.delete(f"{url}/system/functions", json={"functionName": "linear"}).status_code == 202
    assert api.get(f"{url}/system/function/linear").status_code == 404
    assert requests.post(f"{url}/function/linear", json={}).status_code == 404
    for pid in recorded:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or
                 "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3],
                 timeout_s=15, what=f"replica pid {pid} to exit")
    client.close()


def test_provider_restart_loses_nothing(platform, api):
    p, info = platform
    url = info.url
    deploy_like_faas_cli(api, url, {"service": "keeper", "image": IMAGE})
    api.post(f"{url}/system/secrets", json={"name": "kept", "value": "v"})
    wait_for(lambda: fn_status(api, url, "keeper")["availableReplicas"] == 1, what="keeper ready")
    pid_before = requests.post(f"{url}/function/keeper", json={}).json()["pid"]

    p.restart_provider()

    assert "keeper" in {f["name"] for f in api.get(f"{url}/system/functions").json()}
    assert "kept" in {s["name"] for s in api.get(f"{url}/system/secrets").json()}
    wait_for(lambda: fn_status(api, url, "keeper")["availableReplicas"] == 1, what="re-adoption")
    # The running replica was re-adopted, not restarted.
    assert requests.post(f"{url}/function/keeper", json={}).json()["pid"] == pid_before
    api.delete(f"{url}/system/functions", json={"functionName": "keeper"})


def test_provider_crash_touches_no_replica(platform, api):
    """The provider holds no replica: SIGKILLed (workers and master), the replica it was routing
    to goes on, and the next provider routes to that same process."""
    p, info = platform
    url = info.url
    deploy_like_faas_cli(api, url, {"service": "survives", "image": IMAGE})
    wait_for(lambda: fn_status(api, url, "survives")["availableReplicas"] == 1, what="ready")
    pid_before = requests.post(f"{url}/function/survives", json={}).json()["pid"]

    provider = p._procs.pop("provider")
    os.killpg(provider.pid, signal.SIGKILL)  # its own session: master and workers
    provider.wait()
    assert Path(f"/proc/{pid_before}").exists()
    p._spawn_provider()

    assert requests.post(f"{url}/function/survives", json={}).json()["pid"] == pid_before
    api.delete(f"{url}/system/functions", json={"functionName": "survives"})


def test_bad_deploys_change_nothing(platform, api):
    _, info = platform
    url = info.url
    before = api.get(f"{url}/system/functions").json()
    cases = [
        {"service": "Bad_Name", "image": IMAGE},
        {"service": "unknown-image", "image": "nobody/never-built:1"},
        {"service": "toomuch", "image": IMAGE, "annotations": {"fastgshare/gpu_sm_partition": "150"}},
        {"service": "nosecret", "image": IMAGE, "secrets": ["missing-secret"]},
    ]
    for body in cases:
        resp = api.post(f"{url}/system/functions", json=body)
        assert 400 <= resp.status_code < 500, (body, resp.status_code, resp.text)
        assert resp.text.strip()
    resp = api.post(f"{url}/system/functions", data=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert api.get(f"{url}/system/functions").json() == before


def test_state_survives_platform_restart(tmp_path: Path):
    state = tmp_path / "state"
    with Platform(state, port=0) as info:
        register_images(info.redis_url, {IMAGE: HANDLER})
        s = requests.Session()
        s.auth = info.auth
        deploy_like_faas_cli(s, info.url, {"service": "survivor", "image": IMAGE})
        s.post(f"{info.url}/system/secrets", json={"name": "sec", "value": "x"})
    # --start-mps on a node without a GPU: the node agent still registers the CPU as the device
    platform = Platform(state, port=0, start_mps=True)
    with platform as info2:
        agent_pid = platform._procs["node-agent"].pid
        assert b"--start-mps" in Path(f"/proc/{agent_pid}/cmdline").read_bytes().split(b"\0")
        s = requests.Session()
        s.auth = info2.auth
        assert info2.auth == info.auth  # same credentials from STATE/secrets
        assert [f["name"] for f in s.get(f"{info2.url}/system/functions").json()] == ["survivor"]
        assert [x["name"] for x in s.get(f"{info2.url}/system/secrets").json()] == ["sec"]
        wait_for(lambda: fn_status(s, info2.url, "survivor")["availableReplicas"] == 1,
                 what="survivor back")
        resp = requests.post(f"{info2.url}/function/survivor", json={"x": [1, 0, 0, 0]})
        assert resp.json()["y"] == [1.0, 5.0]
