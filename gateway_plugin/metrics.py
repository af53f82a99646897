"""Prometheus metrics of the provider, under the OpenFaaS gateway's names.

- ``gateway_function_invocation_total{function_name,code}``: invocations through ``/function/*``.
- ``gateway_functions_seconds{function_name,code}``: their duration (to response headers).
- ``gateway_service_count{function_name}``: desired replicas, read from the backend per scrape.
- ``fastgshare_replica_ready`` / ``fastgshare_replica_sm_pct`` / ``fastgshare_replica_restarts``
  ``{function_name,replica,device}``: per-replica state as the backend reports it.

``function_name`` is ``name.namespace``, as the gateway labels it. The registry is passed in,
never the global one, so several apps (tests) can live in one process.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway_plugin.backend import Backend

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram buckets; finer than the gateway's defaults because inference calls are short."""


def function_label(name: str, namespace: str) -> str:
    return f"{name}.{namespace}"


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
    """The provider's instruments on a given registry."""

    def __init__(self, registry: CollectorRegistry, backend: Backend) -> None:
        self.registry = registry
        self._invocations = Counter(
            "gateway_function_invocation", "Function invocations",
            ["function_name", "code"], registry=registry)
        self._seconds = Histogram(
            "gateway_functions_seconds", "Function invocation time taken",
            ["function_name", "code"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self._started = Counter(
            "gateway_function_invocation_started", "Function invocations started (arrivals)",
            ["function_name"], registry=registry)
        registry.register(_BackendCollector(backend))
        self._counts: dict[str, float] = defaultdict(float)
        self._arrivals: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def observe_started(self, function_name: str) -> None:
        """A request for ``name.namespace`` arrived (counted before it is forwarded or refused: the
        demand, where ``invocationCount`` is what was answered)."""
        self._started.labels(function_name).inc()
        with self._lock:
            self._arrivals[function_name] += 1

    def started_count(self, function_name: str) -> float:
        """Requests for ``name.namespace`` that arrived since the provider started (or redeploy)."""
        with self._lock:
            return self._arrivals.get(function_name, 0.0)

    def observe_invocation(self, function_name: str, code: int, duration_s: float) -> None:
        code_label = str(code)
        self._invocations.labels(function_name, code_label).inc()
        self._seconds.labels(function_name, code_label).observe(duration_s)
        with self._lock:
            self._counts[function_name] += 1

    def invocation_count(self, function_name: str) -> float:
        """Invocations of ``name.namespace`` since the provider started (``invocationCount``)."""
        with self._lock:
            return self._counts.get(function_name, 0.0)

    def forget(self, function_name: str) -> None:
        """Drop a removed function's count, so a redeploy starts from zero."""
        with self._lock:
            self._counts.pop(function_name, None)
            self._arrivals.pop(function_name, None)
