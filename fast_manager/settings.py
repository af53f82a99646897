"""The sidecar's settings, read from its environment in exactly one function.

The variables are the process contract in docs/architecture.md (the local backend and the
Kubernetes pod spec set them). Pure: the environment is passed in, nothing else is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fastgshare.errors import ValidationError
from fastgshare.resources import GpuShare

TEMPLATE_RUNTIME = (
    Path(__file__).resolve().parent.parent / "function_templates" / "python3-torch" / "index.py"
)
"""The python3-torch worker runtime in this source tree (the default ``FASTGSHARE_RUNTIME``)."""

DEFAULT_PORT = 8080
"""Where the sidecar listens when ``FASTGSHARE_PORT`` is unset (of-watchdog's port in an image)."""
DEFAULT_QUEUE_MAX = 64
"""Requests that may wait for the worker at once; more are refused with 429."""
DEFAULT_QUEUE_TIMEOUT_S = 30.0
"""How long a request may wait (queue, worker start, token) before 504; the gateway's default
upstream timeout is longer, so the client gets our clear message rather than a bare gateway 502."""
DEFAULT_EXEC_TIMEOUT_S = 300.0
"""How long one execution may run before the worker is treated as hung and restarted."""
DEFAULT_READY_TIMEOUT_S = 600.0
"""How long a starting worker may take to load before it is killed and started again."""
DEFAULT_MAX_BODY_BYTES = 64 * 2**20
"""Largest request body the sidecar accepts (images as base64 exceed aiohttp's 1 MiB default)."""

MAX_TIMEOUT_S = 86_400.0
"""Longest queue, execution or start timeout a sidecar accepts (a day; ``inf`` is refused)."""
MAX_QUEUE = 100_000
"""Most requests a sidecar may be told to queue."""
MAX_BODY_BYTES = 2**32
"""Largest request body a sidecar may be told to accept (4 GiB)."""
MAX_ARBITER_S = 3600.0
"""Longest arbiter window or token a sidecar accepts, in seconds."""

MEM_ENFORCE_MODES = ("auto", "cgroup", "rss", "off")
"""Values of ``FASTGSHARE_MEM_ENFORCE``; the first is the default."""

_SIDECAR_ONLY = frozenset({
    "FASTGSHARE_PORT", "FASTGSHARE_BIND", "FASTGSHARE_RUNTIME", "FASTGSHARE_QUEUE_MAX",
    "FASTGSHARE_QUEUE_TIMEOUT_S", "FASTGSHARE_EXEC_TIMEOUT_S", "FASTGSHARE_READY_TIMEOUT_S",
    "FASTGSHARE_MAX_BODY_BYTES", "FASTGSHARE_ARBITER", "FASTGSHARE_MEM_ENFORCE",
    "FASTGSHARE_ARBITER_WINDOW_S", "FASTGSHARE_ARBITER_MIN_TOKEN_MS", "FASTGSHARE_ARBITER_MAX_TOKEN_MS",
    "FASTGSHARE_RUN_AS", "FASTGSHARE_SIDECAR_UNDUMPABLE", "FASTGSHARE_CONTROL_TOKEN",
    "FASTGSHARE_WARM_SOCKET",
    # Credentials: the sidecar's Redis user (in the URL) must never reach the function's code.
    "REDIS_URL", "REDISCLI_AUTH", "FASTGSHARE_REDIS_PASSWORD", "FASTGSHARE_REDIS_USER",
    "FASTGSHARE_SIDECAR_REDIS_URL",
    "FASTGSHARE_PASSWORD", "FASTGSHARE_USER",
})
"""Variables that configure the sidecar itself, or hold its credentials, and are kept from the
worker (whose code is the function's, not the platform's)."""


@dataclass(frozen=True)
class SidecarSettings:
    """Everything one replica's sidecar needs to know about itself."""

    function: str = "function"
    """Function name (identity in logs, metrics and Redis keys)."""
    namespace: str = "openfaas-fn"
    """Function namespace."""
    replica: str = "replica-0"
    """Replica id, unique within the function."""
    port: int = DEFAULT_PORT
    """TCP port the sidecar listens on; 0 picks a free one (logged at start)."""
    bind: str = "127.0.0.1"
    """Address the sidecar listens on (0.0.0.0 inside a container)."""
    handler_dir: Path = Path("function")
    """The function's code folder (has ``handler.py``)."""
    runtime: Path = TEMPLATE_RUNTIME
    """The worker runtime script, run as ``sys.executable runtime``."""
    device: str = "cpu:0"
    """``cpu:<n>`` or ``gpu:<uuid>``: the device this replica's share is on."""
    cpu_cores: tuple[int, ...] = ()
    """Cores the worker is pinned to (CPU device); empty: inherit the sidecar's affinity."""
    share: GpuShare = field(default_factory=GpuShare)
    """SM share, quota request/limit and memory limit of this replica."""
    device_mem_bytes: int | None = None
    """Total memory of the device, when the backend knows it (turns ``mem_bytes`` into a fraction)."""
    model: str | None = None
    """Model identity for weight sharing (``fastgshare/model``)."""
    secrets_dir: Path | None = None
    """Folder of the function's secrets, one file per secret."""
    redis_url: str | None = None
    """The shared Redis (token arbiter, metrics); None: no arbiter."""
    arbiter: bool = True
    """Take device-time tokens from the arbiter in Redis (``FASTGSHARE_ARBITER=off``: unmanaged,
    every execution runs at once; the "unmanaged" sharing mode)."""
    arbiter_window_s: float | None = None
    """The arbiter's sliding window; None: ``ArbiterParams``' default. A device constant: every
    replica on the device must be given the same value (benchmarks and tests shrink it)."""
    arbiter_min_token_ms: float | None = None
    """Shortest token; None: the default. A device constant, like the window."""
    arbiter_max_token_ms: float | None = None
    """Longest token; None: the default. A device constant, like the window."""
    mem_enforce: str = "auto"
    """How a CPU replica's memory limit is enforced (``FASTGSHARE_MEM_ENFORCE``): ``auto`` (a
    cgroup where the machine allows it, else watching the worker's RSS), ``cgroup``, ``rss``,
    ``off``."""
    mps_pipe_dir: str | None = None
    """GPU only: the MPS control daemon's pipe directory."""
    undumpable: bool = False
    """``FASTGSHARE_SIDECAR_UNDUMPABLE=on``: the sidecar makes itself non-dumpable, so a worker
    running as the same user (a Kubernetes pod) can neither read its ``/proc`` environment (the
    Redis credential) nor trace it. Off where the node agent must read sidecars' environments
    as the same, unprivileged user (local mode without root)."""
    run_as: tuple[int, int] | None = None
    """``FASTGSHARE_RUN_AS=uid:gid``: the unprivileged user and group the worker runs as (set by
    the node agent when the platform runs as root); None: the sidecar's own user."""
    warm_socket: Path | None = None
    """The node's warm pool (``FASTGSHARE_WARM_SOCKET``): the worker is forked from it, torch
    already imported (``fast_manager.warm_pool``); unset or refused: the worker starts cold."""
    worker_port: int = 0
    """Port of the worker on loopback; 0 picks a free one at each (re)start."""
    queue_max: int = DEFAULT_QUEUE_MAX
    """Requests that may wait at once; beyond it 429 with Retry-After."""
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    """Longest wait for the queue, the worker and a token together; then 504 (or 503 if down)."""
    exec_timeout_s: float = DEFAULT_EXEC_TIMEOUT_S
    """Longest single execution; then 504 and the worker is restarted."""
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    """Longest worker load (import + ``load()``); then it is killed and restarted."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Largest request body accepted; larger gets 413."""

    worker_nice: int = 0
    """How much nicer than its sidecar the worker runs (``FASTGSHARE_WORKER_NICE``, 0..19; 0: the
    same priority). Lowering one's own priority needs no privilege."""
    sidecar_nice: int = 0
    """How much the sidecar raises its own priority at start (``FASTGSHARE_SIDECAR_NICE``, a
    niceness change from -20 to 0): a sidecar woken by a hand-over then gets a CPU ahead of busy
    workers. Needs ``CAP_SYS_NICE`` (best effort); the worker still starts at the sidecar's
    original niceness (plus ``worker_nice``)."""
    control_token: str = ""
    """Who may change this replica's batch at run time (``PUT /_/batch``, header
    ``X-Fastgshare-Control``): the node agent, which derived it; empty: nobody."""

    @property
    def is_gpu(self) -> bool:
        return self.device.startswith("gpu:")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    allowed = f"an integer >= {lo}" if hi is None else f"an integer {lo}..{hi}"
    try:
        value = int(raw)
    except ValueError as e:
        raise ValidationError(name, allowed, raw) from e
    if value < lo or (hi is not None and value > hi):
        raise ValidationError(name, allowed, raw)
    return value


def _float(env: Mapping[str, str], name: str, default: float, allowed: str,
           lo_exclusive: float, hi: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise ValidationError(name, allowed, raw) from e
    if not value > lo_exclusive or (hi is not None and value > hi) or not math.isfinite(value):
        raise ValidationError(name, allowed, raw)
    return value


def _opt_float(env: Mapping[str, str], name: str, hi: float) -> float | None:
    if not env.get(name, "").strip():
        return None
    return _float(env, name, 0.0, f"a number > 0, at most {hi:g}", 0.0, hi)


_TIMEOUT_ALLOWED = f"seconds, 0 < t <= {MAX_TIMEOUT_S:g}"


def on_off(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A switch: ``on``/``1``/``true``/``yes`` or ``off``/``0``/``false``/``no``; unset: ``default``."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "1", "true", "yes"):
        return True
    if raw in ("off", "0", "false", "no"):
        return False
    raise ValidationError(name, "on or off", raw)


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or allowed[0]
    if raw not in allowed:
        raise ValidationError(name, " | ".join(allowed), raw)
    return raw


def parse_cores(raw: str) -> tuple[int, ...]:
    """``"0,2-3"`` -> (0, 2, 3): the cpuset list format, as in ``Cpus_allowed_list``."""
    allowed = "comma-separated core numbers or ranges, e.g. 0,2-3"
    cores: set[int] = set()
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError as e:
            raise ValidationError("FASTGSHARE_CPU_CORES", allowed, raw) from e
        if a < 0 or b < a:
            raise ValidationError("FASTGSHARE_CPU_CORES", allowed, raw)
        cores.update(range(a, b + 1))
    return tuple(sorted(cores))


def parse_run_as(raw: str) -> tuple[int, int] | None:
    """``"2000000001:2000000001"`` -> (uid, gid); empty -> None. Root (0) is refused: a worker is
    never given the platform's privileges by this variable."""
    raw = raw.strip()
    if not raw:
        return None
    allowed = "uid:gid, two integers 1..4294967294"
    uid_s, sep, gid_s = raw.partition(":")
    try:
        uid, gid = int(uid_s), int(gid_s if sep else uid_s)
    except ValueError as e:
        raise ValidationError("FASTGSHARE_RUN_AS", allowed, raw) from e
    if not (0 < uid < 2**32 - 1 and 0 < gid < 2**32 - 1):
        raise ValidationError("FASTGSHARE_RUN_AS", allowed, raw)
    return uid, gid


def _share(env: Mapping[str, str]) -> GpuShare:
    sm_pct = _int(env, "FASTGSHARE_SM_PCT", 100, 1, 100)
    limit = _float(env, "FASTGSHARE_QUOTA_LIMIT", 1.0, "a fraction 0 < limit <= 1", 0.0, 1.0)
    request = _float(env, "FASTGSHARE_QUOTA_REQUEST", limit,
                     f"a fraction 0 < request <= quota limit ({limit:g})", 0.0, limit)
    mem = env.get("FASTGSHARE_MEM_BYTES", "").strip()
    mem_bytes = _int(env, "FASTGSHARE_MEM_BYTES", 0, 1) if mem else None
    return GpuShare(sm_pct, request, limit, mem_bytes)


def sidecar_settings_from_env(env: Mapping[str, str]) -> SidecarSettings:
    """The one place a sidecar reads its environment. Raises ValidationError naming the variable."""
    device = env.get("FASTGSHARE_DEVICE", "cpu:0").strip() or "cpu:0"
    if not (device.startswith("cpu:") or device.startswith("gpu:")) or len(device) < 5:
        raise ValidationError("FASTGSHARE_DEVICE", "cpu:<n> or gpu:<uuid>", device)
    dev_mem = env.get("FASTGSHARE_DEVICE_MEM_BYTES", "").strip()
    secrets = env.get("FASTGSHARE_SECRETS_DIR", "").strip()
    return SidecarSettings(
        function=env.get("FASTGSHARE_FUNCTION", "function"),
        namespace=env.get("FASTGSHARE_NAMESPACE", "openfaas-fn"),
        replica=env.get("FASTGSHARE_REPLICA", "replica-0"),
        port=_int(env, "FASTGSHARE_PORT", DEFAULT_PORT, 0, 65535),
        bind=env.get("FASTGSHARE_BIND", "127.0.0.1").strip() or "127.0.0.1",
        handler_dir=Path(env.get("FASTGSHARE_HANDLER_DIR", "function")),
        runtime=Path(env.get("FASTGSHARE_RUNTIME", "") or TEMPLATE_RUNTIME),
        device=device,
        cpu_cores=parse_cores(env.get("FASTGSHARE_CPU_CORES", "")),
        share=_share(env),
        device_mem_bytes=_int(env, "FASTGSHARE_DEVICE_MEM_BYTES", 0, 1) if dev_mem else None,
        model=env.get("FASTGSHARE_MODEL") or None,
        secrets_dir=Path(secrets) if secrets else None,
        redis_url=env.get("REDIS_URL") or None,
        arbiter=on_off(env, "FASTGSHARE_ARBITER", True),
        mem_enforce=_choice(env, "FASTGSHARE_MEM_ENFORCE", MEM_ENFORCE_MODES),
        arbiter_window_s=_opt_float(env, "FASTGSHARE_ARBITER_WINDOW_S", MAX_ARBITER_S),
        arbiter_min_token_ms=_opt_float(env, "FASTGSHARE_ARBITER_MIN_TOKEN_MS", MAX_ARBITER_S * 1000),
        arbiter_max_token_ms=_opt_float(env, "FASTGSHARE_ARBITER_MAX_TOKEN_MS", MAX_ARBITER_S * 1000),
        mps_pipe_dir=env.get("FASTGSHARE_MPS_PIPE_DIR") or None,
        run_as=parse_run_as(env.get("FASTGSHARE_RUN_AS", "")),
        warm_socket=Path(env["FASTGSHARE_WARM_SOCKET"]) if env.get("FASTGSHARE_WARM_SOCKET") else None,
        undumpable=on_off(env, "FASTGSHARE_SIDECAR_UNDUMPABLE", False),
        control_token=env.get("FASTGSHARE_CONTROL_TOKEN", "").strip(),
        worker_nice=_int(env, "FASTGSHARE_WORKER_NICE", 0, 0, 19),
        sidecar_nice=_int(env, "FASTGSHARE_SIDECAR_NICE", 0, -20, 0),
        worker_port=_int(env, "FASTGSHARE_WORKER_PORT", 0, 0, 65535),
        queue_max=_int(env, "FASTGSHARE_QUEUE_MAX", DEFAULT_QUEUE_MAX, 0, MAX_QUEUE),
        queue_timeout_s=_float(env, "FASTGSHARE_QUEUE_TIMEOUT_S", DEFAULT_QUEUE_TIMEOUT_S,
                               _TIMEOUT_ALLOWED, 0.0, MAX_TIMEOUT_S),
        exec_timeout_s=_float(env, "FASTGSHARE_EXEC_TIMEOUT_S", DEFAULT_EXEC_TIMEOUT_S,
                              _TIMEOUT_ALLOWED, 0.0, MAX_TIMEOUT_S),
        ready_timeout_s=_float(env, "FASTGSHARE_READY_TIMEOUT_S", DEFAULT_READY_TIMEOUT_S,
                               _TIMEOUT_ALLOWED, 0.0, MAX_TIMEOUT_S),
        max_body_bytes=_int(env, "FASTGSHARE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1,
                            MAX_BODY_BYTES),
    )


def is_sidecar_only(name: str) -> bool:
    """Whether an environment variable configures the sidecar and is kept from the worker."""
    return name in _SIDECAR_ONLY
