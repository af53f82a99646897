"""The sidecar's worker supervisor: start the worker pinned, pump its output, restart it on exit.

The worker's CPU affinity is set between fork and exec, so the runtime and torch start on their
cores (OpenMP sizes its pool at import). Its stdout and stderr come through one pipe and are
written to the sidecar's stdout line by line with a timestamp. Must not import torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from fast_manager.logline import format_lines
from fast_manager.memory import RSS_POLL_S, MemoryEnforcement, MemoryGuard, join_cgroup
from fast_manager.settings import SidecarSettings, sidecar_settings_from_env
from fast_manager.sidecar_http import probe_ready
from fast_manager.warm_start import (
    MAX_MESSAGE,
    UNKNOWN_EXIT,
    Forked,
    Setup,
    encode_request,
    request_fork,
)
from fast_manager.worker_env import worker_env
from fast_manager.worker_sandbox import enter as enter_sandbox
from fast_manager.worker_sandbox import exposures, needed_paths, traversable
from fastgshare.errors import ValidationError
from fastgshare.procs import alive

log = logging.getLogger("sidecar.worker")

READY_POLL_S = 0.05
"""How often a starting worker's ``/_/ready`` is asked; its load takes seconds, this costs little."""
RESTART_BACKOFF_S = (0.2, 1.0, 2.0, 5.0, 10.0)
"""Pause before each consecutive restart; a worker that stays up for a minute resets it."""
STABLE_AFTER_S = 60.0
"""A worker that lived this long is healthy again: the next crash restarts at once."""
STOP_GRACE_S = 5.0
"""Time between SIGTERM and SIGKILL when the worker is stopped."""
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def raise_own_priority(change: int) -> tuple[int | None, str]:
    """Lower this process's niceness by ``-change`` (``change`` <= 0), best effort. Returns the
    niceness it had before when it changed (what the worker is reset to), else None, and a line
    for the log saying what happened."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if change >= 0:
        return None, f"sidecar at nice {base}"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, base + change))
    except OSError as e:
        return None, (f"sidecar priority not raised ({e.strerror or e}; needs CAP_SYS_NICE): "
                      f"sidecar and worker at nice {base}")
    return base, (f"sidecar priority raised from nice {base} to "
                  f"{os.getpriority(os.PRIO_PROCESS, 0)}; the worker starts at nice {base} "
                  f"(+ FASTGSHARE_WORKER_NICE)")


def child_setup(cores: tuple[int, ...], cgroup_procs: str | None,
                nice: int = 0, base_nice: int | None = None,
                run_as: tuple[int, int] | None = None,
                binds: tuple[tuple[str, str], ...] = (),
                parent_death: bool = True) -> Callable[[], None]:
    """``nice``: the worker's niceness above the sidecar's; above ``base_nice`` instead when the
    sidecar raised its own priority (the worker is put back where the sidecar started).
    ``run_as``: (uid, gid) the worker drops to, after everything that needs the sidecar's
    privileges (cgroup, priority) and before exec; a failure to drop fails the start.
    ``binds``: folders the worker cannot enter as that user and the children it needs of them
    (``fast_manager.worker_sandbox``). ``parent_death``: SIGKILL when the parent dies (a warm
    pool's worker has the pool as its parent and a lifeline to its sidecar instead)."""
    def setup() -> None:  # runs in the child between fork and exec: no locks, no logging
        if cgroup_procs:  # before exec, so the runtime and torch are charged to the limit
            join_cgroup(cgroup_procs)
        if cores:
            os.sched_setaffinity(0, cores)
        if base_nice is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, min(19, base_nice + nice))
        elif nice:
            with contextlib.suppress(OSError):
                os.nice(nice)
        if run_as is not None:  # supplementary groups first: they would keep root's groups
            enter_sandbox(binds)
            os.setgroups([])
            os.setgid(run_as[1])
            os.setuid(run_as[0])  # real, effective and saved: no way back
        # The worker must not outlive a SIGKILLed sidecar (it would hold its cores and memory).
        # After the user change, which clears the parent-death signal.
        if parent_death:
            with contextlib.suppress(Exception):
                ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return setup


class WarmProcess:
    """A worker the node's warm pool forked (not our child), with what ``WorkerProcess`` uses of
    an asyncio process: its exit code comes from the pool on the connection, which is also the
    worker's lifeline (``fast_manager.warm_start``)."""

    def __init__(self, forked: Forked, stdout: asyncio.StreamReader) -> None:
        self.pid = forked.pid
        self.returncode: int | None = None
        self.stdout = stdout
        self._conn = forked.conn
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._follow(), name=f"warm-worker-{forked.pid}")

    @classmethod
    async def follow(cls, forked: Forked) -> WarmProcess:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                     os.fdopen(forked.out_fd, "rb", buffering=0))
        return cls(forked, reader)

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
            while alive(self.pid):
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
            return  # its pid may be another process's by now
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


WorkerProc = asyncio.subprocess.Process | WarmProcess
"""A cold worker (our child) or one the node's warm pool forked."""


class WorkerProcess:
    """One worker child at a time, kept alive until ``stop``."""

    def __init__(self, settings: SidecarSettings, base_env: Mapping[str, str],
                 out=None, memory: MemoryGuard | None = None,
                 base_nice: int | None = None) -> None:
        self._settings = settings
        self._base_nice = base_nice
        """The sidecar's niceness before it raised its priority (None: it did not)."""
        self.memory = memory or MemoryGuard(MemoryEnforcement.OFF, None, why="not requested")
        self._base_env = dict(base_env)
        self._out = out or sys.stdout
        self._proc: WorkerProc | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.port = 0
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.on_state_change: Callable[[bool], None] = lambda up: None
        self._binds: tuple[tuple[str, str], ...] = ()
        self._early: tuple[dict[str, str], Setup, Forked | None, str] | None = None
        """The first worker, asked of the warm pool before the loop (``fork_early``)."""
        if settings.run_as is not None:
            self._binds = exposures(needed_paths(settings.runtime), traversable)
            if self._binds:
                log.info("the worker (uid %d) reaches %s through a private mount namespace",
                         settings.run_as[0], ", ".join(child for _, child in self._binds))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout_s: float) -> bool:
        if self._ready.is_set():
            return True
        if timeout_s <= 0:
            return False
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _undumpable(self) -> None:
        if self._settings.undumpable:  # before the first worker exists (settings.undumpable)
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_DUMPABLE, 0)

    def start(self) -> None:
        self._undumpable()
        self._task = asyncio.create_task(self._supervise(), name="worker-supervisor")

    async def kill(self, reason: str) -> None:
        """Kill a hung worker; the supervisor restarts it."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            log.warning("killing worker pid %d: %s", proc.pid, reason)
            self._set_ready(False)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def stop(self) -> None:
        self._stopping = True
        self._set_ready(False)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.memory.close()

    def _set_ready(self, up: bool) -> None:
        if up and not self._ready.is_set():
            self._ready.set()
            self.on_state_change(True)
        elif not up and self._ready.is_set():
            self._ready.clear()
            self.on_state_change(False)

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            self.last_exit_code = code
            if time.monotonic() - started > STABLE_AFTER_S:
                failures = 0
            pause = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            failures += 1
            self.restarts += 1
            log.warning("worker exited with code %s; restarting in %.1fs (restart %d)",
                        code, pause, self.restarts)
            await asyncio.sleep(pause)

    def _launch(self) -> tuple[dict[str, str], Setup]:
        """Pick the next worker's port; its environment and pre-exec setup."""
        s = self._settings
        self.port = s.worker_port or free_port()
        env = worker_env(s, self._base_env)
        env["FASTGSHARE_WORKER_PORT"] = str(self.port)
        self.memory.worker_started()
        setup = Setup(s.cpu_cores, self.memory.procs_file(), s.worker_nice, self._base_nice,
                      s.run_as, self._binds)
        return env, setup

    def fork_early(self) -> None:
        """Ask the node's warm pool for the first worker now, before this process's event loop
        and its heavier imports exist (``fast_manager.sidecar_start``): the worker loads while
        the sidecar starts. The first run then follows it; nothing happens without a pool."""
        if self._settings.warm_socket is None:
            return
        self._undumpable()
        env, setup = self._launch()
        forked, why = request_fork(self._settings.warm_socket, self._encode(env, setup))
        if forked is not None:
            log.info("worker pid %d forked by the warm pool for port %d, before the sidecar's "
                     "own start", forked.pid, self.port)
        self._early = (env, setup, forked, why)

    def _encode(self, env: dict[str, str], setup: Setup) -> bytes:
        s = self._settings
        return encode_request(sys.executable, s.runtime, s.runtime.parent, env, setup)

    async def _run_once(self) -> int | None:
        s = self._settings
        forked: Forked | None = None
        why = ""
        if self._early is not None:  # asked before the loop (fork_early): its port is set
            (env, setup, forked, why), self._early = self._early, None
        else:
            env, setup = self._launch()
            if s.warm_socket is not None:
                forked, why = await asyncio.to_thread(request_fork, s.warm_socket,
                                                      self._encode(env, setup))
        proc: WorkerProc | None = None
        how = "cold"
        if forked is not None:
            proc = await WarmProcess.follow(forked)
            how = "forked by the warm pool"
        elif s.warm_socket is not None:
            log.warning("worker starts cold: %s", why)
        if proc is None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, str(s.runtime), env=env, cwd=str(s.runtime.parent),
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=child_setup(*dataclasses.astuple(setup)),
                )
            except (OSError, subprocess.SubprocessError) as e:  # the restart loop retries, logged
                log.error("worker did not start (%s)%s", e, (
                    f"; it runs as uid {s.run_as[0]} with {self._binds or 'no namespace'}"
                    if s.run_as else ""))
                return None
        self._proc = proc
        log.info("worker pid %d started on port %d, cores %s, device %s, user %s, %s", proc.pid,
                 self.port, list(s.cpu_cores) or "inherited", s.device,
                 f"{s.run_as[0]}:{s.run_as[1]}" if s.run_as else "the sidecar's", how)
        pump = asyncio.create_task(self._pump(proc))
        probe = asyncio.create_task(self._probe(proc))
        watch = (asyncio.create_task(self._watch_rss(proc))
                 if self.memory.mode is MemoryEnforcement.RSS_WATCH else None)
        try:
            code = await proc.wait()
        finally:
            probe.cancel()
            if watch is not None:
                watch.cancel()
            self._set_ready(False)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await probe
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(pump, 1.0)  # the pipe's last lines: often the crash reason
        if self.memory.breached():
            self.memory.count_breach()
            log.error("worker pid %d: %s", proc.pid, self.memory.message())
        return code

    async def _watch_rss(self, proc: WorkerProc) -> None:
        while proc.returncode is None:
            rss = self.memory.over_limit(proc.pid)
            if rss is not None:
                self.memory.mark_watch_kill()  # before the kill: the request path asks at once
                await self.kill(f"resident set {rss} bytes is over its memory limit of "
                                f"{self.memory.limit_bytes} bytes")
                return
            await asyncio.sleep(RSS_POLL_S)

    async def _probe(self, proc: WorkerProc) -> None:
        deadline = time.monotonic() + self._settings.ready_timeout_s
        while proc.returncode is None:
            if time.monotonic() > deadline:
                await self.kill(f"not ready after {self._settings.ready_timeout_s:g}s")
                return
            if await probe_ready(self.port, 2.0):
                log.info("worker pid %d ready", proc.pid)
                self._set_ready(True)
                return
            await asyncio.sleep(READY_POLL_S)

    async def _pump(self, proc: WorkerProc) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line longer than the stream limit: take what is there
                line = await proc.stdout.read(2**16)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            self._out.write(format_lines(time.time(), text))
            self._out.flush()


def prepare(env: Mapping[str, str]) -> tuple[SidecarSettings, int | None, WorkerProcess]:
    """A sidecar's first steps, before its event loop: settings (exit 2 when invalid), its
    priority, the worker's memory guard, and the worker itself, asked of the node's warm pool at
    once when there is one (``WorkerProcess.fork_early``)."""
    try:
        settings = sidecar_settings_from_env(env)
    except ValidationError as e:
        logging.getLogger("sidecar").error("bad sidecar environment: %s", e)
        sys.exit(2)
    # Linux niceness is per thread: raised here, before any thread or child exists.
    base_nice, why = raise_own_priority(settings.sidecar_nice)
    logging.getLogger("sidecar").info("%s", why)
    memory = (MemoryGuard(MemoryEnforcement.OFF, None, why="GPU memory is limited by MPS")
              if settings.is_gpu else
              MemoryGuard.open(settings.share.mem_bytes,
                               f"fastgshare-{settings.replica}-{os.getpid()}", settings.mem_enforce))
    worker = WorkerProcess(settings, env, memory=memory, base_nice=base_nice)
    worker.fork_early()
    return settings, base_nice, worker
