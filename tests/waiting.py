"""Waiting for real processes in tests: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

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
