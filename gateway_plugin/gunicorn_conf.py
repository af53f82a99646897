"""gunicorn settings for the provider: ``gunicorn -c python:gateway_plugin.gunicorn_conf ...``.

One worker process, because the local backend supervises replica processes in-process and keeps
its state in memory; threads for concurrency (``gthread``), since invocations mostly wait on
replicas. ``bind`` is given on the command line.
"""

from __future__ import annotations

import os
from typing import Any

THREADS_ENV = "FASTGSHARE_PROVIDER_THREADS"
THREADS_RANGE = (1, 4096)


def _threads() -> int:
    raw = os.environ.get(THREADS_ENV, "128")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    lo, hi = THREADS_RANGE
    if not lo <= n <= hi:
        raise SystemExit(f"{THREADS_ENV}={raw!r}: must be an integer in [{lo}, {hi}]")
    return n


workers = 1
worker_class = "gthread"
threads = _threads()
"""Requests served at once. An invocation holds its thread while it waits on a replica, and the
provider counts an arrival (``fastgshareInvocationsStarted``: what the scheduler reads as demand)
only when a thread picks the request up: past this many waiting, arrivals wait in gunicorn
uncounted and the scheduler's own reads queue behind them. 128 (was 32): threads waiting on
sockets are cheap, and two replicas' sidecar queues (64 each) fit."""
timeout = 0
"""No worker heartbeat kill: invocations and followed logs may last long; gthread stays responsive."""
graceful_timeout = 10
keepalive = 75
"""Longer than the OpenFaaS gateway's idle connection timeout, so the provider never closes first."""
accesslog = None


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the backend's threads and the proxy's pool when the worker exits."""
    import sys

    module = sys.modules.get("gateway_plugin.wsgi")
    if module is not None:
        module.close_app(module.app)
