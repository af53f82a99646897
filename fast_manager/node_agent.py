"""The node agent: ``python -m fast_manager.node_agent --redis-url URL [--once]``.

One per machine. Discovers devices (NVML; any NVMLError at init means "no GPU" and the CPU is
registered as ``cpu:0`` with its cores as the spatial capacity), writes each as a JSON DeviceInfo
into the hash ``keys.devices()``, and keeps ``keys.device_heartbeat(id)`` alive with an expiry so
readers can tell a live node from a stale record. On GPU nodes it checks the MPS control daemon
(and starts it with ``--start-mps``), and says clearly when SM shares will not be enforced.

It also hosts the model store (``--model-store-dir``): every beat it deletes weights no live replica
uses (crashed replicas included) and publishes which models each device holds in
``keys.device_models(device_id)`` for the scheduler's placement. On GPU nodes it keeps one GPU model
holder per GPU running (``fast_manager.model_store_gpu``, socket ``STORE/gpu-<uuid>.sock``), through
which replicas of the same model map one copy of its weights by CUDA IPC (``--no-gpu-model-holder``
leaves it out: every replica then copies its weights to the GPU).

In local mode (``--supervise-replicas``) it is also the kubelet of this machine: its replica
supervisor (``fast_manager.replica_supervisor``) starts, restarts, probes, drains and re-adopts the
replica processes from the desired state in Redis; the provider only reads their records. The
replicas die with the node agent (parent-death signal), and it stops them, drained, when stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from fast_manager.devices import (
    DeviceInfo,
    DeviceKind,
    MpsState,
    cpu_device,
    device_from_json,
    device_to_json,
    gpu_device_id,
)
from fast_manager.logline import setup_logging
from fast_manager.model_store import usage_by_device
from fast_manager.model_store_fs import collect, scan, store_dir_from_env
from fast_manager.model_store_redis import publish
from fastgshare import keys
from fastgshare.errors import ValidationError
from fastgshare.redis_server import die_with_parent

if TYPE_CHECKING:
    from fast_manager import warm_pool

log = logging.getLogger("node_agent")

DEFAULT_INTERVAL_S = 5.0
"""Seconds between heartbeats."""
HEARTBEAT_TTL_FACTOR = 3
"""A heartbeat lives this many intervals: two missed beats are tolerated, the third is death."""
DEFAULT_MPS_PIPE_DIR = "/tmp/nvidia-mps"
"""NVIDIA's default ``CUDA_MPS_PIPE_DIRECTORY``."""
MPS_CONTROL = "nvidia-cuda-mps-control"


# ---- discovery -------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_bytes() -> int:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # a container's memory limit is what replicas can really use
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw.isdigit():
            total = min(total, int(raw))
    except OSError:
        pass
    return int(total)


def discover_cpu(node: str, now_s: float) -> DeviceInfo:
    return cpu_device(node, _cpu_name(), tuple(os.sched_getaffinity(0)), _mem_bytes(), now_s)


def mps_state(control_path: str | None, pipe_dir: str) -> MpsState:
    """Whether the MPS control daemon is installed and answering on ``pipe_dir``."""
    if control_path is None:
        return MpsState.NOT_INSTALLED
    return MpsState.RUNNING if Path(pipe_dir, "control").exists() else MpsState.NOT_RUNNING


def start_mps(pipe_dir: str) -> bool:
    """Start the MPS control daemon (``-d``); True if it now answers."""
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe_dir)
    try:
        Path(pipe_dir).mkdir(parents=True, exist_ok=True)
        subprocess.run([MPS_CONTROL, "-d"], env=env, check=True, timeout=10,
                       capture_output=True)
    except (OSError, subprocess.SubprocessError) as e:
        log.error("could not start the MPS control daemon: %s", e)
        return False
    for _ in range(20):
        if Path(pipe_dir, "control").exists():
            return True
        time.sleep(0.1)
    return False


def discover_gpus(node: str, now_s: float, pipe_dir: str,
                  allow_start_mps: bool) -> list[DeviceInfo]:
    """Every GPU NVML sees; empty when NVML cannot start (no driver, no GPU)."""
    try:
        import pynvml
    except ImportError:
        log.info("nvidia-ml-py is not installed: treating this node as having no GPU")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.info("no GPU (NVML: %s): the CPU is the device", e)
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return []
        control = shutil.which(MPS_CONTROL)
        state = mps_state(control, pipe_dir)
        if state is MpsState.NOT_RUNNING and allow_start_mps and start_mps(pipe_dir):
            state = MpsState.RUNNING
            log.info("started the MPS control daemon on %s", pipe_dir)
        if state is not MpsState.RUNNING:
            log.warning("MPS control daemon %s (pipe dir %s): SM shares will NOT be enforced, "
                        "replicas on these GPUs share by time only%s", state.value, pipe_dir,
                        "" if allow_start_mps else "; pass --start-mps to start it")
        extra = {"driver": _s(pynvml.nvmlSystemGetDriverVersion())}
        out = []
        for i in range(count):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _s(pynvml.nvmlDeviceGetUUID(h))
            sm_count = None
            try:
                sm_count = int(pynvml.nvmlDeviceGetAttributes(h).multiprocessorCount)
            except (pynvml.NVMLError, AttributeError):
                pass  # not reported outside MIG on some drivers; only informative
            out.append(DeviceInfo(
                gpu_device_id(uuid), DeviceKind.GPU, node, _s(pynvml.nvmlDeviceGetName(h)), i,
                int(pynvml.nvmlDeviceGetMemoryInfo(h).total), sm_count=sm_count, mps=state,
                mps_pipe_dir=pipe_dir, registered_at_s=now_s, extra=extra,
            ))
        return out
    finally:
        pynvml.nvmlShutdown()


def _s(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover(node: str, now_s: float, pipe_dir: str = DEFAULT_MPS_PIPE_DIR,
             allow_start_mps: bool = False) -> list[DeviceInfo]:
    """GPUs if there are any, else the CPU."""
    return discover_gpus(node, now_s, pipe_dir, allow_start_mps) or [discover_cpu(node, now_s)]


# ---- the registry ----------------------------------------------------------------------------


def register(client: redis.Redis, devices: Iterable[DeviceInfo], ttl_s: float) -> None:
    """Write the records and (re)start their heartbeats, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for d in devices:
        pipe.hset(keys.devices(), d.device_id, device_to_json(d))
        pipe.set(keys.device_heartbeat(d.device_id), d.node, px=int(ttl_s * 1000))
    pipe.execute()


def heartbeat(client: redis.Redis, devices: Iterable[DeviceInfo], ttl_s: float) -> None:
    pipe = client.pipeline(transaction=False)
    for d in devices:
        pipe.set(keys.device_heartbeat(d.device_id), d.node, px=int(ttl_s * 1000))
    pipe.execute()


def unregister_heartbeats(client: redis.Redis, devices: Iterable[DeviceInfo]) -> None:
    """On a clean stop: the devices go stale at once rather than after the TTL."""
    ids = [keys.device_heartbeat(d.device_id) for d in devices]
    if ids:
        client.delete(*ids)


def read_devices(client: redis.Redis, include_stale: bool = False) -> list[DeviceInfo]:
    """Registered devices, sorted by id; by default only those whose heartbeat is alive.

    Malformed records are skipped with a warning, never raised: one bad writer must not hide
    every device from the scheduler.
    """
    records = {(k.decode() if isinstance(k, bytes) else k): v
               for k, v in client.hgetall(keys.devices()).items()}
    ids = sorted(records)
    if not ids:
        return []
    alive = [True] * len(ids)
    if not include_stale:
        pipe = client.pipeline(transaction=False)
        for device_id in ids:
            pipe.exists(keys.device_heartbeat(device_id))
        alive = [bool(x) for x in pipe.execute()]
    out = []
    for device_id, ok in zip(ids, alive, strict=True):
        if not ok:
            continue
        try:
            out.append(device_from_json(records[device_id]))
        except ValidationError as e:
            log.warning("skipping device %s: %s", device_id, e)
    return out


# ---- the model store ---------------------------------------------------------------------------


def maintain_model_store(client: redis.Redis, store_dir: Path, devices: list[DeviceInfo]) -> None:
    """One GC pass over the store, then publish what each device holds."""
    report = collect(store_dir)
    for user in report.dead_users:
        log.info("model store: replica %s died without releasing its model", user)
    for name in report.deleted_files:
        log.info("model store: freed %s (no live replica uses it)", name)
    default = devices[0].device_id if devices else "cpu:0"
    usage = usage_by_device(scan(store_dir), default)
    publish(client, usage, [d.device_id for d in devices])


# ---- the GPU model holders ---------------------------------------------------------------------


def holder_socket(store_dir: Path, device: DeviceInfo) -> Path:
    """Where a GPU's model holder listens: the path the python3-torch runtime looks for."""
    uuid = device.device_id.partition(":")[2]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uuid)
    return Path(store_dir) / f"gpu-{safe}.sock"


class GpuHolders:
    """One ``fast_manager.model_store_gpu`` process per GPU, restarted when it dies.

    A holder starts CUDA only at its first claim, so an idle one costs no device memory; once a
    replica claims a model it costs a CUDA context (about 540 MiB measured on an H200) plus one copy
    of each model's weights (see ``model_store_gpu.holder_pays``). Under MPS it joins the same
    MPS server as the replicas (``CUDA_MPS_PIPE_DIRECTORY``). The holder itself ran on an H200
    (bench/gpu); starting it from the node agent has only run on the CPU, with a stand-in GPU record.
    """

    def __init__(self, store_dir: Path, gpus: Iterable[DeviceInfo]) -> None:
        self.store_dir = Path(store_dir)
        self.gpus = [d for d in gpus if d.is_gpu]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def ensure(self) -> None:
        for d in self.gpus:
            proc = self.procs.get(d.device_id)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                log.warning("GPU model holder of %s exited (%s): restarting it", d.device_id,
                            proc.returncode)
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=d.device_id.partition(":")[2])
            if d.mps is MpsState.RUNNING and d.mps_pipe_dir:
                env["CUDA_MPS_PIPE_DIRECTORY"] = d.mps_pipe_dir
            else:
                env.pop("CUDA_MPS_PIPE_DIRECTORY", None)
            self.procs[d.device_id] = subprocess.Popen(
                [sys.executable, "-m", "fast_manager.model_store_gpu", "--socket",
                 str(holder_socket(self.store_dir, d))], env=env, preexec_fn=die_with_parent)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


# ---- the process -----------------------------------------------------------------------------


def run(client: redis.Redis, node: str, interval_s: float, once: bool, pipe_dir: str,
        allow_start_mps: bool, stop: threading.Event, store_dir: Path | None = None,
        gpu_holders: bool = True) -> int:
    ttl_s = interval_s * HEARTBEAT_TTL_FACTOR
    devices = discover(node, time.time(), pipe_dir, allow_start_mps)
    holders = GpuHolders(store_dir, devices) if store_dir is not None and gpu_holders and not once \
        else None
    try:
        return _beat(client, devices, interval_s, ttl_s, once, stop, store_dir, holders)
    finally:
        if holders is not None:
            holders.stop()


def _beat(client: redis.Redis, devices: list[DeviceInfo], interval_s: float, ttl_s: float,
          once: bool, stop: threading.Event, store_dir: Path | None,
          holders: GpuHolders | None) -> int:
    for d in devices:
        share = (f"{d.spatial_capacity} cores {list(d.cores)}" if d.kind is DeviceKind.CPU
                 else f"{d.spatial_capacity}% SMs, MPS {d.mps.value}")
        log.info("device %s (%s): %s, %.1f GiB", d.device_id, d.name, share, d.mem_bytes / 2**30)
    registered = False
    while not stop.is_set():
        try:
            if registered:
                heartbeat(client, devices, ttl_s)
            else:
                register(client, devices, ttl_s)
                registered = True
                log.info("registered %d device(s) in %s", len(devices), keys.devices())
            if holders is not None:
                holders.ensure()
            if store_dir is not None:
                maintain_model_store(client, store_dir, devices)
        except OSError as e:
            log.warning("model store %s: %s", store_dir, e)
        except redis.RedisError as e:
            # Keep beating: the registry comes back with Redis, and a re-register restores
            # records lost with a non-persistent server.
            log.warning("redis unavailable (%s); retrying in %.1fs", e, interval_s)
            registered = False
            if once:
                return 1
        if once:
            return 0
        stop.wait(interval_s)
    try:
        unregister_heartbeats(client, devices)
    except redis.RedisError:
        pass
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fast_manager.node_agent",
        description="Discover this machine's devices (GPUs via NVML, else the CPU), register "
                    "them in Redis and keep them alive with a heartbeat.")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"),
                        help="the shared Redis (default: $REDIS_URL)")
    parser.add_argument("--once", action="store_true",
                        help="register once and exit (heartbeat left to expire)")
    parser.add_argument("--interval-s", type=float, default=DEFAULT_INTERVAL_S,
                        help=f"seconds between heartbeats (default {DEFAULT_INTERVAL_S:g}); "
                             f"records expire after {HEARTBEAT_TTL_FACTOR} intervals")
    parser.add_argument("--node", default=socket.gethostname(), help="node name to record")
    parser.add_argument("--mps-pipe-dir",
                        default=os.environ.get("CUDA_MPS_PIPE_DIRECTORY", DEFAULT_MPS_PIPE_DIR),
                        help="MPS pipe directory (default: $CUDA_MPS_PIPE_DIRECTORY or "
                             f"{DEFAULT_MPS_PIPE_DIR})")
    parser.add_argument("--start-mps", action="store_true",
                        help="start the MPS control daemon on GPU nodes when it is not running")
    parser.add_argument("--no-gpu-model-holder", action="store_true",
                        help="do not run a GPU model holder per GPU (replicas then copy their "
                             "weights to the GPU each)")
    parser.add_argument("--supervise-replicas", action="store_true",
                        help="local mode: run this machine's replica processes from the desired "
                             "state in Redis (state under $FASTGSHARE_STATE_DIR)")
    parser.add_argument("--model-store-dir", type=Path, default=store_dir_from_env(os.environ),
                        help="the device model store to garbage-collect and publish (default: "
                             "$FASTGSHARE_MODEL_STORE_DIR, else $FASTGSHARE_STATE_DIR/models; "
                             "none: no store)")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.redis_url:
        parser.error("--redis-url (or REDIS_URL) is required")
    if args.interval_s <= 0:
        parser.error("--interval-s must be > 0")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
    supervisor = start_supervisor(args.redis_url, stop) if args.supervise_replicas else None
    try:
        return run(client, args.node, args.interval_s, args.once, args.mps_pipe_dir,
                   args.start_mps, stop, args.model_store_dir, not args.no_gpu_model_holder)
    finally:
        stop.set()
        if supervisor is not None:
            supervisor.join()  # it stops every replica, drained, before it returns
        client.close()


def start_supervisor(redis_url: str, stop: threading.Event) -> threading.Thread:
    """The replica supervisor in its own thread, with its own connection (its BLPOP waits must
    not hold up the heartbeat). The thread lives as long as the replicas it starts: their
    parent-death signal fires when the thread that forked them ends."""
    from fast_manager import function_users
    from fast_manager.replica_supervisor import ReplicaSupervisor
    from fastgshare.local_state import DEFAULT_STATE_DIR

    raw = os.environ.get("FASTGSHARE_STATE_DIR")
    state_dir = Path(raw).expanduser() if raw else DEFAULT_STATE_DIR.expanduser()
    client = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
    pool = warm_pool_for(state_dir)
    supervisor = ReplicaSupervisor(
        client, state_dir, redis_url,
        # The sidecars' restricted Redis user (``fastgshare.redis_acl``); the agent's own is the
        # platform's, which no function-facing process may hold.
        sidecar_redis_url=os.environ.get("FASTGSHARE_SIDECAR_REDIS_URL") or None,
        isolation=function_users.isolation_from_env(os.environ, os.geteuid(), state_dir),
        model_store_dir=store_dir_from_env(os.environ),
        warm_socket=pool.socket_path if pool is not None else None)

    def run() -> None:
        try:
            # Started here, not before the heartbeat: its imports take a second or two, and the
            # first replicas wait for it (they would start cold, slower) but the devices do not.
            if pool is not None and pool.start():
                log.info("warm pool up on %s: workers are forked from it", pool.socket_path)
            supervisor.run(stop)
        finally:  # after every replica stopped: their workers, forked by the pool, are gone
            if pool is not None:
                pool.stop()

    thread = threading.Thread(target=run, name="replica-supervisor")
    thread.start()
    return thread


def warm_pool_for(state_dir: Path) -> warm_pool.PoolKeeper | None:
    """The node's warm pool (``fast_manager.warm_pool``; not started yet) unless
    ``FASTGSHARE_WARM_POOL=off``."""
    from fast_manager import warm_pool

    if not warm_pool.enabled(os.environ):
        log.info("warm pool off (%s): workers start cold", warm_pool.ENV_SWITCH)
        return None
    return warm_pool.PoolKeeper(warm_pool.socket_path_in(state_dir), warm_pool.DEFAULT_RUNTIME,
                                state_dir / "logs" / "warm-pool.log")


if __name__ == "__main__":
    sys.exit(main())
