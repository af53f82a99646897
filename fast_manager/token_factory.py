"""The one seam that decides which ``TokenClient`` a sidecar uses.

The sidecar calls ``make_token_client(settings)`` once at start, inside its running event loop
(the Redis client binds to it), and talks only to the ``TokenClient`` protocol afterwards:

- ``REDIS_URL`` set and ``FASTGSHARE_ARBITER`` not ``off``: the device's shared arbiter in Redis
  (``fast_manager.arbiter.RedisTokenClient``), which falls back to a local limiter at the static
  request share while Redis is unreachable and returns to shared tokens by itself;
- otherwise: ``UnmanagedTokens`` (every acquire granted at once): the "unmanaged" sharing mode,
  or a replica with no Redis at all.
"""

from __future__ import annotations

import dataclasses
import os

from fast_manager.arbiter.model import ArbiterParams
from fast_manager.settings import SidecarSettings
from fast_manager.tokens import TokenClient, UnmanagedTokens


def arbiter_params(settings: SidecarSettings) -> ArbiterParams:
    """The device constants, with the sidecar's overrides (window rounded to whole buckets)."""
    p = ArbiterParams()
    changes: dict[str, int] = {}
    if settings.arbiter_window_s is not None:
        buckets = max(1, round(settings.arbiter_window_s * 1e6 / p.bucket_us))
        changes["window_us"] = buckets * p.bucket_us
    if settings.arbiter_max_token_ms is not None:
        changes["max_token_us"] = round(settings.arbiter_max_token_ms * 1000)
    if settings.arbiter_min_token_ms is not None:
        changes["min_token_us"] = round(settings.arbiter_min_token_ms * 1000)
    elif "max_token_us" in changes:
        changes["min_token_us"] = min(p.min_token_us, changes["max_token_us"])
    return dataclasses.replace(p, **changes)


def replica_cores(settings: SidecarSettings) -> tuple[int, ...]:
    """The core set the arbiter keeps disjoint between holders: on a CPU device the cores the
    worker is pinned to, or, unpinned, every core this process may run on (the worker inherits
    them); on a GPU none (admission by SM share)."""
    if settings.is_gpu:
        return ()
    return tuple(settings.cpu_cores or ()) or tuple(sorted(os.sched_getaffinity(0)))


def make_token_client(settings: SidecarSettings,
                      params: ArbiterParams | None = None) -> TokenClient:
    """The token client for this replica's device and share (call inside the event loop);
    ``params``: the device constants (default: ``arbiter_params(settings)``)."""
    if not settings.arbiter or not settings.redis_url:
        return UnmanagedTokens()
    from fast_manager.arbiter import arbiter_token_client

    share = settings.share
    return arbiter_token_client(
        redis_url=settings.redis_url, device_id=settings.device,
        replica_id=f"{settings.namespace}/{settings.function}/{settings.replica}",
        sm_pct=share.sm_pct, quota_request_frac=share.quota_request_frac,
        quota_limit_frac=share.quota_limit_frac, cores=replica_cores(settings),
        params=params or arbiter_params(settings))
