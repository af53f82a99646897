"""The sidecar as a real process in front of a real worker (the python3-torch runtime) on the CPU."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fast_manager.settings import sidecar_settings_from_env
from fast_manager.sidecar import start_sidecar, stop_sidecar
from fast_manager.sidecar_worker import free_port
from fast_manager.tokens import Lease, TokenMode

REPO = Path(__file__).resolve().parents[2]
LINE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z ")

TORCH_HANDLER = """
import json, os, time
import torch

model = None

def load():
    global model
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).eval()
    print("model loaded", flush=True)

def handle(event, context):
    if event.path == "/echo":
        return {"statusCode": 201, "headers": {"X-Echo": "yes"}, "body": {
            "method": event.method, "path": event.path, "query": event.query,
            "body": event.body.decode(), "header": event.headers.get("X-Custom")}}
    if event.path == "/env":
        return {"pid": os.getpid(), "threads": torch.get_num_threads(),
                "omp": os.environ.get("OMP_NUM_THREADS"),
                "affinity": sorted(os.sched_getaffinity(0)), "secret": context.secret("token")}
    if event.path == "/crash":
        os._exit(3)
    if event.path == "/fail":
        raise RuntimeError("handler failed on purpose")
    x = json.loads(event.body or b"{}").get("x", [1.0, 2.0, 3.0, 4.0])
    with torch.inference_mode():
        return {"y": model(torch.tensor([x])).tolist()[0]}
"""

SLOW_HANDLER = """
import time

def handle(event, context):
    time.sleep(float(event.query.get("s", "0")))
    return "done"
"""


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_/stats", timeout=5).json()


def _start(tmp_path: Path, handler: str, entry: str = "fast_manager.sidecar", **env: str) -> Running:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent(handler))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("s3cret\n")
    port = free_port()
    full_env = dict(os.environ, FASTGSHARE_PORT=str(port), FASTGSHARE_HANDLER_DIR=str(fn),
                    FASTGSHARE_SECRETS_DIR=str(secrets), FASTGSHARE_FUNCTION="t",
                    FASTGSHARE_REPLICA="t-1", **env)
    log = tmp_path / "sidecar.log"
    proc = subprocess.Popen([sys.executable, "-m", entry], env=full_env,
                            cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    running = Running(proc, url, log)
    _wait_healthy(running, 60)
    return running


def _wait_healthy(r: Running, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert r.proc.poll() is None, r.log.read_text()
        try:
            if requests.get(f"{r.url}/_/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("sidecar not healthy:\n" + r.log.read_text())


def _stop(r: Running) -> None:
    if r.proc.poll() is None:
        r.proc.send_signal(signal.SIGTERM)
        try:
            r.proc.wait(10)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


CORE = max(os.sched_getaffinity(0))
"""The worker is pinned to one core that is not necessarily the test's own first core."""


@pytest.fixture(scope="module")
def torch_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    r = _start(tmp_path_factory.mktemp("torch"), TORCH_HANDLER, FASTGSHARE_CPU_CORES=str(CORE))
    yield r
    _stop(r)


def test_forwards_to_a_torch_function_with_correct_output(torch_sidecar: Running) -> None:
    import torch

    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 2)(torch.tensor([[0.5, -1.0, 2.0, 0.0]])).tolist()[0]
    r = requests.post(torch_sidecar.url + "/", json={"x": [0.5, -1.0, 2.0, 0.0]}, timeout=10)
    assert r.status_code == 200
    assert r.json()["y"] == pytest.approx(expected, abs=1e-6)
    assert float(r.headers["X-Fastgshare-Busy-Ms"]) > 0


def test_method_path_query_headers_and_body_pass_through(torch_sidecar: Running) -> None:
    r = requests.put(torch_sidecar.url + "/echo?a=1&b=two%20words", data=b"raw body",
                     headers={"X-Custom": "kept"}, timeout=10)
    assert r.status_code == 201
    assert r.headers["X-Echo"] == "yes"
    assert r.json() == {"method": "PUT", "path": "/echo", "query": {"a": "1", "b": "two words"},
                        "body": "raw body", "header": "kept"}


def test_chunked_request_body_is_forwarded(torch_sidecar: Running) -> None:
    r = requests.post(torch_sidecar.url + "/echo", data=iter([b"chunk-1 ", b"chunk-2"]),
                      timeout=10)
    assert r.json()["body"] == "chunk-1 chunk-2"


def test_worker_is_pinned_and_sized_to_its_cores(torch_sidecar: Running) -> None:
    info = requests.get(torch_sidecar.url + "/env", timeout=10).json()
    assert info["affinity"] == [CORE]
    assert info["omp"] == "1" and info["threads"] == 1
    assert info["secret"] == "s3cret"
    status = Path(f"/proc/{info['pid']}/status").read_text()
    allowed = re.search(r"Cpus_allowed_list:\s*(\S+)", status)
    assert allowed is not None and allowed.group(1) == str(CORE)
    assert torch_sidecar.stats()["worker"]["pid"] == info["pid"]


def test_handler_exception_is_500_and_worker_survives(torch_sidecar: Running) -> None:
    pid = torch_sidecar.stats()["worker"]["pid"]
    r = requests.get(torch_sidecar.url + "/fail", timeout=10)
    assert r.status_code == 500 and "handler failed on purpose" in r.text
    assert requests.post(torch_sidecar.url + "/", json={}, timeout=10).status_code == 200
    assert torch_sidecar.stats()["worker"]["pid"] == pid


def test_stats_and_metrics(torch_sidecar: Running) -> None:
    for _ in range(3):
        requests.post(torch_sidecar.url + "/", json={}, timeout=10)
    st = torch_sidecar.stats()
    assert st["requests"] >= 3 and st["token_mode"] == "unmanaged"
    assert st["inflight"] == 0 and st["queued"] == 0 and st["busy_ms_total"] > 0
    assert 0 < st["latency_ms"]["p50"] <= st["latency_ms"]["p95"] <= st["latency_ms"]["p99"]
    text = requests.get(torch_sidecar.url + "/_/metrics", timeout=5).text
    assert 'fastgshare_replica_requests_total{code="200"' in text
    assert "fastgshare_replica_request_seconds_bucket" in text
    assert "fastgshare_replica_queue_depth" in text
    assert "fastgshare_replica_token_wait_seconds_count" in text
    assert 'fastgshare_replica_token_mode{' in text and 'mode="unmanaged"' in text


def test_crashed_worker_is_restarted(torch_sidecar: Running) -> None:
    before = torch_sidecar.stats()["worker"]
    r = requests.get(torch_sidecar.url + "/crash", timeout=10)
    assert r.status_code == 502 and "restarted" in r.text
    # The next request is held until the new worker is ready (within the queue timeout).
    r = requests.post(torch_sidecar.url + "/", json={}, timeout=60)
    assert r.status_code == 200
    after = torch_sidecar.stats()["worker"]
    assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"] + 1
    # Its own exit(3), or the sidecar's kill when that lands first (a worker that broke off a
    # request is killed and restarted): either way a failure, recorded.
    assert after["last_exit_code"] not in (0, None)
    assert requests.get(torch_sidecar.url + "/_/health", timeout=5).status_code == 200


def test_every_log_line_is_timestamped(torch_sidecar: Running) -> None:
    lines = [ln for ln in torch_sidecar.log.read_text().splitlines() if ln]
    assert any("model loaded" in ln for ln in lines)  # the worker's own output, piped through
    assert any("listening on" in ln for ln in lines)
    bad = [ln for ln in lines if not LINE_RE.match(ln)]
    assert not bad, bad


@pytest.fixture
def slow_sidecar(tmp_path: Path) -> Iterator[Running]:
    r = _start(tmp_path, SLOW_HANDLER, FASTGSHARE_QUEUE_MAX="1", FASTGSHARE_QUEUE_TIMEOUT_S="1")
    yield r
    _stop(r)


def _wait_for(cond, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_queue_bound_gives_429_and_queue_timeout_gives_504(slow_sidecar: Running) -> None:
    url = slow_sidecar.url
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.get, url + "/?s=2", timeout=10)
        _wait_for(lambda: slow_sidecar.stats()["inflight"] == 1)
        second = pool.submit(requests.get, url + "/?s=0", timeout=10)
        _wait_for(lambda: slow_sidecar.stats()["queued"] == 1)
        third = requests.get(url + "/?s=0", timeout=10)
        assert third.status_code == 429
        assert int(third.headers["Retry-After"]) >= 1
        late = second.result()
        assert late.status_code == 504
        assert "waiting for device time" in late.text
        assert first.result().status_code == 200
    st = slow_sidecar.stats()
    assert st["rejected"] == 1 and st["errors"] == 1
    assert requests.get(url + "/?s=0", timeout=10).text == "done"


def test_wait_and_hold_headers_split_a_queued_requests_time(tmp_path: Path) -> None:
    # Two requests at once to a one-at-a-time replica: the second waits while the first holds
    # the gate for its 0.5 s execution; each says so in its headers, and wait + hold fits inside
    # what the client saw.
    r = _start(tmp_path, SLOW_HANDLER)
    try:
        with ThreadPoolExecutor(2) as pool:
            t0 = time.monotonic()
            first = pool.submit(requests.get, r.url + "/?s=0.5", timeout=10)
            _wait_for(lambda: r.stats()["inflight"] == 1)
            second = pool.submit(requests.get, r.url + "/?s=0", timeout=10)
            a, b = first.result(), second.result()
            elapsed_ms = (time.monotonic() - t0) * 1000.0
        assert a.status_code == b.status_code == 200
        wait_a, hold_a = float(a.headers["X-Fastgshare-Wait-Ms"]), float(a.headers["X-Fastgshare-Hold-Ms"])
        wait_b, hold_b = float(b.headers["X-Fastgshare-Wait-Ms"]), float(b.headers["X-Fastgshare-Hold-Ms"])
        assert wait_a < 100.0 and hold_a >= 500.0
        assert wait_b >= 300.0 and hold_b < hold_a
        assert hold_a >= float(a.headers["X-Fastgshare-Busy-Ms"]) - 1.0
        assert wait_b + hold_b <= elapsed_ms and hold_a <= elapsed_ms
    finally:
        _stop(r)


def test_sigterm_stops_sidecar_and_worker(tmp_path: Path) -> None:
    r = _start(tmp_path, SLOW_HANDLER)
    worker_pid = r.stats()["worker"]["pid"]
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(10) == 0
    assert not Path(f"/proc/{worker_pid}").exists() or _is_zombie(worker_pid)
    assert "stopped" in r.log.read_text()


def test_sidecar_nice_raises_the_sidecar_and_leaves_the_worker_where_it_was(
        tmp_path: Path) -> None:
    """FASTGSHARE_SIDECAR_NICE=-5: the sidecar (woken by hand-overs) runs 5 nice levels above
    where it started, its worker stays there (plus FASTGSHARE_WORKER_NICE); without the
    privilege both stay and the log says why."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    r = _start(tmp_path, SLOW_HANDLER, FASTGSHARE_SIDECAR_NICE="-5", FASTGSHARE_WORKER_NICE="2")
    try:
        worker_pid = r.stats()["worker"]["pid"]
        sidecar_nice = os.getpriority(os.PRIO_PROCESS, r.proc.pid)
        worker_nice = os.getpriority(os.PRIO_PROCESS, worker_pid)
        text = r.log.read_text()
    finally:
        _stop(r)
    if "priority raised" in text:
        assert (sidecar_nice, worker_nice) == (max(-20, base - 5), min(19, base + 2)), text
    else:
        assert "priority not raised" in text and "CAP_SYS_NICE" in text, text
        assert (sidecar_nice, worker_nice) == (base, min(19, base + 2)), text


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


# ---- the token-client seam, in-process with a real worker ------------------------------------


class RecordingTokens:
    """Grants (or not) and records what each release charged."""

    mode = TokenMode.SHARED

    def __init__(self, grant: bool) -> None:
        self.grant = grant
        self.released: list[float] = []
        self.closed = False

    async def acquire(self, timeout_s: float) -> Lease | None:
        if self.grant:
            return Lease("t", 100.0, time.time() + 10)
        await asyncio.sleep(timeout_s)
        return None

    async def release(self, lease: Lease, busy_ms: float, next_waiting: bool = False) -> None:
        self.released.append(busy_ms)

    async def close(self) -> None:
        self.closed = True


def _serve_in_process(tmp_path: Path, tokens: RecordingTokens, path: str) -> requests.Response:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent(SLOW_HANDLER))
    env = dict(os.environ, FASTGSHARE_PORT="0", FASTGSHARE_HANDLER_DIR=str(fn),
               FASTGSHARE_QUEUE_TIMEOUT_S="0.5")
    settings = sidecar_settings_from_env(env)
    out: dict[str, requests.Response] = {}

    async def main() -> None:
        sidecar, runner, port = await start_sidecar(settings, env, tokens=tokens)
        try:
            assert await sidecar.worker.wait_ready(30)
            url = f"http://127.0.0.1:{port}{path}"
            out["r"] = await asyncio.to_thread(requests.get, url, timeout=10)
        finally:
            await stop_sidecar(sidecar, runner)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    thread.join(60)
    return out["r"]


def test_token_is_released_with_the_workers_busy_time(tmp_path: Path) -> None:
    tokens = RecordingTokens(grant=True)
    r = _serve_in_process(tmp_path, tokens, "/?s=0.2")
    assert r.status_code == 200
    assert len(tokens.released) == 1
    assert tokens.released[0] == pytest.approx(float(r.headers["X-Fastgshare-Busy-Ms"]))
    assert tokens.released[0] >= 200
    assert tokens.closed


def test_no_token_within_the_queue_timeout_is_504(tmp_path: Path) -> None:
    tokens = RecordingTokens(grant=False)
    r = _serve_in_process(tmp_path, tokens, "/")
    assert r.status_code == 504
    assert "waiting for device time" in r.text and "no token" in r.text
    assert tokens.released == []
