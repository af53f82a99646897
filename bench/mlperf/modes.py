"""What each sharing mode deploys, and each function's latency bound. Pure: no I/O, no clock.

Modes (DESIGN.md's comparison; the paper's headline is measured against ``time_sharing``):

- ``exclusive``: one function at a time with the whole device (SM 100 %, quota 1);
- ``time_sharing``: all functions at once, each with the whole device (SM 100 %), the arbiter
  alternating them (quota request 1/n, limit 1): one executes at a time (Gemini/KubeShare);
- ``spatio_temporal``: this system: each function in its own partition (SM 100/n %; on the CPU a
  disjoint core set), quota request 1/n, limit 1: partitions execute at once;
- ``unmanaged``: all at once, no arbiter (``FASTGSHARE_ARBITER=off`` in the function's envVars,
  which the sidecar honours) and SM 100 %, so on the CPU every worker is unpinned with all threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Mode(StrEnum):
    EXCLUSIVE = "exclusive"
    TIME_SHARING = "time_sharing"
    SPATIO_TEMPORAL = "spatio_temporal"
    UNMANAGED = "unmanaged"


MODES: tuple[Mode, ...] = (Mode.EXCLUSIVE, Mode.TIME_SHARING, Mode.SPATIO_TEMPORAL, Mode.UNMANAGED)
BASELINE = Mode.TIME_SHARING
"""Every figure is reported as a ratio to this mode, measured in the same run."""
SHORT = {Mode.EXCLUSIVE: "ex", Mode.TIME_SHARING: "ts", Mode.SPATIO_TEMPORAL: "st", Mode.UNMANAGED: "um"}

MLPERF_SERVER_BOUND_MS: Mapping[str, float] = {"resnet50": 15.0, "bert": 130.0}
"""MLPerf Server-scenario p99 bounds (v4.x datacenter rules) for the two models."""
STAND_IN_FOR: Mapping[str, str] = {"mobilenet": "resnet50", "minilm": "bert", "noop": "resnet50"}
"""``--quick`` runs smaller models; on a GPU they take the bound of the model they stand in for."""
DEFAULT_CPU_SLO_FACTOR = 5.0
"""On the CPU, p99 bound = this x the function's single-stream p50 (whole device, measured first)."""


@dataclass(frozen=True)
class Deployment:
    """One function as deployed in one mode: the provider's deploy body, ready to send."""

    function: str
    """The folder under functions/ (and the image's name)."""
    service: str
    body: dict[str, object] = field(hash=False)


def image_of(function: str) -> str:
    return f"fastgshare/{function}:latest"


def service_name(mode: Mode, function: str) -> str:
    return f"{function}-{SHORT[mode]}"


def share_annotations(mode: Mode, n_functions: int) -> dict[str, str]:
    """The gpu-share annotations one function gets in ``mode`` beside ``n_functions`` others."""
    n = max(1, n_functions)
    if mode is Mode.EXCLUSIVE:
        sm, req, lim = 100, 1.0, 1.0
    elif mode is Mode.TIME_SHARING:
        sm, req, lim = 100, 1.0 / n, 1.0
    elif mode is Mode.SPATIO_TEMPORAL:
        sm, req, lim = max(1, 100 // n), 1.0 / n, 1.0
    else:
        sm, req, lim = 100, 1.0, 1.0
    return {"fastgshare/gpu_sm_partition": str(sm), "fastgshare/gpu_quota_request": f"{req:.4g}",
            "fastgshare/gpu_quota_limit": f"{lim:.4g}"}


def deployment(mode: Mode, function: str, n_functions: int, *, window_s: float | None = None,
               slo_ms: float | None = None) -> Deployment:
    """The deploy body of ``function`` in ``mode``: one replica, pinned (min = max = 1). With
    ``slo_ms`` (its bound) the function declares its SLO, and with it the worker batches by
    deadline (``fastgshare/slo_ms``, also as ``FASTGSHARE_SLO_MS`` for a provider that does not
    pass the annotation to the replica yet)."""
    env: dict[str, str] = {}
    if slo_ms is not None:
        env["FASTGSHARE_SLO_MS"] = f"{slo_ms:g}"
    if mode is Mode.UNMANAGED:
        env["FASTGSHARE_ARBITER"] = "off"
    if window_s is not None:
        env["FASTGSHARE_ARBITER_WINDOW_S"] = f"{window_s:g}"
    name = service_name(mode, function)
    annotations = share_annotations(mode, n_functions)
    if slo_ms is not None:
        annotations["fastgshare/slo_ms"] = f"{slo_ms:g}"
    body: dict[str, object] = {
        "service": name, "image": image_of(function), "envVars": env,
        "annotations": annotations,
        "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "1"},
    }
    return Deployment(function, name, body)


def phases(mode: Mode, functions: Sequence[str], *, window_s: float | None = None,
           slo_ms: Mapping[str, float] | None = None) -> list[list[Deployment]]:
    """The groups deployed together: ``exclusive`` one function per phase, the others all at once.
    ``slo_ms``: each function's bound, declared as its SLO (batching by deadline)."""
    n = len(functions)
    slo = slo_ms or {}
    if mode is Mode.EXCLUSIVE:
        return [[deployment(mode, f, 1, window_s=window_s, slo_ms=slo.get(f))] for f in functions]
    return [[deployment(mode, f, n, window_s=window_s, slo_ms=slo.get(f)) for f in functions]]


def bound_ms(function: str, *, gpu: bool, single_stream_p50_ms: float,
             cpu_slo_factor: float = DEFAULT_CPU_SLO_FACTOR) -> tuple[float, str]:
    """A function's p99 bound and where it comes from (stated in the result)."""
    if gpu:
        model = function if function in MLPERF_SERVER_BOUND_MS else STAND_IN_FOR.get(function)
        if model in MLPERF_SERVER_BOUND_MS:
            return MLPERF_SERVER_BOUND_MS[model], f"MLPerf Server bound of {model}"
    if not single_stream_p50_ms > 0:
        raise ValueError(f"{function}: single-stream p50 must be > 0, got {single_stream_p50_ms}")
    return (round(cpu_slo_factor * single_stream_p50_ms, 2),
            f"{cpu_slo_factor:g} x single-stream p50 ({single_stream_p50_ms:.1f} ms) with the whole device")


def mix_rates(load: float, exclusive_rps: Mapping[str, float]) -> dict[str, float]:
    """Per-function rates for a normalised ``load`` (devices' worth of work): each function gets an
    equal share of it, in units of its own exclusive sustained rate."""
    n = len(exclusive_rps)
    return {f: load * r / n for f, r in exclusive_rps.items()}


def ramp_rates(peak_rps: float, duration_s: float, step_s: float = 1.0) -> list[float]:
    """The original's ramp (30 -> 110 -> 20 RPS over about 3 minutes), scaled to ``peak_rps`` and
    ``duration_s``: up for 40 % of the time, a plateau for 20 %, down for the last 40 %."""
    lo, hi, end = 30.0 / 110.0 * peak_rps, peak_rps, 20.0 / 110.0 * peak_rps
    n = max(1, int(round(duration_s / step_s)))
    out = []
    for i in range(n):
        x = (i + 0.5) / n
        if x < 0.4:
            r = lo + (hi - lo) * x / 0.4
        elif x < 0.6:
            r = hi
        else:
            r = hi + (end - hi) * (x - 0.6) / 0.4
        out.append(round(r, 4))
    return out
