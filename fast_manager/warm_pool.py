"""The node's warm pool: a fork server with torch imported, from which sidecars start workers.

    python -m fast_manager.warm_pool --socket PATH [--runtime index.py] [--preload torch,...]

Started by the node agent in local mode (one per node; ``FASTGSHARE_WARM_POOL=off`` turns it off).
A replica of an already-stored model was ready 1.6 s (MobileNet) to 2.5 s (ResNet-50) after its
scale request on the CPU VM, 1.0-1.3 s of it the worker importing torch (``bench.replica_start``).
Here torch, the runtime's sibling modules and the ``--preload`` list are imported once; a worker is
then a fork of this process (about 10 ms) that goes on with the function's handler and weights.

What keeps a fork safe and the worker the same as a cold one:

- what the pool imported is frozen out of the garbage collector (``gc.freeze``): a worker's
  collections neither walk it nor copy its pages;
- the pool never runs a torch operation nor touches CUDA: one thread at fork (OpenBLAS's pool is
  sized 1 before numpy loads), no OpenMP pool, no CUDA context (each worker creates its own under
  its MPS share, as a cold one does: on a GPU the context is *not* pre-created; untested there);
- the worker gets the cold worker's pre-exec setup (``sidecar_worker.child_setup``: cgroup, cores,
  niceness, sandbox, user), its environment, folder and output pipe, re-seeded random state, and
  runs the runtime as ``__main__``; ``torch.set_num_threads`` happens in the runtime, as cold;
- a request the fork cannot honour is refused, and the sidecar starts the worker cold: another
  runtime or interpreter, or a variable read when torch or Python start (``IMPORT_TIME_VARS``)
  that differs from the pool's.

Only the platform's user may connect (the socket is 0600 and the peer's uid is checked): a fork
request names the user and cgroup the worker gets. The protocol and the lifeline are described in
``fast_manager.warm_start``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import logging
import os
import random
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from fast_manager.settings import TEMPLATE_RUNTIME as DEFAULT_RUNTIME
from fast_manager.settings import is_sidecar_only, on_off
from fast_manager.warm_start import MAX_MESSAGE, Setup

log = logging.getLogger("warm_pool")

DEFAULT_PRELOAD = ("torch",)
IMPORT_TIME_VARS = ("PYTHON", "LD_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "MALLOC_",
                    "TORCH", "PYTORCH_")
"""Prefixes of variables that Python, the loader, OpenMP, BLAS or torch read when they start: a
worker that sets one differently from the pool must start cold to see it."""
APPLIED_AFTER_FORK = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "PYTHONUNBUFFERED"})
"""Read at start, but applied by the runtime (``torch.set_num_threads``) or by the fork itself
(line-buffered output): they may differ. (numpy's OpenBLAS pool stays at one thread.)"""
POOL_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1"}
"""Set before the imports: the policy every worker gets (``worker_env``), and one thread at fork."""
_SO_PEERCRED_FMT = "3i"


def import_time_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(IMPORT_TIME_VARS) and k not in APPLIED_AFTER_FORK}


def preload(runtime: Path, modules: tuple[str, ...]) -> list[str]:
    """Import ``modules`` and the runtime's sibling modules (``fastgshare_*.py``); returns them."""
    folder = str(runtime.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(1, folder)  # as the runtime puts it, so the names are the same modules
    names = list(modules) + sorted(p.stem for p in runtime.resolve().parent.glob("fastgshare_*.py"))
    for name in names:
        importlib.import_module(name)
    return names


class WarmPool:
    def __init__(self, socket_path: Path, runtime: Path) -> None:
        self.socket_path = socket_path
        self.runtime = runtime.resolve()
        self.python = sys.executable
        self.import_env = import_time_env(os.environ)
        self.unusable = _cuda_initialised()
        """Why no worker may be forked ("" when any may): a CUDA context in the pool would be
        unusable in every child."""
        self.children: dict[int, socket.socket] = {}
        """pid -> its sidecar's connection."""
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    # ---- serving -------------------------------------------------------------------------

    def listen(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old = os.umask(0o177)  # 0600 from the start: no window where another user may connect
        try:
            self.listener.bind(str(self.socket_path))
        finally:
            os.umask(old)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        self._sel.register(self.listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            for key, _ in self._sel.select(timeout=0.5):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                else:  # a sidecar's end: only its close comes here (it sends nothing more)
                    self._sidecar_closed(key.data)
            self._reap()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        try:
            conn.setblocking(True)
            conn.settimeout(2.0)
            uid = struct.unpack(_SO_PEERCRED_FMT, conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FMT)))[1]
            if uid != os.geteuid():
                log.warning("refused a connection from uid %d (only %d may ask)", uid, os.geteuid())
                conn.close()
                return
            raw, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 1)
        except (OSError, struct.error) as e:
            log.warning("a request could not be read: %s", e)
            conn.close()
            return
        if not raw:  # a readiness check: connected and left
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        try:
            request = json.loads(raw)
            why = self.refusal(request, fds)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            request, why = {}, f"malformed request: {type(e).__name__}: {e}"
        if why:
            log.info("refused: %s", why)
            self._answer(conn, {"refused": why})
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        t0 = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as e:  # no memory or process left: the sidecar starts it cold, and says why
            self._answer(conn, {"refused": f"the pool could not fork: {e}"})
            conn.close()
            os.close(fds[0])
            return
        if pid == 0:  # the worker; never returns
            self._become_worker(conn, fds[0], request)
        os.close(fds[0])
        self.children[pid] = conn
        self._answer(conn, {"pid": pid})
        conn.setblocking(False)
        self._sel.register(conn, selectors.EVENT_READ, pid)
        log.info("forked worker pid %d in %.1f ms for %s", pid, (time.perf_counter() - t0) * 1e3,
                 request["env"].get("FASTGSHARE_REPLICA", "?"))

    def refusal(self, request: dict, fds: list[int]) -> str:
        """Why this request must start cold ("" when it may be forked)."""
        if self.unusable:
            return self.unusable
        if len(fds) != 1:
            return "the request carries no output pipe"
        if request["python"] != self.python:
            return f"interpreter {request['python']} is not the pool's ({self.python})"
        if Path(request["runtime"]).resolve() != self.runtime:
            return f"runtime {request['runtime']} is not the pool's ({self.runtime})"
        wanted = import_time_env(request["env"])
        if wanted != self.import_env:
            names = sorted(k for k in set(wanted) | set(self.import_env)
                           if wanted.get(k) != self.import_env.get(k))
            return ("variables read when Python or torch start differ from the pool's: "
                    + ", ".join(names))
        return ""

    @staticmethod
    def _answer(conn: socket.socket, msg: dict) -> None:
        with contextlib.suppress(OSError):
            conn.send(json.dumps(msg).encode())

    def _sidecar_closed(self, pid: int) -> None:
        conn = self.children.get(pid)
        if conn is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            if conn.recv(MAX_MESSAGE):
                return  # not a close (nothing is expected; ignored)
        log.warning("the sidecar of worker pid %d is gone: killing it", pid)
        self._sel.unregister(conn)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self._answer(conn, {"exit": code})
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn)
            conn.close()

    # ---- in the forked child --------------------------------------------------------------

    def _become_worker(self, conn: socket.socket, out_fd: int, request: dict) -> None:
        code = 1
        try:
            self._sel.close()
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()
            for other in self.children.values():
                other.close()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.setsid()  # its own group: a signal to the pool's does not reach it
            _worker_process_setup(Setup.from_json(request["setup"]))
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
            os.close(devnull)
            os.close(out_fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
            os.environ.clear()
            os.environ.update(request["env"])
            os.chdir(request["cwd"])
            random.seed()
            _lifeline(conn)
            logging.getLogger().handlers.clear()
            sys.argv = [request["runtime"]]
            runpy.run_path(request["runtime"], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - the worker's last words, then its exit code
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()  # what a cold worker's interpreter does at exit
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def _cuda_initialised() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return ("CUDA was initialised while the pool imported its modules (a preloaded module "
                "touched the GPU): a forked worker could not use it")
    return ""


def _worker_process_setup(setup: Setup) -> None:
    from fast_manager.sidecar_worker import child_setup

    child_setup(setup.cores, setup.cgroup_procs, setup.nice, setup.base_nice, setup.run_as,
                setup.binds, parent_death=False)()


def _lifeline(conn: socket.socket) -> None:
    """The worker ends when its sidecar's end of ``conn`` closes, also once the pool is gone."""
    def watch() -> None:
        conn.setblocking(True)
        conn.settimeout(None)
        while True:
            try:
                if not conn.recv(MAX_MESSAGE):
                    break
            except OSError:
                break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="fastgshare-lifeline", daemon=True).start()


ENV_SWITCH = "FASTGSHARE_WARM_POOL"
"""``off``: the node agent runs no warm pool and every worker starts cold."""


def enabled(env: Mapping[str, str]) -> bool:
    """Whether the node agent runs a warm pool (``ENV_SWITCH``, on by default; ValidationError
    naming it for another value)."""
    return on_off(env, ENV_SWITCH, True)
START_TIMEOUT_S = 30.0
RESTART_PAUSE_S = 2.0


_SUN_PATH_MAX = 107
"""Longest Unix socket path (``sockaddr_un.sun_path`` less its NUL)."""


def socket_path_in(state_dir: Path) -> Path:
    """``STATE/run/warm-pool.sock``, or a private folder under /tmp when that path is too long
    for a Unix socket (a deep state folder)."""
    path = state_dir / "run" / "warm-pool.sock"
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path
    return Path(tempfile.mkdtemp(prefix="fastgshare-warm-")) / "pool.sock"


def answers(socket_path: Path) -> bool:
    """Whether a pool listens on ``socket_path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        try:
            s.connect(str(socket_path))
        except OSError:
            return False
    return True


def pool_env(env: Mapping[str, str]) -> dict[str, str]:
    """The pool's environment: the node agent's without the platform's variables and credentials.
    A forked worker's ``/proc/self/environ`` is the pool's (its own variables live in memory), and
    the worker runs the function's code."""
    return {k: v for k, v in env.items()
            if not (k.startswith(("FASTGSHARE_", "REDIS")) or is_sidecar_only(k))}


class PoolKeeper:
    """The node agent's handle on its pool: started in its own session with a parent-death
    signal (it does not outlive the agent; the workers it forked do, until their sidecars go),
    restarted when it exits."""

    def __init__(self, socket_path: Path, runtime: Path, log_path: Path,
                 python: str = sys.executable, preload_modules: str = ",".join(DEFAULT_PRELOAD),
                 env: Mapping[str, str] | None = None) -> None:
        self.socket_path = socket_path
        self._env = pool_env(os.environ if env is None else env)
        self._cmd = [python, "-m", "fast_manager.warm_pool", "--socket", str(socket_path),
                     "--runtime", str(runtime), "--preload", preload_modules]
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="warm-pool", daemon=True)

    def start(self, wait_s: float = START_TIMEOUT_S) -> bool:
        """Start it and wait until it answers (False: not within ``wait_s``; sidecars then start
        their workers cold until it does)."""
        self._spawn()
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if answers(self.socket_path):
                return True
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.05)
        log.warning("the warm pool is not up (see %s): workers start cold", self._log_path)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def _spawn(self) -> None:
        from fastgshare.local_replicas import replica_preexec

        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "ab") as out:
            self._proc = subprocess.Popen(self._cmd, env=self._env, stdout=out,
                                          stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL,
                                          preexec_fn=replica_preexec,
                                          cwd=str(Path(__file__).resolve().parent.parent))

    def _keep(self) -> None:
        while not self._stop.wait(1.0):
            if self._proc is not None and self._proc.poll() is not None:
                log.warning("the warm pool exited with code %s; restarting it in %.0f s",
                            self._proc.returncode, RESTART_PAUSE_S)
                if self._stop.wait(RESTART_PAUSE_S):
                    return
                self._spawn()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fast_manager.warm_pool",
        description="The node's warm pool: import torch and the worker runtime's modules once, "
                    "then fork a worker for each sidecar that asks on the Unix socket.")
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    parser.add_argument("--runtime", type=Path, default=DEFAULT_RUNTIME,
                        help=f"the worker runtime it serves (default {DEFAULT_RUNTIME})")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD),
                        help="comma-separated modules to import besides the runtime's own "
                             f"(default {','.join(DEFAULT_PRELOAD)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s [%(name)s] %(levelname)s: %(message)s")
    if not args.runtime.is_file():
        parser.error(f"--runtime {args.runtime}: no such file")
    for k, v in POOL_ENV.items():
        os.environ.setdefault(k, v)
    t0 = time.perf_counter()
    modules = preload(args.runtime, tuple(m for m in args.preload.split(",") if m))
    # What is imported now lives as long as every worker: out of the collector's sight, so that a
    # collection in a worker neither walks it nor writes to its pages (each write a copy-on-write
    # fault: ResNet-50's load() took 2-3x longer without this).
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pool = WarmPool(args.socket, args.runtime)
    pool.listen()
    log.info("ready on %s in %.2f s: %s imported, runtime %s", args.socket,
             time.perf_counter() - t0, ", ".join(modules), pool.runtime)
    if pool.unusable:
        log.error("every worker will start cold: %s", pool.unusable)
    try:
        pool.serve(stop)
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
