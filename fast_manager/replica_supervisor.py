"""The node agent's replica supervisor (local mode): the kubelet of this machine.

It makes the replica processes match the desired state in Redis (``fastgshare.local_state``):
starts missing replicas, restarts crashed ones (with a backoff), probes their health and writes
their readiness into their records, and re-adopts, at start, the replicas a previous node agent
left running. The provider only reads those records; a provider restart or crash touches no
replica.

Scale-down drains, as Kubernetes does with a terminating pod: the replica is marked draining in
its record (provider workers drop it from their routing tables), left alone for
``DEREGISTER_DELAY_S`` so every worker has seen that, and then its sidecar alone gets SIGTERM: it
finishes what it holds, stops its worker and exits. Stops run in their own threads, so a slow one
never delays the next start.

Replicas are started with a parent-death signal: none outlives the node agent (and so none
outlives ``fastgshare up``, even SIGKILLed).
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
from pathlib import Path
from typing import Any

import redis
import urllib3

from fast_manager import function_users
from fast_manager.function_users import Isolation
from fast_manager.model_store_fs import MODEL_STORE_DIR_ENV
from fast_manager.replica_control import BatchControl, control_key, control_token
from fast_manager.replica_plan import ReplicaView, plan, restart_backoff_s
from fast_manager.start_failures import StartFailureLog
from fastgshare import keys, local_state
from fastgshare.cores import pick_cores
from fastgshare.local_replicas import (
    STOP_GRACE_S,
    Replica,
    alive,
    is_our_sidecar,
    redis_url_of,
    replica_preexec,
    stop_process_group,
)
from fastgshare.local_state import FunctionRecord
from fastgshare.redis_server import free_port
from fastgshare.resources import GpuShare
from fastgshare.specs import Placement

log = logging.getLogger("node_agent.replicas")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNTIME = REPO_ROOT / "function_templates" / "python3-torch" / "index.py"
RECONCILE_PERIOD_S = 0.25
"""Longest pause between two passes; a change of desired state wakes the loop at once."""
STARTING_POLL_S = 0.02
"""While a replica is starting, how often its health is asked between passes: its readiness
reaches the provider this much after the worker is up, not up to a whole period later (a
warm-pool start takes well under a second; issue 18)."""
HEALTH_TIMEOUT_S = 0.5
"""Timeout of one sidecar health probe."""
DEREGISTER_DELAY_S = 0.5
"""Between marking a replica draining and signalling it: a provider worker's routing table hears
the change at once (an announcement on ``local_state.changes_channel()``) and checks the version
counter every ``gateway_plugin.local_routing.IDLE_CHECK_S`` (0.5 s) should it miss one, so no
worker still routes there."""


class ReplicaSupervisor:
    """Runs this machine's replicas from the desired state in Redis."""

    def __init__(self, client: redis.Redis, state_dir: Path, redis_url: str, *,
                 python: str = sys.executable, runtime_path: Path = DEFAULT_RUNTIME,
                 stop_grace_s: float = STOP_GRACE_S,
                 deregister_delay_s: float = DEREGISTER_DELAY_S,
                 sidecar_redis_url: str | None = None, isolation: Isolation | None = None,
                 model_store_dir: Path | None = None, warm_socket: Path | None = None) -> None:
        self._redis = client
        self._state_dir = Path(state_dir)
        self._redis_url = sidecar_redis_url or redis_url
        """What replicas are given: the sidecars' restricted Redis user, not the node agent's."""
        self._isolation = isolation
        """Function users (platform as root), or None: workers run as the platform's user."""
        self._model_store_dir = Path(model_store_dir or self._state_dir / "models")
        self._python = python
        self._warm_socket = warm_socket
        """The node's warm pool (``fast_manager.warm_pool``): sidecars fork their worker from it."""
        self._runtime = Path(runtime_path)
        self._stop_grace_s = stop_grace_s
        self._deregister_delay_s = deregister_delay_s
        self._replicas: dict[tuple[str, str], list[Replica]] = {}
        self._generations: dict[tuple[str, str], int] = {}
        self._crashes: dict[tuple[str, str], int] = {}
        self._next_start_s: dict[tuple[str, str], float] = {}
        self._stops: dict[str, threading.Thread] = {}
        self._http = urllib3.PoolManager(num_pools=64, maxsize=2, retries=False)
        self._start_failures = StartFailureLog(
            client, self._http, lambda ns, name, rid: self._log_dir(ns, name) / f"{rid}.log")
        self._control_key = control_key(self._state_dir)
        self._batches = BatchControl(self._http, self._control_key, self._batch_applied)

    # ---- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Adopt what runs, then reconcile until ``stop``; then stop every replica (drained)."""
        while not stop.is_set():  # Redis may come up after the node agent
            try:
                self.adopt()
                break
            except redis.RedisError as e:
                log.warning("redis unavailable (%s): replicas are adopted once it answers", e)
                stop.wait(1.0)
        down = False  # an outage is logged once, and its end once
        try:
            while not stop.is_set():
                try:
                    self.reconcile_once(time.monotonic())
                    if down:
                        down = False
                        log.warning("redis reachable again: reconciling replicas")
                    self._wait_next_pass()
                except redis.RedisError as e:
                    if not down:
                        down = True
                        log.warning("redis unavailable (%s): replicas keep running as they are",
                                    e)
                    stop.wait(1.0)
                except Exception:
                    log.exception("reconcile failed")
                    stop.wait(RECONCILE_PERIOD_S)
        finally:
            self.stop_all()

    def _wait_next_pass(self) -> None:
        """Until a change of desired state wakes the loop, or one period at most; replicas that
        are starting meanwhile are probed every ``STARTING_POLL_S``."""
        deadline = time.monotonic() + RECONCILE_PERIOD_S
        while True:
            starting = [r for reps in self._replicas.values() for r in reps
                        if not r.ready and not r.draining]
            left = deadline - time.monotonic()
            if left <= 0:
                return
            wait_s = min(left, STARTING_POLL_S) if starting else left
            if self._redis.blpop([keys.supervisor_wake()], timeout=max(0.01, wait_s)):
                self._redis.delete(keys.supervisor_wake())
                return
            for rep in starting:
                if self._running(rep) and self._probe(rep):
                    self._set_ready(rep, True)

    def adopt(self) -> None:
        """Take over the replicas a previous node agent left running, if they are ours and speak
        to this Redis; stop those that speak to another one (a stale ``REDIS_URL`` would keep
        them outside the arbiter); forget the records of dead ones."""
        functions, records = local_state.read_all(self._redis)
        for ref, reps in records.items():
            for rep in reps:
                if not (alive(rep.pid) and is_our_sidecar(rep.pid, rep.replica_id)):
                    local_state.delete_replica(self._redis, rep)
                    continue
                url = redis_url_of(rep.pid)
                if url != self._redis_url or ref not in functions:
                    log.warning("stopping replica %s (pid %d): %s", rep.replica_id, rep.pid,
                                f"started with REDIS_URL={url}, not {self._redis_url}"
                                if url != self._redis_url else "its function is gone")
                    stop_process_group(rep.pid, None, self._stop_grace_s)
                    local_state.delete_replica(self._redis, rep)
                    continue
                log.info("re-adopted replica %s (pid %d)", rep.replica_id, rep.pid)
                rep.draining = False
                self._replicas.setdefault(ref, []).append(rep)

    def reconcile_once(self, now_s: float) -> None:
        """One pass: reap the dead, probe health, drain and start replicas to match."""
        functions = local_state.read_functions(self._redis)
        for ref in list(self._replicas):
            if ref not in functions:  # removed: drain everything it had
                for rep in self._replicas.pop(ref):
                    self._drain(rep)
                self._generations.pop(ref, None)
        for ref, fn in functions.items():
            self._reconcile_function(ref, fn, now_s)

    def _reconcile_function(self, ref: tuple[str, str], fn: FunctionRecord, now_s: float) -> None:
        reps = self._replicas.setdefault(ref, [])
        if self._generations.get(ref) != fn.generation:
            self._generations[ref] = fn.generation
            self._crashes[ref] = 0  # a new spec gets a fresh start
            self._next_start_s[ref] = 0.0
            self._start_failures.reset(ref)
        if fn.desired_total() == 0:  # the next scale-up is a fresh start
            self._start_failures.reset(ref)
        for rep in list(reps):
            if self._running(rep):
                continue
            reps.remove(rep)
            local_state.delete_replica(self._redis, rep)
            self._start_failures.forget(rep.replica_id)
            if rep.generation == fn.generation and not rep.ready:
                self._start_failures.failed(ref, fn.generation, rep.replica_id,
                                            "the replica exited before it became ready")
            if rep.generation == fn.generation:
                self._crashes[ref] = self._crashes.get(ref, 0) + 1
                backoff_s = restart_backoff_s(self._crashes[ref])
                self._next_start_s[ref] = now_s + backoff_s
                log.warning("replica %s exited; starting another in %.1f s", rep.replica_id,
                            backoff_s)
        for rep in reps:
            ready = self._probe(rep)
            if ready != rep.ready:
                self._set_ready(rep, ready)
            if not ready and rep.generation == fn.generation:
                self._start_failures.check_worker(ref, fn.generation, rep.replica_id, rep.url)
        for rep in reps:  # a group's batch (or its batch limit) changed in place: running replicas take it
            config = fn.configs.get(rep.config_id)
            if (config is not None and rep.ready and not rep.draining
                    and rep.generation == fn.generation):
                self._batches.want(rep, config.run_batch)
        groups = fn.groups()
        decision = plan({cid: n for cid, (_, n, _) in groups.items()}, fn.generation,
                        [ReplicaView(r.replica_id, r.generation, r.config_id, r.ready,
                                     r.started_at_s) for r in reps])
        for rep in [r for r in reps if r.replica_id in decision.drain]:
            reps.remove(rep)
            self._drain(rep)
        if decision.start and now_s >= self._next_start_s.get(ref, 0.0):
            for config_id in decision.start:
                share, _, placement = groups[config_id]
                try:
                    reps.append(self._start_replica(fn, config_id, share, placement))
                except Exception as e:  # keep reconciling the other functions
                    log.exception("could not start a replica of %s", fn.spec.name)
                    self._start_failures.failed(ref, fn.generation, "",
                                                f"could not start a replica: {e}")
                    self._next_start_s[ref] = now_s + restart_backoff_s(99)
                    break

    def _set_ready(self, rep: Replica, ready: bool) -> None:
        rep.ready = ready
        local_state.write_replica(self._redis, rep)
        ref = (rep.namespace, rep.name)
        if ready and rep.generation == self._generations.get(ref):
            self._crashes[ref] = 0
            self._start_failures.reset(ref)
            log.info("replica %s ready %.2f s after its start", rep.replica_id,
                     time.time() - rep.started_at_s)

    def _batch_applied(self, rep: Replica, batch: int) -> None:
        rep.batch = batch
        try:
            local_state.write_replica(self._redis, rep)
        except redis.RedisError:
            pass  # the record catches up at its next write

    # ---- stopping --------------------------------------------------------------------------

    def _drain(self, rep: Replica) -> None:
        """Out of routing now; stopped in its own thread once every provider worker saw that."""
        rep.draining, rep.ready = True, False
        try:
            local_state.write_replica(self._redis, rep)
        except redis.RedisError:
            pass  # the stop goes on: the provider also drops a replica that refuses connections
        thread = threading.Thread(target=self._stop, args=(rep,), daemon=True,
                                  name=f"stop-{rep.replica_id}")
        self._stops[rep.replica_id] = thread
        thread.start()

    def _stop(self, rep: Replica) -> None:
        time.sleep(self._deregister_delay_s)
        log.info("stopping replica %s (pid %d): it drains, then stops its worker",
                 rep.replica_id, rep.pid)
        stop_process_group(rep.pid, rep.proc, self._stop_grace_s)
        if self._isolation is not None:  # its copy of the function's secrets
            function_users.remove_replica_secrets(self._isolation, rep.replica_id)
        try:
            local_state.delete_replica(self._redis, rep)
        except redis.RedisError:
            pass
        self._stops.pop(rep.replica_id, None)

    def stop_all(self) -> None:
        """Drain and stop every replica, all at once, and wait for them (on shutdown; desired
        state is kept, so the next node agent starts them again)."""
        for reps in self._replicas.values():
            for rep in reps:
                self._drain(rep)
        self._replicas.clear()
        for thread in list(self._stops.values()):
            thread.join()
        self._http.clear()

    # ---- starting --------------------------------------------------------------------------

    def _running(self, rep: Replica) -> bool:
        if rep.proc is not None:
            return rep.proc.poll() is None
        return alive(rep.pid)

    def _probe(self, rep: Replica) -> bool:
        try:
            resp = self._http.request("GET", f"{rep.url}/_/health", timeout=HEALTH_TIMEOUT_S)
            return resp.status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def _log_dir(self, namespace: str, name: str) -> Path:
        return self._state_dir / "logs" / namespace / name

    def _image(self, image: str) -> dict[str, str] | None:
        return local_state.read_image(self._redis, image)

    def _device(self, placement: Placement) -> dict[str, Any]:
        """The device a new replica goes on, from this node's registry.

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
            for reps in self._replicas.values():
                for r in reps:
                    sm_in_use[r.device_id] = sm_in_use.get(r.device_id, 0) + r.sm_pct
            return dict(min(gpus, key=lambda d: (sm_in_use.get(d["device_id"], 0), d["device_id"])))
        for dev in devices:
            if dev.get("kind") == "cpu" and dev.get("cores"):
                return dict(dev)
        return {"device_id": "cpu:0", "kind": "cpu", "cores": sorted(os.sched_getaffinity(0))}

    def _core_load(self) -> dict[int, int]:
        load: dict[int, int] = {}
        for reps in self._replicas.values():
            for r in reps:
                for c in r.cores:
                    load[c] = load.get(c, 0) + 1
        return load

    def _worker_files(self, fn: FunctionRecord, replica_id: str, device: dict[str, Any],
                      image: dict[str, str]) -> dict[str, str]:
        """The replica's variables naming what its worker reads, and, with function users, the
        user it runs as (its files prepared in the functions area, ``fast_manager.function_users``)."""
        runtime_dir = Path(image["template_dir"])
        iso = self._isolation
        if iso is None:
            return {"FASTGSHARE_HANDLER_DIR": image["handler_dir"],
                    "FASTGSHARE_RUNTIME": str(runtime_dir / "index.py"),
                    "FASTGSHARE_SECRETS_DIR": str(self._write_secrets(fn, replica_id)),
                    MODEL_STORE_DIR_ENV: str(self._model_store_dir)}
        spec = fn.spec
        gpu_mps = device.get("kind") == "gpu" and bool(device.get("mps_pipe_dir"))
        function_users.prepare_area(iso)
        ident = function_users.identity(spec.namespace, spec.name, gpu_mps)
        uid = function_users.assign_uid(iso, ident)
        function_users.record_uid(self._redis, ident, uid)
        values = {name: self._redis.hget(keys.secrets(spec.namespace), name)
                  for name in spec.secrets}
        dirs = function_users.prepare_replica(
            iso, uid, replica_id, {k: v for k, v in values.items() if v is not None},
            Path(image["handler_dir"]), runtime_dir)
        return {"FASTGSHARE_HANDLER_DIR": str(dirs.handler_dir),
                "FASTGSHARE_RUNTIME": str(dirs.template_dir / "index.py"),
                "FASTGSHARE_SECRETS_DIR": str(dirs.secrets_dir),
                MODEL_STORE_DIR_ENV: str(iso.models_dir),
                "FASTGSHARE_RUN_AS": f"{uid}:{uid}", "HOME": str(dirs.home)}

    def _write_secrets(self, fn: FunctionRecord, replica_id: str) -> Path:
        spec = fn.spec
        d = self._state_dir / "run" / spec.namespace / spec.name / replica_id / "secrets"
        d.mkdir(parents=True, exist_ok=True)
        for name in spec.secrets:
            raw = self._redis.hget(keys.secrets(spec.namespace), name)
            if raw is not None:
                path = d / name
                path.write_bytes(raw)
                path.chmod(0o600)
        return d

    def _start_replica(self, fn: FunctionRecord, config_id: str, share: GpuShare,
                       placement: Placement) -> Replica:
        spec = fn.spec
        image = self._image(spec.image)
        if image is None:
            raise RuntimeError(f"image {spec.image!r} is no longer registered")
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
            "FASTGSHARE_DEVICE": device_id,
            "FASTGSHARE_CPU_CORES": ",".join(map(str, cores)),
            "FASTGSHARE_SM_PCT": str(share.sm_pct),
            "FASTGSHARE_QUOTA_REQUEST": f"{share.quota_request_frac:g}",
            "FASTGSHARE_QUOTA_LIMIT": f"{share.quota_limit_frac:g}",
            "REDIS_URL": self._redis_url,
            **self._worker_files(fn, replica_id, device, image),
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
        if spec.share.slo_ms is not None:  # the worker forms batches by this deadline (B_max below)
            env["FASTGSHARE_SLO_MS"] = f"{spec.share.slo_ms:g}"
        config = fn.configs.get(config_id)
        if config is not None:
            # The scheduler's batch for this group, 1 included: its table measured the group's
            # config at exactly that batch (without it an SLO alone lets the worker batch up to
            # its default, and the batch lever's raise from 1 would lower it).
            env["FASTGSHARE_BATCH"] = str(config.run_batch)
        env["FASTGSHARE_CONTROL_TOKEN"] = control_token(self._control_key, replica_id)
        if self._warm_socket is not None:
            env["FASTGSHARE_WARM_SOCKET"] = str(self._warm_socket)
        log_dir = self._log_dir(spec.namespace, spec.name)
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{replica_id}.log", "ab") as out:
            proc = subprocess.Popen(
                [self._python, "-m", "fast_manager.sidecar_start"], env=env, cwd=str(REPO_ROOT),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=replica_preexec,
            )
        rep = Replica(replica_id, spec.namespace, spec.name, fn.generation, proc.pid, port,
                      device_id, cores, share.sm_pct, time.time(), config_id=config_id,
                      weight=max(1, round(share.sm_pct * share.quota_limit_frac)), proc=proc,
                      batch=config.run_batch if config is not None else 0)
        local_state.write_replica(self._redis, rep)
        log.info("started replica %s pid %d port %d cores %s", replica_id, proc.pid, port, cores)
        return rep
