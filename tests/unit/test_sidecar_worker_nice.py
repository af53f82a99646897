"""The worker may run nicer than its sidecar (FASTGSHARE_WORKER_NICE): set between fork and exec."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fast_manager import sidecar_worker
from fast_manager.settings import sidecar_settings_from_env
from fastgshare.errors import ValidationError


def test_the_worker_starts_with_the_extra_niceness() -> None:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], check=True,
                         capture_output=True, text=True,
                         preexec_fn=sidecar_worker.child_setup((), None, 3))
    assert int(out.stdout) == min(19, os.nice(0) + 3)


@pytest.mark.parametrize(("variable", "value", "nice"), [
    ("FASTGSHARE_WORKER_NICE", None, 0), ("FASTGSHARE_WORKER_NICE", "10", 10),
    ("FASTGSHARE_SIDECAR_NICE", None, 0), ("FASTGSHARE_SIDECAR_NICE", "-5", -5)])
def test_niceness_is_read_with_the_sidecar_settings(variable: str, value: str | None,
                                                    nice: int) -> None:
    env = {} if value is None else {variable: value}
    s = sidecar_settings_from_env(env)
    assert (s.worker_nice if "WORKER" in variable else s.sidecar_nice) == nice


@pytest.mark.parametrize(("variable", "value", "allowed"), [
    ("FASTGSHARE_WORKER_NICE", "99", "0..19"), ("FASTGSHARE_WORKER_NICE", "-5", "0..19"),
    ("FASTGSHARE_WORKER_NICE", "x", "0..19"), ("FASTGSHARE_SIDECAR_NICE", "5", "-20..0"),
    ("FASTGSHARE_SIDECAR_NICE", "-30", "-20..0")])
def test_a_bad_niceness_is_refused_naming_the_variable_and_range(variable: str, value: str,
                                                                  allowed: str) -> None:
    """Read by the sidecar's own parser (settings.py), so a bad value is refused at deploy (the
    provider checks envVars with it) instead of silently replaced by the default."""
    with pytest.raises(ValidationError, match=f"{variable}.*{allowed}"):
        sidecar_settings_from_env({variable: value})
