"""The platform's Redis ACL against a real server: nobody gets in without credentials, and the
sidecar's user can do what a sidecar does (arbiter, fault channel) and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fast_manager.arbiter import model
from fast_manager.device_faults import FaultChannel
from fast_manager.settings import SidecarSettings
from fast_manager.token_factory import make_token_client
from fastgshare import keys
from fastgshare.redis_acl import PLATFORM_USER, SIDECAR_USER, ensure_passwords, write_acl_file
from fastgshare.redis_server import EmbeddedRedis

NO_RETRY = Retry(NoBackoff(), 0)
"""A refused AUTH is a ConnectionError to redis-py, which would retry with backoff."""
PARAMS = model.ArbiterParams(window_us=1_000_000, bucket_us=20_000, min_token_us=10_000,
                             max_token_us=50_000, lease_grace_us=200_000)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedRedis, str]]:
    """A server with the platform's ACL; yields it (platform URL) and the sidecar's URL."""
    root = tmp_path_factory.mktemp("acl")
    pw = ensure_passwords(root / "secrets")
    data = root / "redis"
    data.mkdir()
    srv = EmbeddedRedis(data, persist=False, acl_file=write_acl_file(data / "users.acl", pw),
                        username=PLATFORM_USER, password=pw.platform).start()
    yield srv, pw.sidecar_url(f"redis://127.0.0.1:{srv.port}/0")
    srv.stop()


def test_unauthenticated_and_wrong_password_clients_are_refused(acl_redis) -> None:
    srv, sidecar_url = acl_redis
    anon = redis.Redis(port=srv.port, retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError):
        anon.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=srv.port, username=SIDECAR_USER, password="guess", retry=NO_RETRY).ping()
    with pytest.raises(redis.AuthenticationError):  # the default user has no nopass
        redis.Redis(port=srv.port, username="default", password="", retry=NO_RETRY).ping()
    assert redis.Redis.from_url(srv.url).ping()
    assert redis.Redis.from_url(sidecar_url).ping()


def test_password_files_are_the_platforms_alone_and_hashed_in_the_acl_file(tmp_path: Path) -> None:
    pw = ensure_passwords(tmp_path / "secrets")
    assert ensure_passwords(tmp_path / "secrets") == pw  # read back, not regenerated
    for f in (tmp_path / "secrets").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    acl = write_acl_file(tmp_path / "users.acl", pw)
    assert acl.stat().st_mode & 0o777 == 0o600
    assert pw.platform not in acl.read_text() and pw.sidecar not in acl.read_text()
    assert "nopass" not in acl.read_text()


@pytest.mark.parametrize("command", [
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("DEBUG", "SLEEP", "0"),
    ("ACL", "LIST"), ("HGETALL", keys.functions_index()), ("HGETALL", keys.secrets("openfaas-fn")),
    ("SET", keys.functions_index(), "x"), ("GET", "other:namespace"), ("SHUTDOWN",),
    ("EVAL", "return redis.call('GET', KEYS[1])", "1", keys.functions_index()),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),
])
def test_the_sidecar_user_cannot_touch_the_platform(acl_redis, command: tuple[str, ...]) -> None:
    srv, sidecar_url = acl_redis
    platform = redis.Redis.from_url(srv.url)
    platform.hset(keys.functions_index(), "openfaas-fn/f", "{}")
    sidecar = redis.Redis.from_url(sidecar_url)
    with pytest.raises(redis.ResponseError) as refused:
        sidecar.execute_command(*command)
    assert command[0] == "DEBUG" or "perm" in str(refused.value).lower(), refused.value
    assert platform.hget(keys.functions_index(), "openfaas-fn/f") == b"{}"


def test_a_sidecar_runs_the_arbiter_and_the_fault_channel_as_its_user(acl_redis) -> None:
    _, sidecar_url = acl_redis
    settings = SidecarSettings(function="f", replica="r1", device="cpu:0", cpu_cores=(0,),
                               redis_url=sidecar_url)
    other = SidecarSettings(function="g", replica="r2", device="cpu:0", cpu_cores=(0,),
                            redis_url=sidecar_url)

    async def scenario() -> list[dict[str, object]]:
        tokens = make_token_client(settings, params=PARAMS)
        for _ in range(3):  # acquire, release (with busy time), and again: scripts load and run
            lease = await tokens.acquire(5.0)
            assert lease is not None
            await tokens.release(lease, 2.0)
        assert tokens.fallback_switches == 0  # never fell back (a NOPERM would look like an outage)
        await tokens.close()
        seen: list[dict[str, object]] = []

        async def on_fault(fault: dict[str, object]) -> None:
            seen.append(fault)

        follower = FaultChannel(sidecar_url, "cpu:0", other.replica, on_fault)
        follower.start()
        await asyncio.wait_for(follower.subscribed.wait(), 5)
        reporter = FaultChannel(sidecar_url, "cpu:0", settings.replica, on_fault)
        await reporter.report("test fault")
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        await follower.close()
        await reporter.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen and seen[0]["reason"] == "test fault"
