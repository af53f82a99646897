"""The GPU fast path's staging, padding, chunking and locking (``CudaRunner``) run on a CPU device:
the same code as on a GPU without the stream, pinning and CUDA graphs (those need a GPU: bench/gpu).
Each test is a bug the runner had or could have on a GPU."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"))
import fastgshare_fastpath as fp  # noqa: E402


def _runner(model, shape, buckets=(1, 2, 4), dtype=torch.float32, env=None) -> fp.CudaRunner:
    settings = fp.FastPathSettings(enabled=True, buckets=buckets, dtype="bfloat16")
    runner = fp.CudaRunner(model, shape, "cpu", settings, dtype)
    assert runner.path == "staged-cpu"
    return runner


class Scale(torch.nn.Module):
    """Row i of the input, times 2, as float32 (a model whose output is already float32 under
    autocast, like one ending in softmax)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * 2).float()


def test_every_row_comes_back_in_order_and_owns_its_memory() -> None:
    runner = _runner(Scale(), (3,), buckets=(1, 2))
    x = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    out = runner(x)  # 5 rows over buckets of at most 2: chunks of 2, 2 and 1
    assert torch.equal(out, x * 2)
    # an answer kept past the next call is not the staging buffer the next call fills
    first = runner(torch.ones(2, 3))
    runner(torch.full((2, 3), 7.0))
    assert torch.equal(first, torch.full((2, 3), 2.0))


def test_padding_rows_are_valid_inputs() -> None:
    """A lone token sequence in a bucket of 4: the three padding rows go through the embedding
    too, so they must hold valid ids (zeros), not whatever the buffer held."""
    emb = torch.nn.Embedding(10, 4)
    runner = _runner(emb, (6,), buckets=(4,), dtype=torch.int64)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = runner(ids)
    assert out.shape == (1, 6, 4)
    assert torch.allclose(out, emb(ids).to(torch.bfloat16).float(), atol=1e-2)
    assert torch.equal(runner._slots[4]["staging"][1:], torch.zeros(3, 6, dtype=torch.int64))


def test_a_wrong_shape_is_refused_not_broadcast() -> None:
    runner = _runner(Scale(), (3, 4, 4))
    with pytest.raises(ValueError, match=r"N x 3 x 4 x 4, got \[2, 1, 4, 4\]"):
        runner(torch.ones(2, 1, 4, 4))  # one channel would broadcast into the 3-channel buffer


def test_concurrent_calls_get_their_own_answers() -> None:
    runner = _runner(Scale(), (64,), buckets=(1, 2, 4))
    errors: list[str] = []

    def caller(k: int) -> None:
        for _ in range(200):
            x = torch.full((3, 64), float(k))
            if not torch.equal(runner(x), x * 2):
                errors.append(f"caller {k} got another batch's answer")
                return

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_image_models_see_channels_last_inputs_and_match_eager() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 5)).eval()
    x = torch.rand(3, 3, 8, 8)
    with torch.inference_mode():
        want = model(x)
    seen = []
    model[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    runner = _runner(model, (3, 8, 8))
    assert torch.allclose(runner(x), want, atol=0.05)  # bfloat16 autocast
    assert seen and all(seen)


def test_warm_captures_the_buckets_of_the_expected_batch_largest_first(monkeypatch) -> None:
    runner = _runner(Scale(), (3,), buckets=(1, 2, 4, 8, 16, 32, 64))
    order: list[int] = []
    real = runner._slot

    def slot(b: int):
        order.append(b)
        if b == 8:
            raise torch.OutOfMemoryError("no room for bucket 8")
        return real(b)

    monkeypatch.setattr(runner, "_slot", slot)
    assert runner.warm(5) == [4, 2, 1]  # 8 did not fit: left to its first use, the rest done
    assert order == [8, 4, 2, 1]


@pytest.mark.parametrize(("env", "batch"), [
    ({}, 16), ({"FASTGSHARE_BATCH": "32"}, 32), ({"FASTGSHARE_BATCH": "1"}, 1),
    ({"FASTGSHARE_BATCH": "x"}, 16),
])
def test_default_warm_batch(env, batch) -> None:
    assert fp.default_warm_batch(env) == batch
