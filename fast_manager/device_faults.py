"""Fatal device faults: one MPS client's sticky CUDA error takes down every client of its GPU.

Under MPS, a fatal GPU exception in one client (an illegal memory access, a device-side assert)
terminates the work of every client of that GPU's MPS server, and the server recovers only once
all of them have exited (clients then see ``cudaErrorMpsClientTerminated`` until they restart).
So a fault in one replica is every replica's business:

1. the worker answers an execution that hit a context-fatal error with ``X-Fastgshare-Device-Fault:
   <error>`` (``function_templates/python3-torch/index.py`` classifies the error text);
2. its sidecar publishes the fault on the device's channel (``keys.device_faults``), keeps it in the
   device's fault list, restarts its worker, and answers that request 500 (the request that
   faulted is not run again: it may fault again and restart the whole GPU twice);
3. every sidecar of that GPU follows the channel and restarts its own worker, so that the MPS server
   has no client left and recovers; the requests those workers were executing, and any that
   failed with a collateral error (the MPS server terminated them), are run again once the worker
   is back, not dropped.

On a CPU device a fault is nobody else's: neighbours do not restart. The GPU path is exercised on
the CPU with a stand-in GPU record and an error raised with CUDA's text; a real MPS fault has not
been provoked on a GPU (doing so on a lent machine could disturb it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from fastgshare import keys

log = logging.getLogger("device_faults")

FAULT_HEADER = "X-Fastgshare-Device-Fault"
"""Response header from the worker: the execution hit a context-fatal device error (its text)."""
COLLATERAL_MARKERS = ("mps client terminated", "mpsclientterminated", "mps client has been terminated",
                      "mps server is not ready",
                      "mpsservernotready", "mps server not ready")
"""Errors that a client sees because another client of the MPS server faulted."""
KEEP_FAULTS = 100
"""Faults kept in a device's list."""


def is_collateral(reason: str) -> bool:
    """Whether ``reason`` is the echo of a neighbour's fault rather than a fault of this execution."""
    low = reason.lower().replace("_", " ")
    return any(m in low or m in low.replace(" ", "") for m in COLLATERAL_MARKERS)


class FaultChannel:
    """One replica's side of its device's fault channel: publish its faults, follow the others'."""

    def __init__(self, redis_url: str | None, device: str, replica: str,
                 on_fault: Callable[[dict[str, object]], Awaitable[None]]) -> None:
        self.device = device
        self.replica = replica
        self.on_fault = on_fault
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=2,
                                              socket_connect_timeout=2) if redis_url else None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def report(self, reason: str) -> dict[str, object]:
        """Tell the device's other replicas; the fault is kept in the device's list too."""
        fault: dict[str, object] = {"device": self.device, "replica": self.replica,
                                    "reason": reason[:500], "at_s": round(time.time(), 3)}
        if self._redis is not None:
            raw = json.dumps(fault)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.lpush(keys.device_faults(self.device), raw)
                    pipe.ltrim(keys.device_faults(self.device), 0, KEEP_FAULTS - 1)
                    pipe.publish(keys.device_faults(self.device), raw)
                    await pipe.execute()
            except (aioredis.RedisError, OSError) as e:
                log.error("could not report the device fault to Redis (%s): the device's other "
                          "replicas will restart only when they fault themselves", e)
        return fault

    def start(self) -> None:
        if self._redis is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def _follow(self) -> None:
        assert self._redis is not None
        down = False  # an outage is logged once, and its end once
        while True:  # resubscribe after Redis outages
            try:
                async with self._redis.pubsub() as sub:
                    await sub.subscribe(keys.device_faults(self.device))
                    self.subscribed.set()
                    if down:
                        down = False
                        log.warning("device fault channel back")
                    async for msg in sub.listen():
                        if msg.get("type") != "message":
                            continue
                        try:
                            fault = json.loads(msg["data"])
                        except (TypeError, ValueError):
                            continue
                        if fault.get("replica") != self.replica:
                            await self.on_fault(fault)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis gone: try again shortly; faults meanwhile are missed
                self.subscribed.clear()
                if not down:
                    down = True
                    log.warning("device fault channel unavailable (%s); retrying every second", e)
                await asyncio.sleep(1.0)


__all__ = ["COLLATERAL_MARKERS", "FAULT_HEADER", "FaultChannel", "is_collateral"]
