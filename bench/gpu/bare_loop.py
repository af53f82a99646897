"""The bare loop the MLPerf GPU variant compares the platform with: the same handler, model,
precision and batching, called in a tight loop in one process (no HTTP, no sidecar, no queue, no
token).

For each batch size the handler's ``handle_batch`` runs on that many copies of the query the MLPerf
harness sends (``bench.mlperf.samples``: the same preprocessed binary tensors), closed loop, for
``--seconds``; its rate at the bound is that of the largest batch whose p99 execution fits half
the bound (a query in a Server run may wait one running batch, then run in its own: the same rule
the worker's batching policy uses for B_max), batch / mean execution time.

    python -m bench.gpu.bare_loop --fn resnet50 --bound-ms 15 [--seconds 3] [--json PATH]

On a GPU the example handlers take their fast path (fp16 autocast, channels_last, CUDA graphs per
batch bucket). Untested on a GPU here; runs on the CPU (``--quick`` sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fastgshare.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "function_templates" / "python3-torch"
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)


def rate_at_bound(per_batch: dict[int, dict[str, float]], bound_ms: float) -> tuple[int, float]:
    """(batch, items/s) of the largest batch whose p99 fits half the bound; (0, 0) if none. Pure."""
    fits = [b for b, r in per_batch.items() if r["p99_ms"] <= bound_ms / 2]
    if not fits:
        return 0, 0.0
    b = max(fits)
    return b, per_batch[b]["items_per_s"]


def measure(fn: str, batches: tuple[int, ...], seconds: float) -> dict[int, dict[str, float]]:
    sys.path.insert(0, str(TEMPLATE))
    import index  # the worker runtime: the handler is imported and loaded exactly as a worker does

    from bench.mlperf.samples import request_for

    module = index.import_handler(ROOT / "functions" / fn, f"bare_{fn}")
    module.load()
    body, headers = request_for(fn)
    ctx = index.Context("/nonexistent")
    sync = _synchronizer()
    out: dict[int, dict[str, float]] = {}
    for b in batches:
        events = [index.make_event("POST", "/", dict(headers), body) for _ in range(b)]
        run = module.handle_batch if b > 1 and hasattr(module, "handle_batch") else None
        if b > 1 and run is None:
            break

        def once(events=events, run=run) -> None:
            if run is None:
                module.handle(events[0], ctx)
            else:
                run(events, ctx)
            sync()

        for _ in range(3):
            once()
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t0 = time.perf_counter()
            once()
            times.append((time.perf_counter() - t0) * 1000.0)
        mean = sum(times) / len(times)
        out[b] = {"n": len(times), "p50_ms": round(percentile(times, 50), 3),
                  "p99_ms": round(percentile(times, 99), 3), "mean_ms": round(mean, 3),
                  "items_per_s": round(1000.0 * b / mean, 1)}
        print(f"bare loop {fn} batch {b:3}: p50 {out[b]['p50_ms']:8.2f} ms  p99 "
              f"{out[b]['p99_ms']:8.2f} ms  {out[b]['items_per_s']:9.1f} items/s", flush=True)
    return out


def _synchronizer():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    return lambda: None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fn", required=True)
    ap.add_argument("--bound-ms", type=float, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    per_batch = measure(args.fn, batches, args.seconds)
    b, rate = rate_at_bound(per_batch, args.bound_ms)
    result = {"function": args.fn, "bound_ms": args.bound_ms, "seconds_per_batch": args.seconds,
              "per_batch": per_batch, "batch_at_bound": b, "rate_at_bound": rate}
    print(f"bare loop {args.fn}: {rate:.1f} items/s at the bound ({args.bound_ms:g} ms: batch {b} "
          f"with p99 <= {args.bound_ms / 2:g} ms)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
