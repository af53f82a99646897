"""Why a replica failed to start, from its log: the line a user needs in the 503 the provider
answers once a function's last starts all failed (``fastgshare.local_state.StartFailures``).

``StartFailureLog`` is the supervisor's record of them in Redis (``fastgshare.local_state``).
Starts, probes and stops nothing: it is told what the supervisor saw.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import redis
import urllib3

from fastgshare import local_state

log = logging.getLogger("fastgshare.local.start-failures")

STATS_TIMEOUT_S = 1.0
"""Longest wait for an unready replica's ``/_/stats`` (its worker's restart count)."""

TAIL_BYTES = 16 * 1024
"""How much of the end of a replica's log is searched for the reason."""
_ERROR_LINE = re.compile(r"(Error|Exception|error:|refused|Killed|killed|MemoryError|bad sidecar)")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z?\s+")
"""The time the replica's log lines start with (``fast_manager.logline``): not part of the reason."""
_NOISE = re.compile(r"(worker exited with code|restarting in|^\s*File \"|^\s*\^+\s*$|^Traceback)")


def failure_reason(log_path: Path, fallback: str) -> str:
    """The last error-looking line of the replica's log (a traceback's final line, the sidecar's
    refusal of its environment), else its last line, else ``fallback``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return fallback
    lines = [_TIMESTAMP.sub("", ln.strip()) for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.search(line) and not _NOISE.search(line):
            return line[-400:]
    return lines[-1][-400:] if lines else fallback


class StartFailureLog:
    """The supervisor's side of the start-failure record: counts failed starts of a function's
    current spec (a replica that exited before it was ever ready, a worker its sidecar had to
    restart before it was ever ready, a replica that could not be started) and clears the count
    when a replica becomes ready, the spec changes or the function is scaled to zero."""

    def __init__(self, client: redis.Redis, http: urllib3.PoolManager,
                 log_path: Callable[[str, str, str], Path],
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._http = http
        self._log_path = log_path
        self._clock = clock
        self._worker_restarts: dict[str, int] = {}
        self._clean: set[tuple[str, str]] = set()
        """Functions known to have no record (so a pass does not write to Redis for nothing)."""

    def failed(self, ref: tuple[str, str], generation: int, replica_id: str, fallback: str) -> None:
        reason = (failure_reason(self._log_path(ref[0], ref[1], replica_id), fallback)
                  if replica_id else fallback)
        count = local_state.record_start_failure(self._redis, ref[0], ref[1], generation, reason,
                                                 self._clock())
        self._clean.discard(ref)
        if count == local_state.START_FAILURES_TO_REFUSE:
            log.warning("%s/%s: %d replica starts failed in a row (%s); invocations are refused "
                        "until a replica is ready or the function is redeployed", ref[0], ref[1],
                        count, reason)

    def reset(self, ref: tuple[str, str]) -> None:
        if ref not in self._clean:
            local_state.clear_start_failures(self._redis, ref[0], ref[1])
            self._clean.add(ref)

    def check_worker(self, ref: tuple[str, str], generation: int, replica_id: str, url: str) -> None:
        """A replica not ready yet: each restart of its worker since the last look is a failed
        start (a handler that raises in ``load()`` never lets its replica exit)."""
        if not url:
            return
        try:
            resp = self._http.request("GET", f"{url}/_/stats", timeout=STATS_TIMEOUT_S)
            restarts = int(json.loads(resp.data)["worker"]["restarts"]) if resp.status == 200 else 0
        except (urllib3.exceptions.HTTPError, ValueError, KeyError, TypeError):
            return
        seen = self._worker_restarts.get(replica_id, 0)
        self._worker_restarts[replica_id] = restarts
        for _ in range(max(0, restarts - seen)):
            self.failed(ref, generation, replica_id, "the worker exited while loading")

    def forget(self, replica_id: str) -> None:
        self._worker_restarts.pop(replica_id, None)
