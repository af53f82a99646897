"""Whether the provider can do its job: Redis reachable and the backend answering.

``/healthz`` says the process is alive (a restart would not bring Redis back, so liveness never
depends on it); ``/readyz`` says it is ready (Kubernetes takes it out of the Service while not).
``as_provider_error`` is the edge where a Redis client's outage errors, wherever they surface,
become ``StateStoreUnavailable`` (503 with ``Retry-After``), not 500.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway_plugin.backend import Backend
from gateway_plugin.errors import STATE_STORE_RETRY_AFTER_S, ProviderError, StateStoreUnavailable

REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)
"""What a Redis client raises while the server is down, restarting or loading its data."""
STATE_STORE_TIMEOUT_S = 5.0
"""Longest wait for one Redis command of the provider's state-store clients: a Redis that hangs
(stopped, swapping) makes the control plane answer 503 after this, instead of holding the request
and its thread or coroutine with it."""
STATE_STORE_CONNECT_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 1.0
"""Longest wait for Redis's PING in a readiness check."""
CACHE_S = 0.5
"""A readiness answer is reused this long (probes from several sources cost one check)."""


def as_provider_error(err: Exception) -> Exception:
    """``err``, or the provider error it stands for: a Redis outage anywhere in its cause chain
    is the state store being unavailable. The original stays chained."""
    seen: BaseException | None = err
    for _ in range(8):  # causes nest a few levels at most
        if seen is None or isinstance(seen, ProviderError):
            break
        if isinstance(seen, REDIS_DOWN):
            out = StateStoreUnavailable(
                f"the state store (Redis) is unavailable ({type(seen).__name__}: {seen}); "
                f"retry in {STATE_STORE_RETRY_AFTER_S} s")
            out.__cause__ = err
            return out
        seen = seen.__cause__ or seen.__context__
    return err


class Readiness:
    """The provider's readiness: problems found by PINGing Redis and asking the backend for its
    namespaces (the Kubernetes backend lists them from the API server)."""

    def __init__(self, backend: Backend, redis_url: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        # No retries of the client's own: a probe answers within PROBE_TIMEOUT_S.
        self._redis = (redis.Redis.from_url(redis_url, socket_timeout=PROBE_TIMEOUT_S,
                                            socket_connect_timeout=PROBE_TIMEOUT_S,
                                            retry=Retry(NoBackoff(), 0))
                       if redis_url else None)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, list[str]] | None = None

    def problems(self) -> list[str]:
        """What keeps the provider from being ready; empty when ready."""
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last[0] < CACHE_S:
                return list(self._last[1])
            found = self._check()
            self._last = (now, found)
            return list(found)

    def _check(self) -> list[str]:
        found = []
        if self._redis is not None:
            try:
                self._redis.ping()
            except redis.RedisError as e:
                found.append(f"state store (Redis) unreachable: {type(e).__name__}: {e}")
        try:
            self._backend.namespaces()
        except Exception as e:  # any failure of the backend is "not ready", with its reason
            err = as_provider_error(e)
            if not (isinstance(err, StateStoreUnavailable) and found):
                found.append(f"backend not answering: {type(e).__name__}: {e}")
        return found

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


def state_store_client(redis_url: str) -> redis.Redis:
    """The provider's client of its state store, with ``STATE_STORE_TIMEOUT_S``."""
    return redis.Redis.from_url(redis_url, socket_timeout=STATE_STORE_TIMEOUT_S,
                                socket_connect_timeout=STATE_STORE_CONNECT_TIMEOUT_S)
