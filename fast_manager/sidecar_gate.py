"""The sidecar's gate: how many requests are inside the worker at once, and who goes next.

Up to ``capacity`` holders (1, or 2 x B_max when the worker batches), the rest waiting strictly in
arrival order, each with its own deadline. Changed at run time with ``resize`` when the
replica's batch is (``PUT /_/batch``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class FifoGate:
    """Up to ``capacity`` holders at a time (1 unless batching), waiters served strictly in arrival
    order, each with its own deadline.

    Hand-rolled rather than ``asyncio.wait_for(lock.acquire())``: that pattern can acquire the
    lock and still raise TimeoutError in Python 3.11, leaking it and stalling the replica.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._capacity = max(1, capacity)
        self._holders = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def busy(self) -> bool:
        return self._holders >= self._capacity

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def enter(self, timeout_s: float) -> bool:
        if not self.busy and not self.waiting:
            self._holders += 1
            return True
        if timeout_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(timeout_s, lambda: fut.done() or fut.set_result(False))
        try:
            granted = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.leave()  # handed to us just as we were cancelled: pass it on
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
        return granted

    def resize(self, capacity: int) -> None:
        """A new capacity (the batch changed at run time): more room admits waiters now; less
        takes effect as holders leave."""
        self._capacity = max(1, capacity)
        while self._holders < self._capacity and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                self._holders += 1

    def leave(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # handed over: the holder count stays
                return
        self._holders -= 1
