"""Prometheus metrics of the provider, under the OpenFaaS gateway's names.

- ``gateway_function_invocation_total{function_name,code}``: invocations through ``/function/*``.
- ``gateway_function_invocation_started_total{function_name}``: arrivals (before any answer).
- ``gateway_functions_seconds{function_name,code}``: their duration (to response headers).
- ``gateway_service_count{function_name}``: desired replicas, read from the backend per scrape.
- ``fastgshare_replica_ready`` / ``fastgshare_replica_sm_pct`` / ``fastgshare_replica_restarts``
  ``{function_name,replica,device}``: per-replica state as the backend reports it.

``function_name`` is ``name.namespace``, as the gateway labels it. The registry is passed in,
never the global one, so several apps (tests) can live in one process.

The provider runs several worker processes, so its counts must not live in one of them: under
gunicorn the counters are prometheus_client's multiprocess values (``PROMETHEUS_MULTIPROC_DIR``,
set by ``gunicorn_conf``): each worker adds to its own memory-mapped file, at the cost of a memory
write on the invoke path, and a scrape or ``invocationCount`` from any worker sums every file, so
it counts what every worker served, at once. Without that directory (tests, one process) the
counts are this process's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway_plugin.backend import Backend

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram buckets; finer than the gateway's defaults because inference calls are short."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's switch to multiprocess values (read when it is first imported)."""
TOTALS_CACHE_S = 0.01
"""Summed totals are reused this long: one ``/system/functions`` reads them once, not per function."""


def function_label(name: str, namespace: str) -> str:
    return f"{name}.{namespace}"


def multiprocess_dir() -> str | None:
    """The directory of the workers' counter files when prometheus_client runs multiprocess."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV) or os.environ.get("prometheus_multiproc_dir")


class _SummedTotals:
    """Totals by (sample name, function, kind label) over every worker's file, cached briefly."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._at_s = float("-inf")
        self._totals: dict[tuple[str, str, str], float] = {}

    def get(self, sample: str, function_name: str, kind: str = "") -> float:
        with self._lock:
            now_s = time.monotonic()
            if now_s - self._at_s > TOTALS_CACHE_S:
                self._totals = self._read()
                self._at_s = now_s
            return self._totals.get((sample, function_name, kind), 0.0)

    def invalidate(self) -> None:
        """This process just counted: the next read sums the files again."""
        self._at_s = float("-inf")

    def _read(self) -> dict[tuple[str, str, str], float]:
        import glob

        from prometheus_client.multiprocess import MultiProcessCollector

        files = glob.glob(os.path.join(self._path, "counter_*.db"))
        out: dict[tuple[str, str, str], float] = defaultdict(float)
        for metric in MultiProcessCollector.merge(files, accumulate=True):
            for s in metric.samples:
                if s.name.endswith("_total") and "function_name" in s.labels:
                    out[(s.name, s.labels["function_name"], s.labels.get("kind", ""))] += s.value
        return dict(out)


class _BackendCollector(Collector):
    """Reads replica counts from the backend at scrape time (nothing cached, nothing stale)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        services = GaugeMetricFamily(
            "gateway_service_count", "Current count of replicas for function", labels=["function_name"])
        labels = ["function_name", "replica", "device"]
        ready = GaugeMetricFamily("fastgshare_replica_ready", "1 if the replica serves", labels=labels)
        sm = GaugeMetricFamily("fastgshare_replica_sm_pct", "SM share of the replica, %", labels=labels)
        restarts = GaugeMetricFamily(
            "fastgshare_replica_restarts", "Times the replica was restarted", labels=labels)
        try:
            for namespace in self._backend.namespaces():
                for state in self._backend.list(namespace):
                    fn = function_label(state.spec.name, state.spec.namespace)
                    services.add_metric([fn], float(state.replicas))
                    for rep in state.replica_status:
                        key = [fn, rep.replica_id, rep.device_id]
                        ready.add_metric(key, 1.0 if rep.ready else 0.0)
                        sm.add_metric(key, float(rep.sm_pct))
                        restarts.add_metric(key, float(rep.restarts))
        except Exception:  # a scrape must not fail because the backend hiccuped
            log.exception("could not read replica state for metrics")
        yield from (services, ready, sm, restarts)


class ProviderMetrics:
    """The provider's instruments, exposed on ``registry``."""

    def __init__(self, registry: CollectorRegistry, backend: Backend) -> None:
        self.registry = registry
        shared = multiprocess_dir()
        # Multiprocess: values go to this worker's file and a scrape reads every file, so the
        # instruments belong to no registry (they would be counted twice).
        own = None if shared else registry
        self._invocations = Counter(
            "gateway_function_invocation", "Function invocations",
            ["function_name", "code"], registry=own)
        self._seconds = Histogram(
            "gateway_functions_seconds", "Function invocation time taken",
            ["function_name", "code"], buckets=LATENCY_BUCKETS_S, registry=own)
        self._started = Counter(
            "gateway_function_invocation_started", "Function invocations started (arrivals)",
            ["function_name"], registry=own)
        self._forgotten = Counter(
            "fastgshare_provider_forgotten", "Counts of removed functions, subtracted from "
            "invocationCount so that a redeploy starts from zero", ["function_name", "kind"],
            registry=own)
        if shared:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(registry, path=shared)
        registry.register(_BackendCollector(backend))
        self._summed = _SummedTotals(shared) if shared else None
        self._counts: dict[str, float] = defaultdict(float)
        self._arrivals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        """(function, code) -> its counter and histogram children: ``labels()`` costs more than
        the increment (a dict read is atomic; a race only builds the same children twice)."""
        self._started_children: dict[str, Any] = {}

    def observe_started(self, function_name: str) -> None:
        """A request for ``name.namespace`` arrived (counted before it is forwarded or refused: the
        demand, where ``invocationCount`` is what was answered)."""
        child = self._started_children.get(function_name)
        if child is None:
            child = self._started_children[function_name] = self._started.labels(function_name)
        child.inc()
        if self._summed is None:
            with self._lock:
                self._arrivals[function_name] += 1
        else:
            self._summed.invalidate()

    def observe_invocation(self, function_name: str, code: int, duration_s: float) -> None:
        key = (function_name, str(code))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self._invocations.labels(*key),
                                              self._seconds.labels(*key))
        children[0].inc()
        children[1].observe(duration_s)
        if self._summed is None:
            with self._lock:
                self._counts[function_name] += 1
        else:
            self._summed.invalidate()

    def started_count(self, function_name: str) -> float:
        """Requests for ``name.namespace`` that arrived (every worker's, since the provider
        started or the function was last removed)."""
        if self._summed is None:
            with self._lock:
                return self._arrivals.get(function_name, 0.0)
        return self._summed_count("gateway_function_invocation_started_total", "started",
                                  function_name)

    def invocation_count(self, function_name: str) -> float:
        """Invocations of ``name.namespace`` answered (``invocationCount``), every worker's."""
        if self._summed is None:
            with self._lock:
                return self._counts.get(function_name, 0.0)
        return self._summed_count("gateway_function_invocation_total", "answered", function_name)

    def _summed_count(self, sample: str, kind: str, function_name: str) -> float:
        assert self._summed is not None
        total = self._summed.get(sample, function_name)
        forgotten = self._summed.get("fastgshare_provider_forgotten_total", function_name, kind)
        return max(0.0, total - forgotten)

    def forget(self, function_name: str) -> None:
        """Drop a removed function's counts, so a redeploy starts from zero."""
        if self._summed is None:
            with self._lock:
                self._counts.pop(function_name, None)
                self._arrivals.pop(function_name, None)
            return
        for kind, value in (("answered", self.invocation_count(function_name)),
                            ("started", self.started_count(function_name))):
            if value > 0:
                self._forgotten.labels(function_name, kind).inc(value)
        self._summed.invalidate()

    def close(self) -> None:
        """Nothing to flush: the counts are in this worker's file already."""
