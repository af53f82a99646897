"""gunicorn settings for the provider: ``gunicorn -c python:gateway_plugin.gunicorn_conf ...``.

Several worker processes (``FASTGSHARE_PROVIDER_WORKERS``, default: one per usable core): the
provider holds no process state (replicas are the node agent's or Kubernetes'; routing tables are
refreshed from shared state in the background; invocation counts are summed over the workers'
files), so any worker can serve any request and the invoke path is not held to one GIL. Within a
worker, a greenlet per connection (``gevent``, the default; ``gthread`` threads on request), since
invocations mostly wait on replicas, with a read timeout on client sockets
(``gateway_plugin.gunicorn_gevent``, ``gunicorn_worker``) so that slow clients cannot hold them.
``bind`` is given on the command line. Every value is validated here, at start, naming the
variable and its range.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gateway_plugin.gunicorn_worker import ProviderWorker

WORKERS_ENV = "FASTGSHARE_PROVIDER_WORKERS"
WORKERS_RANGE = (1, 256)
THREADS_ENV = "FASTGSHARE_PROVIDER_THREADS"
THREADS_RANGE = (1, 4096)
READ_TIMEOUT_ENV = "FASTGSHARE_PROVIDER_READ_TIMEOUT_S"
READ_TIMEOUT_RANGE_S = (0.1, 3600.0)
WORKER_CLASS_ENV = "FASTGSHARE_PROVIDER_WORKER_CLASS"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_created_dir: str | None = None


def default_workers() -> int:
    """One worker per core this process may run on (its affinity, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def _number(env: Mapping[str, str], name: str, default: str, lo: float, hi: float,
            kind: type[int] | type[float]) -> Any:
    raw = env.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise SystemExit(f"{name}={raw!r}: must be {what} in [{lo:g}, {hi:g}]")
    return value


_env = os.environ
workers = _number(_env, WORKERS_ENV, str(default_workers()), *WORKERS_RANGE, int)
"""Provider processes. Each has its own routing table, connection pools and threads."""
threads = _number(_env, THREADS_ENV, "128", *THREADS_RANGE, int)
"""Requests served at once per worker. An invocation holds its thread while it waits on a
replica, and the provider counts an arrival (``fastgshareInvocationsStarted``: what the
scheduler reads as demand) only when a thread picks the request up: past this many waiting,
arrivals wait in gunicorn uncounted. Threads waiting on sockets are cheap."""
ProviderWorker.read_timeout_s = _number(_env, READ_TIMEOUT_ENV, "10", *READ_TIMEOUT_RANGE_S, float)


def _worker_class(env: Mapping[str, str]) -> Any:
    """``uvicorn`` (the default: ``ProviderUvicornWorker``, invocations on an event loop),
    ``gevent`` (``ProviderGeventWorker``) or ``gthread`` (``ProviderWorker``); all with the read
    timeout on client requests.

    Measured with ``bench.dataplane`` on the 2-core VM (BENCHMARKS.md): gevent's highest rate
    at p99 <= 10 ms was never below gthread's (2026-12-04, three rounds), and uvicorn's invoke
    path on the loop, with no thread hand-off and no WSGI environ, added less latency than
    either (2026-12-05). gevent and gthread stay selectable: they need no event-loop library."""
    name = env.get(WORKER_CLASS_ENV, "uvicorn").strip().lower()
    if name == "gthread":
        return ProviderWorker
    if name == "gevent":
        try:
            from gateway_plugin.gunicorn_gevent import ProviderGeventWorker
        except ImportError as e:
            raise SystemExit(f"{WORKER_CLASS_ENV}=gevent: the gevent package is not installed "
                             "(pip install gevent, or choose gthread)") from e
        ProviderGeventWorker.read_timeout_s = ProviderWorker.read_timeout_s
        return ProviderGeventWorker
    if name == "uvicorn":
        try:
            from gateway_plugin.gunicorn_uvicorn import (
                HeaderDeadlineProtocol,
                ProviderUvicornWorker,
            )
        except ImportError as e:
            raise SystemExit(f"{WORKER_CLASS_ENV}=uvicorn: uvicorn, uvicorn-worker, uvloop, "
                             "httptools or a2wsgi is not installed (pip install them, or choose "
                             "gthread)") from e
        ProviderUvicornWorker.read_timeout_s = ProviderWorker.read_timeout_s
        HeaderDeadlineProtocol.header_timeout_s = ProviderWorker.read_timeout_s
        ProviderUvicornWorker.wsgi_threads = threads
        return ProviderUvicornWorker
    raise SystemExit(f"{WORKER_CLASS_ENV}={name!r}: must be one of uvicorn, gevent, gthread")


worker_class = _worker_class(_env)
worker_connections = max(1000, threads)
"""gevent: connections served at once per worker (each a greenlet; a slow client holds one for the
read timeout at most)."""
timeout = 0
"""No worker heartbeat kill: invocations and followed logs may last long; gthread stays responsive."""
graceful_timeout = 10
keepalive = 75
"""Longer than the OpenFaaS gateway's idle connection timeout, so the provider never closes first."""
accesslog = None


def on_starting(server: Any) -> None:
    """Before any worker forks: the directory the workers' counters are summed in (prometheus
    multiprocess mode, see ``gateway_plugin.metrics``; ``STATE/provider-metrics``, else a temporary
    one), emptied, so each start counts from zero as a single process did. Set in the master
    only, so nothing else it starts inherits it."""
    import glob
    import tempfile

    # Not imported from gateway_plugin.metrics: that imports prometheus_client, which picks its
    # value class once, at import; the workers must import it after this is set.
    global _created_dir
    path = os.environ.get(MULTIPROC_ENV)
    if not path and os.environ.get("FASTGSHARE_STATE_DIR"):  # reused, so a crash leaks nothing
        path = os.environ[MULTIPROC_ENV] = os.path.join(
            os.path.expanduser(os.environ["FASTGSHARE_STATE_DIR"]), "provider-metrics")
    if not path:
        path = _created_dir = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(
            prefix="fastgshare-provider-metrics-")
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.unlink(stale)


def on_exit(server: Any) -> None:
    """Remove the counters' directory if ``on_starting`` made it."""
    import shutil

    if _created_dir:
        shutil.rmtree(_created_dir, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """A worker's live gauges go with it (its counters stay: they were counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """After the app is loaded in a worker: what it holds lives until the worker exits, so the
    cyclic collector need not walk it again (a full collection of the loaded provider's objects
    is a pause on the invoke path)."""
    import gc

    gc.collect()
    gc.freeze()


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the backend's threads, the count flusher and the proxy's pool when a worker exits."""
    import sys

    module = sys.modules.get("gateway_plugin.wsgi")
    if module is not None:
        module.close_app(module.app)
