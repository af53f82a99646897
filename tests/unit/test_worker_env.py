"""The worker's environment from the sidecar's settings: pure, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from fast_manager.settings import SidecarSettings, parse_cores, sidecar_settings_from_env
from fast_manager.worker_env import mps_mem_limit, worker_env
from fastgshare.errors import ValidationError
from fastgshare.resources import GpuShare

BASE = {"PATH": "/usr/bin", "MY_VAR": "kept", "OMP_NUM_THREADS": "99",
        "FASTGSHARE_QUEUE_MAX": "3", "FASTGSHARE_PORT": "8080", "REDIS_URL": "redis://x"}


def test_cpu_share_sets_threads_to_core_count_and_keeps_function_env() -> None:
    s = SidecarSettings(cpu_cores=(0, 2, 3), handler_dir=Path("/fn"), secrets_dir=Path("/sec"))
    env = worker_env(s, BASE)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["FASTGSHARE_CPU_CORES"] == "0,2,3"
    assert env["MY_VAR"] == "kept" and env["PATH"] == "/usr/bin"
    assert env["FASTGSHARE_HANDLER_DIR"] == "/fn"
    assert env["FASTGSHARE_SECRETS_DIR"] == "/sec"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "FASTGSHARE_QUEUE_MAX" not in env and "FASTGSHARE_PORT" not in env
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_no_cores_leaves_thread_count_to_the_runtime() -> None:
    env = worker_env(SidecarSettings(), BASE)
    assert "OMP_NUM_THREADS" not in env  # the inherited 99 must not leak through
    assert env["FASTGSHARE_SECRETS_DIR"] == "/var/openfaas/secrets"


def test_gpu_share_sets_mps_variables_and_memory_fraction() -> None:
    s = SidecarSettings(device="gpu:GPU-1234-abcd",
                        share=GpuShare(sm_pct=24, mem_bytes=2 * 2**30),
                        device_mem_bytes=80 * 2**30, mps_pipe_dir="/tmp/mps")
    env = worker_env(s, BASE)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1234-abcd"
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "24"
    assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=2048M"
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/mps"
    assert float(env["FASTGSHARE_MEM_FRACTION"]) == pytest.approx(2 / 80)
    assert env["FASTGSHARE_MEM_BYTES"] == str(2 * 2**30)


def test_gpu_worker_gets_a_small_thread_pool_that_sleeps() -> None:
    env = worker_env(SidecarSettings(device="gpu:GPU-1"), BASE)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    pinned = worker_env(SidecarSettings(device="gpu:GPU-1", cpu_cores=(3, 4, 5)), BASE)
    assert pinned["OMP_NUM_THREADS"] == "3"  # a core set from the backend decides
    assert worker_env(SidecarSettings(), {"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_gpu_without_memory_limit_sets_no_limit() -> None:
    env = worker_env(SidecarSettings(device="gpu:GPU-1"), {})
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in env
    assert "FASTGSHARE_MEM_FRACTION" not in env
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"


@pytest.mark.parametrize("mem_bytes, expected", [(1, "0=1M"), (2**20, "0=1M"),
                                                 (1427 * 2**20, "0=1427M")])
def test_mps_mem_limit_in_mib(mem_bytes: int, expected: str) -> None:
    assert mps_mem_limit(mem_bytes) == expected


@pytest.mark.parametrize("raw, cores", [("", ()), ("1", (1,)), ("0,2-3", (0, 2, 3)),
                                        (" 3, 1 ", (1, 3))])
def test_parse_cores(raw: str, cores: tuple[int, ...]) -> None:
    assert parse_cores(raw) == cores


def test_settings_from_env_reads_the_contract() -> None:
    s = sidecar_settings_from_env({
        "FASTGSHARE_FUNCTION": "fn", "FASTGSHARE_REPLICA": "fn-1", "FASTGSHARE_PORT": "0",
        "FASTGSHARE_CPU_CORES": "1", "FASTGSHARE_SM_PCT": "50",
        "FASTGSHARE_QUOTA_REQUEST": "0.2", "FASTGSHARE_QUOTA_LIMIT": "0.5",
        "FASTGSHARE_MEM_BYTES": "1024", "FASTGSHARE_QUEUE_MAX": "2",
        "FASTGSHARE_QUEUE_TIMEOUT_S": "1.5", "REDIS_URL": "redis://h:1/0",
    })
    assert (s.function, s.replica, s.port, s.cpu_cores) == ("fn", "fn-1", 0, (1,))
    assert s.share == GpuShare(50, 0.2, 0.5, 1024)
    assert (s.queue_max, s.queue_timeout_s, s.redis_url) == (2, 1.5, "redis://h:1/0")
    assert not s.is_gpu


@pytest.mark.parametrize("env, field", [
    ({"FASTGSHARE_SM_PCT": "101"}, "FASTGSHARE_SM_PCT"),
    ({"FASTGSHARE_QUOTA_LIMIT": "0.3", "FASTGSHARE_QUOTA_REQUEST": "0.5"},
     "FASTGSHARE_QUOTA_REQUEST"),
    ({"FASTGSHARE_QUEUE_TIMEOUT_S": "0"}, "FASTGSHARE_QUEUE_TIMEOUT_S"),
    ({"FASTGSHARE_DEVICE": "tpu:0"}, "FASTGSHARE_DEVICE"),
    ({"FASTGSHARE_CPU_CORES": "a"}, "FASTGSHARE_CPU_CORES"),
    ({"FASTGSHARE_PORT": "x"}, "FASTGSHARE_PORT"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        sidecar_settings_from_env(env)
    assert e.value.field == field


def test_redis_url_and_credentials_never_reach_the_worker() -> None:
    base = {**BASE, "REDIS_URL": "redis://fastgshare-sidecar:pw@127.0.0.1:1/0",
            "FASTGSHARE_SIDECAR_REDIS_URL": "redis://u:pw@h/0", "FASTGSHARE_PASSWORD": "admin-pw",
            "FASTGSHARE_USER": "admin", "FASTGSHARE_RUN_AS": "2000000001:2000000001",
            "REDISCLI_AUTH": "pw"}
    env = worker_env(SidecarSettings(redis_url=base["REDIS_URL"]), base)
    assert not [k for k in env if "REDIS" in k or "PASSWORD" in k or k == "FASTGSHARE_RUN_AS"]
    assert "pw" not in "".join(env.values())


@pytest.mark.parametrize("raw, want", [
    ("", None), ("2000000001:2000000001", (2000000001, 2000000001)), ("1000", (1000, 1000)),
    (" 5:6 ", (5, 6)),
])
def test_run_as_parses_uid_and_gid(raw: str, want) -> None:
    assert sidecar_settings_from_env({"FASTGSHARE_RUN_AS": raw}).run_as == want


@pytest.mark.parametrize("raw", ["0:0", "0", "5:0", "x:1", "-1:5", "4294967295:1"])
def test_run_as_refuses_root_and_nonsense(raw: str) -> None:
    with pytest.raises(ValidationError) as e:
        sidecar_settings_from_env({"FASTGSHARE_RUN_AS": raw})
    assert "FASTGSHARE_RUN_AS" in str(e.value)
