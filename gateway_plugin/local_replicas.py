"""Replica processes of the local backend: their records, liveness and stopping.

A replica is a sidecar process group in its own session. Its record (pid, port, cores, group) is
kept in Redis so a restarted provider can re-adopt it, and so ``fastgshare up`` can stop every
replica on shutdown even when the provider has already exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from fastgshare import keys

STOP_GRACE_S = 5.0
"""Time a replica gets between SIGTERM (the sidecar drains and stops its worker) and SIGKILL."""


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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self) -> str:
        return json.dumps({
            "replica_id": self.replica_id, "generation": self.generation, "pid": self.pid,
            "port": self.port, "device_id": self.device_id, "cores": list(self.cores),
            "sm_pct": self.sm_pct, "started_at_s": self.started_at_s, "restarts": self.restarts,
            "config_id": self.config_id, "weight": self.weight,
        })


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def is_our_sidecar(pid: int, replica_id: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"FASTGSHARE_REPLICA={replica_id}".encode() in env


def stop_process_group(pid: int, proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL; reaps ``proc`` if it is our child."""
    try:
        os.killpg(pid, signal.SIGTERM)
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


def stop_recorded_replicas(client: redis.Redis) -> int:
    """Stop every replica recorded in Redis, from any process (``fastgshare up`` on shutdown).

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
                    os.killpg(pid, signal.SIGTERM)
                    pids.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        client.delete(keys.replicas(ns, name))
    deadline = time.monotonic() + STOP_GRACE_S
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return len(pids)
