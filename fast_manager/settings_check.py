"""Deploy-time check of the sidecar settings a function gives through its ``envVars``.

A function may tune its sidecar (``FASTGSHARE_QUEUE_MAX``, ``FASTGSHARE_EXEC_TIMEOUT_S``, ...) in
its environment. A value the sidecar would refuse at start makes every replica exit at once and
the function crash-loop; so the provider runs the sidecar's own parser
(``fast_manager.settings.sidecar_settings_from_env``) over those variables when the function is
deployed, and refuses it with 400 naming the variable. Beyond that parser, values that parse but
no replica could live with (an infinite timeout, a queue of a billion) are bounded here.

Pure: the variables are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fast_manager.settings import sidecar_settings_from_env
from fastgshare.errors import ValidationError

PREFIX = "FASTGSHARE_"
"""Only these variables configure the sidecar; the rest are the function's own."""
MAX_TIMEOUT_S = 86_400.0
"""Longest queue, execution or start timeout accepted (a day)."""
MAX_QUEUE = 100_000
"""Most requests a replica may queue."""
MAX_BODY_BYTES = 2**32
"""Largest request body a sidecar may be told to accept (4 GiB)."""
MAX_BATCH = 1024
"""Largest ``FASTGSHARE_BATCH`` (the worker's batch size)."""
MAX_ARBITER_S = 3600.0
"""Longest arbiter window or token, in seconds."""


def check_function_env(env_vars: Mapping[str, str]) -> None:
    """Raise ValidationError (naming the variable and its range) when a ``FASTGSHARE_*`` variable
    in ``env_vars`` would keep the function's sidecar from starting."""
    given = {k: v for k, v in env_vars.items() if k.startswith(PREFIX)}
    if not given:
        return
    s = sidecar_settings_from_env(given)
    for name, value in (("FASTGSHARE_QUEUE_TIMEOUT_S", s.queue_timeout_s),
                        ("FASTGSHARE_EXEC_TIMEOUT_S", s.exec_timeout_s),
                        ("FASTGSHARE_READY_TIMEOUT_S", s.ready_timeout_s)):
        _bounded(given, name, value, f"seconds, 0 < t <= {MAX_TIMEOUT_S:g}", MAX_TIMEOUT_S)
    _bounded(given, "FASTGSHARE_QUEUE_MAX", s.queue_max, f"an integer 0..{MAX_QUEUE}", MAX_QUEUE)
    _bounded(given, "FASTGSHARE_MAX_BODY_BYTES", s.max_body_bytes, f"an integer 1..{MAX_BODY_BYTES}",
             MAX_BODY_BYTES)
    for name, value_s in (("FASTGSHARE_ARBITER_WINDOW_S", s.arbiter_window_s),
                          ("FASTGSHARE_ARBITER_MIN_TOKEN_MS",
                           None if s.arbiter_min_token_ms is None else s.arbiter_min_token_ms / 1000),
                          ("FASTGSHARE_ARBITER_MAX_TOKEN_MS",
                           None if s.arbiter_max_token_ms is None else s.arbiter_max_token_ms / 1000)):
        if value_s is not None:
            _bounded(given, name, value_s, f"a duration > 0 of at most {MAX_ARBITER_S:g} s",
                     MAX_ARBITER_S)
    if given.get("FASTGSHARE_BATCH", "").strip():
        _integer(given, "FASTGSHARE_BATCH", 0, MAX_BATCH)
    if given.get("FASTGSHARE_SLO_MS", "").strip():
        raw = given["FASTGSHARE_SLO_MS"].strip()
        allowed = "a latency in milliseconds, 0 < slo <= 3600000"
        try:
            slo_ms = float(raw)
        except ValueError as e:
            raise ValidationError("FASTGSHARE_SLO_MS", allowed, raw) from e
        if not 0 < slo_ms <= 3_600_000:
            raise ValidationError("FASTGSHARE_SLO_MS", allowed, raw)


def _bounded(given: Mapping[str, str], name: str, value: float, allowed: str, hi: float) -> None:
    finite = isinstance(value, int) or math.isfinite(value)  # a huge int is finite, not a float
    if name in given and not (finite and value <= hi):
        raise ValidationError(name, allowed, given[name])


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
