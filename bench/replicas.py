"""Real replicas for the sharing benchmarks: sidecar + worker processes, and closed-loop load.

Each replica is ``python -m fast_manager.sidecar`` (exactly what the local backend starts) in
front of the python3-torch runtime, configured through its environment. Load comes from one
asyncio loop in the benchmark process (aiohttp, ``concurrency`` requests outstanding per
replica, so a saturated replica always has its next request queued in its sidecar).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import requests

ROOT = Path(__file__).resolve().parent.parent

SPIN_HANDLER = '''
"""Real torch work for a given wall time: a small MLP, forward passes until ``ms`` has passed."""
import time

import torch

model = x = None
cuda = False


def load():
    global model, x, cuda
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    width = 1024 if cuda else 256
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(4)]).eval().to(dev)
    x = torch.randn(64 if cuda else 16, width, device=dev)
    with torch.inference_mode():
        model(x)


def handle(event, context):
    ms = float(event.query.get("ms", "10"))
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        while True:
            model(x)
            if cuda:
                torch.cuda.synchronize()
            n += 1
            if (time.perf_counter() - t0) * 1000 >= ms:
                break
    return str(n)
'''


def write_handler(folder: Path, source: str = SPIN_HANDLER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(textwrap.dedent(source))
    return folder


def free_port() -> int:
    from fast_manager.sidecar_worker import free_port as fp

    return fp()


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_/stats", timeout=10).json()


def start_replicas(specs: list[dict[str, str]], log_dir: Path,
                   ready_timeout_s: float = 180.0) -> list[Replica]:
    """Start one sidecar per spec (``FASTGSHARE_*`` env, plus ``name``) and wait for all."""
    log_dir.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("FASTGSHARE_") and k != "REDIS_URL"}
    out = []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name")
        port = free_port()
        env = base | {"FASTGSHARE_PORT": str(port), "FASTGSHARE_FUNCTION": name,
                      "FASTGSHARE_REPLICA": f"{name}-0", "FASTGSHARE_QUEUE_TIMEOUT_S": "60"} | spec
        log = log_dir / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "fast_manager.sidecar"], env=env, cwd=ROOT,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        out.append(Replica(name, proc, f"http://127.0.0.1:{port}", log, spec))
    deadline = time.monotonic() + ready_timeout_s
    for r in out:
        while True:
            if r.proc.poll() is not None:
                stop_replicas(out)
                raise RuntimeError(f"replica {r.name} exited:\n{r.log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{r.url}/_/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                stop_replicas(out)
                raise RuntimeError(f"replica {r.name} not ready:\n{r.log.read_text()[-3000:]}")
            time.sleep(0.1)
    return out


def stop_replicas(replicas: list[Replica]) -> None:
    for r in replicas:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)
    for r in replicas:
        try:
            r.proc.wait(15)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()


@dataclass
class Done:
    """One answered request."""

    replica: int
    t_end: float
    latency_ms: float
    status: int


async def closed_loop(targets: list[tuple[str, str, bytes]], duration_s: float,
                      concurrency: int = 2, timeout_s: float = 120.0) -> list[Done]:
    """``concurrency`` outstanding requests per target (url, method, body) for ``duration_s``."""
    end = time.perf_counter() + duration_s
    done: list[Done] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async def loop(i: int, url: str, method: str, body: bytes) -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    async with s.request(method, url, data=body or None) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                t1 = time.perf_counter()
                done.append(Done(i, t1, (t1 - t0) * 1000, status))

        await asyncio.gather(*(loop(i, u, m, b) for i, (u, m, b) in enumerate(targets)
                               for _ in range(concurrency)))
    return done


def busy_ms(replicas: list[Replica]) -> list[float]:
    return [float(r.stats()["busy_ms_total"]) for r in replicas]


async def _stats(s: aiohttp.ClientSession, r: Replica) -> dict:
    async with s.get(f"{r.url}/_/stats") as resp:
        return await resp.json()


async def busy_over(replicas: list[Replica], targets: list[tuple[str, str, bytes]],
                    warm_s: float, measure_s: float, concurrency: int = 2,
                    ) -> tuple[list[float], float, list[Done]]:
    """Saturate, then (busy ms per replica over the measurement, its wall seconds, answers).

    Busy time is what each worker reported for its executions, read from the sidecars'
    ``/_/stats`` at both ends of the measurement.
    """
    totals, wall_s, done = await stats_over(replicas, targets, warm_s, measure_s, concurrency)
    return totals["busy_ms_total"], wall_s, done


async def stats_over(replicas: list[Replica], targets: list[tuple[str, str, bytes]],
                     warm_s: float, measure_s: float, concurrency: int = 2,
                     fields: tuple[str, ...] = ("busy_ms_total", "held_ms_total"),
                     ) -> tuple[dict[str, list[float]], float, list[Done]]:
    """Saturate, then (per ``/_/stats`` field, its increase per replica over the measurement;
    the measurement's wall seconds; the answers within it). ``held_ms_total``: time the replica
    held the device's token (its sidecar's clock); ``busy_ms_total``: its workers' busy time."""
    load = asyncio.ensure_future(closed_loop(targets, warm_s + measure_s + 0.5, concurrency))
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(warm_s)
        t0 = time.perf_counter()
        before = await asyncio.gather(*(_stats(s, r) for r in replicas))
        await asyncio.sleep(measure_s)
        after = await asyncio.gather(*(_stats(s, r) for r in replicas))
        t1 = time.perf_counter()
    done = await load
    totals = {f: [float(a.get(f, 0.0)) - float(b.get(f, 0.0)) for a, b in zip(after, before, strict=True)]
              for f in fields}
    measured = [d for d in done if t0 <= d.t_end <= t1]
    return totals, t1 - t0, measured
