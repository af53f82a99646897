"""The node's warm pool (``fast_manager.warm_pool``): real pool and sidecar processes, a real torch
worker forked from the pool, HTTP on loopback.

A forked worker must be indistinguishable from a cold one to the function (output, cores, threads,
environment, secrets), must die with its sidecar (also once the pool is gone), and must be
restarted like a cold one; a request the pool cannot honour starts cold, saying why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fast_manager import warm_pool
from fast_manager.warm_start import Setup
from tests.integration.test_sidecar import CORE, TORCH_HANDLER, Running, _start, _stop

WARM_HANDLER = TORCH_HANDLER.replace('''    if event.path == "/crash":''', '''    if event.path == "/proc":
        return {"pid": os.getpid(), "ppid": os.getppid(), "env": dict(os.environ),
                "proc_environ": open("/proc/self/environ", "rb").read().decode("latin-1"),
                "hashseed": hash("fastgshare") }
    if event.path == "/crash":''')


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _wait_log(r: Running, text: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = r.log.read_text()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the sidecar's log:\n{r.log.read_text()}")


SECRET = "redis://platform:topsecret@127.0.0.1:1"


def _start_pool(tmp: Path) -> warm_pool.PoolKeeper:
    """A pool started as the node agent starts it, from an environment with the platform's Redis
    credential in it."""
    pool = warm_pool.PoolKeeper(warm_pool.socket_path_in(tmp), warm_pool.DEFAULT_RUNTIME,
                                tmp / "warm-pool.log",
                                env=dict(os.environ, REDIS_URL=SECRET,
                                         FASTGSHARE_SIDECAR_REDIS_URL=SECRET))
    assert pool.start(), (tmp / "warm-pool.log").read_text()
    return pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[warm_pool.PoolKeeper]:
    p = _start_pool(tmp_path_factory.mktemp("pool"))
    yield p
    p.stop()


def _warm(tmp: Path, pool: warm_pool.PoolKeeper, **env: str) -> Running:
    """A sidecar as local mode starts it (``sidecar_start``: the worker asked of the pool before
    the event loop; a restart asks from the loop)."""
    return _start(tmp, WARM_HANDLER, "fast_manager.sidecar_start", FASTGSHARE_CPU_CORES=str(CORE),
                  FASTGSHARE_WARM_SOCKET=str(pool.socket_path), **env)


def _pool_pid(pool: warm_pool.PoolKeeper) -> int:
    assert pool._proc is not None
    return pool._proc.pid


def test_forked_worker_serves_like_a_cold_one(tmp_path: Path, pool) -> None:
    import torch

    r = _warm(tmp_path, pool)
    try:
        torch.manual_seed(0)
        expected = torch.nn.Linear(4, 2)(torch.tensor([[0.5, -1.0, 2.0, 0.0]])).tolist()[0]
        got = requests.post(r.url + "/", json={"x": [0.5, -1.0, 2.0, 0.0]}, timeout=10)
        assert got.status_code == 200 and got.json()["y"] == pytest.approx(expected, abs=1e-6)
        info = requests.get(r.url + "/env", timeout=10).json()
        assert info["affinity"] == [CORE] and info["omp"] == "1" and info["threads"] == 1
        assert info["secret"] == "s3cret"
        proc = requests.get(r.url + "/proc", timeout=10).json()
        assert proc["ppid"] == _pool_pid(pool)  # forked by the pool, not exec'd by the sidecar
        assert "forked by the warm pool" in r.log.read_text()
        env = proc["env"]
        assert env["FASTGSHARE_REPLICA"] == "t-1" and env["OMP_NUM_THREADS"] == "1"
        for kept_from_the_worker in ("FASTGSHARE_WARM_SOCKET", "FASTGSHARE_PORT", "REDIS_URL"):
            assert kept_from_the_worker not in env
        assert "model loaded" in r.log.read_text()  # its output reaches the sidecar's log
        # What the function's code can read of its own process holds no platform credential.
        assert "topsecret" not in proc["proc_environ"] and "REDIS_URL" not in proc["proc_environ"]
    finally:
        _stop(r)


def test_crashed_worker_is_restarted_from_the_pool_with_its_exit_code(tmp_path: Path,
                                                                        pool) -> None:
    r = _warm(tmp_path, pool)
    try:
        first = requests.get(r.url + "/proc", timeout=10).json()["pid"]
        requests.get(r.url + "/crash", timeout=10)
        _wait_log(r, "worker exited with code 3")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = requests.get(r.url + "/proc", timeout=30)
            if got.status_code == 200:
                break
            time.sleep(0.1)
        assert got.status_code == 200
        second = got.json()
        assert second["pid"] != first and second["ppid"] == _pool_pid(pool)
    finally:
        _stop(r)


def test_forked_worker_dies_with_its_sidecar(tmp_path: Path, pool) -> None:
    r = _warm(tmp_path, pool)
    worker = requests.get(r.url + "/proc", timeout=10).json()["pid"]
    r.proc.kill()  # SIGKILL: no drain, no stop of the worker by the sidecar
    r.proc.wait()
    assert _gone(worker, 10), "the worker outlived its SIGKILLed sidecar"


def test_worker_outlives_the_pool_and_still_dies_with_its_sidecar(tmp_path: Path) -> None:
    own = _start_pool(tmp_path / "pool")
    (tmp_path / "fn-root").mkdir()
    r = _warm(tmp_path / "fn-root", own)
    try:
        worker = requests.get(r.url + "/proc", timeout=10).json()["pid"]
        own.stop()  # the pool goes (a node agent restart): the worker keeps serving
        assert requests.post(r.url + "/", json={}, timeout=10).status_code == 200
        r.proc.kill()  # now only the worker's own lifeline can end it
        r.proc.wait()
        assert _gone(worker, 10), "the worker outlived its sidecar once the pool was gone"
    finally:
        if r.proc.poll() is None:
            _stop(r)


def test_a_variable_read_at_import_starts_the_worker_cold(tmp_path: Path, pool) -> None:
    r = _warm(tmp_path, pool, PYTHONHASHSEED="7")
    try:
        log = _wait_log(r, "worker starts cold")
        assert "PYTHONHASHSEED" in log
        proc = requests.get(r.url + "/proc", timeout=10).json()
        assert proc["ppid"] == r.proc.pid  # exec'd by the sidecar
        assert proc["hashseed"] == _hash_with_seed("7")  # and it did see the variable
    finally:
        _stop(r)


def _hash_with_seed(seed: str) -> int:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "print(hash('fastgshare'))"], check=True,
                         capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED=seed))
    return int(out.stdout)


@pytest.mark.parametrize("entry", ["fast_manager.sidecar", "fast_manager.sidecar_start"])
def test_no_pool_answering_starts_the_worker_cold(tmp_path: Path, entry: str) -> None:
    r = _start(tmp_path, WARM_HANDLER, entry, FASTGSHARE_WARM_SOCKET=str(tmp_path / "none.sock"))
    try:
        assert "worker starts cold: the warm pool at" in _wait_log(r, "worker starts cold")
        assert requests.post(r.url + "/", json={}, timeout=10).status_code == 200
    finally:
        _stop(r)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_ask_the_pool(pool) -> None:
    pid = os.fork()
    if pid == 0:  # as nobody: connecting must fail (the socket is 0600)
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = 0 if not warm_pool.answers(pool.socket_path) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pool.socket_path.stat().st_mode & 0o077 == 0
    assert warm_pool.answers(pool.socket_path)  # its own user may


# ---- the pool's rules, without processes -------------------------------------------------------


def test_refusals_name_what_differs(tmp_path: Path) -> None:
    p = warm_pool.WarmPool(tmp_path / "s.sock", warm_pool.DEFAULT_RUNTIME)
    env = dict(os.environ)
    ok = {"python": p.python, "runtime": str(warm_pool.DEFAULT_RUNTIME), "env": env}
    assert p.refusal(ok, [3]) == ""
    assert "output pipe" in p.refusal(ok, [])
    assert "interpreter" in p.refusal(ok | {"python": "/usr/bin/python9"}, [3])
    assert "runtime" in p.refusal(ok | {"runtime": str(tmp_path / "other.py")}, [3])
    assert "LD_PRELOAD" in p.refusal(ok | {"env": env | {"LD_PRELOAD": "x.so"}}, [3])
    # applied by the runtime after the fork: may differ
    assert p.refusal(ok | {"env": env | {"OMP_NUM_THREADS": "3"}}, [3]) == ""
    p.listener.close()


def test_setup_round_trips_through_json() -> None:
    s = Setup((1, 3), "/sys/fs/cgroup/x/cgroup.procs", 2, 0, (1000, 1000), (("/a", "/a/b"),))
    assert Setup.from_json(s.to_json()) == s
    assert Setup.from_json(Setup().to_json()) == Setup()


def test_long_state_folder_gets_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = warm_pool.socket_path_in(deep)
    assert len(os.fsencode(path)) <= 107
    assert path.parent.stat().st_mode & 0o077 == 0
    short = warm_pool.socket_path_in(tmp_path)
    assert short == tmp_path / "run" / "warm-pool.sock"



def test_a_malformed_request_is_refused_and_the_pool_keeps_serving(pool) -> None:
    import json
    import socket
    import sys

    for raw in (b"not json", json.dumps({"python": sys.executable}).encode(),
                json.dumps({"python": sys.executable, "runtime": str(warm_pool.DEFAULT_RUNTIME),
                            "env": ["not", "a", "mapping"]}).encode()):
        r, w = os.pipe()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                s.settimeout(10)
                s.connect(str(pool.socket_path))
                socket.send_fds(s, [raw], [w])
                answer = json.loads(s.recv(65536))
        finally:
            os.close(r)
            os.close(w)
        assert "refused" in answer, (raw, answer)
    assert warm_pool.answers(pool.socket_path)
    assert pool._proc is not None and pool._proc.poll() is None


def test_the_switch_is_on_by_default_and_refuses_other_values() -> None:
    from fastgshare.errors import ValidationError

    assert warm_pool.enabled({}) and warm_pool.enabled({warm_pool.ENV_SWITCH: "on"})
    assert not warm_pool.enabled({warm_pool.ENV_SWITCH: "off"})
    with pytest.raises(ValidationError, match=warm_pool.ENV_SWITCH):
        warm_pool.enabled({warm_pool.ENV_SWITCH: "maybe"})
