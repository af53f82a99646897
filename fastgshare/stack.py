"""OpenFaaS stack files (``stack.yml``) -> faas-provider ``FunctionDeployment`` bodies. Pure.

Mirrors what ``faas-cli deploy`` sends, so ``fastgshare deploy`` and faas-cli deploy the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastgshare.errors import ValidationError


@dataclass(frozen=True)
class StackFunction:
    name: str
    lang: str
    handler_dir: Path
    """Absolute path of the function's handler folder."""
    image: str
    body: dict[str, Any]
    """The FunctionDeployment JSON that deploys it."""


def parse_stack(doc: dict[str, Any], base_dir: Path) -> list[StackFunction]:
    """Functions of a parsed stack file; relative handler paths are taken from ``base_dir``."""
    functions = doc.get("functions")
    if not isinstance(functions, dict) or not functions:
        raise ValidationError("functions", "a mapping of function name -> definition")
    out = []
    for name, fn in functions.items():
        if not isinstance(fn, dict):
            raise ValidationError(f"functions.{name}", "a mapping with lang, handler and image")
        for required in ("handler", "image"):
            if not fn.get(required):
                raise ValidationError(f"functions.{name}.{required}", "a non-empty string")
        body: dict[str, Any] = {"service": name, "image": fn["image"]}
        if fn.get("namespace"):
            body["namespace"] = fn["namespace"]
        if fn.get("fprocess"):
            body["envProcess"] = fn["fprocess"]
        if fn.get("environment"):
            body["envVars"] = {str(k): str(v) for k, v in fn["environment"].items()}
        for key in ("labels", "annotations"):
            if fn.get(key):
                body[key] = {str(k): str(v) for k, v in fn[key].items()}
        if fn.get("secrets"):
            body["secrets"] = [str(s) for s in fn["secrets"]]
        if fn.get("constraints"):
            body["constraints"] = [str(c) for c in fn["constraints"]]
        for key in ("limits", "requests"):
            if fn.get(key):
                body[key] = {k: str(v) for k, v in fn[key].items() if k in ("memory", "cpu")}
        if fn.get("readonly_root_filesystem"):
            body["readOnlyRootFilesystem"] = True
        handler = (base_dir / str(fn["handler"])).resolve()
        out.append(StackFunction(name, str(fn.get("lang", "")), handler, str(fn["image"]), body))
    return out
