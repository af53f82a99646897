"""The local mode's shared state in Redis: desired functions (written by the provider) and replica
records (written by the node agent's supervisor), plus the change counter both bump.

The provider is stateless: every gunicorn worker reads and writes this, and the node agent makes
the running replicas match it, as a kubelet does with pod specs. Keys come from ``fastgshare.keys``.
Must not start, probe or stop processes (that is ``fast_manager.replica_supervisor``'s job).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from fastgshare import keys
from fastgshare.local_replicas import Replica
from fastgshare.resources import GpuShare
from fastgshare.spec_codec import spec_from_dict, spec_to_dict
from fastgshare.specs import FunctionSpec, Placement, ReplicaConfig

DEFAULT_STATE_DIR = Path("~/.fastgshare")
"""Where local mode keeps its state when ``FASTGSHARE_STATE_DIR`` names none (the provider's and the
node agent's default; ``fastgshare up`` always names one)."""
WAKE_LIST_MAX = 16
"""The supervisor's wake-up list is trimmed to this many entries (one is enough to wake it)."""
START_FAILURES_TO_REFUSE = 3
"""After this many failed starts in a row of a function's current spec, invocations are refused
at once (503 with the reason) instead of waiting for a replica that is not coming."""
REASON_MAX_CHARS = 500
"""A recorded start failure's reason is cut to this length."""


@dataclass(frozen=True)
class StartFailures:
    """Failed replica starts in a row of one function's spec (``keys.start_failures()``)."""

    generation: int
    failures: int
    reason: str
    at_s: float


@dataclass
class FunctionRecord:
    """One function's desired state, as stored under ``keys.functions_index()``."""

    spec: FunctionSpec
    replicas: int
    created_at: datetime
    generation: int = 1
    configs: dict[str, ReplicaConfig] = field(default_factory=dict)
    """The scheduler's replica groups, beside the base group (``spec.share`` x ``replicas``)."""

    @property
    def ref(self) -> str:
        return f"{self.spec.namespace}/{self.spec.name}"

    def to_json(self) -> str:
        return json.dumps({
            "spec": spec_to_dict(self.spec), "replicas": self.replicas,
            "created_at": self.created_at.isoformat(), "generation": self.generation,
            "configs": [{"config_id": c.config_id, "share": asdict(c.share), "replicas": c.replicas,
                         "placement": asdict(c.placement), "batch": c.batch,
                         **({} if c.batch_limit is None else {"batch_limit": c.batch_limit})}
                        for c in self.configs.values()],
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> FunctionRecord:
        data = json.loads(raw)
        rec = cls(spec_from_dict(data["spec"]), int(data["replicas"]),
                  datetime.fromisoformat(data["created_at"]), int(data.get("generation", 1)))
        for c in data.get("configs", []):
            rec.configs[c["config_id"]] = ReplicaConfig(
                c["config_id"], GpuShare(**c["share"]), int(c["replicas"]),
                Placement(**c.get("placement", {})), int(c.get("batch", 1)),
                None if c.get("batch_limit") is None else int(c["batch_limit"]))
        return rec

    def groups(self) -> dict[str, tuple[GpuShare, int, Placement]]:
        """Replica groups by config id: the base (``""``) and the scheduler's configurations."""
        out = {"": (self.spec.share, self.replicas, Placement())}
        for c in self.configs.values():
            out[c.config_id] = (c.share, c.replicas, c.placement)
        return out

    def desired_total(self) -> int:
        return sum(n for _, n, _ in self.groups().values())


def replica_from_json(raw: bytes | str) -> Replica:
    r: dict[str, Any] = json.loads(raw)
    return Replica(r["replica_id"], r.get("namespace", ""), r.get("name", ""),
                   int(r["generation"]), int(r["pid"]), int(r["port"]), r["device_id"],
                   tuple(r["cores"]), int(r["sm_pct"]), float(r["started_at_s"]),
                   int(r.get("restarts", 0)), r.get("config_id", ""), int(r.get("weight", 100)),
                   ready=bool(r.get("ready", False)), draining=bool(r.get("draining", False)),
                   batch=int(r.get("batch", 0)))


# ---- reading ---------------------------------------------------------------------------------


def read_functions(client: redis.Redis) -> dict[tuple[str, str], FunctionRecord]:
    out = {}
    for raw in client.hvals(keys.functions_index()):
        rec = FunctionRecord.from_json(raw)
        out[(rec.spec.namespace, rec.spec.name)] = rec
    return out


def read_function(client: redis.Redis, namespace: str, name: str) -> FunctionRecord | None:
    raw = client.hget(keys.functions_index(), f"{namespace}/{name}")
    return FunctionRecord.from_json(raw) if raw else None


def read_image(client: redis.Redis, image: str) -> dict[str, str] | None:
    """What ``image`` was registered as (``handler_dir``, ``template_dir``), trying it with and
    without the ``:latest`` tag, as a registry resolves a tag-less name."""
    for candidate in (image, image.removesuffix(":latest"), f"{image}:latest"):
        raw = client.hget(keys.images(), candidate)
        if raw:
            return dict(json.loads(raw))
    return None


def read_replicas(client: redis.Redis, namespace: str, name: str) -> list[Replica]:
    reps = [replica_from_json(raw) for raw in client.hvals(keys.replicas(namespace, name))]
    for rep in reps:
        rep.namespace, rep.name = namespace, name
    return sorted(reps, key=lambda r: (r.started_at_s, r.replica_id))


def read_all(client: redis.Redis) -> tuple[dict[tuple[str, str], FunctionRecord],
                                           dict[tuple[str, str], list[Replica]]]:
    """Every function and its replica records, in two round trips."""
    functions = read_functions(client)
    refs = sorted(functions)
    pipe = client.pipeline(transaction=False)
    for ns, name in refs:
        pipe.hvals(keys.replicas(ns, name))
    replicas: dict[tuple[str, str], list[Replica]] = {}
    for (ns, name), raws in zip(refs, pipe.execute() if refs else [], strict=True):
        reps = [replica_from_json(raw) for raw in raws]
        for rep in reps:
            rep.namespace, rep.name = ns, name
        replicas[(ns, name)] = sorted(reps, key=lambda r: (r.started_at_s, r.replica_id))
    return functions, replicas


def version(client: redis.Redis) -> int:
    """The change counter: bumped on every write to desired state or to a replica record."""
    return int(client.get(keys.local_version()) or 0)


# ---- writing ---------------------------------------------------------------------------------


def changes_channel() -> str:
    """The pub/sub channel every write announces itself on (named as the counter it bumps;
    channels and keys are apart in Redis): provider workers wait on it instead of polling."""
    return keys.local_version()


def changed(pipe: redis.client.Pipeline, wake_supervisor: bool) -> None:
    """Queue the counter bump, its announcement (and a wake-up of the supervisor) on ``pipe``."""
    pipe.incr(keys.local_version())
    pipe.publish(changes_channel(), 1)
    if wake_supervisor:
        pipe.lpush(keys.supervisor_wake(), 1)
        pipe.ltrim(keys.supervisor_wake(), 0, WAKE_LIST_MAX - 1)


def write_function(client: redis.Redis, rec: FunctionRecord) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.functions_index(), rec.ref, rec.to_json())
    changed(pipe, wake_supervisor=True)
    pipe.execute()


def create_function(client: redis.Redis, rec: FunctionRecord) -> bool:
    """Write ``rec`` unless the function exists (False then): two workers may deploy at once."""
    if not client.hsetnx(keys.functions_index(), rec.ref, rec.to_json()):
        return False
    pipe = client.pipeline(transaction=False)
    changed(pipe, wake_supervisor=True)
    pipe.execute()
    return True


def delete_function(client: redis.Redis, namespace: str, name: str) -> bool:
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.functions_index(), f"{namespace}/{name}")
    pipe.hdel(keys.start_failures(), f"{namespace}/{name}")
    changed(pipe, wake_supervisor=True)
    return bool(pipe.execute()[0])


def write_replica(client: redis.Redis, rep: Replica) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.replicas(rep.namespace, rep.name), rep.replica_id, rep.record())
    changed(pipe, wake_supervisor=False)
    pipe.execute()


def delete_replica(client: redis.Redis, rep: Replica) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.hdel(keys.replicas(rep.namespace, rep.name), rep.replica_id)
    changed(pipe, wake_supervisor=False)
    pipe.execute()


def update_function(client: redis.Redis, namespace: str, name: str,
                    change: Any) -> FunctionRecord | None:
    """Read-modify-write one record under WATCH (several provider workers may write at once).
    ``change(rec)`` mutates the record or raises; None when the function does not exist."""
    field_name = f"{namespace}/{name}"
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.functions_index())
                raw = pipe.hget(keys.functions_index(), field_name)
                if not raw:
                    pipe.unwatch()
                    return None
                rec = FunctionRecord.from_json(raw)
                change(rec)
                pipe.multi()
                pipe.hset(keys.functions_index(), field_name, rec.to_json())
                changed(pipe, wake_supervisor=True)
                pipe.execute()
                return rec
            except redis.WatchError:
                continue


# ---- start failures (written by the supervisor, read by the provider's routing) ----------------


def read_start_failures(client: redis.Redis) -> dict[tuple[str, str], StartFailures]:
    out = {}
    for field_name, raw in client.hgetall(keys.start_failures()).items():
        ns, _, name = field_name.decode().partition("/")
        try:
            d = json.loads(raw)
            out[(ns, name)] = StartFailures(int(d["generation"]), int(d["failures"]),
                                            str(d["reason"]), float(d["at_s"]))
        except (ValueError, KeyError, TypeError):
            continue  # a record this version cannot read refuses nothing
    return out


def record_start_failure(client: redis.Redis, namespace: str, name: str, generation: int,
                         reason: str, at_s: float) -> int:
    """One more failed start of ``generation`` (the count restarts for a new generation); returns
    the count. Only the node agent's supervisor writes these (one writer per function)."""
    field_name = f"{namespace}/{name}"
    raw = client.hget(keys.start_failures(), field_name)
    failures = 0
    if raw:
        try:
            d = json.loads(raw)
            failures = int(d["failures"]) if int(d["generation"]) == generation else 0
        except (ValueError, KeyError, TypeError):
            failures = 0
    failures += 1
    record = {"generation": generation, "failures": failures,
              "reason": reason[-REASON_MAX_CHARS:], "at_s": round(at_s, 3)}
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.start_failures(), field_name, json.dumps(record))
    changed(pipe, wake_supervisor=False)
    pipe.execute()
    return failures


def clear_start_failures(client: redis.Redis, namespace: str, name: str) -> None:
    """A replica became ready, the spec changed or the function went to zero: start afresh."""
    if client.hdel(keys.start_failures(), f"{namespace}/{name}"):
        pipe = client.pipeline(transaction=False)
        changed(pipe, wake_supervisor=False)
        pipe.execute()
