"""A hostile function on the real platform, run as root (function users on): every attempt to
reach what is not its own fails, and the platform keeps serving.

The handler (``handlers/hostile``) tries, one by one, to read the admin password, the Redis
credentials and data files, another function's secret and processes' environments, to use Redis
with and without the sidecar's variables, to write into another function's folder, and to
signal another replica's worker and sidecar, its own sidecar, the node agent and Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from fast_manager.function_users import PROJECT_ROOT, isolation_from_env, reachable_by_others
from fastgshare import keys
from fastgshare.platform import Platform, PlatformInfo
from tests.integration.platform_helpers import start_platform
from tests.waiting import wait_for

NO_RETRY = Retry(NoBackoff(), 0)
"""A refused AUTH is a ConnectionError to redis-py, which would retry with backoff."""
HANDLERS = Path(__file__).parent / "handlers"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0, reason="function users need root (CI runs as root); as an ordinary user "
    "the platform runs functions as that user, the single-user trust model in README"),
    pytest.mark.skipif(not reachable_by_others(PROJECT_ROOT), reason="the checkout lies under a "
                       "folder other users cannot enter: the platform turns function users off")]


@pytest.fixture(scope="module")
def platform() -> Iterator[tuple[Platform, PlatformInfo]]:
    # Not under pytest's temporary root, which is 0700 and would stop the hostile function
    # before the state directory's own modes are put to the test.
    base = Path(tempfile.mkdtemp(prefix="fastgshare-isolation-"))
    base.chmod(0o755)
    try:
        p, info = start_platform(base / "state", {"test/victim": HANDLERS / "linear",
                                                  "test/hostile": HANDLERS / "hostile"})
        yield p, info
        p.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _deploy(api: requests.Session, url: str, name: str, image: str, secret: str) -> None:
    body = {"service": name, "image": image, "secrets": [secret],
            "annotations": {"fastgshare/gpu_sm_partition": "50"}}
    resp = api.post(f"{url}/system/functions", json=body)
    assert resp.status_code == 202, resp.text


def _replica(client: redis.Redis, name: str) -> dict:
    recs = [json.loads(r) for r in client.hvals(keys.replicas("openfaas-fn", name))]
    ready = [r for r in recs if r.get("ready")]
    return ready[0] if ready else {}


def _listening_port(uid: int) -> int:
    """The TCP port a process of ``uid`` listens on (its worker's), from the kernel's table."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[7]) == uid:
            return int(f[1].split(":")[1], 16)
    raise AssertionError(f"no listening socket of uid {uid}")


def test_a_hostile_function_gets_nothing_beyond_its_own_secrets(platform) -> None:
    p, info = platform
    api = requests.Session()
    api.auth = info.auth
    for name, value in (("victim-key", "victim-s3cret"), ("hostile-key", "hostile-own")):
        assert api.post(f"{info.url}/system/secrets",
                        json={"name": name, "value": value}).status_code == 202
    _deploy(api, info.url, "victim", "test/victim", "victim-key")
    _deploy(api, info.url, "hostile", "test/hostile", "hostile-key")
    client = redis.Redis.from_url(info.redis_url)
    victim = wait_for(lambda: _replica(client, "victim"), what="the victim's replica")
    hostile = wait_for(lambda: _replica(client, "hostile"), what="the hostile replica")
    victim_worker = requests.post(f"{info.url}/function/victim", json={"x": [1, 1, 1, 1]},
                                  timeout=30).json()["pid"]

    state = Path(info.state_dir)
    iso = isolation_from_env({}, 0, state)
    assert iso is not None
    uids = {k.decode(): int(v) for k, v in client.hgetall(keys.function_uids()).items()}
    victim_uid, hostile_uid = uids["openfaas-fn/victim"], uids["openfaas-fn/hostile"]
    victim_dir = iso.user_dir(victim_uid)
    hostile_secret = iso.user_dir(hostile_uid) / "secrets" / hostile["replica_id"] / "hostile-key"
    redis_files = [str(f) for f in (state / "redis").rglob("*") if f.is_file()]
    assert any("aof" in f for f in redis_files)
    node_agent, redis_pid = p._procs["node-agent"].pid, p.redis_pid
    targets = {
        "read": [str(state / "secrets" / "basic-auth-password"),
                 str(state / "secrets" / "redis-platform-password"),
                 str(state / "secrets" / "redis-sidecar-password"), str(state / "platform.json"),
                 *redis_files,
                 str(victim_dir / "secrets" / victim["replica_id"] / "victim-key"),
                 str(state / "run" / "openfaas-fn" / "victim" / victim["replica_id"] / "secrets"
                     / "victim-key"),
                 f"/proc/{victim['pid']}/environ", f"/proc/{victim_worker}/environ",
                 f"/proc/{node_agent}/environ", f"/proc/{redis_pid}/environ",
                 str(hostile_secret)],
        "list": [str(state), str(iso.area / "fn"), str(victim_dir)],
        "redis_port": int(info.redis_url.rsplit(":", 1)[1].split("/")[0]),
        "signal": {"victim worker": victim_worker, "victim sidecar": victim["pid"],
                   "own sidecar": hostile["pid"], "node agent": node_agent, "redis": redis_pid},
        # the victim's worker, around its sidecar (its sidecar's own port is open, as OpenFaaS's)
        "http": {"victim worker": _listening_port(victim_uid)},
        "write": {"victim home": str(victim_dir / "home" / "x"),
                  "state dir": str(state / "owned")},
    }
    resp = requests.post(f"{info.url}/function/hostile", json=targets, timeout=30)
    assert resp.status_code == 200, resp.text
    report = resp.json()

    assert report["uid"] == hostile_uid and report["gid"] == hostile_uid
    assert report["groups"] == [] and hostile_uid not in (0, victim_uid)
    leaked_names = [n for n in report["env_names"] if "REDIS" in n or "PASSWORD" in n]
    assert leaked_names == [], leaked_names
    own = report.pop(f"read:{hostile_secret}")
    assert own == {"ok": True, "got": "hostile-own"}  # its own secret: yes
    attempts = {k: v for k, v in report.items() if ":" in k}
    assert len(attempts) >= 25
    succeeded = {k: v for k, v in attempts.items() if v["ok"]}
    assert succeeded == {}, succeeded
    secrets = [info.password, "victim-s3cret", *info.redis_url.split("@")[0].split(":")[-1:]]
    assert not any(s in json.dumps(report) for s in secrets)

    # the platform keeps serving, with its state intact
    again = requests.post(f"{info.url}/function/victim", json={"secret": "victim-key"}, timeout=30)
    assert again.status_code == 200 and again.text == "victim-s3cret"
    assert requests.post(f"{info.url}/function/victim", json={"x": [1, 1, 1, 1]},
                         timeout=30).json()["pid"] == victim_worker
    assert client.ping() and client.hlen(keys.functions_index()) == 2
    assert not (state / "owned").exists() and not (victim_dir / "home" / "x").exists()


def test_redis_refuses_an_unauthenticated_client(platform) -> None:
    _, info = platform
    port = int(info.redis_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_connect_timeout=2, retry=NO_RETRY).ping()
    assert "@" in info.redis_url  # the platform's own clients authenticate
