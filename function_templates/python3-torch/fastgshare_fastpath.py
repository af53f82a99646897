"""The GPU fast path for python3-torch handlers: run a model the way a GPU wants it.

Opt-in per function: ``FASTGSHARE_FAST_PATH=on`` in the function's environment (the template
option; in a stack file, ``environment: {FASTGSHARE_FAST_PATH: "on"}``), or a handler that opts in
itself (``fast_path(..., default_on=True)``, as the resnet50, bert and mobilenet examples do;
``FASTGSHARE_FAST_PATH=off`` then opts out). A handler wraps its model::

    runner = fast_path(model, sample_shape=(3, 224, 224), device=device)
    logits = runner(batch)          # batch: an N x 3 x 224 x 224 CPU tensor -> N x ... on the CPU

and gets, when the option is on and the device is a GPU:

- half precision through ``torch.autocast`` (the weights stay as they are, so a shared copy in the
  model store stays shared; the casts are captured in the graph);
- ``channels_last`` inputs for 4-D (image) models, ``torch.backends.cudnn.benchmark``;
- one CUDA graph per batch-size bucket (``FASTGSHARE_FAST_PATH_BUCKETS``, default 1,2,4,8,16,32,64):
  a batch is padded up to its bucket (zero rows), the graph replayed, the padding's outputs dropped;
  batches above the largest bucket run in chunks; ``FASTGSHARE_FAST_PATH_GRAPHS=off`` runs eagerly
  instead. ``warm()`` (in the handler's ``load()``) captures the buckets up to the worker's batch
  (``FASTGSHARE_BATCH``, else the batcher's default B_max), largest first, all into one memory
  pool; a larger bucket is captured on its first use, and one that runs out of device memory at
  load is left to its first use. Autocast runs without its weight cache (no half copy of the
  weights kept per graph);
- pinned host staging buffers per bucket and non-blocking copies both ways, then one stream
  synchronisation per batch (no CUDA events per request); calls are serialised by a lock.

On the CPU (and when the option is off) it runs the model eagerly under ``inference_mode`` with the
batch as given: padding to buckets buys nothing without graphs. With the option on, a 4-D input's
memory format (channels_last or plain) is measured per batch bucket on the first calls and the
faster one kept (``EagerRunner``; ``FASTGSHARE_FAST_PATH_CPU_FORMAT`` fixes it).

What runs on the CPU here: option parsing, bucket choice, path selection, the format choice,
chunking, and ``CudaRunner`` itself on a CPU device (staging, zero padding, chunking, the lock,
``warm``; ``tests/unit/test_fastpath_staged.py``). The stream, pinned memory,
autocast to float16 and the CUDA graphs are **untested on a GPU** (no GPU on the development
machine); ``bench/gpu`` exercises them when one is lent.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from fastgshare_batch_policy import DEFAULT_MAX_BATCH

ENV_FAST_PATH = "FASTGSHARE_FAST_PATH"
ENV_BUCKETS = "FASTGSHARE_FAST_PATH_BUCKETS"
ENV_GRAPHS = "FASTGSHARE_FAST_PATH_GRAPHS"
ENV_DTYPE = "FASTGSHARE_FAST_PATH_DTYPE"
ENV_CPU_FORMAT = "FASTGSHARE_FAST_PATH_CPU_FORMAT"
CPU_FORMATS = ("auto", "channels_last", "contiguous")
DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
GRAPH_WARMUP_ITERS = 3
"""Eager runs on a side stream before a graph is captured (cuDNN picks its algorithms)."""


@dataclass(frozen=True)
class FastPathSettings:
    """The fast path's options, read from the function's environment in ``settings_from_env``."""

    enabled: bool = False
    """``FASTGSHARE_FAST_PATH=on``: the function opted in."""
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    """Batch sizes that get their own CUDA graph and staging buffers (ascending)."""
    graphs: bool = True
    """Capture CUDA graphs (``FASTGSHARE_FAST_PATH_GRAPHS=off``: eager on the GPU)."""
    dtype: str = "float16"
    """Autocast precision on the GPU: float16 or bfloat16."""
    cpu_format: str = "auto"
    """On a CPU, image inputs' memory format: ``auto`` (measured per batch bucket),
    ``channels_last`` or ``contiguous`` (``FASTGSHARE_FAST_PATH_CPU_FORMAT``)."""


def shared_weights(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the replica maps its weights from the model store (then they are not converted)."""
    off = env.get("FASTGSHARE_MODEL_SHARING", "on").strip().lower() in ("off", "0", "false", "no")
    return bool(env.get("FASTGSHARE_MODEL", "").strip()) and not off


def _on(raw: str | None, default: bool) -> bool:
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() in ("on", "1", "true", "yes")


def settings_from_env(env: Mapping[str, str] = os.environ,
                      default_on: bool = False) -> FastPathSettings:
    """The options from ``env``; ``default_on``: the handler opts in unless the variable says off."""
    buckets = DEFAULT_BUCKETS
    raw = env.get(ENV_BUCKETS, "")
    if raw.strip():
        try:
            parsed = sorted({int(b) for b in raw.split(",") if b.strip()})
            if parsed and parsed[0] >= 1:
                buckets = tuple(parsed)
        except ValueError:
            pass
    dtype = env.get(ENV_DTYPE, "float16").strip().lower()
    cpu_format = env.get(ENV_CPU_FORMAT, "auto").strip().lower()
    return FastPathSettings(enabled=_on(env.get(ENV_FAST_PATH), default_on), buckets=buckets,
                            graphs=_on(env.get(ENV_GRAPHS), True),
                            dtype=dtype if dtype in ("float16", "bfloat16") else "float16",
                            cpu_format=cpu_format if cpu_format in CPU_FORMATS else "auto")


def bucket_for(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size`` rows (the largest bucket if none does)."""
    for b in buckets:
        if b >= size:
            return b
    return buckets[-1]


def chunks(size: int, largest: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges of at most ``largest`` rows covering ``size`` rows."""
    return [(i, min(size, i + largest)) for i in range(0, size, largest)]


def path_name(settings: FastPathSettings, device: str) -> str:
    """Which path a model runs: ``eager`` (option off), ``cpu`` (on, CPU device),
    ``cuda-graphs`` or ``cuda-eager``."""
    if not settings.enabled:
        return "eager"
    if not device.startswith("cuda"):
        return "cpu"
    return "cuda-graphs" if settings.graphs else "cuda-eager"


class EagerRunner:
    """The model as written, batch as given, under ``inference_mode``. With ``channels_last`` (the
    fast path on a CPU) a 4-D input's memory format is chosen per batch-size bucket by measuring:
    the first calls of a bucket alternate channels_last and plain (each format's first call is not
    counted: it builds oneDNN's primitives), then the faster of the two stays. On this project's
    CPU channels_last made MobileNet 1.3-1.5x faster and ResNet-50 at batch 1 1.26-1.47x slower
    (its weights stay as they are: shared weights cannot be converted), so no one format is
    right. ``FASTGSHARE_FAST_PATH_CPU_FORMAT=channels_last`` or ``contiguous`` fixes it."""

    TIMED_TRIALS = 2
    """Counted calls per format before a bucket's format is chosen (the faster best of them)."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], device: str,
                 channels_last: bool = False, cpu_format: str = "auto") -> None:
        self.model = model
        self.device = device
        self.channels_last = channels_last
        self.cpu_format = cpu_format if channels_last else "contiguous"
        self.path = "cpu" if channels_last else "eager"
        self.lock = threading.Lock()
        self._trials: dict[int, dict[bool, list[float]]] = {}
        self._chosen: dict[int, bool] = {}

    def _format_for(self, bucket: int) -> bool | None:
        """True: channels_last, False: plain, None: still measuring (the caller times it)."""
        if self.cpu_format != "auto":
            return self.cpu_format == "channels_last"
        return self._chosen.get(bucket)

    def _next_trial(self, bucket: int) -> bool:
        trials = self._trials.setdefault(bucket, {True: [], False: []})
        return len(trials[True]) <= len(trials[False])  # channels_last first, then alternate

    def _record(self, bucket: int, cl: bool, ms: float) -> None:
        trials = self._trials[bucket]
        trials[cl].append(ms)
        if all(len(v) > self.TIMED_TRIALS for v in trials.values()):  # + the uncounted first
            best = {f: min(v[1:]) for f, v in trials.items()}
            self._chosen[bucket] = best[True] <= best[False]
            print(f"fastgshare fast path (cpu): batches of {bucket}: "
                  f"{'channels_last' if self._chosen[bucket] else 'contiguous'} inputs "
                  f"(best {best[True]:.2f} ms channels_last, {best[False]:.2f} ms contiguous)",
                  file=sys.stderr, flush=True)

    def formats(self) -> dict[int, str]:
        """The format chosen per bucket so far (``measuring`` while it is not)."""
        return {b: "measuring" if b not in self._chosen else
                ("channels_last" if self._chosen[b] else "contiguous") for b in self._trials}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device)
            if not (self.channels_last and x.dim() == 4):
                return self.model(x).float().cpu()
            bucket = bucket_for(x.shape[0], DEFAULT_BUCKETS)
            cl = self._format_for(bucket)
            if cl is not None:  # chosen (or fixed): nothing to measure, no lock
                return self._run(x, cl)
            with self.lock:  # measuring: one timed call at a time
                cl = self._format_for(bucket)
                if cl is not None:
                    return self._run(x, cl)
                cl = self._next_trial(bucket)
                t0 = time.perf_counter()
                out = self._run(x, cl)
                self._record(bucket, cl, (time.perf_counter() - t0) * 1000.0)
                return out

    def _run(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float().cpu()


class CudaRunner:
    """Autocast, channels_last, a CUDA graph and pinned staging per bucket. Untested on a GPU.

    One call at a time (a lock: a bucket's buffers and graph serve one batch at a time). Every
    graph allocates from one shared pool, captured largest bucket first (as vLLM does): safe because
    replays never overlap and each replay's output is copied to the host before the next one runs.
    On a CPU device (tests) the same staging, padding and chunking run without streams, pinning or
    graphs, under CPU autocast.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], sample_shape: tuple[int, ...],
                 device: str, settings: FastPathSettings, input_dtype: torch.dtype) -> None:
        self.model = model
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.settings = settings
        self.sample_shape = tuple(sample_shape)
        self.input_dtype = input_dtype
        self.amp_dtype = torch.bfloat16 if settings.dtype == "bfloat16" else torch.float16
        self.channels_last = len(self.sample_shape) == 3
        if self.channels_last and isinstance(model, torch.nn.Module) and not shared_weights():
            # NHWC weights too (a private copy: skipped when the weights are the store's copy)
            model.to(memory_format=torch.channels_last)
        self.graphs = settings.graphs and self.on_gpu
        self.path = ("cuda-graphs" if self.graphs else "cuda-eager") if self.on_gpu else "staged-cpu"
        self.lock = threading.Lock()
        self._slots: dict[int, dict[str, Any]] = {}
        self.stream: Any = None
        self.pool: Any = None
        if self.on_gpu:
            torch.backends.cudnn.benchmark = True
            self.stream = torch.cuda.Stream(self.device)
            # the side stream starts after the default stream's work (the weights' conversion)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            self.pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # inside the graph: the input buffers stay plain NCHW copies
            x = x.contiguous(memory_format=torch.channels_last)
        # No autocast cache: it would keep a half copy of every weight alive per graph.
        with torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False):
            return self.model(x)

    def _on_stream(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self.stream) if self.on_gpu else contextlib.nullcontext()

    def _sync(self) -> None:
        if self.on_gpu:
            self.stream.synchronize()

    def _slot(self, bucket: int) -> dict[str, Any]:
        slot = self._slots.get(bucket)
        if slot is not None:
            return slot
        shape = (bucket, *self.sample_shape)
        # Zeros: a bucket's padding rows are copied to the device too, and garbage there (a token
        # id out of an embedding's range) would be a device-side assert, fatal to the context.
        staging = torch.zeros(shape, dtype=self.input_dtype, pin_memory=self.on_gpu)
        static_in = torch.zeros(shape, dtype=self.input_dtype, device=self.device)
        slot = {"staging": staging, "in": static_in}
        if self.on_gpu:  # the zeros above are queued on the default stream; the side stream waits
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), self._on_stream():
            for _ in range(GRAPH_WARMUP_ITERS if self.on_gpu else 1):  # cuDNN autotuning
                out = self._forward(static_in)
            self._sync()
            if self.graphs:
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                        out = self._forward(static_in)
                    slot["graph"] = graph
                except Exception as e:  # a model graphs cannot capture still runs, eagerly
                    self.graphs = False
                    self.path = "cuda-eager"
                    print(f"fastgshare fast path: CUDA graph capture failed ({type(e).__name__}: "
                          f"{e}); running eagerly", file=sys.stderr, flush=True)
                    torch.cuda.synchronize()
                    out = self._forward(static_in)
            slot["out"] = out
            slot["host_out"] = torch.empty(tuple(out.shape), dtype=out.dtype,
                                           pin_memory=self.on_gpu)
        self._slots[bucket] = slot
        return slot

    def warm(self, max_batch: int | None = None) -> list[int]:
        """Capture the graphs of the buckets a batch of up to ``max_batch`` rows uses (default:
        ``FASTGSHARE_BATCH`` or the batcher's default B_max), largest first, off the first
        requests; larger buckets are captured on first use. A bucket that runs out of device
        memory here is left to its first use. Returns the buckets captured."""
        limit = max_batch or default_warm_batch()
        wanted = [b for b in self.settings.buckets if b < limit]
        wanted.append(bucket_for(limit, self.settings.buckets))
        done = []
        with self.lock:
            for b in sorted(set(wanted), reverse=True):
                try:
                    self._slot(b)
                    done.append(b)
                except torch.OutOfMemoryError as e:
                    print(f"fastgshare fast path: bucket {b} did not fit ({e}); left to its "
                          f"first use", file=sys.stderr, flush=True)
                    if self.on_gpu:
                        torch.cuda.empty_cache()
        return done

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        slot = self._slot(bucket_for(n, self.settings.buckets))
        staging, static_in = slot["staging"], slot["in"]
        staging[:n].copy_(x)  # the request's bytes land in pinned memory once
        try:
            with torch.inference_mode(), self._on_stream():
                static_in.copy_(staging, non_blocking=True)
                graph = slot.get("graph")
                if graph is not None:
                    graph.replay()
                    out = slot["out"]
                else:
                    out = self._forward(static_in)
                host = slot["host_out"]
                host.copy_(out, non_blocking=True)
        finally:  # one sync per batch, also after an error: the staging buffer is free again
            self._sync()
        # A copy of its own whatever the model's output dtype: the buffer serves the next batch.
        return host[:n].to(torch.float32, copy=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:  # a copy into the staging buffer would
            raise ValueError(                         # broadcast it instead of failing
                f"input must be N x {' x '.join(map(str, self.sample_shape))}, got "
                f"{list(x.shape)}")
        largest = self.settings.buckets[-1]
        with self.lock:
            if x.shape[0] <= largest:
                return self._run(x)
            return torch.cat([self._run(x[a:b]) for a, b in chunks(x.shape[0], largest)])


def default_warm_batch(env: Mapping[str, str] = os.environ) -> int:
    """The largest batch this worker is expected to form: ``FASTGSHARE_BATCH`` when set, else the
    batcher's default B_max (a runtime raise above it captures its bucket on first use)."""
    try:
        size = int(env.get("FASTGSHARE_BATCH", "") or 0)
    except ValueError:
        size = 0
    return size if size >= 1 else DEFAULT_MAX_BATCH


def fast_path(model: Callable[[torch.Tensor], torch.Tensor], sample_shape: tuple[int, ...],
              device: str, settings: FastPathSettings | None = None,
              input_dtype: torch.dtype = torch.float32,
              default_on: bool = False) -> EagerRunner | CudaRunner:
    """A runner for ``model`` (N x ``sample_shape`` in, N x ... float32 out on the CPU) on the path
    ``settings`` (default: from the environment; ``default_on``: a handler that opts in unless
    ``FASTGSHARE_FAST_PATH=off``) choose for ``device``."""
    settings = settings or settings_from_env(default_on=default_on)
    path = path_name(settings, device)
    if path.startswith("cuda"):
        return CudaRunner(model, sample_shape, device, settings, input_dtype)
    return EagerRunner(model, device, channels_last=path == "cpu" and len(sample_shape) == 3,
                       cpu_format=settings.cpu_format)
