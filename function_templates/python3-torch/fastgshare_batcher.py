"""The worker's batcher: a queue, one execution thread, and the batching policy deciding when.

Requests are submitted by the worker's HTTP threads and wait on their own event; one thread takes
batches as ``fastgshare_batch_policy.decide`` says (by the oldest request's deadline under the
function's SLO, or the fixed size and delay without one), runs each through ``run`` and hands every
request its own answer. The clock is given (``time.monotonic`` by default), so the policy sees the
same time the queue was stamped with.

Stdlib only: it ships in function images beside ``index.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import fastgshare_batch_policy as policy

Answer = tuple[int, dict[str, str], bytes, float]
"""(status, headers, body, busy_ms) of one request."""


class Pending:
    """One request waiting in the batcher, and later its answer."""

    __slots__ = ("answer", "arrival_s", "done", "event", "size", "wait_ms")

    def __init__(self, event: Any, arrival_s: float) -> None:
        self.event = event
        self.arrival_s = arrival_s
        self.done = threading.Event()
        self.answer: Answer | None = None
        self.size = 0
        """How many requests the execution that answered this one served."""
        self.wait_ms = 0.0
        """Time from arrival in the worker to the start of its batch."""


class Batcher:
    """Collects requests into batches by ``settings`` and runs them one batch at a time."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Answer]],
                 settings: policy.BatchSettings,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        self.run = run
        self.settings = settings
        self.clock = clock
        self.state = policy.initial_state(settings)
        self._cond = threading.Condition()
        self._pending: deque[Pending] = deque()
        self._running = False
        """A batch is executing (one at a time, in the batcher thread or a submitter's)."""
        self.batches = 0
        self.requests = 0
        self.sizes: Counter[int] = Counter()
        """Batches run, by size."""
        if start:
            threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def resize(self, max_batch: int) -> None:
        """A new B_max at run time (the node agent's, through the sidecar): a raise takes effect
        at once (the cap jumps to it: the first lever of a burst, no additive climb), a cut as
        soon as the running batch ends."""
        with self._cond:
            self.settings = replace(self.settings, max_batch=max(1, max_batch))
            self.state = replace(self.state, cap=max(1, max_batch) if max_batch > self.state.cap
                                 else min(self.state.cap, max(1, max_batch)))
            self._cond.notify_all()

    def put(self, event: Any) -> Pending:
        with self._cond:
            now = self.clock()
            item = Pending(event, now)
            self.state = policy.on_arrival(self.state, now, self.settings)
            self._pending.append(item)
            self._cond.notify()
        return item

    def submit(self, event: Any) -> Pending:
        """Queue ``event`` and block until it is answered. When nothing runs or waits and the
        policy would run it alone at once, the calling thread runs it itself: a lone request pays
        no hand-off to the batcher thread."""
        with self._cond:
            now = self.clock()
            item = Pending(event, now)
            self.state = policy.on_arrival(self.state, now, self.settings)
            alone = (not self._running and not self._pending
                     and policy.decide(now, 1, now, self.state, self.settings).take == 1)
            if alone:
                self._running = True
            else:
                self._pending.append(item)
                self._cond.notify()
        if alone:
            self.run_one_batch([item])
        item.done.wait()
        return item

    def take(self, block: bool = True) -> list[Pending]:
        """The next batch, when none runs and the policy says so (``block=False``: [] if it says
        wait); the caller runs it with ``run_one_batch``."""
        with self._cond:
            while True:
                while self._running or not self._pending:
                    if not block:
                        return []
                    self._cond.wait()
                now = self.clock()
                d = policy.decide(now, len(self._pending), self._pending[0].arrival_s,
                                  self.state, self.settings)
                if d.take > 0:
                    self._running = True
                    return [self._pending.popleft() for _ in range(d.take)]
                if not block:
                    return []
                self._cond.wait(max(0.0, (d.wait_until_s or now) - now))

    def run_one_batch(self, batch: list[Pending]) -> None:
        start = self.clock()
        for item in batch:
            item.wait_ms = (start - item.arrival_s) * 1000.0
        try:
            answers = list(self.run([p.event for p in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} requests")
        except BaseException as e:  # never leave a request waiting forever
            text = f"{type(e).__name__}: {e}".encode()
            answers = [(500, {"Content-Type": "text/plain; charset=utf-8"}, text, 0.0)
                       for _ in batch]
        end = self.clock()
        with self._cond:
            self.state = policy.on_batch_done(
                self.state, len(batch), (end - start) * 1000.0,
                [(end - p.arrival_s) * 1000.0 for p in batch], self.settings)
            self.batches += 1
            self.requests += len(batch)
            self.sizes[len(batch)] += 1
            self._running = False
            self._cond.notify_all()
        for item, answer in zip(batch, answers, strict=True):
            item.answer = answer
            item.size = len(batch)
            item.done.set()

    def _loop(self) -> None:
        while True:
            self.run_one_batch(self.take())

    def summary(self) -> dict[str, Any]:
        with self._cond:
            out = dict(policy.summary(self.state, self.settings))
            out.update(batches=self.batches, requests=self.requests, queued=len(self._pending),
                       sizes={str(k): v for k, v in sorted(self.sizes.items())})
        return out
