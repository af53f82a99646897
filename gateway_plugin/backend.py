"""The ``Backend`` protocol: what the provider needs from whatever runs replicas.

Two implementations: ``gateway_plugin.local_backend.LocalBackend`` (replicas are process groups on
this machine) and the Kubernetes backend (replicas are pods). The provider's routes depend only
on this module's types and ``fastgshare.specs`` (the spec, placement and replica groups, shared
with local mode's state and the node agent); backends raise the errors of
``gateway_plugin.errors``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fastgshare.specs import FunctionSpec, ReplicaConfig


@dataclass(frozen=True)
class ReplicaStatus:
    """One running (or starting) replica."""

    replica_id: str
    device_id: str
    """``cpu:0`` or ``gpu:<uuid>``."""
    ready: bool
    url: str = ""
    """Base URL of the replica's sidecar, ``http://127.0.0.1:PORT``; empty while starting."""
    cores: tuple[int, ...] = ()
    """CPU device: the cores the worker is pinned to."""
    sm_pct: int = 100
    pid: int | None = None
    restarts: int = 0
    config_id: str = ""
    """The scheduler's configuration this replica belongs to; empty for the base group."""


@dataclass(frozen=True)
class FunctionState:
    """What the backend knows of one deployed function."""

    spec: FunctionSpec
    replicas: int
    """Desired replica count."""
    available_replicas: int
    created_at: datetime
    replica_status: tuple[ReplicaStatus, ...] = ()
    status: str = "ready"
    """Free-form phase shown to users: ``ready``, ``starting``, ``profiling``, ..."""
    configs: tuple[ReplicaConfig, ...] = ()
    """The scheduler's replica groups beside the base group (see ``apply_configurations``)."""


@dataclass(frozen=True)
class SecretValue:
    """A secret as the provider stores it: raw bytes."""

    name: str
    namespace: str
    raw: bytes


@dataclass(frozen=True)
class LogLine:
    """One line of a replica's output (faas-provider ``logs.Message``)."""

    name: str
    namespace: str
    instance: str
    timestamp: datetime
    text: str


class Backend(Protocol):
    """What runs replicas. Every method may raise the errors of ``gateway_plugin.errors``."""

    def deploy(self, spec: FunctionSpec) -> None:
        """Create a function; Conflict if it exists."""

    def update(self, spec: FunctionSpec) -> None:
        """Replace an existing function's spec, rolling its replicas; NotFound if absent."""

    def remove(self, namespace: str, name: str) -> None:
        """Delete a function and its replicas; NotFound if absent."""

    def apply_configurations(
        self, namespace: str, name: str, configs: Sequence[ReplicaConfig]
    ) -> None:
        """Make the function's scheduler-chosen groups exactly ``configs`` (the base is kept)."""

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set the desired replica count (clamped to the function's bounds by the caller)."""

    def list(self, namespace: str) -> list[FunctionState]:
        """Every function in a namespace."""

    def status(self, namespace: str, name: str) -> FunctionState:
        """One function; NotFound if absent."""

    def resolve(self, namespace: str, name: str) -> str:
        """Base URL of a ready replica, picked capacity-aware; NotFound or NoReplicaReady."""

    def unreachable(self, namespace: str, name: str, url: str) -> None:
        """The proxy could not connect to ``url`` (a replica that just died or left): route
        elsewhere until the backend's own view of it changes."""

    def wait_ready(self, namespace: str, name: str, timeout_s: float) -> bool:
        """Block until at least one replica is ready or the timeout passes; return False early
        once no replica is wanted any more (scaled to zero or removed while waiting)."""

    def logs(
        self, namespace: str, name: str, *, since: datetime | None, tail: int | None,
        follow: bool,
    ) -> Iterator[LogLine]:
        """Replica output lines, oldest first; with ``follow`` keeps yielding until closed."""

    def namespaces(self) -> list[str]:
        """Namespaces functions may be deployed to."""

    def list_secrets(self, namespace: str) -> list[str]:
        """Secret names in a namespace (values are never listed)."""

    def create_secret(self, secret: SecretValue) -> None:
        """Conflict if it exists."""

    def update_secret(self, secret: SecretValue) -> None:
        """NotFound if absent."""

    def remove_secret(self, namespace: str, name: str) -> None:
        """NotFound if absent."""

    def close(self) -> None:
        """Release resources (threads, connections); replicas keep running."""
