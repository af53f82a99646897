"""The local backend, provider side: replicas are processes on this machine (the embedded default).

Stateless, like faas-netes: desired state (function specs, desired replica counts, secrets, the
image registry) lives in Redis with persistence, written here and read by the node agent's replica
supervisor (``fast_manager.replica_supervisor``), which starts, restarts, probes, drains and
re-adopts the replica processes, as a kubelet does. Every provider worker process routes from its
own ``RoutingTable``, kept fresh from the supervisor's replica records in the background, so the
provider can run one worker per core and a restart or crash of it touches no replica.

Must not start, signal or probe processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import redis

from fastgshare import keys, local_state
from fastgshare.local_replicas import Replica
from fastgshare.local_state import FunctionRecord
from fastgshare.resources import GPU_MEM
from fastgshare.specs import DEFAULT_NAMESPACE, FunctionSpec, ReplicaConfig
from gateway_plugin.backend import FunctionState, LogLine, ReplicaStatus, SecretValue
from gateway_plugin.errors import Conflict, Invalid, NotFound
from gateway_plugin.local_logs import read_logs
from gateway_plugin.local_routing import RoutingTable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNTIME = REPO_ROOT / "function_templates" / "python3-torch" / "index.py"


def _state(fn: FunctionRecord, replicas: list[Replica], profiling: bytes | None) -> FunctionState:
    groups = fn.groups()
    live = [r for r in replicas if not r.draining]
    current = [r for r in live if r.generation == fn.generation and r.config_id in groups]
    reps = tuple(
        ReplicaStatus(r.replica_id, r.device_id, r.ready, r.url if r.ready else "", r.cores,
                      r.sm_pct, r.pid, r.restarts, r.config_id)
        for r in live
    )
    ready = sum(1 for r in current if r.ready)
    desired = fn.desired_total()
    phase = "ready" if ready >= desired else "starting"
    if desired == 0 and not live:
        phase = "scaled-to-zero"
    if profiling in (b"queued", b"profiling"):
        phase = f"profiling ({phase})"
    return FunctionState(fn.spec, desired, ready, fn.created_at, reps, phase,
                         tuple(fn.configs.values()))


class LocalBackend:
    """Desired state in Redis, routing from the replica records; implements ``Backend``."""

    resolve_never_blocks = True
    """``resolve`` reads only the in-memory routing table: the event-loop invoke path
    (``gateway_plugin.invoke_async``) may call it inline."""

    def __init__(self, client: redis.Redis, state_dir: Path, *,
                 runtime_path: Path = DEFAULT_RUNTIME, routing: RoutingTable | None = None) -> None:
        self._redis = client
        self._state_dir = Path(state_dir)
        self._runtime = Path(runtime_path)
        self._routing = routing if routing is not None else RoutingTable(client)
        self._closed = False

    # ---- desired state -------------------------------------------------------------------

    def _get(self, namespace: str, name: str) -> FunctionRecord:
        ns = namespace or DEFAULT_NAMESPACE
        fn = local_state.read_function(self._redis, ns, name)
        if fn is None:
            raise NotFound(f"function {name!r} not found in namespace {ns!r}")
        return fn

    def _check_deployable(self, spec: FunctionSpec) -> None:
        if self._image(spec.image) is None:
            raise Invalid(
                f"image {spec.image!r} is not registered on this machine: run "
                "`fastgshare build -f stack.yml` (local mode has no container registry)"
            )
        if spec.namespace not in self.namespaces():
            raise Invalid(f"namespace {spec.namespace!r} is not allowed: use one of {self.namespaces()}")
        have = {n.decode() for n in self._redis.hkeys(keys.secrets(spec.namespace))}
        missing = [s for s in spec.secrets if s not in have]
        if missing:
            raise Invalid(f"secrets {missing} not found in namespace {spec.namespace!r}")
        self._check_memory_fits(spec)

    def _check_memory_fits(self, spec: FunctionSpec) -> None:
        """A memory limit larger than any device here holds would never be met: refused now
        (when the node agent has registered its devices) rather than accepted."""
        mem_bytes = spec.share.mem_bytes
        if mem_bytes is None:
            return
        largest = 0
        for raw in self._redis.hvals(keys.devices()):
            try:
                largest = max(largest, int(json.loads(raw).get("mem_bytes", 0)))
            except (ValueError, TypeError, AttributeError):
                continue
        if largest and mem_bytes > largest:
            raise Invalid(f"{GPU_MEM}: ({mem_bytes} bytes) is more than the largest device on this "
                          f"machine holds: allowed 1..{largest} bytes")

    def _image(self, image: str) -> dict[str, str] | None:
        return local_state.read_image(self._redis, image)

    def register_image(self, image: str, handler_dir: Path, template_dir: Path | None = None) -> None:
        """What ``fastgshare build`` does: map an image name to a handler folder on this machine."""
        handler = Path(handler_dir).resolve()
        if not (handler / "handler.py").is_file():
            raise Invalid(f"handler folder {handler} has no handler.py")
        rec = {"handler_dir": str(handler), "template_dir": str(template_dir or self._runtime.parent)}
        self._redis.hset(keys.images(), image, json.dumps(rec))

    def deploy(self, spec: FunctionSpec) -> None:
        self._check_deployable(spec)
        # A fresh generation per deployment: replicas of a removed function of the same name
        # that still drain are never taken for this one's.
        fn = FunctionRecord(spec, spec.scale.min_replicas, datetime.now(UTC),
                            generation=time.time_ns() // 1000)
        if not local_state.create_function(self._redis, fn):
            raise Conflict(f"function {spec.name!r} already exists in {spec.namespace!r}")

    def update(self, spec: FunctionSpec) -> None:
        self._get(spec.namespace, spec.name)
        self._check_deployable(spec)

        def change(fn: FunctionRecord) -> None:
            fn.spec = spec
            fn.generation += 1
            lo, hi = spec.scale.min_replicas, spec.scale.max_replicas
            fn.replicas = min(max(fn.replicas, lo), hi)

        if local_state.update_function(self._redis, spec.namespace, spec.name, change) is None:
            raise NotFound(f"function {spec.name!r} not found in namespace {spec.namespace!r}")

    def remove(self, namespace: str, name: str) -> None:
        """The node agent drains and stops the replicas; their records go with them. Returns
        once the provider's workers no longer route to them (invocations answer 404)."""
        ns = namespace or DEFAULT_NAMESPACE
        if not local_state.delete_function(self._redis, ns, name):
            raise NotFound(f"function {name!r} not found in namespace {ns!r}")
        self._routing.settle()

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        if replicas < 0:
            raise Invalid(f"replicas must be >= 0 (got {replicas})")

        def change(fn: FunctionRecord) -> None:
            fn.replicas = replicas

        ns = namespace or DEFAULT_NAMESPACE
        if local_state.update_function(self._redis, ns, name, change) is None:
            raise NotFound(f"function {name!r} not found in namespace {ns!r}")

    def apply_configurations(
        self, namespace: str, name: str, configs: Sequence[ReplicaConfig]
    ) -> None:
        """Make the function's scheduler groups exactly ``configs``. New groups start before
        the replicas of dropped groups stop, so capacity never dips during a change."""
        ids = [c.config_id for c in configs]
        if len(set(ids)) != len(ids) or "" in ids:
            raise Invalid(f"configuration ids must be unique and non-empty (got {ids})")
        if any(c.replicas < 0 for c in configs):
            raise Invalid("configuration replicas must be >= 0")

        def change(fn: FunctionRecord) -> None:
            fn.configs = {c.config_id: c for c in configs}

        ns = namespace or DEFAULT_NAMESPACE
        if local_state.update_function(self._redis, ns, name, change) is None:
            raise NotFound(f"function {name!r} not found in namespace {ns!r}")

    # ---- reading (system routes read Redis; the invoke path reads the routing table) -------

    def list(self, namespace: str) -> list[FunctionState]:
        ns = namespace or DEFAULT_NAMESPACE
        functions, replicas = local_state.read_all(self._redis)
        refs = sorted(ref for ref in functions if ref[0] == ns)
        pipe = self._redis.pipeline(transaction=False)
        for n, name in refs:
            pipe.hget(keys.profile_status(n, name), "state")
        profiling = pipe.execute() if refs else []
        return [_state(functions[ref], replicas.get(ref, []), p)
                for ref, p in zip(refs, profiling, strict=True)]

    def status(self, namespace: str, name: str) -> FunctionState:
        fn = self._get(namespace, name)
        ns = fn.spec.namespace
        profiling = self._redis.hget(keys.profile_status(ns, name), "state")
        return _state(fn, local_state.read_replicas(self._redis, ns, name), profiling)

    def resolve(self, namespace: str, name: str) -> str:
        """A ready replica, in proportion to its share of the device (SM share x quota limit);
        from the routing table, never a Redis read."""
        return self._routing.pick(namespace or DEFAULT_NAMESPACE, name)

    def unreachable(self, namespace: str, name: str, url: str) -> None:
        self._routing.evict(url)

    def wait_ready(self, namespace: str, name: str, timeout_s: float) -> bool:
        return self._routing.wait_ready(namespace or DEFAULT_NAMESPACE, name, timeout_s)

    def logs(
        self, namespace: str, name: str, *, since: datetime | None, tail: int | None,
        follow: bool,
    ) -> Iterator[LogLine]:
        ns = namespace or DEFAULT_NAMESPACE
        self._get(ns, name)

        def alive() -> bool:
            try:
                return not self._closed and bool(
                    self._redis.hexists(keys.functions_index(), f"{ns}/{name}"))
            except redis.RedisError:
                return not self._closed

        return read_logs(self._state_dir / "logs" / ns / name, name, ns, since=since, tail=tail,
                         follow=follow, keep_following=alive)

    def namespaces(self) -> list[str]:
        return [DEFAULT_NAMESPACE]

    # ---- secrets ---------------------------------------------------------------------------

    def list_secrets(self, namespace: str) -> list[str]:
        return sorted(n.decode() for n in self._redis.hkeys(keys.secrets(namespace or DEFAULT_NAMESPACE)))

    def create_secret(self, secret: SecretValue) -> None:
        if not self._redis.hsetnx(keys.secrets(secret.namespace), secret.name, secret.raw):
            raise Conflict(f"secret {secret.name!r} already exists in {secret.namespace!r}")

    def update_secret(self, secret: SecretValue) -> None:
        if not self._redis.hexists(keys.secrets(secret.namespace), secret.name):
            raise NotFound(f"secret {secret.name!r} not found in {secret.namespace!r}")
        self._redis.hset(keys.secrets(secret.namespace), secret.name, secret.raw)

    def remove_secret(self, namespace: str, name: str) -> None:
        if not self._redis.hdel(keys.secrets(namespace or DEFAULT_NAMESPACE), name):
            raise NotFound(f"secret {name!r} not found in {namespace!r}")

    def close(self) -> None:
        """Stop the routing thread; replicas keep running (they are the node agent's)."""
        self._closed = True
        self._routing.close()
