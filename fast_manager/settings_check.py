"""Deploy-time check of the sidecar settings a function gives through its ``envVars``.

A function may tune its sidecar (``FASTGSHARE_QUEUE_MAX``, ``FASTGSHARE_EXEC_TIMEOUT_S``, ...) in
its environment. A value the sidecar would refuse at start makes every replica exit at once and
the function crash-loop; so the provider runs the sidecar's own parser
(``fast_manager.settings.sidecar_settings_from_env``) over those variables when the function is
deployed, and refuses it with 400 naming the variable. That parser bounds every value it reads
(no infinite timeout, no queue of a billion); the worker's batch variables, which the sidecar reads
leniently elsewhere, are checked here.

Pure: the variables are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping

from fast_manager.settings import sidecar_settings_from_env
from fastgshare.errors import ValidationError

PREFIX = "FASTGSHARE_"
"""Only these variables configure the sidecar; the rest are the function's own."""
MAX_BATCH = 1024
"""Largest ``FASTGSHARE_BATCH`` (the worker's batch size)."""
MAX_SLO_MS = 3_600_000.0
"""Largest ``FASTGSHARE_SLO_MS`` (as ``fastgshare/slo_ms``)."""


def check_function_env(env_vars: Mapping[str, str]) -> None:
    """Raise ValidationError (naming the variable and its range) when a ``FASTGSHARE_*`` variable
    in ``env_vars`` would keep the function's sidecar from starting."""
    given = {k: v for k, v in env_vars.items() if k.startswith(PREFIX)}
    if not given:
        return
    sidecar_settings_from_env(given)  # bounds every value it reads (timeouts, queue, body, ...)
    if given.get("FASTGSHARE_BATCH", "").strip():
        _integer(given, "FASTGSHARE_BATCH", 0, MAX_BATCH)
    if given.get("FASTGSHARE_SLO_MS", "").strip():
        raw = given["FASTGSHARE_SLO_MS"].strip()
        allowed = f"a latency in milliseconds, 0 < slo <= {MAX_SLO_MS:g}"
        try:
            slo_ms = float(raw)
        except ValueError as e:
            raise ValidationError("FASTGSHARE_SLO_MS", allowed, raw) from e
        if not 0 < slo_ms <= MAX_SLO_MS:
            raise ValidationError("FASTGSHARE_SLO_MS", allowed, raw)


def _integer(given: Mapping[str, str], name: str, lo: int, hi: int) -> int:
    raw = given[name].strip()
    allowed = f"an integer {lo}..{hi}"
    if len(raw) > 20:
        raise ValidationError(name, allowed, raw)
    try:
        value = int(raw)
    except ValueError as e:
        raise ValidationError(name, allowed, raw) from e
    if not lo <= value <= hi:
        raise ValidationError(name, allowed, raw)
    return value
