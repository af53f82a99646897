"""The platform as the profiler uses it: the provider (through ``fastgshare.provider_client``, the
one client of its API: deploys, status, each replica's address) and the node's Redis (registered
devices, profile tables, job claims). I/O only; what to measure is the planner's, how to measure it
the runner's. Nothing here reads a backend's keys: the same profile runs on the local and the
Kubernetes backend."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis

from fastgshare import keys
from fastgshare.provider_client import ProviderClient


@dataclass
class Gateway:
    """The provider at ``url`` (basic ``auth``) and the platform's Redis."""

    url: str
    auth: tuple[str, str] | None
    redis_client: redis.Redis
    provider: ProviderClient = field(init=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.provider = ProviderClient(self.url, self.auth, timeout_s=30)

    def device(self) -> dict[str, object]:
        """The first device the node agents registered (a GPU before the CPU)."""
        devs = [json.loads(v) for v in self.redis_client.hvals(keys.devices())]
        gpus = [d for d in devs if d.get("kind") == "gpu"]
        return (gpus or devs or [{"kind": "cpu", "name": "cpu", "cores": []}])[0]
