"""The platform as the profiler runner uses it: the provider's HTTP API and the node's Redis
(replica records and registered devices). I/O only; what to measure is the planner's, how to
measure it the runner's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis
import requests

from fast_profiler.errors import ProfileError
from fastgshare import keys


@dataclass
class Gateway:
    """The platform as the runner uses it: provider HTTP API, gateway invoke path, and Redis."""

    url: str
    auth: tuple[str, str] | None
    redis_client: redis.Redis
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        if self.auth:
            self.http.auth = self.auth

    def function_status(self, name: str, namespace: str = "openfaas-fn") -> dict[str, object] | None:
        r = self.http.get(f"{self.url}/system/function/{name}", params={"namespace": namespace}, timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json())

    def list_functions(self, namespace: str = "openfaas-fn") -> list[dict[str, object]]:
        r = self.http.get(f"{self.url}/system/functions", params={"namespace": namespace}, timeout=10)
        r.raise_for_status()
        return list(r.json())

    def deploy(self, body: dict[str, object]) -> None:
        r = self.http.put(f"{self.url}/system/functions", json=body, timeout=30)
        if r.status_code == 404:
            r = self.http.post(f"{self.url}/system/functions", json=body, timeout=30)
        if r.status_code not in (200, 202):
            raise ProfileError(f"deploying {body.get('service')!r} failed: "
                               f"HTTP {r.status_code} {r.text[:300]}")

    def remove(self, name: str, namespace: str = "openfaas-fn") -> None:
        self.http.delete(f"{self.url}/system/functions", json={"functionName": name, "namespace": namespace},
                         timeout=30)

    def replicas(self, name: str, namespace: str) -> list[dict[str, object]]:
        return [json.loads(v) for v in self.redis_client.hvals(keys.replicas(namespace, name))]

    def device(self) -> dict[str, object]:
        """The first device the node agent registered (CPU or GPU)."""
        raw = list(self.redis_client.hvals(keys.devices()))
        devs = [json.loads(v) for v in raw]
        gpus = [d for d in devs if d.get("kind") == "gpu"]
        return (gpus or devs or [{"kind": "cpu", "name": "cpu", "cores": []}])[0]
