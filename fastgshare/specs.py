"""The provider's vocabulary shared below it: a function's validated spec, where a replica
configuration is placed, and the scheduler's replica groups. Pure (dataclasses over
``fastgshare.resources``): the provider's backends, the local mode's state in Redis and the node
agent that runs replicas from it all speak these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fastgshare.resources import GpuShare, ScaleBounds

DEFAULT_NAMESPACE = "openfaas-fn"
"""Namespace used when a request names none (as faas-netes)."""


@dataclass(frozen=True)
class FunctionSpec:
    """A validated deploy request (faas-provider ``FunctionDeployment``) plus its parsed share."""

    name: str
    image: str
    namespace: str = DEFAULT_NAMESPACE
    env_process: str = ""
    env_vars: Mapping[str, str] = field(default_factory=dict)
    constraints: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)
    """``{"memory": ..., "cpu": ...}`` as in FunctionResources; absent keys omitted."""
    requests: Mapping[str, str] = field(default_factory=dict)
    read_only_root_filesystem: bool = False
    share: GpuShare = GpuShare()
    scale: ScaleBounds = ScaleBounds()


@dataclass(frozen=True)
class Placement:
    """Where the scheduler put a replica configuration; empty fields leave it to the backend."""

    node: str = ""
    gpu_uuid: str = ""


@dataclass(frozen=True)
class ReplicaConfig:
    """One replica configuration of a function, chosen by the scheduler: its share and count.

    A function's replicas are its base group (the deployed spec's share, sized by ``scale``)
    plus every configuration group.
    """

    config_id: str
    share: GpuShare
    replicas: int
    placement: Placement = field(default_factory=Placement)
    batch: int = 1
    """The worker's dynamic batch size for this group (``FASTGSHARE_BATCH``; 1: no batching)."""
    batch_limit: int | None = None
    """The batch its replicas run at for now, in place of ``batch`` (the scheduler's first lever
    of a burst): running replicas take it without a restart, new ones start with it; None: ``batch``.
    A change of it alone is no new configuration (same group id, no rollout)."""

    @property
    def run_batch(self) -> int:
        """The batch the group's replicas run at now: ``batch_limit`` when set, else ``batch``."""
        return self.batch if self.batch_limit is None else self.batch_limit
