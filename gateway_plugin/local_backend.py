"""The local backend: replicas are process groups on this machine (the embedded default).

Desired state (function specs, desired replica counts, secrets, the image registry) lives in Redis
with persistence, so a provider restart loses nothing. A reconcile thread makes the running
replicas match it: it starts missing replicas, stops extra ones, restarts crashed ones and, after
a provider restart, re-adopts the replicas that are still running (their pids are in Redis).

Each replica is a ``fast_manager.sidecar`` process in its own session; the sidecar starts the
function worker. What the replica gets (cores, share, secrets) is decided here and passed through
the environment documented in ``docs/architecture.md``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as pysecrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import urllib3

from fast_scheduler.cores import pick_cores
from fastgshare import keys
from fastgshare.redis_server import free_port
from fastgshare.resources import GpuShare
from gateway_plugin.backend import (
    DEFAULT_NAMESPACE,
    FunctionSpec,
    FunctionState,
    LogLine,
    Placement,
    ReplicaConfig,
    ReplicaStatus,
    SecretValue,
)
from gateway_plugin.errors import Conflict, Invalid, NoReplicaReady, NotFound
from gateway_plugin.local_logs import read_logs
from gateway_plugin.local_replicas import (
    STOP_GRACE_S,
    Replica,
    alive,
    is_our_sidecar,
    stop_process_group,
)
from gateway_plugin.spec_codec import spec_from_dict, spec_to_dict

log = logging.getLogger("fastgshare.local")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNTIME = REPO_ROOT / "function_templates" / "python3-torch" / "index.py"
RECONCILE_PERIOD_S = 0.5
"""How often the reconcile thread compares running replicas with the desired state."""
HEALTH_TIMEOUT_S = 0.5
"""Timeout of one sidecar health probe."""
MAX_RESTART_BACKOFF_S = 30.0
"""Ceiling of the delay before restarting a replica that keeps crashing."""


@dataclass
class _Function:
    spec: FunctionSpec
    replicas: int
    created_at: datetime
    generation: int = 1
    replica_list: list[Replica] = field(default_factory=list)
    configs: dict[str, ReplicaConfig] = field(default_factory=dict)
    """The scheduler's replica groups, beside the base group (``spec.share`` x ``replicas``)."""
    crashes: int = 0
    next_start_s: float = 0.0
    rr_credit: dict[str, int] = field(default_factory=dict)

    def record(self) -> str:
        return json.dumps({
            "spec": spec_to_dict(self.spec), "replicas": self.replicas,
            "created_at": self.created_at.isoformat(), "generation": self.generation,
            "configs": [{"config_id": c.config_id, "share": asdict(c.share), "replicas": c.replicas,
                         "placement": asdict(c.placement), "batch": c.batch}
                        for c in self.configs.values()],
        })

    def groups(self) -> dict[str, tuple[GpuShare, int, Placement]]:
        """Replica groups by config id: the base (``""``) and the scheduler's configurations."""
        out = {"": (self.spec.share, self.replicas, Placement())}
        for c in self.configs.values():
            out[c.config_id] = (c.share, c.replicas, c.placement)
        return out

    def desired_total(self) -> int:
        return sum(n for _, n, _ in self.groups().values())


class LocalBackend:
    """Runs replicas as local processes; implements ``gateway_plugin.backend.Backend``."""

    def __init__(
        self, client: redis.Redis, state_dir: Path, *, runtime_path: Path = DEFAULT_RUNTIME,
        python: str = sys.executable, redis_url: str | None = None, start_thread: bool = True,
    ) -> None:
        self._redis = client
        self._state_dir = Path(state_dir)
        self._runtime = Path(runtime_path)
        self._python = python
        kw = client.connection_pool.connection_kwargs
        self._redis_url = redis_url or (
            f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
        self._lock = threading.RLock()
        self._functions: dict[tuple[str, str], _Function] = {}
        self._http = urllib3.PoolManager(num_pools=64, maxsize=4, retries=False)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._load_state()
        self._thread: threading.Thread | None = None
        if start_thread:
            self._thread = threading.Thread(target=self._run, name="local-reconcile", daemon=True)
            self._thread.start()

    # ---- desired state -------------------------------------------------------------------

    def _load_state(self) -> None:
        for raw in self._redis.hvals(keys.functions_index()):
            data = json.loads(raw)
            spec = spec_from_dict(data["spec"])
            fn = _Function(spec, int(data["replicas"]), datetime.fromisoformat(data["created_at"]),
                           int(data.get("generation", 1)))
            for c in data.get("configs", []):
                fn.configs[c["config_id"]] = ReplicaConfig(
                    c["config_id"], GpuShare(**c["share"]), int(c["replicas"]),
                    Placement(**c.get("placement", {})), int(c.get("batch", 1)))
            self._functions[(spec.namespace, spec.name)] = fn
            for rid, rec in self._redis.hgetall(keys.replicas(spec.namespace, spec.name)).items():
                r = json.loads(rec)
                rep = Replica(r["replica_id"], spec.namespace, spec.name, int(r["generation"]),
                               int(r["pid"]), int(r["port"]), r["device_id"], tuple(r["cores"]),
                               int(r["sm_pct"]), float(r["started_at_s"]), int(r.get("restarts", 0)),
                               r.get("config_id", ""), int(r.get("weight", 100)))
                if alive(rep.pid) and is_our_sidecar(rep.pid, rep.replica_id):
                    log.info("re-adopted replica %s (pid %d)", rep.replica_id, rep.pid)
                    fn.replica_list.append(rep)
                else:
                    self._redis.hdel(keys.replicas(spec.namespace, spec.name), rid)

    def _save(self, fn: _Function) -> None:
        self._redis.hset(keys.functions_index(), f"{fn.spec.namespace}/{fn.spec.name}", fn.record())

    def _get(self, namespace: str, name: str) -> _Function:
        fn = self._functions.get((namespace or DEFAULT_NAMESPACE, name))
        if fn is None:
            raise NotFound(f"function {name!r} not found in namespace {namespace!r}")
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

    def _image(self, image: str) -> dict[str, str] | None:
        for candidate in (image, image.removesuffix(":latest"), f"{image}:latest"):
            raw = self._redis.hget(keys.images(), candidate)
            if raw:
                return dict(json.loads(raw))
        return None

    def register_image(self, image: str, handler_dir: Path, template_dir: Path | None = None) -> None:
        """What ``fastgshare build`` does: map an image name to a handler folder on this machine."""
        handler = Path(handler_dir).resolve()
        if not (handler / "handler.py").is_file():
            raise Invalid(f"handler folder {handler} has no handler.py")
        rec = {"handler_dir": str(handler), "template_dir": str(template_dir or self._runtime.parent)}
        self._redis.hset(keys.images(), image, json.dumps(rec))

    def deploy(self, spec: FunctionSpec) -> None:
        with self._lock:
            if (spec.namespace, spec.name) in self._functions:
                raise Conflict(f"function {spec.name!r} already exists in {spec.namespace!r}")
            self._check_deployable(spec)
            fn = _Function(spec, spec.scale.min_replicas, datetime.now(UTC))
            self._functions[(spec.namespace, spec.name)] = fn
            self._save(fn)
        self._wake.set()

    def update(self, spec: FunctionSpec) -> None:
        with self._lock:
            fn = self._get(spec.namespace, spec.name)
            self._check_deployable(spec)
            fn.spec = spec
            fn.generation += 1
            lo, hi = spec.scale.min_replicas, spec.scale.max_replicas
            fn.replicas = min(max(fn.replicas, lo), hi)
            fn.crashes = 0
            self._save(fn)
        self._wake.set()

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            fn = self._get(namespace, name)
            del self._functions[(fn.spec.namespace, name)]
            self._redis.hdel(keys.functions_index(), f"{fn.spec.namespace}/{name}")
            victims = list(fn.replica_list)
        for rep in victims:
            self._stop_replica(rep)
        self._redis.delete(keys.replicas(fn.spec.namespace, name))

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        if replicas < 0:
            raise Invalid(f"replicas must be >= 0 (got {replicas})")
        with self._lock:
            fn = self._get(namespace, name)
            fn.replicas = replicas
            fn.crashes = 0
            fn.next_start_s = 0.0
            self._save(fn)
        self._wake.set()

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
        with self._lock:
            fn = self._get(namespace, name)
            fn.configs = {c.config_id: c for c in configs}
            self._save(fn)
        self._wake.set()

    # ---- reading ---------------------------------------------------------------------------

    def _state(self, fn: _Function) -> FunctionState:
        groups = fn.groups()
        current = [r for r in fn.replica_list
                   if r.generation == fn.generation and r.config_id in groups]
        reps = tuple(
            ReplicaStatus(r.replica_id, r.device_id, r.ready, r.url if r.ready else "", r.cores,
                          r.sm_pct, r.pid, r.restarts, r.config_id)
            for r in fn.replica_list
        )
        ready = sum(1 for r in current if r.ready)
        desired = fn.desired_total()
        phase = "ready" if ready >= desired else ("crashing" if fn.crashes > 2 else "starting")
        if desired == 0 and not fn.replica_list:
            phase = "scaled-to-zero"
        profiling = self._redis.hget(keys.profile_status(fn.spec.namespace, fn.spec.name), "state")
        if profiling in (b"queued", b"profiling"):
            phase = f"profiling ({phase})"
        return FunctionState(fn.spec, desired, ready, fn.created_at, reps, phase,
                             tuple(fn.configs.values()))

    def list(self, namespace: str) -> list[FunctionState]:
        with self._lock:
            return [self._state(fn) for (ns, _), fn in sorted(self._functions.items())
                    if ns == (namespace or DEFAULT_NAMESPACE)]

    def status(self, namespace: str, name: str) -> FunctionState:
        with self._lock:
            return self._state(self._get(namespace, name))

    def resolve(self, namespace: str, name: str) -> str:
        """A ready replica, in proportion to its share of the device (SM share x quota limit)."""
        with self._lock:
            fn = self._get(namespace, name)
            ready = [r for r in fn.replica_list if r.ready]
            if not ready:
                raise NoReplicaReady(
                    f"no replica of {name!r} is ready ({len(fn.replica_list)} starting, "
                    f"{fn.replicas} desired)"
                )
            # nginx's smooth weighted round robin: interleaves replicas in proportion to weight.
            total = 0
            best: Replica | None = None
            for rep in ready:
                weight = rep.weight
                total += weight
                fn.rr_credit[rep.replica_id] = fn.rr_credit.get(rep.replica_id, 0) + weight
                if best is None or fn.rr_credit[rep.replica_id] > fn.rr_credit[best.replica_id]:
                    best = rep
            assert best is not None
            fn.rr_credit[best.replica_id] -= total
            return best.url

    def wait_ready(self, namespace: str, name: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                fn = self._get(namespace, name)
                if any(r.ready for r in fn.replica_list):
                    return True
            time.sleep(0.05)
        return False

    def logs(
        self, namespace: str, name: str, *, since: datetime | None, tail: int | None,
        follow: bool,
    ) -> Iterator[LogLine]:
        ns = namespace or DEFAULT_NAMESPACE
        if (ns, name) not in self._functions:
            raise NotFound(f"function {name!r} not found in namespace {ns!r}")
        alive = lambda: (ns, name) in self._functions and not self._stop.is_set()  # noqa: E731
        return read_logs(self._log_dir(ns, name), name, ns, since=since, tail=tail,
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

    # ---- replicas --------------------------------------------------------------------------

    def _log_dir(self, namespace: str, name: str) -> Path:
        return self._state_dir / "logs" / namespace / name

    def _device(self, placement: Placement) -> dict[str, Any]:
        """The device a new replica goes on, from the node agent's registry.

        A GPU when the node has one (the one the scheduler placed the group on, else the one
        with the least SM share in use), else the CPU device; with no registry yet, this
        process's cores.
        """
        devices = [json.loads(raw) for raw in self._redis.hvals(keys.devices())]
        gpus = [d for d in devices if d.get("kind") == "gpu"]
        if gpus:
            wanted = [d for d in gpus if placement.gpu_uuid and
                      d["device_id"] == f"gpu:{placement.gpu_uuid}"]
            if wanted:
                return dict(wanted[0])
            sm_in_use: dict[str, int] = {}
            for fn in self._functions.values():
                for r in fn.replica_list:
                    sm_in_use[r.device_id] = sm_in_use.get(r.device_id, 0) + r.sm_pct
            return dict(min(gpus, key=lambda d: (sm_in_use.get(d["device_id"], 0), d["device_id"])))
        for dev in devices:
            if dev.get("kind") == "cpu" and dev.get("cores"):
                return dict(dev)
        return {"device_id": "cpu:0", "kind": "cpu", "cores": sorted(os.sched_getaffinity(0))}

    def _core_load(self) -> dict[int, int]:
        load: dict[int, int] = {}
        for fn in self._functions.values():
            for r in fn.replica_list:
                for c in r.cores:
                    load[c] = load.get(c, 0) + 1
        return load

    def _write_secrets(self, spec: FunctionSpec, replica_id: str) -> Path:
        d = self._state_dir / "run" / spec.namespace / spec.name / replica_id / "secrets"
        d.mkdir(parents=True, exist_ok=True)
        for name in spec.secrets:
            raw = self._redis.hget(keys.secrets(spec.namespace), name)
            if raw is not None:
                path = d / name
                path.write_bytes(raw)
                path.chmod(0o600)
        return d

    def _start_replica(self, fn: _Function, config_id: str, share: GpuShare,
                       placement: Placement) -> Replica:
        spec = fn.spec
        image = self._image(spec.image)
        if image is None:
            raise Invalid(f"image {spec.image!r} is no longer registered")
        replica_id = f"{spec.name}-{pysecrets.token_hex(3)}"
        device = self._device(placement)
        device_id = str(device["device_id"])
        cores: tuple[int, ...] = ()
        if device.get("kind") != "gpu":  # on a GPU the SM share is MPS's job, not a core set
            cores = pick_cores([int(c) for c in device["cores"]], share.sm_pct, self._core_load())
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
        env.update(spec.env_vars)
        if spec.env_process:
            env["fprocess"] = spec.env_process
        env.update({
            "FASTGSHARE_FUNCTION": spec.name,
            "FASTGSHARE_NAMESPACE": spec.namespace,
            "FASTGSHARE_REPLICA": replica_id,
            "FASTGSHARE_PORT": str(port),
            "FASTGSHARE_BIND": "127.0.0.1",
            "FASTGSHARE_HANDLER_DIR": image["handler_dir"],
            "FASTGSHARE_RUNTIME": str(Path(image["template_dir"]) / "index.py"),
            "FASTGSHARE_DEVICE": device_id,
            "FASTGSHARE_CPU_CORES": ",".join(map(str, cores)),
            "FASTGSHARE_SM_PCT": str(share.sm_pct),
            "FASTGSHARE_QUOTA_REQUEST": f"{share.quota_request_frac:g}",
            "FASTGSHARE_QUOTA_LIMIT": f"{share.quota_limit_frac:g}",
            "FASTGSHARE_SECRETS_DIR": str(self._write_secrets(spec, replica_id)),
            "FASTGSHARE_MODEL_STORE_DIR": str(self._state_dir / "models"),
            "REDIS_URL": self._redis_url,
        })
        if share.mem_bytes is not None:
            env["FASTGSHARE_MEM_BYTES"] = str(share.mem_bytes)
        if device.get("kind") == "gpu":
            if device.get("mem_bytes"):
                env["FASTGSHARE_DEVICE_MEM_BYTES"] = str(device["mem_bytes"])
            if device.get("mps_pipe_dir"):
                env["FASTGSHARE_MPS_PIPE_DIR"] = str(device["mps_pipe_dir"])
        if spec.share.model:
            env["FASTGSHARE_MODEL"] = spec.share.model
        config = fn.configs.get(config_id)
        if config is not None and config.batch > 1:  # the scheduler's batch for this group
            env["FASTGSHARE_BATCH"] = str(config.batch)
        log_dir = self._log_dir(spec.namespace, spec.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{replica_id}.log", "ab") as out:
            proc = subprocess.Popen(
                [self._python, "-m", "fast_manager.sidecar"], env=env, cwd=str(REPO_ROOT),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        rep = Replica(replica_id, spec.namespace, spec.name, fn.generation, proc.pid, port,
                       device_id, cores, share.sm_pct, time.time(), config_id=config_id,
                       weight=max(1, round(share.sm_pct * share.quota_limit_frac)), proc=proc)
        self._redis.hset(keys.replicas(spec.namespace, spec.name), replica_id, rep.record())
        log.info("started replica %s pid %d port %d cores %s", replica_id, proc.pid, port, cores)
        return rep

    def _stop_replica(self, rep: Replica) -> None:
        stop_process_group(rep.pid, rep.proc, STOP_GRACE_S)
        self._redis.hdel(keys.replicas(rep.namespace, rep.name), rep.replica_id)

    def _is_running(self, rep: Replica) -> bool:
        if rep.proc is not None:
            return rep.proc.poll() is None
        return alive(rep.pid)

    def _probe(self, rep: Replica) -> bool:
        try:
            resp = self._http.request("GET", f"{rep.url}/_/health", timeout=HEALTH_TIMEOUT_S)
            return resp.status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def reconcile_once(self) -> None:
        """One pass: reap the dead, probe health, start and stop replicas to match the desired state."""
        now_s = time.monotonic()
        with self._lock:
            functions = list(self._functions.values())
        for fn in functions:
            stop: list[Replica] = []
            with self._lock:
                for rep in list(fn.replica_list):
                    if not self._is_running(rep):
                        fn.replica_list.remove(rep)
                        self._redis.hdel(keys.replicas(rep.namespace, rep.name), rep.replica_id)
                        if rep.generation == fn.generation:
                            fn.crashes += 1
                            backoff = min(MAX_RESTART_BACKOFF_S, 0.5 * 2 ** min(fn.crashes, 6))
                            fn.next_start_s = now_s + backoff
                            log.warning("replica %s exited; restarting in %.1f s",
                                        rep.replica_id, backoff)
            for rep in list(fn.replica_list):
                was = rep.ready
                rep.ready = self._probe(rep)
                if rep.ready and not was and rep.generation == fn.generation:
                    fn.crashes = 0
            with self._lock:
                if (fn.spec.namespace, fn.spec.name) not in self._functions:
                    continue
                groups = fn.groups()
                current = [r for r in fn.replica_list
                           if r.generation == fn.generation and r.config_id in groups]
                old = [r for r in fn.replica_list if r not in current]
                # Roll: replicas of an old spec or a dropped group serve until the new ones are ready.
                if (sum(1 for r in current if r.ready) >= fn.desired_total()
                        or not any(r.ready for r in old)):
                    stop.extend(old)
                to_start: list[tuple[str, GpuShare, Placement]] = []
                for config_id, (share, want, placement) in groups.items():
                    mine = [r for r in current if r.config_id == config_id]
                    if len(mine) > want:  # stop starting ones before ready ones
                        stop.extend(sorted(mine, key=lambda r: (r.ready, r.started_at_s))[:len(mine) - want])
                    to_start += [(config_id, share, placement)] * max(0, want - len(mine))
                for rep in stop:
                    if rep in fn.replica_list:
                        fn.replica_list.remove(rep)
                if to_start and now_s >= fn.next_start_s:
                    for config_id, share, placement in to_start:
                        try:
                            fn.replica_list.append(
                                self._start_replica(fn, config_id, share, placement))
                        except Exception:  # keep reconciling the other functions
                            log.exception("could not start a replica of %s", fn.spec.name)
                            fn.next_start_s = now_s + MAX_RESTART_BACKOFF_S
                            break
            for rep in stop:
                self._stop_replica(rep)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile failed")
            self._wake.wait(RECONCILE_PERIOD_S)
            self._wake.clear()

    def stop_all_replicas(self) -> None:
        """Stop the reconcile loop, then every replica process (on shutdown); desired state is
        kept. The loop goes first: running, it would start the desired replicas again, and they
        would outlive the backend."""
        self._stop_loop()
        with self._lock:
            reps = [r for fn in self._functions.values() for r in fn.replica_list]
            for fn in self._functions.values():
                fn.replica_list.clear()
        for rep in reps:
            self._stop_replica(rep)

    def _stop_loop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self._stop_loop()
        self._http.clear()
