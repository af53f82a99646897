"""The resource model: what share of a device a function's replica gets, parsed from its labels.

Pure: no I/O, no clock, no environment. The provider validates deploy requests with
``parse_share`` and ``parse_scale``; the backends, sidecars and scheduler consume the frozen
``GpuShare`` it returns. Keys keep the original FaST-GShare spelling so existing stacks deploy
unchanged; annotations override labels of the same key.

Every quantity is bounded to what a device or a machine can hold (``MAX_MEM_BYTES``,
``MAX_SLO_MS``, ``MAX_CPU_CORES``) and parsed exactly (no float overflow): a value outside its
range is refused at deploy with the field and the range, never accepted to crash-loop a replica
later (a cgroup limit that wraps) or to fail with an ``OverflowError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from fastgshare.errors import ValidationError

SM_PARTITION = "fastgshare/gpu_sm_partition"
QUOTA_REQUEST = "fastgshare/gpu_quota_request"
QUOTA_LIMIT = "fastgshare/gpu_quota_limit"
GPU_MEM = "fastgshare/gpu_mem"
SLO_MS = "fastgshare/slo_ms"
MODEL = "fastgshare/model"
SCALE_MIN = "com.openfaas.scale.min"
SCALE_MAX = "com.openfaas.scale.max"

SHARE_KEYS = (SM_PARTITION, QUOTA_REQUEST, QUOTA_LIMIT, GPU_MEM, SLO_MS, MODEL)

DEFAULT_SCALE_MIN = 1
"""Replicas a function gets at deploy when it names no minimum (OpenFaaS default)."""
DEFAULT_SCALE_MAX = 20
"""Upper replica bound when none is named (OpenFaaS default)."""
MAX_SCALE_LIMIT = 1000
"""Largest ``com.openfaas.scale.max`` accepted; a guard against typos, not a capacity claim."""

MAX_MEM_BYTES = 16 * 2**40
"""Largest memory quantity accepted (16 TiB): more than any GPU (H200: 141 GB) or machine this
runs on holds, and far below the 2**63 where a cgroup limit wraps."""
MAX_SLO_MS = 3_600_000.0
"""Longest latency objective accepted (one hour); a guard against typos and unit mistakes."""
MAX_CPU_CORES = 4096
"""Largest CPU quantity accepted in ``limits``/``requests`` (cores)."""
MAX_QUANTITY_CHARS = 64
"""Longest quantity string parsed; longer ones are refused before any arithmetic."""

_MEM_UNITS = {
    "": 1,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40,
}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class GpuShare:
    """One replica's share of its device."""

    sm_pct: int = 100
    """SM share in percent (MPS active thread percentage; CPU: share of the device's cores)."""
    quota_request_frac: float = 1.0
    """Guaranteed fraction of device time per arbiter window."""
    quota_limit_frac: float = 1.0
    """Cap on the fraction of device time per arbiter window."""
    mem_bytes: int | None = None
    """Device memory limit; None means no limit beyond the device's own."""
    slo_ms: float | None = None
    """p99 latency objective for the scheduler; None means static annotations only."""
    model: str | None = None
    """Model identity for weight sharing between replicas."""

    def as_annotations(self) -> dict[str, str]:
        """The share written back in the original spelling (for FunctionStatus and pod specs)."""
        out = {
            SM_PARTITION: str(self.sm_pct),
            QUOTA_REQUEST: _fmt(self.quota_request_frac),
            QUOTA_LIMIT: _fmt(self.quota_limit_frac),
        }
        if self.mem_bytes is not None:
            out[GPU_MEM] = str(self.mem_bytes)
        if self.slo_ms is not None:
            out[SLO_MS] = _fmt(self.slo_ms)
        if self.model is not None:
            out[MODEL] = self.model
        return out


@dataclass(frozen=True)
class ScaleBounds:
    """Replica bounds from ``com.openfaas.scale.min`` / ``.max``."""

    min_replicas: int = DEFAULT_SCALE_MIN
    max_replicas: int = DEFAULT_SCALE_MAX


def _fmt(x: float) -> str:
    return f"{x:g}"


def merged_labels(
    labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None
) -> dict[str, str]:
    """Labels and annotations as one mapping; annotations win on the same key."""
    out = dict(labels or {})
    out.update(annotations or {})
    return out


def parse_mem_bytes(field: str, raw: str) -> int:
    """``"512Mi"`` -> 536870912, at least 1 byte and at most ``MAX_MEM_BYTES``. Raises
    ValidationError naming ``field`` and the range."""
    allowed = (f"a byte count 1..{MAX_MEM_BYTES} ({MAX_MEM_BYTES >> 40} TiB), optionally with a "
               "suffix K/M/G/T or Ki/Mi/Gi/Ti")
    text = str(raw)
    m = _MEM_RE.match(text) if len(text) <= MAX_QUANTITY_CHARS and text.isascii() else None
    if not m:
        raise ValidationError(field, allowed, raw)
    value = Decimal(m.group(1)) * _MEM_UNITS[(m.group(2) or "").lower()]  # exact: no overflow
    if not 1 <= value <= MAX_MEM_BYTES:
        raise ValidationError(field, allowed, raw)
    return int(value)


_QUANTITY_RE = re.compile(
    r"^\+?(\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d{1,3})|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")
_QUANTITY_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18), "Ki": Decimal(2**10), "Mi": Decimal(2**20),
    "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def parse_quantity(field: str, raw: str, kind: str) -> Decimal:
    """A Kubernetes resource quantity (``128Mi``, ``1G``, ``0.5``, ``500m``, ``1e3``) of ``kind``
    ``memory`` (bytes, 1..MAX_MEM_BYTES) or ``cpu`` (cores, 0.001..MAX_CPU_CORES), exactly."""
    lo, hi = (Decimal(1), Decimal(MAX_MEM_BYTES)) if kind == "memory" else (
        Decimal("0.001"), Decimal(MAX_CPU_CORES))
    unit = "bytes" if kind == "memory" else "cores"
    allowed = (f"a Kubernetes quantity such as 128Mi, 1G, 0.5 or 500m, {lo:f}..{hi:f} {unit}")
    text = str(raw)
    m = _QUANTITY_RE.match(text) if len(text) <= MAX_QUANTITY_CHARS and text.isascii() else None
    if not m:
        raise ValidationError(field, allowed, raw)
    value = Decimal(m.group(1))
    if m.group(2) is not None:
        value = value.scaleb(int(m.group(2)))
    value *= _QUANTITY_SUFFIX[m.group(3) or ""]
    if not lo <= value <= hi:
        raise ValidationError(field, allowed, raw)
    return value


def _number(field: str, raw: str, allowed: str) -> float:
    text = str(raw)
    if len(text) > MAX_QUANTITY_CHARS or not text.isascii():
        raise ValidationError(field, allowed, raw)
    try:
        value = float(text)
    except (TypeError, ValueError) as e:
        raise ValidationError(field, allowed, raw) from e
    if value != value or value in (float("inf"), float("-inf")):
        raise ValidationError(field, allowed, raw)
    return value


def parse_share(labels: Mapping[str, str]) -> GpuShare:
    """Validate the gpu-share keys of merged labels; absent keys take the defaults.

    ``quota_request`` defaults to the limit when only the limit is given; the limit defaults to 1.
    """
    sm_allowed = "an integer percentage 1..100"
    sm_pct = 100
    if SM_PARTITION in labels:
        sm = _number(SM_PARTITION, labels[SM_PARTITION], sm_allowed)
        if sm != int(sm) or not 1 <= sm <= 100:
            raise ValidationError(SM_PARTITION, sm_allowed, labels[SM_PARTITION])
        sm_pct = int(sm)

    limit = 1.0
    if QUOTA_LIMIT in labels:
        limit = _number(QUOTA_LIMIT, labels[QUOTA_LIMIT], "a fraction 0 < limit <= 1")
        if not 0 < limit <= 1:
            raise ValidationError(QUOTA_LIMIT, "a fraction 0 < limit <= 1", labels[QUOTA_LIMIT])
    request = limit
    if QUOTA_REQUEST in labels:
        allowed = f"a fraction 0 < request <= quota limit ({_fmt(limit)})"
        request = _number(QUOTA_REQUEST, labels[QUOTA_REQUEST], allowed)
        if not 0 < request <= limit:
            raise ValidationError(QUOTA_REQUEST, allowed, labels[QUOTA_REQUEST])

    mem_bytes = parse_mem_bytes(GPU_MEM, labels[GPU_MEM]) if GPU_MEM in labels else None

    slo_ms = None
    if SLO_MS in labels:
        slo_allowed = f"a latency in milliseconds, 0 < slo <= {MAX_SLO_MS:g}"
        slo_ms = _number(SLO_MS, labels[SLO_MS], slo_allowed)
        if not 0 < slo_ms <= MAX_SLO_MS:
            raise ValidationError(SLO_MS, slo_allowed, labels[SLO_MS])

    model = None
    if MODEL in labels:
        model = str(labels[MODEL]).strip()
        if not model or len(model) > 253 or not model.isprintable():
            raise ValidationError(MODEL, "a non-empty printable model name of at most 253 "
                                  "characters", model)

    return GpuShare(sm_pct, request, limit, mem_bytes, slo_ms, model)


def parse_scale(labels: Mapping[str, str]) -> ScaleBounds:
    """Validate ``com.openfaas.scale.min`` / ``.max``: 0 <= min <= max <= MAX_SCALE_LIMIT."""
    def integer(key: str, default: int, allowed: str) -> int:
        if key not in labels:
            return default
        value = _number(key, labels[key], allowed)
        if value != int(value):
            raise ValidationError(key, allowed, labels[key])
        return int(value)

    hi = integer(SCALE_MAX, DEFAULT_SCALE_MAX, f"an integer 1..{MAX_SCALE_LIMIT}")
    if not 1 <= hi <= MAX_SCALE_LIMIT:
        raise ValidationError(SCALE_MAX, f"an integer 1..{MAX_SCALE_LIMIT}", labels[SCALE_MAX])
    lo_allowed = f"an integer 0..{hi} (at most {SCALE_MAX})"
    lo = integer(SCALE_MIN, min(DEFAULT_SCALE_MIN, hi), lo_allowed)
    if not 0 <= lo <= hi:
        raise ValidationError(SCALE_MIN, lo_allowed, labels[SCALE_MIN])
    return ScaleBounds(lo, hi)


def cores_for_share(sm_pct: int, device_cores: int) -> int:
    """How many of a CPU device's cores an SM share maps to: at least one, at most all."""
    return max(1, min(device_cores, round(sm_pct * device_cores / 100)))
