"""End to end: while the platform's background profiler measures a function, the user sees only
their function; removing it stops the profile and leaves nothing running.

The real platform (Redis, node agent, provider, ``python -m fast_profiler watch``), a small real
torch function with an SLO, the provider's answers and the machine's process table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from fast_profiler import store
from fastgshare import keys
from fastgshare.cli import main as fastgshare_main
from fastgshare.platform import Platform, PlatformInfo
from fastgshare.redis_acl import without_credentials
from tests.integration.platform_helpers import register_images
from tests.waiting import wait_for

HANDLER = Path(__file__).parent / "handlers" / "matmul"
IMAGE = "test/rmprof:latest"
NAME = "rmprof"
"""A name no other test uses: its processes are found by name in the process table."""
SHADOW = "rmprof-profile"
NS = "openfaas-fn"
REMOVED_WITHIN_S = 10.0
""""Within seconds": the profiler asks once a second; the provider removes the shadow at once."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, PlatformInfo]]:
    p = Platform(tmp_path_factory.mktemp("platform"), port=0, profiler=True)
    info = p.start()
    try:
        register_images(info.redis_url, {IMAGE: HANDLER})
        yield p, info
    finally:
        p.stop()


def _environ(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _live(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sidecar_groups(redis_url: str, function: str) -> set[int]:
    """Process groups of this platform's sidecars of ``function`` (each replica is one group)."""
    # Sidecars speak to this Redis as their own ACL user: compare the address, not the user.
    server = without_credentials(redis_url)
    want = {f"FASTGSHARE_FUNCTION={function}".encode()}

    def ours(env: list[bytes]) -> bool:
        urls = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"REDIS_URL=")]
        return want <= set(env) and any(without_credentials(u) == server for u in urls)

    return {os.getpgid(int(pid)) for pid in os.listdir("/proc")
            if pid.isdigit() and ours(_environ(pid)) and _live(pid)}


def live_in_groups(groups: set[int]) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or not _live(pid):
            continue
        try:
            if os.getpgid(int(pid)) in groups:
                out.append(int(pid))
        except ProcessLookupError:
            pass
    return out


def test_remove_during_a_profile(platform: tuple[Platform, PlatformInfo], capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    p, info = platform
    client = redis.Redis.from_url(info.redis_url)
    api = requests.Session()
    api.auth = info.auth
    body = {"service": NAME, "image": IMAGE, "annotations": {"fastgshare/slo_ms": "250"}}
    assert api.post(f"{info.url}/system/functions", json=body, timeout=30).status_code == 202

    def user_view() -> tuple[list[str], int]:
        names = sorted(f["name"] for f in api.get(f"{info.url}/system/functions", timeout=10).json())
        return names, api.get(f"{info.url}/system/function/{SHADOW}", timeout=10).status_code

    def shadow_serving() -> bool:
        # While the watcher deploys and measures, the user's answers never show its shadow.
        assert user_view() == ([NAME], 404)
        reps = client.hvals(keys.replicas(NS, SHADOW))
        if not reps or not sidecar_groups(info.redis_url, SHADOW):
            return False
        return api.post(f"{info.url}/function/{SHADOW}", data=b"{}", timeout=30).status_code == 200

    wait_for(shadow_serving, timeout_s=180, what=f"the watcher's {SHADOW} to serve")
    assert store.get_status(client, NS, NAME)["state"] == "profiling"
    extension = {f["name"]: f for f in api.get(f"{info.url}/system/fastgshare/replicas", timeout=10).json()}
    assert extension[SHADOW]["profileOf"] == NAME

    # `fastgshare status` against the gateway, with the credentials a user exports.
    monkeypatch.setenv("FASTGSHARE_PASSWORD", info.password)
    monkeypatch.setenv("OPENFAAS_CONFIG", str(Path(info.state_dir) / "no-faas-cli"))
    capsys.readouterr()
    assert fastgshare_main(["status", "--gateway", info.url]) == 0
    out = capsys.readouterr().out
    assert f"{SHADOW}" in out and f"profiling run of {NAME}" in out, out

    groups = sidecar_groups(info.redis_url, SHADOW) | sidecar_groups(info.redis_url, NAME)
    assert groups and live_in_groups(groups)
    t0 = time.monotonic()
    resp = api.delete(f"{info.url}/system/functions", json={"functionName": NAME}, timeout=30)
    assert resp.status_code == 202

    def left() -> dict[str, object]:
        """What is still there; empty when everything went."""
        listed = api.get(f"{info.url}/system/fastgshare/replicas", timeout=10).json()
        out = {
            "listed": [f["name"] for f in listed],
            "processes": live_in_groups(groups),
            "replica records": client.exists(keys.replicas(NS, SHADOW), keys.replicas(NS, NAME)),
            "profile status": store.get_status(client, NS, NAME),
        }
        return {k: v for k, v in out.items() if v}

    try:
        wait_for(lambda: not left(), timeout_s=REMOVED_WITHIN_S + 20,
                 what="the function, its shadow and their processes to go")
    except AssertionError as e:
        raise AssertionError(f"{e}; left: {left()}") from e
    took_s = time.monotonic() - t0
    assert took_s <= REMOVED_WITHIN_S, f"took {took_s:.1f} s"
    print(f"removed with its shadow and processes in {took_s:.1f} s")

    # The profile stopped (it did not go on, nor deploy its shadow again), the watcher lives on.
    time.sleep(3.0)
    assert user_view() == ([], 404)
    assert api.get(f"{info.url}/system/fastgshare/replicas", timeout=10).json() == []
    assert not sidecar_groups(info.redis_url, SHADOW) and not live_in_groups(groups)
    assert not client.exists(keys.profile_status(NS, NAME))
    assert p._procs["profiler"].poll() is None
    log = (Path(info.state_dir) / "platform-logs" / "profiler.log").read_text()
    assert f"profile of '{NAME}' stopped: function '{NAME}' was removed" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_redeploy_with_other_code_during_a_profile(platform: tuple[Platform, PlatformInfo]) -> None:
    """The run on the old code stops; the watcher profiles the new code from the start."""
    p, info = platform
    name, shadow, image2 = "rdprof", "rdprof-profile", "test/rdprof:v2"
    register_images(info.redis_url, {image2: HANDLER})
    client = redis.Redis.from_url(info.redis_url)
    api = requests.Session()
    api.auth = info.auth
    body = {"service": name, "image": IMAGE, "annotations": {"fastgshare/slo_ms": "250"}}
    assert api.post(f"{info.url}/system/functions", json=body, timeout=30).status_code == 202

    def shadow_image() -> str | None:
        listed = api.get(f"{info.url}/system/fastgshare/replicas", timeout=10).json()
        return next((f["image"] for f in listed if f["name"] == shadow and f["availableReplicas"]), None)

    assert wait_for(shadow_image, timeout_s=180, what=f"{shadow} to serve") == IMAGE
    redeploy = api.put(f"{info.url}/system/functions", json={**body, "image": image2}, timeout=30)
    assert redeploy.status_code == 202
    log_path = Path(info.state_dir) / "platform-logs" / "profiler.log"
    wait_for(lambda: f"function '{name}' was redeployed with other code" in log_path.read_text(),
             timeout_s=REMOVED_WITHIN_S, what="the run on the old code to stop")
    wait_for(lambda: shadow_image() == image2, timeout_s=120, what="a profile of the new code")
    assert store.get_status(client, NS, name)["state"] == "profiling"

    removed = api.delete(f"{info.url}/system/functions", json={"functionName": name}, timeout=30)
    assert removed.status_code == 202
    wait_for(lambda: api.get(f"{info.url}/system/fastgshare/replicas", timeout=10).json() == []
             and not sidecar_groups(info.redis_url, shadow), timeout_s=REMOVED_WITHIN_S + 20,
             what="everything to go")
    assert p._procs["profiler"].poll() is None
