"""Open-loop Poisson load through the gateway, one rate step at a time, with an early-stopping hook.

Why not MLPerf LoadGen for the search itself: LoadGen runs one fixed-rate test per call (setup,
its own minimum duration and query count, its own early stopping), while the rate search wants
many short steps in one continuous load, with a decision every 0.1 s from the step's latencies and
the sidecar's busy time, and no idle gap between steps (an idle gap refills the arbiter's sliding
window and would let a capped replica look faster than it is). A LoadGen Server run is the
natural independent check of a finished table's rate at a point; it is not wired in yet.

Latency is counted from each request's intended Poisson send time, so a late send (the event loop
behind) counts against the step, as it would against a client (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from fast_profiler.search import Verdict
from fastgshare.headers import HOLD_HEADER, WAIT_HEADER

CHECK_PERIOD_S = 0.1
"""How often a step's early-stopping rule is evaluated."""
REQUEST_TIMEOUT_S = 30.0
"""A request that takes longer is an error (and long past any SLO)."""


@dataclass
class StepRecord:
    """One step's requests as seen by the client (times from the event loop's monotonic clock)."""

    rate_rps: float
    started_s: float
    ended_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0
    outstanding: dict[int, float] = field(default_factory=dict)
    """Request id -> intended send time, while it is in flight."""
    verdict: Verdict = Verdict.CONTINUE
    service_ms: list[float] = field(default_factory=list)
    """Per answered request that said so (the sidecar's headers): the time it held the replica's
    server (``X-Fastgshare-Hold-Ms``) ..."""
    path_ms: list[float] = field(default_factory=list)
    """... and the rest of its latency outside the replica's queue and server (latency - wait -
    hold: client, gateway, network), in the same order."""

    def waiting_ages_ms(self, now_s: float) -> list[float]:
        return [(now_s - t) * 1000.0 for t in self.outstanding.values()]


def _wait_hold(headers: Mapping[str, str]) -> tuple[float, float] | None:
    """(queue wait, gate hold) in ms from a replica's response headers; None when absent."""
    try:
        return float(headers[WAIT_HEADER]), float(headers[HOLD_HEADER])
    except (KeyError, ValueError):
        return None


Decide = Callable[[StepRecord, float], Awaitable[Verdict]]
"""Given the step so far and the loop time now, CONTINUE / PASS / FAIL (the runner's early stopping)."""


class PoissonLoad:
    """A continuous open-loop load whose rate changes step by step."""

    def __init__(self, session: aiohttp.ClientSession, url: str, body: bytes, *, seed: int = 0,
                 headers: dict[str, str] | None = None) -> None:
        self._session = session
        self._url = url
        self._body = body
        self._headers = headers or {"Content-Type": "application/json"}
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0

    async def _one(self, step: StepRecord, rid: int, intended_s: float) -> None:
        loop = asyncio.get_running_loop()
        ok = False
        try:
            async with self._session.post(self._url, data=self._body, headers=self._headers,
                                          timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                split = _wait_hold(resp.headers)
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        finally:
            step.outstanding.pop(rid, None)
        if ok:
            latency = (loop.time() - intended_s) * 1000.0
            step.latencies_ms.append(latency)
            if split is not None:
                step.service_ms.append(split[1])
                step.path_ms.append(max(0.0, latency - split[0] - split[1]))
        else:
            step.errors += 1

    async def step(self, rate_rps: float, decide: Decide) -> StepRecord:
        """Send at ``rate_rps`` until ``decide`` says PASS or FAIL; in-flight requests keep running."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rec = StepRecord(rate_rps, t0)
        next_send = t0 + self._rng.expovariate(rate_rps)
        next_check = t0 + CHECK_PERIOD_S
        while True:
            now = loop.time()
            if now >= next_check:
                rec.verdict = await decide(rec, loop.time())
                if rec.verdict is not Verdict.CONTINUE:
                    break
                next_check = now + CHECK_PERIOD_S
            while next_send <= now:  # catch up: sends due while the loop was busy go out now
                rid = self._next_id
                self._next_id += 1
                rec.outstanding[rid] = next_send
                rec.sent += 1
                task = asyncio.create_task(self._one(rec, rid, next_send))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                next_send += self._rng.expovariate(rate_rps)
            await asyncio.sleep(max(0.0, min(next_send, next_check) - loop.time()))
        rec.ended_s = loop.time()
        return rec

    async def drain(self, timeout_s: float) -> bool:
        """Wait for every request in flight (True) or give up after ``timeout_s`` (False)."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not pending

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)


async def closed_loop(session: aiohttp.ClientSession, url: str, body: bytes, *, concurrency: int,
                      duration_s: float, headers: dict[str, str] | None = None) -> tuple[int, int, float]:
    """Saturate with ``concurrency`` back-to-back clients: (completed, errors, elapsed_s)."""
    loop = asyncio.get_running_loop()
    hdrs = headers or {"Content-Type": "application/json"}
    t0 = loop.time()
    done = errors = 0

    async def client() -> None:
        nonlocal done, errors
        while loop.time() - t0 < duration_s:
            try:
                async with session.post(url, data=body, headers=hdrs,
                                        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        done += 1
                    else:
                        errors += 1
            except (TimeoutError, aiohttp.ClientError):
                errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, errors, loop.time() - t0
