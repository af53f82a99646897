"""gunicorn settings for the provider: ``gunicorn -c python:gateway_plugin.gunicorn_conf ...``.

One worker process, because the local backend supervises replica processes in-process and keeps
its state in memory; threads for concurrency (``gthread``), since invocations mostly wait on
replicas. ``bind`` is given on the command line.
"""

from __future__ import annotations

from typing import Any

workers = 1
worker_class = "gthread"
threads = 32
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
