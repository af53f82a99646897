"""Isolation of the token arbiter: configured vs measured share of device time, and its cost.

Each case co-locates N saturated simulated executors on one device of a real (embedded) Redis,
each with its own ``RedisTokenClient``. An executor is an asyncio task that acquires a token,
"executes" by sleeping for its execution length (a stand-in for a kernel: sleeping executors
overlap perfectly, which is what SM partitions summing to <= 100 allow), measures that as busy
time and releases. Shares are measured after one window of warm-up, over two windows.

    python -m bench.isolation [--quick] [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from fast_manager.arbiter import ArbiterParams, make_token_client
from fastgshare.redis_server import EmbeddedRedis

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


def expected_shares(executors: tuple[Executor, ...]) -> list[float]:
    """Water-filling: requests first, then the least-used up to their limits, over as many
    device-time units as run at once (all executors of a case have the same SM share)."""
    slots = min(len(executors), 100 // executors[0].sm_pct)
    lo, hi = 0.0, 1.0
    for _ in range(60):
        level = (lo + hi) / 2
        total = sum(min(e.limit, max(e.request, level)) for e in executors)
        lo, hi = (level, hi) if total < slots else (lo, level)
    return [min(e.limit, max(e.request, lo)) for e in executors]


async def run_case(url: str, case: Case, device: str, params: ArbiterParams,
                   warm_s: float, measure_s: float) -> list[dict[str, float]]:
    clients = [make_token_client(SimpleNamespace(
        device_id=device, replica_id=e.name, sm_pct=e.sm_pct, quota_request_frac=e.request,
        quota_limit_frac=e.limit, redis_url=url), params=params) for e in case.executors]
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
        client = make_token_client(SimpleNamespace(
            device_id=f"lat-{label}", replica_id="solo", sm_pct=100, quota_request_frac=1.0,
            quota_limit_frac=1.0, redis_url=url), params=params)
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


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s window instead of the default")
    ap.add_argument("--window-s", type=float, default=None)
    ap.add_argument("--max-token-ms", type=float, default=None)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "isolation.json")
    ap.add_argument("--png", type=Path, default=None)
    args = ap.parse_args(argv)
    base = ArbiterParams()
    window_us = int((args.window_s or (2.0 if args.quick else base.window_us / 1e6)) * 1e6)
    max_token_us = int(args.max_token_ms * 1000) if args.max_token_ms else base.max_token_us
    params = ArbiterParams(window_us=window_us, bucket_us=base.bucket_us,
                           min_token_us=min(base.min_token_us, max_token_us),
                           max_token_us=max_token_us, lease_grace_us=base.lease_grace_us)
    window_s = window_us / 1e6
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d), persist=False) as server:
        for i, case in enumerate(CASES):
            rows += asyncio.run(run_case(server.url, case, f"bench-{i}", params,
                                         warm_s=window_s, measure_s=2 * window_s))
        latency = asyncio.run(acquire_latency(server.url, params, 300 if args.quick else 1000))
    errors = [abs(float(r["measured_share"]) - float(r["configured_share"])) * 100  # type: ignore[arg-type]
              for r in rows]
    result: dict[str, object] = {
        "executor": "asyncio tasks sleeping for their execution length (no torch yet)",
        "params": vars(params) | {},
        "max_abs_error_pp": round(max(errors), 2),
        "mean_abs_error_pp": round(sum(errors) / len(errors), 2),
        "acquire_latency_uncontended": latency,
        "cases": rows,
    }
    print(f"window {window_s:g} s, tokens {params.min_token_us / 1000:g}-"
          f"{params.max_token_us / 1000:g} ms, bucket {params.bucket_us / 1000:g} ms")
    print(f"{'case':32} {'replica':10} {'sm':>4} {'req':>5} {'lim':>5} {'exec':>5} "
          f"{'conf':>6} {'meas':>6} {'minW':>6} {'maxW':>6}")
    for r in rows:
        print(f"{r['case']:32} {r['replica']:10} {r['sm_pct']:>4} {r['request']:>5} "
              f"{r['limit']:>5} {r['exec_ms']:>5} {r['configured_share']:>6.3f} "
              f"{r['measured_share']:>6.3f} {r['min_window_share']:>6.3f} "
              f"{r['max_window_share']:>6.3f}")
    print(f"max |error| {result['max_abs_error_pp']} pp, mean {result['mean_abs_error_pp']} pp")
    for label, v in latency.items():
        print(f"acquire uncontended ({label}): p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    png = args.png or args.json.with_suffix(".png")
    plot(rows, png)
    print(f"wrote {args.json} and {png}")
    return result


if __name__ == "__main__":
    main()
