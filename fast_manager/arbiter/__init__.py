"""The per-device token arbiter: pure model, Lua scripts, the sidecar's client, its fallback.

The sidecar builds its client with ``fast_manager.token_factory.make_token_client(settings)``
(which calls ``arbiter_token_client``) and uses only the ``fast_manager.tokens.TokenClient``
protocol.
"""

from __future__ import annotations

from typing import Any

from fast_manager.tokens import TokenClient, UnmanagedTokens

from .model import ArbiterParams, make_spec


def arbiter_token_client(*, redis_url: str | None, device_id: str, replica_id: str, sm_pct: int,
                         quota_request_frac: float, quota_limit_frac: float,
                         cores: tuple[int, ...] = (), params: ArbiterParams | None = None,
                         redis_client: Any = None) -> TokenClient:
    """A TokenClient for one replica on ``device_id`` with this share; ``cores``: the core set
    the arbiter keeps disjoint between holders (empty: admission by SM share, as on a GPU). No
    ``redis_url`` (and no client): no arbiter (``UnmanagedTokens``). Call inside the running
    event loop that will use it. The sidecar reaches it through
    ``fast_manager.token_factory.make_token_client(settings)``; benchmarks and tests call it
    directly."""
    if not redis_url and redis_client is None:
        return UnmanagedTokens()
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from .client import RedisTokenClient

    params = params or ArbiterParams()
    spec = make_spec(int(sm_pct), float(quota_request_frac), float(quota_limit_frac), params,
                     tuple(cores))
    owns = redis_client is None
    if owns:
        # No retries inside redis-py: a failure must reach us fast so that we fall back. The asyncio
        # client takes redis.asyncio's Retry (the synchronous one warns from redis-py 8.2 on).
        redis_client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5,
                                               retry=Retry(NoBackoff(), 0))
    return RedisTokenClient(redis_client, device_id, replica_id, spec, params, owns_client=owns)
