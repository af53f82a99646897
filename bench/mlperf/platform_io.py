"""The platform as the benchmark sees it: bring it up (or attach), register images, deploy, wait,
remove, and read what the device did (the sidecars' busy time and the workers' CPU time).

The provider is reached through ``fastgshare.provider_client`` (replica addresses included). The
workers' CPU time is read from ``/proc`` by the pid their sidecar reports, so it needs the replicas
on this machine (embedded mode, or ``--redis-url`` of a local platform); without that,
utilisation is reported as unknown, never guessed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from bench.mlperf.modes import Deployment, image_of
from fastgshare import keys
from fastgshare.provider_client import ProviderClient

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "function_templates" / "python3-torch"
NAMESPACE = "openfaas-fn"
READY_TIMEOUT_S = 240.0
"""How long a deployment may take to have every replica ready (model load on a busy machine)."""


@dataclass
class Target:
    """A platform to benchmark: its gateway, credentials and (optionally) its Redis."""

    url: str
    auth: tuple[str, str] | None
    redis_url: str | None
    log_dir: Path | None = None
    platform: Any = None
    """The embedded ``Platform`` when this run started it (to see whether its scheduler runs)."""
    provider: ProviderClient = field(init=False)

    def __post_init__(self) -> None:
        self.provider = ProviderClient(self.url, self.auth, timeout_s=60)

    def function_url(self, service: str) -> str:
        return self.provider.function_url(service)


@contextmanager
def embedded(state_dir: Path, *, scheduler: bool) -> Iterator[Target]:
    """The embedded platform on a free port (profiler off), stopped on exit."""
    from fastgshare.platform import Platform

    p = Platform(state_dir, port=0, profiler=False, scheduler=scheduler)
    info = p.start()
    try:
        yield Target(info.url, info.auth, info.redis_url, Path(state_dir) / "platform-logs", p)
    finally:
        p.stop()


def register_images(redis_url: str, functions: Sequence[str]) -> None:
    """What ``fastgshare build`` does for the example functions: image -> handler folder."""
    client = redis.Redis.from_url(redis_url)
    try:
        for fn in functions:
            rec = {"handler_dir": str(ROOT / "functions" / fn), "template_dir": str(TEMPLATE)}
            client.hset(keys.images(), image_of(fn), json.dumps(rec))
    finally:
        client.close()


def seed_profile(t: Target, service: str, table_path: Path) -> str | None:
    """Store a profiler table (``bench/results/profiles/*.json``) for ``service`` on this platform's
    device type, so the scheduler, which leaves functions without a table alone, can act on it.
    Returns the device type, or None when the table is for another device type or Redis is unknown."""
    from dataclasses import replace

    from fast_profiler.store import save
    from fast_profiler.table import ProfileTable, device_type_of

    if not t.redis_url:
        return None
    table = ProfileTable.from_json(table_path.read_text())
    client = redis.Redis.from_url(t.redis_url)
    try:
        devices = [json.loads(v) for v in client.hvals(keys.devices())]
        if not devices:
            return None
        device_type = device_type_of(devices[0])
        if device_type != table.device_type:
            return None
        save(client, replace(table, function=service))
    finally:
        client.close()
    return device_type


def scheduler_decision(t: Target, service: str) -> dict[str, Any] | None:
    """The scheduler's last decision for ``service`` (``fastgshare:scheduler:decisions``), if any."""
    if not t.redis_url or not hasattr(keys, "scheduler_decisions"):
        return None
    client = redis.Redis.from_url(t.redis_url)
    try:
        raw = client.hget(keys.scheduler_decisions(), f"{NAMESPACE}/{service}")
    finally:
        client.close()
    return None if raw is None else dict(json.loads(raw))


def deploy(t: Target, body: dict[str, Any]) -> None:
    """PUT, then POST on 404 (what faas-cli does)."""
    t.provider.deploy(body)


def remove(t: Target, service: str) -> None:
    t.provider.remove(service)


def replicas(t: Target) -> list[dict[str, Any]]:
    """``GET /system/fastgshare/replicas``: per function replicas, configurations, replica status."""
    return t.provider.replicas()


def wait_ready(t: Target, services: Sequence[str], timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(services)
    while pending and time.monotonic() < deadline:
        for s in list(pending):
            status = t.provider.status(s)
            if status is not None and status.get("availableReplicas", 0) >= 1:
                pending.discard(s)
        if pending:
            time.sleep(0.5)
    if pending:
        raise RuntimeError(f"not ready after {timeout_s:.0f} s: {sorted(pending)}")


def deploy_all(t: Target, group: Sequence[Deployment]) -> None:
    for d in group:
        deploy(t, d.body)
    wait_ready(t, [d.service for d in group])


def remove_all(t: Target, group: Sequence[Deployment]) -> None:
    """Remove the group and wait (up to 30 s) until its replicas stopped: their sidecars, at the
    addresses the provider gave before, no longer answer (they drain after the provider drops them)."""
    urls = [r.url for d in group for r in t.provider.replicas_of(d.service) if r.url]
    for d in group:
        remove(t, d.service)
    deadline = time.monotonic() + 30
    while urls and time.monotonic() < deadline:
        urls = [u for u in urls if _answers(f"{u}/_/health")]
        if urls:
            time.sleep(0.3)


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


def single_stream(t: Target, service: str, n: int, warm: int = 3,
                  sample: tuple[bytes, Mapping[str, str]] = (b"{}", {})) -> list[float]:
    """Sequential requests (one outstanding): MLPerf's single-stream latency, through the platform."""
    out = []
    body, headers = sample
    for i in range(warm + n):
        t0 = time.monotonic()
        resp = t.provider.invoke(service, body, headers=headers, timeout_s=120)
        resp.raise_for_status()
        if i >= warm:
            out.append((time.monotonic() - t0) * 1000.0)
    return out


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """Counters of every replica of some services at one moment (monotonic time)."""

    at_s: float
    busy_ms: dict[str, float]
    cpu_s: dict[str, float]
    sm_pct: dict[str, int]


class UsageProbe:
    """Reads each replica's sidecar ``/_/stats`` (busy time) at the address the provider gives,
    and its worker's CPU time."""

    def __init__(self, t: Target) -> None:
        self._provider = t.provider if t.redis_url else None
        self._http = requests.Session()

    def sample(self, services: Sequence[str]) -> Usage | None:
        if self._provider is None:
            return None
        busy, cpu, sm = {}, {}, {}
        for s in services:
            for rep in self._provider.replicas_of(s):
                if not rep.url:
                    continue
                try:
                    st = self._http.get(f"{rep.url}/_/stats", timeout=2).json()
                except (requests.RequestException, ValueError):
                    continue
                key = rep.replica_id
                busy[key] = float(st.get("busy_ms_total", 0.0))
                sm[key] = rep.sm_pct
                pid = (st.get("worker") or {}).get("pid")
                c = _cpu_s(int(pid)) if pid else None
                if c is not None:
                    cpu[key] = c
        return Usage(time.monotonic(), busy, cpu, sm)

    def close(self) -> None:
        self._http.close()


def utilisation(a: Usage | None, b: Usage | None,
                ncores: int) -> tuple[float | None, float | None, float | None]:
    """(CPU utilisation, busy fraction, SM-time) between two samples; replicas in both only."""
    if a is None or b is None or b.at_s <= a.at_s:
        return None, None, None
    wall = b.at_s - a.at_s
    both = [k for k in b.busy_ms if k in a.busy_ms]
    busy = sum(b.busy_ms[k] - a.busy_ms[k] for k in both) / 1000.0 / wall
    sm_time = sum((b.busy_ms[k] - a.busy_ms[k]) * b.sm_pct[k] / 100.0 for k in both) / 1000.0 / wall
    cpu_keys = [k for k in b.cpu_s if k in a.cpu_s]
    cpu = sum(b.cpu_s[k] - a.cpu_s[k] for k in cpu_keys) / wall / ncores if cpu_keys else None
    return cpu, busy, sm_time
