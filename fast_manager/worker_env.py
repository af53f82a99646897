"""The worker's environment: how a replica's spatial share and memory limit reach its process.

Pure: the sidecar passes its settings and its own environment in and gets a new mapping back.
Everything here must be in place before the worker starts, because an MPS client's SM share and
its pinned memory limit are fixed when its CUDA context is created, and OpenMP sizes its thread
pool when torch is first imported.
"""

from __future__ import annotations

from collections.abc import Mapping

from fast_manager.settings import SidecarSettings, is_sidecar_only

DEFAULT_SECRETS_DIR = "/var/openfaas/secrets"
"""Where OpenFaaS mounts a function's secrets in a pod; the worker's fallback."""
GPU_WORKER_THREADS = 2
"""CPU threads of a GPU worker with no core set (the host side only launches kernels and copies:
a pool as large as the machine would spin on cores its neighbours need)."""

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_GPU_VARS = (
    "CUDA_VISIBLE_DEVICES", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "CUDA_MPS_PIPE_DIRECTORY", "FASTGSHARE_MEM_FRACTION",
)


def gpu_uuid(device: str) -> str:
    """``gpu:GPU-8f2c...`` -> ``GPU-8f2c...`` (what CUDA_VISIBLE_DEVICES accepts)."""
    return device.partition(":")[2]


def mps_mem_limit(mem_bytes: int) -> str:
    """MPS pinned-memory limit for the only visible device, in whole MiB (at least 1)."""
    # Device index 0: CUDA_VISIBLE_DEVICES leaves the worker exactly one device.
    return f"0={max(1, mem_bytes // 2**20)}M"


def worker_env(settings: SidecarSettings, base_env: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: the function's variables, plus its share, minus sidecar knobs."""
    env = {k: v for k, v in base_env.items() if not is_sidecar_only(k)}
    for name in _THREAD_VARS + _GPU_VARS:
        env.pop(name, None)  # the share decides these, not whatever the sidecar inherited
    env["PYTHONUNBUFFERED"] = "1"  # the sidecar timestamps lines as they come, not at exit
    env["FASTGSHARE_HANDLER_DIR"] = str(settings.handler_dir)
    env["FASTGSHARE_WORKER_PORT"] = str(settings.worker_port)
    env["FASTGSHARE_DEVICE"] = settings.device
    env["FASTGSHARE_SECRETS_DIR"] = str(settings.secrets_dir or DEFAULT_SECRETS_DIR)
    if settings.cpu_cores:
        env["FASTGSHARE_CPU_CORES"] = ",".join(map(str, settings.cpu_cores))
        for name in _THREAD_VARS:
            env[name] = str(len(settings.cpu_cores))
    elif settings.is_gpu:
        for name in _THREAD_VARS:
            env[name] = str(GPU_WORKER_THREADS)
    # Idle OpenMP threads sleep instead of spinning: a time-shared core is not left busy by the
    # last holder's pool after its token went to a neighbour, and a GPU worker's pool does not
    # spin while its kernels run.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if settings.share.mem_bytes is not None:
        env["FASTGSHARE_MEM_BYTES"] = str(settings.share.mem_bytes)
    if settings.is_gpu:
        env.update(_gpu_env(settings))
    return env


def _gpu_env(settings: SidecarSettings) -> dict[str, str]:
    share = settings.share
    env = {
        "CUDA_VISIBLE_DEVICES": gpu_uuid(settings.device),
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(share.sm_pct),
    }
    if settings.mps_pipe_dir:
        env["CUDA_MPS_PIPE_DIRECTORY"] = settings.mps_pipe_dir
    if share.mem_bytes is not None:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = mps_mem_limit(share.mem_bytes)
        if settings.device_mem_bytes:
            # A second guard inside torch: its allocator refuses before MPS kills the context.
            frac = min(1.0, share.mem_bytes / settings.device_mem_bytes)
            env["FASTGSHARE_MEM_FRACTION"] = f"{frac:.6f}"
    return env
