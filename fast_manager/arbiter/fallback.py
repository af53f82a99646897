"""The local limiter a sidecar uses while Redis is unreachable.

Without the shared arbiter there is no way to coordinate with the device's other replicas, so each
replica keeps itself to its static guarantee: busy time in any sliding window <= request x window.
If every replica does so and the requests fit the device (the scheduler's packing), they still fit.
The arithmetic is the model's (buckets, charges); the clock is given, the waiting is asyncio's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from fast_manager.tokens import Lease

from . import model


class LocalLimiter:
    """One replica's time budget, enforced in-process."""

    def __init__(self, spec: model.ReplicaSpec, params: model.ArbiterParams,
                 clock_us: Callable[[], int]) -> None:
        self.spec = spec
        self.params = params
        self.clock_us = clock_us
        self._buckets: dict[int, int] = {}
        self._est_us = 0
        self._ids = itertools.count(1)

    def _token_us(self) -> int:
        return min(model.token_us(self._est_us, self.params), self.spec.request_us)

    def wait_us(self, now_us: int) -> int:
        """How long until a token fits the request budget (0: now)."""
        used = model.window_usage(self._buckets, now_us, self.params)
        tok = self._token_us()
        if used + tok <= self.spec.request_us:
            return 0
        return max(1, model.cap_eases_at(self._buckets, used, tok, self.spec.request_us, now_us,
                                         self.params) - now_us)

    async def acquire(self, timeout_s: float) -> Lease | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            now = self.clock_us()
            wait = self.wait_us(now)
            if wait == 0:
                tok = self._token_us()
                return Lease(f"local:{next(self._ids)}", tok / 1000,
                             (now + model.lease_us(tok, self._est_us, self.params)) / 1e6)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(remaining, wait / 1e6))

    def release(self, busy_ms: float) -> None:
        busy_us = max(0, round(busy_ms * 1000))
        self._buckets = model.charged(self._buckets, busy_us, self.clock_us(), self.params)
        if busy_us > 0:
            self._est_us = model.ewma_us(self._est_us, busy_us)
