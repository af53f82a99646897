"""The token client's per-request shortcuts, against a real Redis: the bypass of a replica alone on
its device with limit 1 (kept token, no Redis call per request) and its end when a second replica
joins; a lingering token goes back on a timer (no task per release)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fast_manager.arbiter import model
from fast_manager.arbiter.client import RedisTokenClient
from fast_manager.arbiter.lua import device_keys

PARAMS = model.ArbiterParams(window_us=1_000_000, bucket_us=20_000, min_token_us=10_000,
                             max_token_us=50_000, lease_grace_us=400_000)


def client(url: str, replica: str, req: float, lim: float, device: str,
           **kw: float) -> RedisTokenClient:
    conn = aioredis.Redis.from_url(url, socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))
    return RedisTokenClient(conn, device, replica, model.make_spec(100, req, lim, PARAMS, ()),
                            PARAMS, owns_client=True, **kw)


async def holders(url: str, device: str) -> dict[bytes, bytes]:
    r = aioredis.Redis.from_url(url)
    try:
        return await r.hgetall(device_keys(device)[3])
    finally:
        await r.aclose()


async def run_requests(c: RedisTokenClient, n: int, gap_s: float) -> None:
    """``n`` executions with ``gap_s`` between them (longer than the linger: without the bypass,
    every one would take a token from the arbiter)."""
    for _ in range(n):
        lease = await c.acquire(5.0)
        assert lease is not None
        await asyncio.sleep(0.001)
        await c.release(lease, 1.0)
        await asyncio.sleep(gap_s)


def test_a_replica_alone_with_limit_1_keeps_its_token_and_drops_it_when_another_joins(
        redis_url: str) -> None:
    async def go() -> None:
        a = client(redis_url, "a", 1.0, 1.0, "bypass-dev", keep_check_s=0.02)
        assert a.may_keep
        await run_requests(a, 1, 0.05)  # the first token, and the heartbeat's look: alone
        tokens_before = a.tokens_total
        await run_requests(a, 10, 0.02)  # 20 ms gaps: twice the linger
        assert a.kept >= 9  # served by the kept token ...
        assert a.tokens_total - tokens_before <= 1  # ... not by the arbiter (at most one roll)
        assert list(await holders(redis_url, "bypass-dev")) == [b"a"]  # still a real token

        b = client(redis_url, "b", 0.5, 1.0, "bypass-dev")
        lease_b = await b.acquire(2.0)  # queued behind a's kept token until a's next look
        assert lease_b is not None
        assert a.keeps_dropped == 1
        await b.release(lease_b, 1.0)

        kept = a.kept
        tokens_before = a.tokens_total
        await run_requests(a, 5, 0.02)  # not alone any more: tokens from the arbiter again
        assert a.kept == kept
        assert a.tokens_total - tokens_before >= 4
        await b.close()
        await a.close()
        assert await holders(redis_url, "bypass-dev") == {}

    asyncio.run(go())


def test_a_replica_with_a_limit_below_1_never_keeps_its_token(redis_url: str) -> None:
    async def go() -> None:
        a = client(redis_url, "a", 0.5, 0.9, "capped-dev", keep_check_s=0.02)
        assert not a.may_keep
        await run_requests(a, 6, 0.02)
        assert a.kept == 0
        assert a.tokens_total >= 5
        await a.close()

    asyncio.run(go())


def test_a_lingering_token_goes_back_without_a_task_per_release(redis_url: str) -> None:
    async def go() -> None:
        # limit < 1 so that the bypass stays out of the way; a linger long enough to look
        c = client(redis_url, "solo", 0.5, 0.9, "linger-dev", linger_s=0.05)
        lease = await c.acquire(5.0)
        assert lease is not None
        await asyncio.sleep(0.01)
        tasks_before = len(asyncio.all_tasks())
        await c.release(lease, 1.0)
        assert len(asyncio.all_tasks()) == tasks_before  # a timer, not a task
        assert list(await holders(redis_url, "linger-dev")) == [b"solo"]  # lingering
        for _ in range(100):
            if not await holders(redis_url, "linger-dev"):
                break
            await asyncio.sleep(0.01)
        assert await holders(redis_url, "linger-dev") == {}  # returned when the linger ended
        await c.close()

    asyncio.run(go())
