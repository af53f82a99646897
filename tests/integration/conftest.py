"""Integration fixtures: every test fails when a process it started printed a Python warning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.log_warnings import new_warnings

_offsets: dict[Path, int] = {}


@pytest.fixture(autouse=True)
def no_warnings_in_process_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Scan the logs under pytest's temporary root (state directories, replica and platform logs)
    for warning lines written while this test ran."""
    root = tmp_path_factory.getbasetemp()
    new_warnings(root, _offsets)  # what earlier tests left is theirs
    yield
    found = new_warnings(root, _offsets)
    if found:
        pytest.fail("a process started by this test printed a warning:\n" + "\n".join(found[:20]),
                    pytrace=False)
