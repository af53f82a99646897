"""The template's input decoding (fastgshare_inputs) and fast-path selection (fastgshare_fastpath),
with real torch on the CPU. The CUDA runner itself needs a GPU (bench/gpu)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch"))
import fastgshare_fastpath as fp  # noqa: E402
import fastgshare_inputs as fi  # noqa: E402


def _event(body: bytes, **headers: str) -> SimpleNamespace:
    return SimpleNamespace(body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})


@pytest.mark.parametrize(("size", "buckets", "bucket"), [
    (1, (1, 2, 4, 8), 1), (3, (1, 2, 4, 8), 4), (8, (1, 2, 4, 8), 8), (9, (1, 2, 4, 8), 8),
    (5, (4, 16), 16),
])
def test_bucket_for(size, buckets, bucket) -> None:
    assert fp.bucket_for(size, buckets) == bucket


def test_chunks() -> None:
    assert fp.chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert fp.chunks(4, 4) == [(0, 4)]


@pytest.mark.parametrize(("env", "device", "path"), [
    ({}, "cpu", "eager"), ({}, "cuda", "eager"),
    ({"FASTGSHARE_FAST_PATH": "on"}, "cpu", "cpu"),
    ({"FASTGSHARE_FAST_PATH": "on"}, "cuda", "cuda-graphs"),
    ({"FASTGSHARE_FAST_PATH": "true", "FASTGSHARE_FAST_PATH_GRAPHS": "off"}, "cuda:0", "cuda-eager"),
])
def test_path_selection(env, device, path) -> None:
    assert fp.path_name(fp.settings_from_env(env), device) == path


def test_settings_from_env() -> None:
    s = fp.settings_from_env({"FASTGSHARE_FAST_PATH": "on", "FASTGSHARE_FAST_PATH_BUCKETS": "8,1,4",
                              "FASTGSHARE_FAST_PATH_DTYPE": "bfloat16"})
    assert (s.enabled, s.buckets, s.dtype) == (True, (1, 4, 8), "bfloat16")
    bad = fp.settings_from_env({"FASTGSHARE_FAST_PATH_BUCKETS": "x", "FASTGSHARE_FAST_PATH_DTYPE": "int8"})
    assert (bad.enabled, bad.buckets, bad.dtype) == (False, fp.DEFAULT_BUCKETS, "float16")


def test_cpu_fast_path_runs_channels_last_and_matches_eager() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 5)).eval()
    seen = []
    model[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.rand(3, 3, 8, 8)
    on = fp.fast_path(model, (3, 8, 8), "cpu", fp.settings_from_env({"FASTGSHARE_FAST_PATH": "on"}))
    off = fp.fast_path(model, (3, 8, 8), "cpu", fp.settings_from_env({}))
    assert (on.path, off.path) == ("cpu", "eager")
    assert torch.allclose(on(x), off(x), atol=1e-5)
    assert seen == [True, False]


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("float32", torch.float32), ("", torch.float32),
                                                    ("int32", torch.int32), ("FLOAT16", torch.float16)])
def test_binary_tensor(dtype, torch_dtype) -> None:
    t = (torch.arange(24) % 7).to(torch_dtype).view(2, 3, 4)
    headers = {"X-Tensor-Shape": "2, 3,4"}
    if dtype:
        headers["x-tensor-dtype"] = dtype  # header names in any case
    ev = SimpleNamespace(body=t.numpy().tobytes(), headers={"content-type": "application/octet-stream",
                                                            **headers})
    assert fi.is_binary(ev)
    out = fi.binary_tensor(ev)
    assert out.dtype == torch_dtype and torch.equal(out, t)


@pytest.mark.parametrize(("headers", "body", "message"), [
    ({"X-Tensor-Shape": "3,2"}, b"\0" * 20, "needs 24"),
    ({"X-Tensor-Shape": "3,x"}, b"", "comma-separated sizes"),
    ({"X-Tensor-Shape": ""}, b"", "comma-separated sizes"),
    ({"X-Tensor-Shape": "2", "X-Tensor-Dtype": "complex64"}, b"\0" * 16, "must be one of"),
])
def test_binary_tensor_errors_name_the_header(headers, body, message) -> None:
    with pytest.raises(fi.InputError, match=message):
        fi.binary_tensor(SimpleNamespace(body=body, headers=headers))


def test_image_batch_shapes() -> None:
    x = torch.rand(3, 4, 4)
    ev = SimpleNamespace(body=x.numpy().tobytes(), headers={
        "Content-Type": "application/octet-stream", "X-Tensor-Shape": "3,4,4"})
    out = fi.image_batch(ev, 4, (0, 0, 0), (1, 1, 1))
    assert out.shape == (1, 3, 4, 4) and torch.equal(out[0], x)
    ev.headers["X-Tensor-Shape"] = "1,3,4,4"
    assert fi.image_batch(ev, 4, (0, 0, 0), (1, 1, 1)).shape == (1, 3, 4, 4)
    ev.headers["X-Tensor-Shape"] = "4,4,3"
    with pytest.raises(fi.InputError, match="3,4,4"):
        fi.image_batch(ev, 4, (0, 0, 0), (1, 1, 1))
    assert fi.image_batch(SimpleNamespace(body=b"{}", headers={}), 4, (0,) * 3, (1,) * 3) is None


def test_image_body() -> None:
    pil = pytest.importorskip("PIL.Image", reason="Pillow is a dev dependency only")
    import io

    buf = io.BytesIO()
    pil.new("RGB", (10, 12), (255, 0, 0)).save(buf, format="PNG")
    ev = SimpleNamespace(body=buf.getvalue(), headers={"Content-Type": "image/png"})
    x = fi.image_batch(ev, 8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (1, 3, 8, 8)
    assert torch.allclose(x[0, 0], torch.ones(8, 8)) and torch.allclose(x[0, 1], -torch.ones(8, 8))
    with pytest.raises(fi.InputError, match="not a readable image"):
        fi.image_batch(SimpleNamespace(body=b"nope", headers={"Content-Type": "image/jpeg"}), 8,
                       (0,) * 3, (1,) * 3)


class _FormatSpeed(torch.nn.Module):
    """Sleeps ``slow_s`` when its input has the ``slow`` memory format: the CPU fast path must
    measure the two formats and keep the faster one, per batch bucket."""

    def __init__(self, slow_channels_last: bool, slow_s: float = 0.02) -> None:
        super().__init__()
        self.slow_channels_last, self.slow_s, self.seen = slow_channels_last, slow_s, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.seen.append(cl)
        if cl == self.slow_channels_last:
            import time

            time.sleep(self.slow_s)
        return x.flatten(1)[:, :4] * 2


@pytest.mark.parametrize("slow_channels_last", [True, False])
def test_cpu_fast_path_keeps_the_faster_memory_format_per_bucket(slow_channels_last) -> None:
    model = _FormatSpeed(slow_channels_last)
    runner = fp.fast_path(model, (3, 4, 4), "cpu", fp.settings_from_env({"FASTGSHARE_FAST_PATH": "on"}))
    x = torch.rand(2, 3, 4, 4)
    outs = [runner(x) for _ in range(10)]
    assert all(torch.equal(o, x.flatten(1)[:, :4] * 2) for o in outs)  # every format answers alike
    measured = 2 * (fp.EagerRunner.TIMED_TRIALS + 1)
    assert model.seen[:measured] == [True, False] * (measured // 2)  # alternating while measuring
    assert set(model.seen[measured:]) == {not slow_channels_last}  # then the faster one only
    assert runner.formats() == {2: "contiguous" if slow_channels_last else "channels_last"}
    runner(torch.rand(5, 3, 4, 4))  # another bucket (8) is measured on its own
    assert runner.formats()[8] == "measuring"


@pytest.mark.parametrize(("value", "channels_last"), [("channels_last", True), ("contiguous", False)])
def test_cpu_fast_path_format_can_be_fixed(value, channels_last) -> None:
    model = _FormatSpeed(slow_channels_last=channels_last)  # slow, but fixed by the variable
    env = {"FASTGSHARE_FAST_PATH": "on", "FASTGSHARE_FAST_PATH_CPU_FORMAT": value}
    runner = fp.fast_path(model, (3, 4, 4), "cpu", fp.settings_from_env(env))
    for _ in range(8):
        runner(torch.rand(1, 3, 4, 4))
    assert set(model.seen) == {channels_last} and runner.formats() == {}


def test_octet_stream_without_a_shape_is_read_as_json() -> None:
    """aiohttp and requests label any byte body application/octet-stream: without X-Tensor-Shape
    the handler reads its JSON; with the header (even empty) it is a tensor, or a 400 naming it."""
    assert not fi.is_binary(_event(b"{}", Content_Type="application/octet-stream"))
    assert fi.is_binary(_event(b"", Content_Type="application/octet-stream", X_Tensor_Shape=""))
    assert fi.is_binary(_event(b"", **{"content-type": "application/octet-stream",
                                       "x-tensor-shape": "3"}))
    plain = SimpleNamespace(body=b"{}", headers={"Content-Type": "application/octet-stream"})
    assert fi.image_batch(plain, 8, (0.5,) * 3, (0.5,) * 3) is None  # the handler's JSON path
