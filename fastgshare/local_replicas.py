"""Replica processes of the local mode: their records, liveness and stopping.

A replica is a sidecar process group in its own session, started by the node agent's supervisor
(``fast_manager.replica_supervisor``). Its record (pid, port, cores, group, readiness, draining)
is kept in Redis: provider workers route from it, and a restarted node agent re-adopts the
replicas that still run.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from fastgshare import keys
from fastgshare.procs import alive

STOP_GRACE_S = 45.0
"""Time a replica gets between SIGTERM (to its sidecar alone: it drains what it holds, then stops
its worker) and SIGKILL of its whole group. Above the sidecar's drain bound
(``fast_manager.sidecar.DRAIN_TIMEOUT_S``) plus its worker's stop grace, like a pod's
termination grace period."""
_PR_SET_PDEATHSIG = 1


@dataclass
class Replica:
    """A replica process this backend started or adopted."""

    replica_id: str
    namespace: str
    name: str
    generation: int
    pid: int
    port: int
    device_id: str
    cores: tuple[int, ...]
    sm_pct: int
    started_at_s: float
    restarts: int = 0
    config_id: str = ""
    weight: int = 100
    """Routing weight: SM share x quota limit, so bigger shares get more requests."""
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    """Its sidecar answered the last health probe."""
    draining: bool = False
    """Chosen to stop: out of the routing table, finishing what it holds."""
    batch: int = 0
    """The worker's largest batch as the node agent last set it (its group's, at start or
    changed at run time through the sidecar); 0: as the function's environment says."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self) -> str:
        return json.dumps({
            "replica_id": self.replica_id, "generation": self.generation, "pid": self.pid,
            "port": self.port, "device_id": self.device_id, "cores": list(self.cores),
            "sm_pct": self.sm_pct, "started_at_s": self.started_at_s, "restarts": self.restarts,
            "config_id": self.config_id, "weight": self.weight, "ready": self.ready,
            "draining": self.draining, "batch": self.batch,
        })


def is_our_sidecar(pid: int, replica_id: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"FASTGSHARE_REPLICA={replica_id}".encode() in env


def redis_url_of(pid: int) -> str | None:
    """The ``REDIS_URL`` a running replica was started with (None if unreadable)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"REDIS_URL="):
            return item.split(b"=", 1)[1].decode()
    return None


def replica_preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
    """A replica gets its own session (its group is stopped as a whole) and SIGTERM when the
    process that started it dies, so that no replica outlives ``fastgshare up`` or its node
    agent, even SIGKILLed."""
    os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_process_group(pid: int, proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM the sidecar alone (it drains, then stops its worker: a worker signalled at the same
    time would exit mid-request), wait up to ``grace_s``, then SIGKILL the whole group; reaps
    ``proc`` if it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc is not None else not alive(pid):
            return
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        proc.wait()


def stop_recorded_replicas(client: redis.Redis, grace_s: float = STOP_GRACE_S) -> int:
    """Stop every replica recorded in Redis, from any process: the safety net of ``fastgshare up``
    on shutdown, after the node agent (which stops its own) is gone.

    Desired state is kept: the next ``up`` starts the replicas again.
    """
    pids: list[int] = []
    for raw_key in client.hkeys(keys.functions_index()):
        ns, name = raw_key.decode().split("/", 1)
        for rec in client.hvals(keys.replicas(ns, name)):
            r = json.loads(rec)
            pid = int(r["pid"])
            if alive(pid) and is_our_sidecar(pid, r["replica_id"]):
                try:
                    os.kill(pid, signal.SIGTERM)
                    pids.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        client.delete(keys.replicas(ns, name))
    deadline = time.monotonic() + grace_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return len(pids)
