"""``build_on_meta`` skips weight initialisation: a shared replica builds its module for free.

``Tensor.normal_`` on a meta tensor runs a Python reference that imports ``torch._dynamo`` and
sympy (~70 MiB private memory and seconds per replica); the runtime's build must not pay that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "function_templates" / "python3-torch"
sys.path.insert(0, str(TEMPLATE))
import fastgshare_runtime as fr  # noqa: E402  (the template's module, a script folder)


def build() -> torch.nn.Module:
    """A module that meets every kind of initialisation: module defaults (Embedding's normal_,
    Linear's kaiming_uniform_, LayerNorm's ones_), nn.init functions with and without a
    torch-function hook, ``eye_`` (``torch.eye(out=...)``) and the ``.data.normal_`` idiom."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Embedding(50, 8, padding_idx=0), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8),
        torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), torch.nn.GRU(8, 8),
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(8, 8))
    for init in (torch.nn.init.trunc_normal_, torch.nn.init.xavier_normal_,
                 torch.nn.init.kaiming_normal_, torch.nn.init.orthogonal_, torch.nn.init.eye_):
        init(m[1].weight)
    torch.nn.init.dirac_(m[5].weight)
    m[7].weight.data.normal_(0.0, 0.02)
    m[7].bias.data.zero_()
    m.register_buffer("steps", torch.arange(4).expand((1, -1)), persistent=False)
    m.register_buffer("causal", torch.tril(torch.ones(4, 4, dtype=torch.bool)), persistent=False)
    m.register_buffer("freqs", torch.linspace(0, 1, 5), persistent=False)
    return m


def test_meta_build_has_the_cpu_build_layout() -> None:
    meta, cpu = fr.build_on_meta(build), build()
    got, want = fr.module_tensors(meta), fr.module_tensors(cpu)
    assert list(got) == list(want)
    for name, t in got.items():
        assert t.is_meta, name
        assert (t.shape, t.dtype, t.stride()) == (want[name].shape, want[name].dtype,
                                                  want[name].stride()), name
    # The mode ends with the build: initialisation outside it runs as usual.
    w = torch.empty(3, 3)
    torch.nn.init.normal_(w)
    assert float(w.abs().sum()) > 0
    with torch.device("meta"):
        assert torch.nn.Linear(2, 2).weight.is_meta


def test_meta_build_imports_neither_dynamo_nor_sympy() -> None:
    code = (f"import sys; sys.path[:0] = [{str(TEMPLATE)!r}, {str(REPO)!r}, "
            f"{str(Path(__file__).parent)!r}]\n"
            "import test_model_build_meta as t\n"
            "before = {m for m in ('torch._dynamo', 'sympy') if m in sys.modules}\n"
            "t.fr.build_on_meta(t.build)\n"
            "print(before, sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "set() []", out.stdout + out.stderr
