"""The worker may run nicer than its sidecar (FASTGSHARE_WORKER_NICE): set between fork and exec."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fast_manager import sidecar_worker


def test_the_worker_starts_with_the_extra_niceness() -> None:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], check=True,
                         capture_output=True, text=True,
                         preexec_fn=sidecar_worker._child_setup((), None, 3))
    assert int(out.stdout) == min(19, os.nice(0) + 3)


@pytest.mark.parametrize(("value", "nice"), [
    (None, sidecar_worker.DEFAULT_WORKER_NICE), ("10", 10), ("99", 19), ("-5", 0),
    ("x", sidecar_worker.DEFAULT_WORKER_NICE)])
def test_worker_nice_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                          nice: int) -> None:
    if value is None:
        monkeypatch.delenv("FASTGSHARE_WORKER_NICE", raising=False)
    else:
        monkeypatch.setenv("FASTGSHARE_WORKER_NICE", value)
    assert sidecar_worker.worker_nice() == nice
