"""Waiting for real processes in tests: poll a condition until it holds or a deadline passes; pace
an open-loop load that steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.2
"""How often the condition is checked."""


def wait_for(predicate: Callable[[], T], timeout_s: float = 90.0, what: str = "condition") -> T:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stepped_load(submit: Callable[[], object], base_rps: float, step_rps: float,
                 stepped: threading.Event, stop: threading.Event) -> None:
    """An open-loop paced load until ``stop``: ``submit()`` at ``base_rps`` per second, and from
    the moment ``stepped`` is set at ``step_rps`` (at once, not after the base rate's gap)."""
    rate, t = base_rps, time.monotonic()
    while not stop.is_set():
        submit()
        t += 1.0 / rate
        after = rate == step_rps
        woken = (stop if after else stepped).wait(max(0.0, t - time.monotonic()))
        if woken and not after:
            rate, t = step_rps, time.monotonic()
