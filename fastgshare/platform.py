"""The embedded platform: Redis, node agent and provider as supervised local processes.

``fastgshare up`` and ``fastgshare demo`` run it in the foreground; tests and benchmarks start it
on a free port in a temporary state directory. The node agent runs the replicas (the provider is
stateless). Stopping it stops the provider, the node agent (which drains and stops every replica)
and, last, Redis (which flushes its append-only file), in that order. Every process it starts,
and every replica, has a parent-death signal: a SIGKILLed ``up`` leaves nothing running. The embedded
Redis is supervised: when it dies it is started again on the same port and data directory, with
backoff, and each exit and restart is written to ``STATE/platform-logs/platform.log`` and stderr.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from fast_manager import warm_pool
from fast_manager.function_users import Isolation, isolation_from_env
from fastgshare.redis_acl import PLATFORM_USER, ensure_passwords, write_acl_file
from fastgshare.redis_server import (
    RESTART_BACKOFF_S,
    EmbeddedRedis,
    RedisSupervisor,
    die_with_parent,
    free_port,
)

DEFAULT_USER = "admin"
"""Basic-auth user written to ``STATE/secrets/basic-auth-user`` on first start."""
START_TIMEOUT_S = 60.0
"""How long the provider may take to answer ``/healthz``."""
REPO_ROOT = Path(__file__).resolve().parent.parent
TRUST_MODEL_NOTE = (
    "not running as root: every function runs as this user and can read what this user can "
    "(the state directory, the admin password, the Redis credentials). Single-user trust model: "
    "deploy only functions you trust, or run the platform as root so each function gets a user "
    "of its own (README, 'Who can read what')")
"""Said at the start of a platform that cannot give functions users of their own."""

log = logging.getLogger("fastgshare.platform")


@dataclass(frozen=True)
class PlatformInfo:
    """What clients need to reach a running platform; written to ``STATE/platform.json``."""

    url: str
    redis_url: str
    user: str
    password: str
    state_dir: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)


def read_info(state_dir: Path) -> PlatformInfo:
    """The platform info of a running ``fastgshare up`` on ``state_dir``."""
    path = Path(state_dir) / "platform.json"
    try:
        return PlatformInfo(**json.loads(path.read_text()))
    except FileNotFoundError as e:
        raise SystemExit(
            f"no platform is running on state dir {state_dir} ({path} missing): "
            "start one with `fastgshare up`, or pass --gateway and credentials"
        ) from e


def ensure_credentials(secrets_dir: Path) -> tuple[str, str]:
    """Read the basic-auth credentials, creating them on first start (faas-provider convention)."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    user_file, pass_file = secrets_dir / "basic-auth-user", secrets_dir / "basic-auth-password"
    if not user_file.exists():
        user_file.write_text(DEFAULT_USER)
    if not pass_file.exists():
        fd = os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(18))
    pass_file.chmod(0o600)
    return user_file.read_text().strip(), pass_file.read_text().strip()


@dataclass
class Platform:
    """The embedded platform's processes. ``start()`` returns once the provider is healthy."""

    state_dir: Path
    port: int = 8080
    """Provider (gateway) port on loopback; 0 picks a free one."""
    basic_auth: bool = True
    redis_url: str | None = None
    """An external Redis; None starts the embedded one under ``STATE/redis``."""
    bind: str = "127.0.0.1"
    profiler: bool = False
    """Run the background profiler (profiles functions with ``fastgshare/slo_ms`` and no table)."""
    scheduler: bool = False
    """Run the scheduler's control loop (``python -m fast_scheduler``)."""
    start_mps: bool = False
    """Let the node agent start the MPS control daemon on GPU nodes where none is running."""
    redis_restart_backoff_s: tuple[float, ...] = RESTART_BACKOFF_S
    """Delays before restarting a dead embedded Redis, the last repeating (tests widen them)."""
    _redis: EmbeddedRedis | None = None
    _redis_supervisor: RedisSupervisor | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _redis_url: str = ""
    _sidecar_redis_url: str = ""
    """What replicas get: the sidecars' restricted Redis user (``fastgshare.redis_acl``)."""
    _password: str = ""
    info: PlatformInfo | None = None
    isolation: Isolation | None = None
    """Function users (the platform runs as root), or None (functions run as this user)."""

    def start(self) -> PlatformInfo:
        warm = warm_pool.enabled(os.environ)  # a bad value is refused before anything starts
        self.state_dir = Path(self.state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # secrets, Redis data and credentials: the platform's alone
        self.isolation = isolation_from_env(os.environ, os.geteuid(), self.state_dir)
        if self.isolation is None:
            self.note(TRUST_MODEL_NOTE)
        if not self.port:
            self.port = free_port()
        redis_url = self.redis_url
        self._sidecar_redis_url = os.environ.get("FASTGSHARE_SIDECAR_REDIS_URL") or redis_url or ""
        if redis_url is None:  # ours: with ACL users, the default (passwordless) one off
            passwords = ensure_passwords(self.state_dir / "secrets")
            data = self.state_dir / "redis"
            data.mkdir(mode=0o700, exist_ok=True)
            self._redis = EmbeddedRedis(data, acl_file=write_acl_file(data / "users.acl", passwords),
                                        username=PLATFORM_USER, password=passwords.platform).start()
            redis_url = self._redis.url
            self._sidecar_redis_url = passwords.sidecar_url(redis_url)
            self._redis_supervisor = RedisSupervisor(
                self._redis, note=self.note, backoff_s=self.redis_restart_backoff_s).start()
        user, password = ensure_credentials(self.state_dir / "secrets")
        self._redis_url = redis_url
        try:
            # Redis URLs carry credentials: by environment (the process's own), never argv
            # (which anyone on the machine reads in /proc).
            self._spawn("node-agent", [sys.executable, "-m", "fast_manager.node_agent",
                                       "--supervise-replicas"]
                        + (["--start-mps"] if self.start_mps else []))
            self._spawn_provider()
        except BaseException:
            self.stop()
            raise
        url = f"http://127.0.0.1:{self.port}"
        self.info = PlatformInfo(url, redis_url, user, password, str(self.state_dir))
        self._password = password
        try:
            if self.profiler:
                self._spawn("profiler", [sys.executable, "-m", "fast_profiler", "watch",
                                         "--gateway", url])
            if self.scheduler:
                # Replicas start in under a second from the node's warm pool (bench.replica_start),
                # cold in 2-3 s on the CPU and more on a GPU: the scheduler's settings follow.
                self._spawn("scheduler", [sys.executable, "-m", "fast_scheduler", "--gateway", url,
                                          "--start-s", "1" if warm else "5"])
        except BaseException:
            self.stop()
            raise
        fd = os.open(self.state_dir / "platform.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:  # the admin password and the platform's Redis user
            out.write(json.dumps(self.info.__dict__, indent=1))
        return self.info

    def note(self, line: str) -> None:
        """One line in the platform's own log (``STATE/platform-logs/platform.log``) and on stderr."""
        log.warning("%s", line)
        logs = self.state_dir / "platform-logs"
        logs.mkdir(exist_ok=True)
        with open(logs / "platform.log", "a") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")

    @property
    def redis_restarts(self) -> int:
        """How often the supervisor restarted the embedded Redis."""
        return self._redis_supervisor.restarts if self._redis_supervisor is not None else 0

    @property
    def redis_pid(self) -> int | None:
        return self._redis.pid if self._redis is not None else None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "REDIS_URL": self._redis_url,
            "FASTGSHARE_SIDECAR_REDIS_URL": self._sidecar_redis_url,
            "FASTGSHARE_STATE_DIR": str(self.state_dir),
            "secret_mount_path": str(self.state_dir / "secrets"),
            "basic_auth": "true" if self.basic_auth else "false",
            "PYTHONUNBUFFERED": "1",
        })
        if self.isolation is not None:  # the node agent's model store GC and its replicas agree
            env.update({"FASTGSHARE_FUNCTIONS_DIR": str(self.isolation.area),
                        "FASTGSHARE_MODEL_STORE_DIR": str(self.isolation.models_dir)})
        if self._password:  # the profiler and scheduler speak the provider API
            env.update({"FASTGSHARE_USER": DEFAULT_USER, "FASTGSHARE_PASSWORD": self._password})
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        logs = self.state_dir / "platform-logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            self._procs[name] = subprocess.Popen(
                argv, env=self._env(), cwd=str(REPO_ROOT), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )

    def _spawn_provider(self) -> None:
        self._spawn("provider", [
            sys.executable, "-m", "gunicorn", "-c",
            str(REPO_ROOT / "gateway_plugin" / "gunicorn_conf.py"),
            "--bind", f"{self.bind}:{self.port}", "gateway_plugin.wsgi:app",
        ])
        self._wait_healthy(f"http://127.0.0.1:{self.port}")

    def _wait_healthy(self, url: str) -> None:
        log_path = self.state_dir / "platform-logs" / "provider.log"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            proc = self._procs["provider"]
            if proc.poll() is not None:
                raise RuntimeError(f"the provider exited at start:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the provider did not become healthy:\n{log_path.read_text()[-3000:]}")

    def restart_provider(self) -> None:
        """Stop and start the provider process alone (replicas and Redis keep running)."""
        self._terminate("provider")
        self._spawn_provider()

    def _terminate(self, name: str, timeout_s: float = 15.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Provider, then the node agent (which drains and stops its replicas), then Redis.
        Safe to call twice."""
        from fastgshare.local_replicas import STOP_GRACE_S, stop_recorded_replicas

        self._terminate("scheduler")
        self._terminate("profiler")
        self._terminate("provider")
        self._terminate("node-agent", timeout_s=STOP_GRACE_S + 5)
        url = self._redis_url
        if url:  # the safety net: replicas a node agent re-adopted but could not stop
            try:
                client = redis.Redis.from_url(url, socket_connect_timeout=1)
                stop_recorded_replicas(client, grace_s=5.0)
                client.close()
            except redis.RedisError:
                pass
        if self.isolation is not None:  # secrets' copies and homes; rebuilt at the next start
            shutil.rmtree(self.isolation.area, ignore_errors=True)
        if self._redis_supervisor is not None:
            self._redis_supervisor.stop()
            self._redis_supervisor = None
        if self._redis is not None:
            self._redis.stop()
            self._redis = None
        platform_json = Path(self.state_dir) / "platform.json"
        if platform_json.exists():
            platform_json.unlink()

    def __enter__(self) -> PlatformInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
