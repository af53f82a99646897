"""FunctionSpec <-> plain JSON-able dicts, for storing desired state (Redis in local mode).

Pure. The stored form is versioned so a later layout can still read records written today.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastgshare.resources import GpuShare, ScaleBounds
from fastgshare.specs import FunctionSpec

SPEC_VERSION = 1


def spec_to_dict(spec: FunctionSpec) -> dict[str, Any]:
    out = asdict(spec)
    out["env_vars"] = dict(spec.env_vars)
    out["labels"] = dict(spec.labels)
    out["annotations"] = dict(spec.annotations)
    out["limits"] = dict(spec.limits)
    out["requests"] = dict(spec.requests)
    out["constraints"] = list(spec.constraints)
    out["secrets"] = list(spec.secrets)
    out["v"] = SPEC_VERSION
    return out


def spec_from_dict(raw: dict[str, Any]) -> FunctionSpec:
    data = dict(raw)
    data.pop("v", None)
    data["share"] = GpuShare(**data.get("share", {}))
    data["scale"] = ScaleBounds(**data.get("scale", {}))
    data["constraints"] = tuple(data.get("constraints", ()))
    data["secrets"] = tuple(data.get("secrets", ()))
    return FunctionSpec(**data)
