"""The node agent against a real Redis: the CPU registered as a device, heartbeats, readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from fast_manager.devices import DeviceKind, cpu_device, device_to_json
from fast_manager.node_agent import read_devices, register
from fastgshare import keys

REPO = Path(__file__).resolve().parents[2]


def _agent(redis_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fast_manager.node_agent", "--redis-url", redis_url, *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_once_registers_the_cpu_with_its_cores(redis_url: str, redis_client: redis.Redis) -> None:
    proc = _agent(redis_url, "--once", "--node", "n1")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    devices = read_devices(redis_client)
    assert [d.device_id for d in devices] == ["cpu:0"]  # no GPU on the test machine
    d = devices[0]
    assert d.kind is DeviceKind.CPU and d.node == "n1"
    assert d.cores == tuple(sorted(os.sched_getaffinity(0)))
    assert d.spatial_capacity == len(d.cores) and d.mem_bytes > 0
    assert 0 < redis_client.pttl(keys.device_heartbeat("cpu:0")) <= 15_000
    assert "registered 1 device(s)" in out and "cpu:0" in out


def test_running_agent_heartbeats_and_clears_on_sigterm(redis_url: str,
                                                       redis_client: redis.Redis) -> None:
    proc = _agent(redis_url, "--interval-s", "0.2")
    try:
        deadline = time.monotonic() + 20
        while not redis_client.exists(keys.device_heartbeat("cpu:0")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)  # several TTLs (0.6 s): still alive only because it keeps beating
        assert redis_client.exists(keys.device_heartbeat("cpu:0"))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert not redis_client.exists(keys.device_heartbeat("cpu:0"))
    assert read_devices(redis_client) == []
    assert [d.device_id for d in read_devices(redis_client, include_stale=True)] == ["cpu:0"]


def test_read_devices_skips_stale_and_malformed(redis_client: redis.Redis) -> None:
    live = cpu_device("n", "cpu", (0,), 1, 0.0)
    register(redis_client, [live], ttl_s=30)
    stale = cpu_device("m", "cpu", (1,), 1, 0.0)
    redis_client.hset(keys.devices(), "cpu:9", device_to_json(stale).replace('"cpu:0"',
                                                                           '"cpu:9"'))
    redis_client.hset(keys.devices(), "gpu:bad", "{not json")
    redis_client.set(keys.device_heartbeat("gpu:bad"), "x")
    assert read_devices(redis_client) == [live]


def test_unreachable_redis_is_reported_not_raised() -> None:
    proc = _agent("redis://127.0.0.1:1/0", "--once")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "redis unavailable" in out and "Traceback" not in out


def test_gpu_model_holders_run_restart_and_stop(tmp_path: Path) -> None:
    """One holder process per GPU record, on the socket the runtime looks for; restarted when it
    dies, stopped with the agent. A stand-in GPU record: the holder starts CUDA only on a claim."""
    from fast_manager.devices import DeviceInfo, MpsState
    from fast_manager.node_agent import GpuHolders, holder_socket
    from tests.waiting import wait_for

    gpu = DeviceInfo("gpu:GPU-0000-test", DeviceKind.GPU, "node", "stand-in GPU", 0, 2**30,
                     mps=MpsState.NOT_RUNNING, mps_pipe_dir=str(tmp_path / "mps"))
    cpu = cpu_device("node", "cpu", (0,), 2**30, 0.0)
    holders = GpuHolders(tmp_path, [cpu, gpu])
    sock = holder_socket(tmp_path, gpu)

    def listening() -> bool:  # a socket file left by a killed holder refuses connections
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(sock))
            except OSError:
                return False
        return True

    assert sock == tmp_path / "gpu-GPU-0000-test.sock"
    try:
        holders.ensure()
        assert list(holders.procs) == ["gpu:GPU-0000-test"]  # the CPU gets none
        first = holders.procs[gpu.device_id]
        env = Path(f"/proc/{first.pid}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=GPU-0000-test" in env
        assert not any(e.startswith(b"CUDA_MPS_PIPE_DIRECTORY=") for e in env)  # MPS not running
        wait_for(listening, what="holder listening")
        first.kill()
        first.wait(10)
        holders.ensure()
        second = holders.procs[gpu.device_id]
        assert second.pid != first.pid and second.poll() is None
        wait_for(listening, what="restarted holder listening")
    finally:
        holders.stop()
    assert second.poll() is not None
    assert not sock.exists()  # the holder removes its socket on SIGTERM
