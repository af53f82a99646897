"""Isolation of the token arbiter: configured vs measured share of device time, and its cost.

Each case co-locates N real replicas on one device: ``python -m fast_manager.sidecar`` processes
in front of python3-torch workers running a small torch MLP for a set time per request, pinned to
cores sized from their SM share (on a GPU: MPS shares), all saturated by closed-loop clients
(``--concurrency`` requests outstanding per replica, 4 by default: with 2, on a loaded machine
the client's turnaround often left a 5 ms replica with nothing queued when its slice ended, so it
gave the device away without demand) and sharing the device's arbiter in a real (embedded)
Redis. One window of warm-up, then two windows of measurement.

Measured share of device time = the wall time during which the replica HELD the device's token
(measured by its own sidecar, from each lease's arrival to its return, on the sidecar's clock)
over the wall time of the measurement. On a time-shared device that is the time the device was
the replica's and no one else's: what a neighbour loses to it, whatever the replica did with it.
Also reported: the busy share (the time its worker reported executing: useful work; the rest of
its held time is the replica's own per-request overhead), and the part of the device's time held
by nobody (hand-overs). Expected shares: water-filling per group of replicas that contend (CPU:
the same core set; GPU: SM shares), requests first, then the least-used up to their limits.

``--executor sleep`` runs the arbiter alone: asyncio tasks with their own token clients that
"execute" by sleeping (the earlier, process-free version of this benchmark).

Cases 4 and 5: a replica alone on its device (SM 100, SM 50) capped at 0.3, measured from outside
by throughput against an unlimited copy of itself: executions of ~100 ms (ResNet-50 here) overrun
every token they start under, so the cap holds only if overruns are charged.

Also measured: the latency the arbiter adds to an uncontended replica (same replica, arbiter on
vs ``FASTGSHARE_ARBITER=off``, sequential requests, interleaved).

    python -m bench.isolation [--quick] [--json PATH] [--window-s S] [--max-token-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from bench import replicas as rp
from fast_manager.arbiter import ArbiterParams, arbiter_token_client
from fastgshare.redis_acl import PLATFORM_USER, ensure_passwords, write_acl_file
from fastgshare.redis_server import EmbeddedRedis
from fastgshare.stats import percentile

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Executor:
    name: str
    sm_pct: int
    request: float
    limit: float
    exec_ms: float


@dataclass(frozen=True)
class Case:
    name: str
    executors: tuple[Executor, ...]


def E(name: str, sm: int, req: float, lim: float, exec_ms: float) -> Executor:  # noqa: N802
    return Executor(name, sm, req, lim, exec_ms)


CASES = (
    Case("2 time-shared, limit=request", (E("a", 100, 0.3, 0.3, 8), E("b", 100, 0.7, 0.7, 15))),
    Case("3 time-shared, one capped", (E("a", 100, 0.5, 1.0, 10), E("b", 100, 0.2, 1.0, 5),
                                        E("c", 100, 0.1, 0.15, 20))),
    Case("4 at 50% SM (2 run at once)", (E("a", 50, 0.2, 1.0, 5), E("b", 50, 0.3, 1.0, 10),
                                          E("c", 50, 0.4, 0.45, 15), E("d", 50, 0.5, 1.0, 20))),
    Case("guarantee vs greedy neighbour", (E("guaranteed", 100, 0.7, 1.0, 5),
                                           E("greedy", 100, 0.1, 1.0, 40))),
)


LONE_CASES = {4: 100, 5: 50}
"""Case number -> SM %: a replica ALONE on its device capped at ``LONE_LIMIT``, measured from
outside by throughput against an unlimited copy of itself (request = limit = 1) run just before."""
LONE_LIMIT = 0.3
LONE_WINDOWS = 4
"""Windows measured (after one of warm-up): ~60 executions of the capped copy, so that one more or
less moves its throughput by half a point."""
LONE_EXEC_MS = 100.0
"""About one ResNet-50 execution (batch 1) on this 2-core machine: longer than the longest token,
so every execution overruns the token it started under."""


def expected_shares(executors: tuple[Executor, ...],
                    cores: list[str] | None = None) -> list[float]:
    """Water-filling: requests first, then the least-used up to their limits. With core sets
    (CPU), replicas on the same core set time-share it (one slot per group; the cases use core
    sets that are either equal or disjoint); without (GPU), all share as many slots as run at
    once (all executors of a case have the same SM share)."""
    if cores is not None:
        out = [0.0] * len(executors)
        for group in dict.fromkeys(cores):
            idx = [k for k, c in enumerate(cores) if c == group]
            for k, share in zip(idx, _water_fill([executors[k] for k in idx], 1), strict=True):
                out[k] = share
        return out
    return _water_fill(list(executors), min(len(executors), 100 // executors[0].sm_pct))


def _water_fill(executors: list[Executor], slots: int) -> list[float]:
    if sum(e.limit for e in executors) <= slots:
        return [e.limit for e in executors]
    lo, hi = 0.0, 1.0
    for _ in range(60):
        level = (lo + hi) / 2
        total = sum(min(e.limit, max(e.request, level)) for e in executors)
        lo, hi = (level, hi) if total < slots else (lo, level)
    return [min(e.limit, max(e.request, lo)) for e in executors]


async def run_case(url: str, case: Case, device: str, params: ArbiterParams,
                   warm_s: float, measure_s: float) -> list[dict[str, float]]:
    clients = [arbiter_token_client(
        device_id=device, replica_id=e.name, sm_pct=e.sm_pct, quota_request_frac=e.request,
        quota_limit_frac=e.limit, redis_url=url, params=params) for e in case.executors]
    intervals: list[list[tuple[float, float]]] = [[] for _ in case.executors]
    start = time.perf_counter()
    end = start + warm_s + measure_s

    async def execute(i: int) -> None:
        while time.perf_counter() < end:
            lease = await clients[i].acquire(30.0)
            assert lease is not None
            t0 = time.perf_counter()
            await asyncio.sleep(case.executors[i].exec_ms / 1000)
            t1 = time.perf_counter()
            intervals[i].append((t0, t1))
            await clients[i].release(lease, (t1 - t0) * 1000)

    await asyncio.gather(*(execute(i) for i in range(len(clients))))
    for c in clients:
        await c.close()
    m0, m1 = start + warm_s, end
    window_s = params.window_us / 1e6
    rows = []
    for e, ivs, want in zip(case.executors, intervals, expected_shares(case.executors),
                            strict=True):
        def busy(a: float, b: float, ivs: list[tuple[float, float]] = ivs) -> float:
            return sum(max(0.0, min(t1, b) - max(t0, a)) for t0, t1 in ivs)
        per_window = [busy(a, a + window_s) / window_s
                      for a in _frange(m0, m1 - window_s + 1e-9, window_s / 4)]
        rows.append({"case": case.name, "replica": e.name, "sm_pct": e.sm_pct,
                     "request": e.request, "limit": e.limit, "exec_ms": e.exec_ms,
                     "configured_share": round(want, 4),
                     "measured_share": round(busy(m0, m1) / (m1 - m0), 4),
                     "min_window_share": round(min(per_window), 4),
                     "max_window_share": round(max(per_window), 4)})
    return rows


def _frange(a: float, b: float, step: float) -> list[float]:
    out = []
    while a <= b:
        out.append(a)
        a += step
    return out


async def acquire_latency(url: str, params: ArbiterParams, n: int) -> dict[str, float]:
    """Uncontended acquire: a Redis round trip (linger 0: every token returned at once), and the
    usual path where back-to-back executions reuse the slice."""
    from fast_manager.arbiter.client import RedisTokenClient

    out = {}
    for label, linger_s in (("round_trip", 0.0), ("with_slice_reuse", 0.002)):
        client = arbiter_token_client(
            device_id=f"lat-{label}", replica_id="solo", sm_pct=100, quota_request_frac=1.0,
            quota_limit_frac=1.0, redis_url=url, params=params)
        assert isinstance(client, RedisTokenClient)
        client._linger_s = linger_s
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            lease = await client.acquire(5.0)
            samples.append((time.perf_counter() - t0) * 1000)
            assert lease is not None
            await client.release(lease, 0.5)
        await client.close()
        samples.sort()
        out[label] = {"p50_ms": round(statistics.median(samples), 3),
                      "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3)}
    return out


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['case'][:14]}\n{r['replica']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4))
    ax.bar([i - 0.2 for i in x], [float(r["configured_share"]) for r in rows], 0.4,  # type: ignore[arg-type]
           label="configured (expected)")
    ax.bar([i + 0.2 for i in x], [float(r["measured_share"]) for r in rows], 0.4,  # type: ignore[arg-type]
           label="measured")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("share of device time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cores_for(executors: tuple[Executor, ...], all_cores: list[int]) -> list[str]:
    """A core set per replica sized from its SM share, packed round-robin (as the backend does)."""
    out = []
    for i, e in enumerate(executors):
        n = max(1, round(len(all_cores) * e.sm_pct / 100))
        start = (i * n) % len(all_cores)
        out.append(",".join(str(all_cores[(start + k) % len(all_cores)]) for k in range(n)))
    return out


async def arbiter_charged(url: str, device: str, rids: list[str], params: ArbiterParams,
                          warm_s: float, measure_s: float) -> list[float]:
    """What the arbiter charged each replica over the measurement, as a share of it: its usage
    buckets (read every quarter window, so none is pruned unseen) between the measurement's two
    ends on the Redis clock. Lumpy: a burst is charged to the bucket of its release."""
    import redis.asyncio as aioredis

    from fast_manager.arbiter.lua import usage_key

    r = aioredis.Redis.from_url(url)
    seen: list[dict[int, int]] = [{} for _ in rids]

    async def sample() -> int:
        for k, rid in enumerate(rids):
            for b, v in (await r.hgetall(usage_key(device, rid))).items():
                seen[k][int(b)] = max(seen[k].get(int(b), 0), int(v))
        sec, usec = await r.time()
        return sec * 1_000_000 + usec

    try:
        await asyncio.sleep(warm_s)
        t0 = await sample()
        end = time.perf_counter() + measure_s
        while time.perf_counter() < end:
            await asyncio.sleep(min(params.window_us / 4e6, max(0.0, end - time.perf_counter())))
            t1 = await sample()
    finally:
        await r.aclose()
    lo, hi = t0 // params.bucket_us, t1 // params.bucket_us
    span_s = (hi - lo) * params.bucket_us / 1e6
    return [sum(v for b, v in got.items() if lo <= b < hi) / 1e6 / span_s for got in seen]


def device_env(args: argparse.Namespace, i: int) -> dict[str, str]:
    if args.device.startswith("gpu:"):
        env = {"FASTGSHARE_DEVICE": args.device}
        if args.mps_pipe_dir:
            env["FASTGSHARE_MPS_PIPE_DIR"] = args.mps_pipe_dir
        return env
    return {"FASTGSHARE_DEVICE": f"cpu:iso{i}"}


def run_torch_case(url: str, case: Case, i: int, args: argparse.Namespace, params: ArbiterParams,
                   handler: Path, log_dir: Path, rep: int = 0) -> list[dict[str, object]]:
    all_cores = sorted(os.sched_getaffinity(0))
    gpu = args.device.startswith("gpu:")
    cores = cores_for(case.executors, all_cores)
    specs = []
    for e, c in zip(case.executors, cores, strict=True):
        spec = {"name": f"c{i}r{rep}-{e.name}", "REDIS_URL": url, "FASTGSHARE_HANDLER_DIR": str(handler),
                "FASTGSHARE_SM_PCT": str(e.sm_pct), "FASTGSHARE_QUOTA_REQUEST": f"{e.request:g}",
                "FASTGSHARE_QUOTA_LIMIT": f"{e.limit:g}",
                "FASTGSHARE_ARBITER_WINDOW_S": f"{params.window_us / 1e6:g}",
                "FASTGSHARE_ARBITER_MIN_TOKEN_MS": f"{params.min_token_us / 1000:g}",
                "FASTGSHARE_ARBITER_MAX_TOKEN_MS": f"{params.max_token_us / 1000:g}"}
        spec |= device_env(args, i * 100 + rep)
        if args.worker_nice is not None:
            spec["FASTGSHARE_WORKER_NICE"] = str(args.worker_nice)
        if args.sidecar_nice is not None:
            spec["FASTGSHARE_SIDECAR_NICE"] = str(args.sidecar_nice)
        if not gpu:
            spec["FASTGSHARE_CPU_CORES"] = c
        specs.append(spec)
    reps = rp.start_replicas(specs, log_dir / f"case{i}-{rep}")
    try:
        targets = [(f"{r.url}/?ms={e.exec_ms:g}", "GET", b"")
                   for r, e in zip(reps, case.executors, strict=True)]
        window_s = params.window_us / 1e6
        rids = [f"openfaas-fn/{r.name}/{r.name}-0" for r in reps]
        device = specs[0]["FASTGSHARE_DEVICE"]

        async def both() -> tuple[dict[str, list[float]], float, list[rp.Done], list[float]]:
            charged = asyncio.ensure_future(arbiter_charged(url, device, rids, params, window_s,
                                                            2 * window_s))
            out = await rp.stats_over(reps, targets, warm_s=window_s, measure_s=2 * window_s,
                                      concurrency=args.concurrency,
                                      fields=("busy_ms_total", "held_ms_total", "tokens_total",
                                              "tokens_pushed"))
            return (*out, await charged)

        totals, wall_s, done, charged_s = asyncio.run(both())
    finally:
        rp.stop_replicas(reps)
    rows = []
    want_all = expected_shares(case.executors, None if gpu else cores)
    for k, (e, h, b, want) in enumerate(zip(case.executors, totals["held_ms_total"],
                                            totals["busy_ms_total"], want_all, strict=True)):
        lat = [d.latency_ms for d in done if d.replica == k and d.status == 200]
        pushed = int(totals["tokens_pushed"][k])
        # the device was reserved for it (charged, from the grant) but it did not run yet (held,
        # from the pick-up): per hand-over to it, the wake-up latency (lumpy: buckets vs clock)
        pickup_ms = (charged_s[k] * wall_s - h / 1000) * 1000 / pushed if pushed else 0.0
        rows.append({"case": case.name, "rep": rep, "replica": e.name, "sm_pct": e.sm_pct,
                     "cores": "" if gpu else cores[k],
                     "request": e.request, "limit": e.limit, "exec_ms": e.exec_ms,
                     "configured_share": round(want, 4),
                     "measured_share": round(h / 1000 / wall_s, 4),
                     "busy_share": round(b / 1000 / wall_s, 4),
                     "arbiter_charged_share": round(charged_s[k], 4),
                     "tokens": int(totals["tokens_total"][k]), "handovers_in": pushed,
                     "pickup_ms_mean": round(pickup_ms, 2),
                     "requests": len(lat), "p99_ms": round(percentile(lat, 99), 1),
                     "errors": sum(1 for d in done if d.replica == k and d.status != 200)})
    return rows


def run_lone_case(url: str, i: int, args: argparse.Namespace, params: ArbiterParams,
                  handler: Path, log_dir: Path, rep: int = 0) -> list[dict[str, object]]:
    """A lone replica capped at ``LONE_LIMIT`` vs an unlimited copy, by throughput (requests
    answered per second, saturated): the cap as a client sees it, overruns and all. Also the
    work ratio (busy share capped / busy share unlimited): with a real model the two copies'
    executions need not take equally long (the machine's load moves between the two runs), which
    the throughput ratio counts and the arbiter, a cap on time, cannot."""
    sm = LONE_CASES[i]
    all_cores = sorted(os.sched_getaffinity(0))
    gpu = args.device.startswith("gpu:")
    cores = cores_for((E("x", sm, 1.0, 1.0, LONE_EXEC_MS),), all_cores)[0]
    window_s = params.window_us / 1e6
    if args.lone_function:  # a real function: its own execution time, its built-in sample
        handler = HERE.parent / "functions" / args.lone_function
    out: dict[str, dict[str, float]] = {}
    for label, quota in (("unlimited", 1.0), ("capped", LONE_LIMIT)):
        spec = {"name": f"c{i}r{rep}-{label}", "REDIS_URL": url,
                "FASTGSHARE_HANDLER_DIR": str(handler), "FASTGSHARE_SM_PCT": str(sm),
                "FASTGSHARE_MODEL": "", "FASTGSHARE_QUEUE_MAX": "64",
                "FASTGSHARE_QUOTA_REQUEST": f"{quota:g}", "FASTGSHARE_QUOTA_LIMIT": f"{quota:g}",
                "FASTGSHARE_ARBITER_WINDOW_S": f"{window_s:g}",
                "FASTGSHARE_ARBITER_MIN_TOKEN_MS": f"{params.min_token_us / 1000:g}",
                "FASTGSHARE_ARBITER_MAX_TOKEN_MS": f"{params.max_token_us / 1000:g}"}
        spec |= device_env(args, i * 100 + rep)
        if not gpu:
            spec["FASTGSHARE_CPU_CORES"] = cores
        reps = rp.start_replicas([spec], log_dir / f"case{i}-{rep}-{label}")
        try:
            totals, wall_s, done = asyncio.run(rp.stats_over(
                reps, [(f"{reps[0].url}/?ms={LONE_EXEC_MS:g}", "POST", b"{}")], warm_s=window_s,
                measure_s=LONE_WINDOWS * window_s, concurrency=args.concurrency))
        finally:
            rp.stop_replicas(reps)
        ok = [d for d in done if d.status == 200]
        out[label] = {"rps": len(ok) / wall_s, "held": totals["held_ms_total"][0] / 1000 / wall_s,
                      "busy": totals["busy_ms_total"][0] / 1000 / wall_s,
                      "exec_ms": totals["busy_ms_total"][0] / max(1, len(ok)),
                      "errors": len(done) - len(ok)}
    ratio = out["capped"]["rps"] / out["unlimited"]["rps"] if out["unlimited"]["rps"] else 0.0
    return [{"case": f"lone, limit {LONE_LIMIT:g}, SM {sm} (throughput)", "rep": rep,
             "function": args.lone_function or f"spin {LONE_EXEC_MS:g} ms",
             "replica": "capped", "sm_pct": sm, "cores": "" if gpu else cores,
             "request": LONE_LIMIT, "limit": LONE_LIMIT, "exec_ms": LONE_EXEC_MS,
             "configured_share": LONE_LIMIT, "measured_share": round(ratio, 4),
             "busy_share": round(out["capped"]["busy"], 4),
             "held_share": round(out["capped"]["held"], 4),
             "rps_capped": round(out["capped"]["rps"], 2),
             "rps_unlimited": round(out["unlimited"]["rps"], 2),
             "busy_share_unlimited": round(out["unlimited"]["busy"], 4),
             "work_ratio": round(out["capped"]["busy"] / out["unlimited"]["busy"], 4)
             if out["unlimited"]["busy"] else None,
             "exec_ms_capped": round(out["capped"]["exec_ms"], 1),
             "exec_ms_unlimited": round(out["unlimited"]["exec_ms"], 1),
             "errors": out["capped"]["errors"] + out["unlimited"]["errors"]}]


def arbiter_latency_cost(url: str, args: argparse.Namespace, handler: Path, log_dir: Path,
                         n: int) -> dict[str, float]:
    """One uncontended replica with the arbiter on and one with it off, same handler (one small
    forward pass), sequential requests interleaved: the p50 and mean added by the arbiter."""
    import requests

    base = {"REDIS_URL": url, "FASTGSHARE_HANDLER_DIR": str(handler)} | device_env(args, 99)
    if not args.device.startswith("gpu:"):
        base["FASTGSHARE_CPU_CORES"] = str(max(os.sched_getaffinity(0)))
    reps = rp.start_replicas([base | {"name": "lat-on"},
                              base | {"name": "lat-off", "FASTGSHARE_ARBITER": "off"}],
                             log_dir / "latency")
    try:
        samples: dict[str, list[float]] = {"on": [], "off": []}
        with requests.Session() as s:
            for k in range(n + 50):
                for label, r in (("on", reps[0]), ("off", reps[1])):
                    t0 = time.perf_counter()
                    assert s.get(f"{r.url}/?ms=0", timeout=10).status_code == 200
                    if k >= 50:  # warm-up excluded
                        samples[label].append((time.perf_counter() - t0) * 1000)
        mode = reps[0].stats()["token_mode"]
    finally:
        rp.stop_replicas(reps)
    med = {k: statistics.median(v) for k, v in samples.items()}
    mean = {k: statistics.fmean(v) for k, v in samples.items()}
    return {"token_mode_on": mode, "p50_on_ms": round(med["on"], 3),
            "p50_off_ms": round(med["off"], 3), "added_p50_ms": round(med["on"] - med["off"], 3),
            "added_mean_ms": round(mean["on"] - mean["off"], 3), "requests_each": n}



@contextlib.contextmanager
def acl_redis(root: Path) -> Iterator[SimpleNamespace]:
    """Redis as a platform's replicas meet it (docs/security.md): ACL users, the default user off;
    everything here (replicas, token clients, usage reads) speaks as the restricted sidecar user."""
    pw = ensure_passwords(root / "secrets")
    data = root / "redis"
    data.mkdir()
    with EmbeddedRedis(data, persist=False, acl_file=write_acl_file(data / "users.acl", pw),
                       username=PLATFORM_USER, password=pw.platform) as srv:
        yield SimpleNamespace(url=pw.sidecar_url(f"redis://127.0.0.1:{srv.port}/0"))

def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s window instead of the default")
    ap.add_argument("--executor", choices=("torch", "sleep"), default="torch")
    ap.add_argument("--window-s", type=float, default=None)
    ap.add_argument("--max-token-ms", type=float, default=None)
    ap.add_argument("--min-token-ms", type=float, default=None)
    ap.add_argument("--device", default="cpu", help="cpu, or gpu:<uuid> (bench/gpu/run.sh)")
    ap.add_argument("--mps-pipe-dir", default=None)
    ap.add_argument("--cases", default=None, help="comma-separated case numbers (default all)")
    ap.add_argument("--concurrency", type=int, default=4,
                    help="requests outstanding per replica (enough to keep it saturated)")
    ap.add_argument("--worker-nice", type=int, default=None,
                    help="FASTGSHARE_WORKER_NICE for the replicas (default: the sidecar's)")
    ap.add_argument("--sidecar-nice", type=int, default=None,
                    help="FASTGSHARE_SIDECAR_NICE for the replicas (<= 0: raise the sidecars' "
                         "priority, needs CAP_SYS_NICE; default: the platform's)")
    ap.add_argument("--lone-function", default=None,
                    help="run cases 4-5 with this example function (e.g. resnet50) instead of the "
                         f"{LONE_EXEC_MS:g} ms spin handler")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each case (spread reported)")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "isolation.json")
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args(argv)
    base = ArbiterParams()
    window_us = int((args.window_s or (2.0 if args.quick else base.window_us / 1e6)) * 1e6)
    window_us = max(1, round(window_us / base.bucket_us)) * base.bucket_us
    max_token_us = int(args.max_token_ms * 1000) if args.max_token_ms else base.max_token_us
    min_token_us = int(args.min_token_ms * 1000) if args.min_token_ms else \
        min(base.min_token_us, max_token_us)
    params = ArbiterParams(window_us=window_us, bucket_us=base.bucket_us,
                           min_token_us=min_token_us, max_token_us=max_token_us,
                           lease_grace_us=base.lease_grace_us)
    window_s = window_us / 1e6
    picked = ([int(c) for c in args.cases.split(",")] if args.cases
              else list(range(len(CASES))) + list(LONE_CASES))
    rows: list[dict[str, object]] = []
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d, acl_redis(Path(d)) as server:
        if args.executor == "sleep":
            for i in (i for i in picked if i < len(CASES)):
                rows += asyncio.run(run_case(server.url, CASES[i], f"bench-{i}", params,
                                             warm_s=window_s, measure_s=2 * window_s))
            latency: dict[str, object] = dict(asyncio.run(
                acquire_latency(server.url, params, 300 if args.quick else 1000)))
        else:
            handler = rp.write_handler(Path(d) / "spin")
            for rep in range(args.repeat):
                for i in picked:
                    if i in LONE_CASES:
                        print(f"case {i} (run {rep + 1}/{args.repeat}): lone replica, limit "
                              f"{LONE_LIMIT:g}, SM {LONE_CASES[i]}, vs an unlimited copy ...",
                              flush=True)
                        rows += run_lone_case(server.url, i, args, params, handler,
                                              Path(d) / "logs", rep)
                        continue
                    print(f"case {i} (run {rep + 1}/{args.repeat}): {CASES[i].name} ...",
                          flush=True)
                    rows += run_torch_case(server.url, CASES[i], i, args, params, handler,
                                           Path(d) / "logs", rep)
            print("latency cost of the arbiter on an uncontended replica ...", flush=True)
            latency = {"sidecar": arbiter_latency_cost(server.url, args, handler, Path(d) / "logs",
                                                       300 if args.quick else 1000)}
            latency |= dict(asyncio.run(acquire_latency(server.url, params, 300)))
    errors = [abs(float(r["measured_share"]) - float(r["configured_share"])) * 100  # type: ignore[arg-type]
              for r in rows]
    sums = _sums(rows)
    busy_errors = [abs(float(r["busy_share"]) - float(r["configured_share"])) * 100  # type: ignore[arg-type]
                   for r in rows if "busy_share" in r]
    arb_errors = [abs(float(r["arbiter_charged_share"]) - float(r["configured_share"])) * 100  # type: ignore[arg-type]
                  for r in rows if "arbiter_charged_share" in r]
    for r in rows:  # the arbiter's apportioning alone: shares of the device time actually used
        conf_sum, meas_sum = sums[_run_key(r)]
        r["normalised_share"] = round(float(r["measured_share"]) * conf_sum / meas_sum, 4)  # type: ignore[arg-type]
    norm_errors = [abs(float(r["normalised_share"]) - float(r["configured_share"])) * 100  # type: ignore[arg-type]
                   for r in rows]
    result: dict[str, object] = {
        "executor": ("real sidecars + python3-torch workers (small MLP, set time per request), "
                     f"closed loop, {args.concurrency} outstanding per replica"
                     if args.executor == "torch" else
                     "asyncio tasks sleeping for their execution length"),
        "device": args.device,
        "params": vars(params) | {},
        "max_abs_error_pp": round(max(errors), 2),
        "mean_abs_error_pp": round(sum(errors) / len(errors), 2),
        "max_abs_error_normalised_pp": round(max(norm_errors), 2),
        "max_abs_error_busy_pp": round(max(busy_errors), 2) if busy_errors else None,
        "max_abs_error_arbiter_charged_pp": round(max(arb_errors), 2) if arb_errors else None,
        "measured_share_is": ("held: wall time the replica held the device's token (its sidecar's "
                              "clock) / measurement wall time" if args.executor == "torch" else
                              "busy: time spent executing (sleeping) / measurement wall time"),
        "load_average_before_after": [round(x, 2) for x in load_before + os.getloadavg()],
        "repeat": args.repeat,
        "sum_configured_vs_measured": sums,
        "worker_nice": args.worker_nice,
        "sidecar_nice": args.sidecar_nice,
        "arbiter_latency": latency,
        "runtime_s": round(time.perf_counter() - t_start, 1),
        "cases": rows,
    }
    print(f"window {window_s:g} s, tokens {params.min_token_us / 1000:g}-"
          f"{params.max_token_us / 1000:g} ms, bucket {params.bucket_us / 1000:g} ms, "
          f"executor {args.executor}, device {args.device}")
    print(f"measured share = {result['measured_share_is']}; load average before/after "
          f"{result['load_average_before_after']}")
    print(f"{'case':32} {'run':>3} {'replica':10} {'sm':>4} {'cores':>5} {'req':>5} {'lim':>5} "
          f"{'exec':>5} {'conf':>6} {'meas':>6} {'err pp':>6} {'busy':>6} {'arb':>6} "
          f"{'tok/s':>6} {'hand-in':>7} {'pickup':>6}")
    for r, err in zip(rows, errors, strict=True):
        print(f"{r['case']:32} {r.get('rep', 0):>3} {r['replica']:10} {r['sm_pct']:>4} "
              f"{r.get('cores', ''):>5} {r['request']:>5} {r['limit']:>5} {r['exec_ms']:>5} "
              f"{r['configured_share']:>6.3f} {r['measured_share']:>6.3f} {err:>6.2f} "
              f"{r.get('busy_share', float('nan')):>6.3f} "
              f"{r.get('arbiter_charged_share', float('nan')):>6.3f} "
              f"{float(r.get('tokens', 0)) / (2 * window_s):>6.1f} "  # type: ignore[arg-type]
              f"{r.get('handovers_in', 0):>7} {r.get('pickup_ms_mean', float('nan')):>6.2f}")
    print(f"max |error| {result['max_abs_error_pp']} pp, mean {result['mean_abs_error_pp']} pp; "
          f"normalised to the device time used: max {result['max_abs_error_normalised_pp']} pp; "
          f"busy share vs configured: max {result['max_abs_error_busy_pp']} pp; arbiter-charged "
          f"share vs configured: max {result['max_abs_error_arbiter_charged_pp']} pp")
    for case, (conf, meas) in sums.items():
        print(f"  {case}: configured total {conf:.3f}, measured total {meas:.3f} "
              f"(held by nobody: {100 * (conf - meas):.1f} pp, hand-overs)")
    print(f"arbiter latency: {json.dumps(latency)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    png = args.png or args.json.with_suffix(".png")
    plot(rows, png)
    print(f"wrote {args.json} and {png}")
    return result


def _run_key(r: dict[str, object]) -> str:
    return f"{r['case']} #{r.get('rep', 0)}"


def _sums(rows: list[dict[str, object]]) -> dict[str, list[float]]:
    """Per case, configured and measured total: the gap is device time lost in hand-overs."""
    out: dict[str, list[float]] = {}
    for r in rows:
        c = out.setdefault(_run_key(r), [0.0, 0.0])
        c[0] = round(c[0] + float(r["configured_share"]), 4)  # type: ignore[arg-type]
        c[1] = round(c[1] + float(r["measured_share"]), 4)  # type: ignore[arg-type]
    return out


if __name__ == "__main__":
    main()
