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
gone. Must not import torch (the sidecar imports this).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
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


class WarmProcess:
    """A worker forked by the pool, with what ``WorkerProcess`` uses of an asyncio process."""

    def __init__(self, pid: int, conn: socket.socket, stdout: asyncio.StreamReader) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = stdout
        self._conn = conn
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._follow(), name=f"warm-worker-{pid}")

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        code: int | None = None
        try:
            while True:
                raw = await loop.sock_recv(self._conn, MAX_MESSAGE)
                if not raw:
                    break
                msg = json.loads(raw)
                if "exit" in msg:
                    code = int(msg["exit"])
                    break
        except (OSError, ValueError):
            pass
        if code is None:  # the pool went first: wait for the worker itself (not our child)
            while _alive(self.pid):
                await asyncio.sleep(0.05)
            code = UNKNOWN_EXIT
        self.returncode = code
        self._conn.close()
        self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def _signal(self, sig: int) -> None:
        if self.returncode is not None:
            return  # its pid may belong to another process by now
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (the pool's child, the pool stopped reaping) is as good as gone
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


async def fork_worker(socket_path: Path, request: bytes) -> tuple[WarmProcess | None, str]:
    """Ask the pool for a worker. Returns it (its output on its ``stdout``), or None and why."""
    loop = asyncio.get_running_loop()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.setblocking(False)
    read_fd, write_fd = os.pipe()
    try:
        await asyncio.wait_for(loop.sock_connect(conn, str(socket_path)), ANSWER_TIMEOUT_S)
        conn.setblocking(True)
        conn.settimeout(ANSWER_TIMEOUT_S)
        # The message and the pipe's write end in one sendmsg (a local, unfilled buffer).
        await asyncio.to_thread(socket.send_fds, conn, [request], [write_fd])
        os.close(write_fd)
        write_fd = -1
        conn.setblocking(False)
        raw = await asyncio.wait_for(loop.sock_recv(conn, MAX_MESSAGE), ANSWER_TIMEOUT_S)
        answer = json.loads(raw) if raw else {"refused": "the pool closed the connection"}
    except (OSError, TimeoutError, ValueError) as e:
        conn.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        return None, f"the warm pool at {socket_path} did not answer ({e or type(e).__name__})"
    if "pid" not in answer:
        conn.close()
        os.close(read_fd)
        return None, str(answer.get("refused") or answer)
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 os.fdopen(read_fd, "rb", buffering=0))
    return WarmProcess(int(answer["pid"]), conn, reader), ""
