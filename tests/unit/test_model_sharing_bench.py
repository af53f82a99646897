"""bench.model_sharing's accounting: code files apart from the rest, and the fitted extra memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.common import pss_bytes
from bench.model_sharing import fitted_extra, pss_code_bytes, slope

MiB = 2**20


def test_code_pss_is_part_of_the_pss_and_excludes_the_store(tmp_path: Path) -> None:
    code = pss_code_bytes(os.getpid(), tmp_path)
    assert 0 < code < pss_bytes(os.getpid())  # the interpreter and its libraries are mapped files
    mapped = tmp_path / "w.safetensors"
    mapped.write_bytes(b"\1" * (4 * MiB))
    import mmap

    with open(mapped, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert sum(mm[i] for i in range(0, len(mm), 4096)) == 1024  # resident now
        assert pss_code_bytes(os.getpid(), tmp_path) - code < MiB  # the store's file is not code
        assert pss_code_bytes(os.getpid(), tmp_path / "elsewhere") - code >= 3 * MiB


def test_fitted_extra_model_memory() -> None:
    w = 400 * MiB
    rows = []
    for n in range(1, 5):
        noise = (-1) ** n * MiB  # code-file PSS wobbles; it is taken out before the fit
        rows.append({"n": n,
                     "pss_total_bytes_shared": w + n * 210 * MiB + 50 * MiB + noise,
                     "pss_code_total_bytes_shared": 50 * MiB + noise,
                     "pss_total_bytes_unshared": n * (w + 200 * MiB) + 50 * MiB,
                     "pss_code_total_bytes_unshared": 50 * MiB})
    fit = fitted_extra({"weights_bytes": w, "replicas": rows})
    assert (fit["n_from"], fit["n_to"]) == (2, 4)
    assert fit["extra_bytes_shared"] == 210 * MiB and fit["extra_bytes_unshared"] == 600 * MiB
    assert fit["extra_model_frac_of_weights"] == pytest.approx(10 / 400)
    assert fitted_extra({"weights_bytes": w, "replicas": rows[:2]}) is None  # n=2 alone: no fit
    assert slope([1, 2, 3], [5, 7, 9]) == pytest.approx(2)
