"""Per-replica metrics of the sidecar: Prometheus text for ``/_/metrics``, JSON for ``/_/stats``.

Counters live in the sidecar's own CollectorRegistry (never the global one: tests and embedders
run several sidecars in one process). Percentiles for ``/_/stats`` come from a window of the
most recent requests, so they follow the current load rather than the whole lifetime; they are the
project's one percentile (``fastgshare.stats``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fast_manager.settings import SidecarSettings
from fast_manager.tokens import TokenMode
from fastgshare.stats import percentile

LATENCY_WINDOW = 2048
"""Requests kept for the ``/_/stats`` percentiles."""
_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25,
                      0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
_WAIT_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)


class ReplicaMetrics:
    """What one replica did: counters for Prometheus plus a recent-latency window."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ident = {"function_name": settings.function, "namespace": settings.namespace,
                 "replica": settings.replica, "device": settings.device}
        names = list(ident)

        def lab(metric):
            return metric.labels(**ident)

        r = self.registry
        self._requests = Counter("fastgshare_replica_requests", "Requests answered, by status",
                                 names + ["code"], registry=r)
        self._ident = ident
        self._errors = lab(Counter("fastgshare_replica_errors",
                                   "Requests answered with 5xx", names, registry=r))
        self._rejected = lab(Counter("fastgshare_replica_rejected",
                                     "Requests refused with 429 (queue full)", names, registry=r))
        self._latency = lab(Histogram("fastgshare_replica_request_seconds",
                                      "Time from arrival to answer", names,
                                      buckets=_LATENCY_BUCKETS_S, registry=r))
        self._queue_wait = lab(Histogram("fastgshare_replica_queue_wait_seconds",
                                         "Time waiting for the worker (FIFO queue)", names,
                                         buckets=_WAIT_BUCKETS_S, registry=r))
        self._token_wait = lab(Histogram("fastgshare_replica_token_wait_seconds",
                                         "Time waiting for a device-time token", names,
                                         buckets=_WAIT_BUCKETS_S, registry=r))
        self._busy = lab(Counter("fastgshare_replica_busy_seconds",
                                 "Device time used, as reported by the worker", names, registry=r))
        self._queued = lab(Gauge("fastgshare_replica_queue_depth", "Requests waiting", names,
                                 registry=r))
        self._inflight = lab(Gauge("fastgshare_replica_inflight", "Requests executing", names,
                                   registry=r))
        self._worker_up = lab(Gauge("fastgshare_replica_worker_up", "1 while the worker is ready",
                                    names, registry=r))
        self._restarts = lab(Counter("fastgshare_replica_worker_restarts",
                                     "Times the worker was restarted", names, registry=r))
        self._mode = Gauge("fastgshare_replica_token_mode",
                           "1 for the token mode in use (shared, local-fallback, unmanaged)",
                           names + ["mode"], registry=r)
        self._mem_limit = lab(Gauge("fastgshare_replica_memory_limit_bytes",
                                    "Memory limit of the worker (0: none)", names, registry=r))
        self._mem_breaches = lab(Gauge("fastgshare_replica_memory_breaches",
                                       "Workers killed for exceeding the memory limit", names,
                                       registry=r))
        self._mem_mode = Gauge("fastgshare_replica_memory_enforcement",
                               "1 for how the memory limit is enforced (cgroup-v2, cgroup-v1, "
                               "rss-watch, off)", names + ["mode"], registry=r)
        self._batch = lab(Histogram("fastgshare_replica_batch_size",
                                    "Size of the worker batch that served each request (per "
                                    "request: a batch of b counts b times)", names,
                                    buckets=_BATCH_BUCKETS, registry=r))
        self.batch_requests: dict[int, int] = {}
        """Requests served, by the size of the batch that served them."""
        self._by_code: dict[int, Any] = {}
        """The requests counter's child per status code (``labels()`` costs a lookup and a
        tuple of label values on every call)."""
        self._mode_now: TokenMode | None = None
        self._window: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.requests = 0
        self.errors = 0
        self.rejected = 0
        self.busy_ms_total = 0.0
        self.queued = 0
        self.inflight = 0

    def answered(self, status: int, latency_s: float) -> None:
        self.requests += 1
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self._requests.labels(**self._ident, code=str(status))
        child.inc()
        self._latency.observe(latency_s)
        self._window.append(latency_s * 1000.0)
        if status >= 500:
            self.errors += 1
            self._errors.inc()
        elif status == 429:
            self.rejected += 1
            self._rejected.inc()

    def busy(self, busy_ms: float) -> None:
        self.busy_ms_total += busy_ms
        self._busy.inc(busy_ms / 1000.0)

    def batched(self, raw_size: str | None) -> None:
        """The worker's ``X-Fastgshare-Batch`` answer header (absent: it does not batch)."""
        if not raw_size:
            return
        try:
            size = int(raw_size)
        except ValueError:
            return
        self.batch_requests[size] = self.batch_requests.get(size, 0) + 1
        self._batch.observe(size)

    def batch_summary(self) -> dict[str, object]:
        """Requests and (estimated) batches by batch size, and the mean batch size."""
        n = sum(self.batch_requests.values())
        batches = sum(c / s for s, c in self.batch_requests.items())
        return {"requests_by_size": {str(s): c for s, c in sorted(self.batch_requests.items())},
                "batches": round(batches, 1),
                "mean_size": round(n / batches, 3) if batches else None}

    def queue_waited(self, wait_s: float) -> None:
        self._queue_wait.observe(wait_s)

    def token_waited(self, wait_s: float) -> None:
        self._token_wait.observe(wait_s)

    def set_queued(self, n: int) -> None:
        self.queued = n
        self._queued.set(n)

    def set_inflight(self, n: int) -> None:
        self.inflight = n
        self._inflight.set(n)

    def worker_state(self, up: bool, restarted: bool = False) -> None:
        self._worker_up.set(1 if up else 0)
        if restarted:
            self._restarts.inc()

    def token_mode(self, mode: TokenMode) -> None:
        """Called after every acquire (so that a fallback shows at once): only a change costs."""
        if mode is self._mode_now:
            return
        self._mode_now = mode
        for m in TokenMode:
            self._mode.labels(**self._ident, mode=m.value).set(1 if m == mode else 0)

    def memory(self, mode: str, limit_bytes: int | None, breaches: int) -> None:
        self._mem_mode.labels(**self._ident, mode=mode).set(1)
        self._mem_limit.set(limit_bytes or 0)
        self._mem_breaches.set(breaches)

    def latency_ms(self) -> dict[str, float]:
        values = sorted(self._window)
        return {f"p{q}": round(percentile(values, q, presorted=True, empty=0.0), 3) for q in (50, 95, 99)}

    def p50_s(self) -> float:
        return percentile(self._window, 50, empty=0.0) / 1000.0

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)
