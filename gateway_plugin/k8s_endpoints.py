"""The Kubernetes backend's routing table: the ready endpoints of every function Service, from
the EndpointSlices of the namespaces in use, re-listed by a background thread so that the invoke
path never waits on the Kubernetes API (it listed a Service's slices per request, cached 1 s).

A terminating pod's endpoint is not ready, so a scaled-down replica leaves the table within one
refresh while Kubernetes lets it finish (its termination grace period). Takes the list call as a
function: the ``kubernetes`` import stays in ``kubernetes_backend``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from gateway_plugin.backend import ReplicaStatus
from gateway_plugin.errors import ProviderError
from gateway_plugin.k8s_specs import ready_addresses

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label EndpointSlice controllers put on every slice: the Service it belongs to."""


def by_service(slices: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Ready sidecar URLs by Service name. Pure."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for s in slices:
        service = ((s.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            grouped.setdefault(service, []).append(s)
    return {service: ready_addresses(group) for service, group in grouped.items()}


def at_endpoints(replicas: Sequence[ReplicaStatus], urls: Sequence[str]) -> tuple[ReplicaStatus, ...]:
    """Each replica with its invoke address from the Service's ready endpoints (matched by pod IP),
    the address the provider routes to: the port is the one the EndpointSlice names, not a guess
    at the container's. A replica no ready endpoint names keeps no address. Pure."""
    by_host = {urlsplit(u).hostname: u for u in urls}
    return tuple(replace(r, url=by_host.get(urlsplit(r.url).hostname, "") if r.url else "")
                 for r in replicas)


class EndpointsTable:
    """Ready endpoints by (namespace, Service); thread-safe."""

    def __init__(self, list_slices: Callable[[str], list[dict[str, Any]]], refresh_s: float, *,
                 start_thread: bool = True) -> None:
        self._list = list_slices
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, list[str]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="k8s-endpoints", daemon=True)
            self._thread.start()

    def urls(self, namespace: str, name: str) -> list[str] | None:
        """The ready URLs; None when the namespace was never listed (the caller lists it once)."""
        with self._lock:
            table = self._tables.get(namespace)
            return None if table is None else list(table.get(name, ()))

    def refresh(self, namespace: str) -> None:
        """List the namespace's slices now (raises the backend's errors)."""
        table = by_service(self._list(namespace))
        with self._lock:
            self._tables[namespace] = table

    def replicas_at(self, namespace: str, name: str,
                    replicas: Iterable[ReplicaStatus]) -> tuple[ReplicaStatus, ...]:
        """The replicas (pods) of a Service, each at the address its ready endpoint gives (what the
        invoke path routes to); the namespace is listed again when a ready pod is missing."""
        reps = list(replicas)
        found = at_endpoints(reps, self.urls(namespace, name) or [])
        if any(r.url and not f.url for r, f in zip(reps, found, strict=True)):
            self.refresh(namespace)
            found = at_endpoints(reps, self.urls(namespace, name) or [])
        return found

    def evict(self, namespace: str, name: str, url: str) -> None:
        """The proxy could not connect to ``url``: out of the table until the next listing."""
        with self._lock:
            urls = self._tables.get(namespace, {}).get(name)
            if urls and url in urls:
                urls.remove(url)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._tables.get(namespace, {}).pop(name, None)

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            with self._lock:
                namespaces = list(self._tables)
            for namespace in namespaces:
                try:
                    self.refresh(namespace)
                except ProviderError as e:  # keep routing on the last listing
                    log.warning("could not list the EndpointSlices of %s: %s", namespace, e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
