"""A sidecar's side of the node's warm pool (``fast_manager.warm_pool``): fork the worker from it.

A cold worker is ``python index.py``: a fresh interpreter that imports torch (1.0-1.3 s of the
1.6-2.5 s a replica took to become ready on the CPU VM; ``bench.replica_start``). The warm pool
has torch and the runtime's modules imported already and forks the worker from that state.

The request is one message on a Unix ``SOCK_SEQPACKET`` connection: JSON with the worker's
environment, folder, runtime and pre-exec setup, and the write end of the worker's output pipe
(``SCM_RIGHTS``). The pool answers ``{"pid": n}`` (forked) or ``{"refused": why}`` (the worker
cannot be told from a cold one only when it starts cold: another runtime, another interpreter, a
variable read when torch is imported that differs; the sidecar then starts it cold and logs why),
and later ``{"exit": code}`` when the worker ended. The connection is the worker's lifeline: when
the sidecar's end closes, the pool kills the worker, and the worker kills itself should the pool be
gone. The worker itself is followed by ``sidecar_worker.WarmProcess``. Must not import torch nor
asyncio: the sidecar asks for its worker before its own heavier imports (``sidecar_start``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_MESSAGE = 1 << 20
"""Largest request (a worker's environment); SOCK_SEQPACKET keeps a message whole."""
ANSWER_TIMEOUT_S = 5.0
"""How long a sidecar waits for the pool's answer to a fork before it starts the worker cold."""
UNKNOWN_EXIT = 255
"""The exit code reported when the pool was gone before the worker ended."""


@dataclass(frozen=True)
class Setup:
    """What a cold worker gets between fork and exec (``sidecar_worker.child_setup``)."""

    cores: tuple[int, ...] = ()
    cgroup_procs: str | None = None
    nice: int = 0
    base_nice: int | None = None
    run_as: tuple[int, int] | None = None
    binds: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"cores": list(self.cores), "cgroup_procs": self.cgroup_procs, "nice": self.nice,
                "base_nice": self.base_nice, "run_as": list(self.run_as) if self.run_as else None,
                "binds": [list(b) for b in self.binds]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Setup:
        run_as = raw.get("run_as")
        base_nice = raw.get("base_nice")
        return cls(tuple(int(c) for c in raw.get("cores") or ()),
                   str(raw["cgroup_procs"]) if raw.get("cgroup_procs") else None,
                   int(raw.get("nice") or 0),
                   None if base_nice is None else int(base_nice),
                   (int(run_as[0]), int(run_as[1])) if run_as else None,
                   tuple((str(a), str(b)) for a, b in raw.get("binds") or ()))


def encode_request(python: str, runtime: Path, cwd: Path, env: Mapping[str, str],
                   setup: Setup) -> bytes:
    return json.dumps({"python": python, "runtime": str(runtime), "cwd": str(cwd),
                       "env": dict(env), "setup": setup.to_json()}).encode()


@dataclass
class Forked:
    """A worker the pool forked: its pid, the connection (its lifeline; the pool reports its exit
    there) and the read end of its output pipe."""

    pid: int
    conn: socket.socket
    out_fd: int


def request_fork(socket_path: Path, request: bytes) -> tuple[Forked | None, str]:
    """Ask the pool for a worker (blocking, ``ANSWER_TIMEOUT_S`` at most). Returns it, or None
    and why."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(ANSWER_TIMEOUT_S)
    read_fd, write_fd = os.pipe()
    try:
        conn.connect(str(socket_path))
        socket.send_fds(conn, [request], [write_fd])  # the message and the pipe, in one piece
        os.close(write_fd)
        write_fd = -1
        raw = conn.recv(MAX_MESSAGE)
        answer = json.loads(raw) if raw else {"refused": "the pool closed the connection"}
    except (OSError, ValueError) as e:
        answer = {"refused": f"the warm pool at {socket_path} did not answer "
                             f"({e or type(e).__name__})"}
    finally:
        if write_fd >= 0:
            os.close(write_fd)
    if "pid" not in answer:
        conn.close()
        os.close(read_fd)
        return None, str(answer.get("refused") or answer)
    conn.setblocking(False)
    return Forked(int(answer["pid"]), conn, read_fd), ""
