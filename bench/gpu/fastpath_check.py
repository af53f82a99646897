"""The fast path against the eager model, in one process: same answers, and how much faster.

For each example function the handler is loaded as a worker loads it, with the fast path off (the
reference: eager, float32); then a ``CudaRunner`` wraps the same model with the fast path's
settings (autocast, channels_last, one CUDA graph per bucket, pinned staging; on a CPU device the
same staging, padding and chunking under bfloat16 autocast). Batches of sizes that exercise one
bucket, padding (3, 5, 65) and chunking above the largest bucket (130) go through both; every row
must match its reference (relative error and cosine similarity, half-precision tolerances) and come
back in its place. The example models have random weights, whose outputs hardly depend on
their input (every row of a batch alike), so rows coming back in their places is checked apart,
with a probe model (the input's first values, doubled, as float32) run through a ``CudaRunner`` of
the same settings: it must return every row exactly. Then ms per batch of each at a few sizes,
fast path and eager in the same loop, and (GPU) the memory the graphs reserved.

    python -m bench.gpu.fastpath_check [--quick] [--fns resnet50,bert,mobilenet] [--json PATH]

Exits 1 when a row does not match. A GPU step of ``bench/gpu/run.sh``, after MLPerf; on the
CPU (no GPU here) with ``--quick``: MobileNet, sizes up to 17 (two chunks of the largest
bucket), buckets 1..8.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import environ

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "function_templates" / "python3-torch"
INPUTS = {"resnet50": ((3, 224, 224), "float32"), "mobilenet": ((3, 96, 96), "float32"),
          "bert": ((128,), "int64")}
SIZES, QUICK_SIZES = (1, 3, 5, 16, 64, 65, 130), (1, 3, 5, 17)
TIMED, QUICK_TIMED = (1, 16, 64), (1, 8)
MAX_REL_ERR, MIN_COS = 0.05, 0.995


def _inputs(fn: str, n: int, gen) -> Any:
    import torch

    shape, dtype = INPUTS[fn]
    if dtype == "int64":  # token ids past the special ones, some rows padded at the end
        ids = torch.randint(1000, 30000, (n, *shape), generator=gen)
        ids[::2, shape[0] // 2:] = 0
        ids[:, 0] = 101
        return ids
    return torch.rand((n, *shape), generator=gen)


def _probe(x):
    """A model whose every output row is its own input's first values, doubled, as float32."""
    return x.flatten(1)[:, :16].float() * 2


def compare(fast, ref) -> dict[str, float]:
    """Row-wise agreement of two N x ... outputs: the worst relative error and cosine similarity."""
    import torch

    a, b = fast.flatten(1).double(), ref.flatten(1).double()
    rel = float(((a - b).abs().amax(1) / b.abs().amax(1).clamp_min(1e-6)).max())
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=1).min())
    return {"max_rel_err": round(rel, 5), "min_cos": round(cos, 6),
            "ok": rel <= MAX_REL_ERR and cos >= MIN_COS}


def check(fn: str, quick: bool, seconds: float) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(TEMPLATE))
    import fastgshare_fastpath as fp
    import index

    # the handler's own runner, fast path off, is the eager reference; private weights
    with environ({"FASTGSHARE_FAST_PATH": "off", "FASTGSHARE_MODEL": None}):
        module = index.import_handler(ROOT / "functions" / fn, f"check_{fn}")
        module.load()
    ref = module.runner
    device = module.device
    shape, dtype = INPUTS[fn]
    on_gpu = device.startswith("cuda")
    buckets = fp.DEFAULT_BUCKETS if on_gpu and not quick else (1, 2, 4, 8)
    settings = fp.FastPathSettings(enabled=True, buckets=buckets,
                                   dtype="float16" if on_gpu else "bfloat16")
    t0 = time.perf_counter()
    fast = fp.CudaRunner(ref.model, shape, device, settings, getattr(torch, dtype))
    warmed = fast.warm()
    warm_s = time.perf_counter() - t0
    out: dict[str, Any] = {"device": device, "path": fast.path, "buckets": list(buckets),
                           "warm_buckets": warmed, "warm_s": round(warm_s, 2), "sizes": {}}
    if on_gpu:
        out["memory_reserved_mib"] = round(torch.cuda.memory_reserved() / 2**20, 1)
    probe = fp.CudaRunner(_probe, shape, device, settings, getattr(torch, dtype))
    gen = torch.Generator().manual_seed(0)
    for n in (QUICK_SIZES if quick else SIZES):
        x = _inputs(fn, n, gen)
        got = fast(x)
        out["sizes"][n] = compare(got, ref(x))
        placed = probe(x)  # each row its own input's: staging, padding, chunking, replay order
        want = _probe(x.to(device)).cpu()
        out["sizes"][n]["rows_in_place"] = bool(torch.allclose(placed, want, rtol=2e-3, atol=1e-3))
        out["sizes"][n]["ok"] = out["sizes"][n]["ok"] and out["sizes"][n]["rows_in_place"]
        r = out["sizes"][n]
        print(f"  {fn} n={n:3}: max rel err {r['max_rel_err']:.4f}, min cos {r['min_cos']:.5f}, "
              f"rows in place {r['rows_in_place']}: {'ok' if r['ok'] else 'MISMATCH'}", flush=True)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    out["timing"] = {}
    for n in (QUICK_TIMED if quick else TIMED):
        x = _inputs(fn, n, gen)
        per = {}
        for name, runner in (("fast", fast), ("eager_fp32", ref)):
            runner(x)
            sync()
            times = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end or len(times) < 3:
                t = time.perf_counter()
                runner(x)
                sync()
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            per[name] = round(times[len(times) // 2], 3)
        per["speedup"] = round(per["eager_fp32"] / per["fast"], 2)
        out["timing"][n] = per
        print(f"  {fn} batch {n:3}: fast path {per['fast']:8.2f} ms, eager fp32 "
              f"{per['eager_fp32']:8.2f} ms per batch ({per['speedup']:.2f}x)", flush=True)
    out["ok"] = all(v["ok"] for v in out["sizes"].values())
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.fastpath_check",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="MobileNet, small sizes (the CPU check)")
    ap.add_argument("--fns", default=None,
                    help="comma-separated example functions (default resnet50,bert,mobilenet; "
                         "--quick: mobilenet)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="seconds per timed batch size and path (default 1; --quick 0.5)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "gpu" /
                    "fastpath_check.json")
    args = ap.parse_args(argv)
    fns = (args.fns or ("mobilenet" if args.quick else "resnet50,bert,mobilenet")).split(",")
    if unknown := [f for f in fns if f not in INPUTS]:
        ap.error(f"--fns: unknown {unknown}; allowed: {sorted(INPUTS)}")
    seconds = args.seconds or (0.5 if args.quick else 1.0)
    result: dict[str, Any] = {"functions": {}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for fn in fns:  # written after each model: a step cut short keeps what it measured
        result["functions"][fn] = check(fn, args.quick, seconds)
        result["ok"] = all(r["ok"] for r in result["functions"].values())
        args.json.write_text(json.dumps(result, indent=2))
    print("\nfunction   path          rows match   warm s   speedup by batch")
    for fn, r in result["functions"].items():
        speed = ", ".join(f"{n}: {t['speedup']:.2f}x" for n, t in r["timing"].items())
        print(f"{fn:10} {r['path']:13} {'yes' if r['ok'] else 'NO':10} {r['warm_s']:7.2f}   {speed}")
    print(f"wrote {args.json}")
    if not result["ok"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
