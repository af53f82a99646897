"""MLPerf LoadGen (Server scenario) driving real HTTP requests at the platform.

One LoadGen run per rate step, with every function in it: LoadGen issues queries as one Poisson
process at the total rate, and each query's sample index picks its function (samples are assigned
in proportion to the functions' rates, and LoadGen draws samples uniformly), so each function sees
a thinned, still Poisson, stream at its own rate. The issue callback never blocks: it hands each
query to a thread pool, whose threads POST to ``/function/<name>`` (provider -> sidecar -> worker)
and call ``QuerySamplesComplete`` themselves. Latency is counted from the moment LoadGen issued the
query, so a busy client counts against the run, as it would against a real one.

LoadGen's own Server early stopping is always on; short runs set ``min_duration_ms``, a
``min_query_count`` below rate x duration, and a latency target with headroom, and LoadGen's
verdict is recorded beside ours (ours judges each function by its own bound). Once a run has
clearly failed (more late requests than the run's whole 1 % budget plus three deviations) the rest
of its queries are completed without a request, so an overloaded step costs its duration, not its
backlog.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.mlperf.aggregate import FunctionRun, late_budget

SAMPLE_SLOTS = 1000
"""QSL size: function shares are resolved to 0.1 %."""
HEADROOM = 1.5
"""LoadGen's latency target = the largest bound x this (our verdict uses each function's own)."""


@dataclass(frozen=True)
class LoadGenRun:
    runs: tuple[FunctionRun, ...]
    loadgen: dict[str, str]
    """LoadGen's summary: result, scheduled rate, its p99 and early-stopping lines."""
    wall_s: float


def assign_slots(rates: Mapping[str, float], slots: int = SAMPLE_SLOTS) -> list[str]:
    """Sample index -> function, in proportion to the rates (largest remainder). Pure."""
    total = sum(rates.values())
    if total <= 0:
        raise ValueError("rates must sum to > 0")
    exact = {f: slots * r / total for f, r in rates.items()}
    counts = {f: int(x) for f, x in exact.items()}
    for f in sorted(exact, key=lambda f: exact[f] - counts[f], reverse=True)[: slots - sum(counts.values())]:
        counts[f] += 1
    return [f for f in rates for _ in range(counts[f])]


def parse_summary(text: str) -> dict[str, str]:
    out = {}
    for key, pat in (("result", r"Result is\s*:\s*(\S+)"),
                     ("scheduled_qps", r"Scheduled samples per second\s*:\s*(\S+)"),
                     ("completed_qps", r"Completed samples per second\s*:\s*(\S+)"),
                     ("p99_ns", r"99\.00 percentile latency \(ns\)\s*:\s*(\S+)"),
                     ("min_duration_satisfied", r"Min duration satisfied\s*:\s*(.+)"),
                     ("min_queries_satisfied", r"Min queries satisfied\s*:\s*(.+)"),
                     ("early_stopping", r"Early stopping satisfied\s*:\s*(.+)")):
        m = re.search(pat, text)
        if m:
            out[key] = m.group(1).strip()
    return out


class _Recorder:
    def __init__(self, rates: Mapping[str, float], bounds_ms: Mapping[str, float], duration_s: float) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {f: [] for f in rates}
        self.sent: dict[str, list[float]] = {f: [] for f in rates}
        self.errors = dict.fromkeys(rates, 0)
        self.skipped = dict.fromkeys(rates, 0)
        self.late = dict.fromkeys(rates, 0)
        self.budget = {f: late_budget(max(1, int(r * duration_s))) for f, r in rates.items()}
        self.bounds = bounds_ms
        self.abort = threading.Event()
        self.why = ""

    def record(self, fn: str, t_issue: float, latency_ms: float | None) -> None:
        with self.lock:
            self.sent[fn].append(t_issue)
            if latency_ms is None:
                self.errors[fn] += 1
                self.late[fn] += 1
            else:
                self.lat[fn].append(latency_ms)
                if latency_ms > self.bounds[fn]:
                    self.late[fn] += 1
            if self.late[fn] > self.budget[fn] and not self.abort.is_set():
                self.why = f"{fn}: {self.late[fn]} late"
                self.abort.set()


def run_server(urls: Mapping[str, str], rates: Mapping[str, float], bounds_ms: Mapping[str, float],
               duration_s: float, *, body: bytes = b"{}", workers: int = 64, early_stop: bool = True,
               on_request: Callable[[str, float, float | None], None] | None = None,
               samples: Mapping[str, tuple[bytes, Mapping[str, str]]] | None = None) -> LoadGenRun:
    """One LoadGen Server run at ``sum(rates)`` queries/s for ``duration_s`` over real HTTP.
    ``samples``: each function's (body, headers) (``bench.mlperf.samples``); default ``body``."""
    import mlperf_loadgen as lg  # imported here: the pure parts of the bench do not need it

    rates = {f: r for f, r in rates.items() if r > 0}
    slots = assign_slots(rates)
    qps = sum(rates.values())
    rec = _Recorder(rates, bounds_ms, duration_s)
    local = threading.local()
    timeout_s = max(30.0, 20 * max(bounds_ms.values()) / 1000.0)
    first_last = [float("inf"), 0.0]

    def session() -> requests.Session:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        return s

    def serve(qid: int, fn: str, t0: float) -> None:
        latency: float | None
        try:
            if early_stop and rec.abort.is_set():
                with rec.lock:
                    rec.skipped[fn] += 1
                return
            try:
                data, headers = (samples or {}).get(fn, (body, {}))
                resp = session().post(urls[fn], data=data, headers=headers, timeout=timeout_s)
                latency = (time.monotonic() - t0) * 1000.0 if resp.status_code == 200 else None
            except requests.RequestException:
                latency = None
            rec.record(fn, t0, latency)
            if on_request is not None:
                on_request(fn, t0, latency)
        finally:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(qid, 0, 0)])

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlperf-http")

    def issue(queries: list) -> None:  # LoadGen's thread: never block here
        now = time.monotonic()
        first_last[0] = min(first_last[0], now)
        first_last[1] = now
        for q in queries:
            pool.submit(serve, q.id, slots[q.index], now)

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = qps
    settings.server_target_latency_ns = int(max(bounds_ms.values()) * HEADROOM * 1e6)
    settings.min_duration_ms = int(duration_s * 1000)
    settings.max_duration_ms = int(duration_s * 1000 * 1.5) + 1000
    settings.min_query_count = max(1, int(qps * duration_s * 0.5))
    settings.performance_sample_count_override = len(slots)
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(len(slots), len(slots), lambda idx: None, lambda idx: None)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlperf-loadgen-") as d:
        log = lg.LogSettings()
        log.log_output.outdir = d
        log.log_output.copy_summary_to_stdout = False
        log.enable_trace = False
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log)
        finally:
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
            pool.shutdown(wait=True)
        summary_path = Path(d) / "mlperf_log_summary.txt"
        summary = parse_summary(summary_path.read_text()) if summary_path.exists() else {}
    wall_s = time.monotonic() - t_start
    if rec.abort.is_set():
        summary["our_early_stop"] = rec.why
    issued_s = max(first_last[1] - first_last[0], 1e-3) + 1.0 / qps
    runs = tuple(FunctionRun(f, rates[f], tuple(rec.lat[f]), rec.errors[f], rec.skipped[f], issued_s)
                 for f in rates)
    return LoadGenRun(runs, summary, wall_s)
