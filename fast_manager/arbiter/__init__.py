"""The per-device token arbiter: pure model, Lua scripts, the sidecar's client, its fallback.

The sidecar builds its client with ``make_token_client(settings)`` and uses only the
``fast_manager.tokens.TokenClient`` protocol.
"""

from __future__ import annotations

import os
from typing import Any

from fast_manager.tokens import TokenClient, UnmanagedTokens

from .model import ArbiterParams, make_spec

__all__ = ["ArbiterParams", "make_token_client"]


def _pick(settings: Any, flat: str, nested: str | None = None) -> Any:
    if hasattr(settings, flat):
        return getattr(settings, flat)
    if nested is not None:
        obj = settings
        for part in nested.split("."):
            obj = getattr(obj, part)
        return obj
    raise AttributeError(flat)


def replica_cores(settings: Any) -> tuple[int, ...]:
    """The core set the arbiter keeps disjoint between holders: on a CPU device the cores the
    worker is pinned to, or, unpinned, every core this process may run on (the worker inherits
    them); on a GPU none (admission by SM share)."""
    if hasattr(settings, "device_id"):  # flat settings: cores only when given
        return tuple(getattr(settings, "cores", ()))
    if settings.is_gpu:
        return ()
    pinned = tuple(getattr(settings, "cpu_cores", ()) or ())
    return pinned or tuple(sorted(os.sched_getaffinity(0)))


def make_token_client(settings: Any, *, params: ArbiterParams | None = None,
                      redis_client: Any = None) -> TokenClient:
    """A TokenClient for one replica.

    ``settings`` may be flat (``device_id``, ``replica_id``, ``sm_pct``, ``quota_request_frac``,
    ``quota_limit_frac``, ``redis_url``, optional ``cores``: none means GPU-style admission) or
    a ``SidecarSettings`` (``device``, ``namespace``, ``function``, ``replica``, ``share.*``,
    ``cpu_cores``, ``redis_url``). No ``redis_url``: no arbiter (``UnmanagedTokens``). Must be
    called inside the running event loop that will use it.
    """
    redis_url = getattr(settings, "redis_url", None)
    if not redis_url and redis_client is None:
        return UnmanagedTokens()
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from .client import RedisTokenClient

    params = params or ArbiterParams()
    device_id = str(_pick(settings, "device_id", "device"))
    if hasattr(settings, "replica_id"):
        replica = str(settings.replica_id)
    else:
        replica = f"{settings.namespace}/{settings.function}/{settings.replica}"
    spec = make_spec(int(_pick(settings, "sm_pct", "share.sm_pct")),
                     float(_pick(settings, "quota_request_frac", "share.quota_request_frac")),
                     float(_pick(settings, "quota_limit_frac", "share.quota_limit_frac")), params,
                     replica_cores(settings))
    owns = redis_client is None
    if owns:
        # No retries inside redis-py: a failure must reach us fast so that we fall back. The asyncio
        # client takes redis.asyncio's Retry (the synchronous one warns from redis-py 8.2 on).
        redis_client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=0.5,
                                               retry=Retry(NoBackoff(), 0))
    return RedisTokenClient(redis_client, device_id, replica, spec, params, owns_client=owns)
