"""Each example function's handler, loaded in-process through the template runtime, answers ``{}``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "function_templates" / "python3-torch"
sys.path.insert(0, str(TEMPLATE))
import index  # noqa: E402  (the worker runtime, a script folder rather than a package)

_loaded: dict[str, ModuleType] = {}


def _handler(folder: Path, name: str) -> ModuleType:
    if name not in _loaded:
        module = index.import_handler(folder, f"fn_{name}")
        if hasattr(module, "load"):
            module.load()
        _loaded[name] = module
    return _loaded[name]


def _call(name: str, body: bytes = b"{}", folder: Path | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict]:
    module = _handler(folder or REPO / "functions" / name, name)
    status, _, out, busy_ms = index.call_handler(module, index.Context("/nonexistent"), "POST",
                                                 "/", headers or {}, body)
    assert busy_ms >= 0
    return status, json.loads(out)


def test_template_hello_world() -> None:
    status, out = _call("hello", folder=TEMPLATE / "function")
    assert status == 200 and len(out["y"]) == 2
    status, out = _call("hello", b"not json", folder=TEMPLATE / "function")
    assert status == 400


def test_noop() -> None:
    assert _call("noop") == (200, {})


def test_mobilenet_top5() -> None:
    status, out = _call("mobilenet")
    assert status == 200 and len(out["top5"]) == 5
    assert _call("mobilenet") == (status, out)  # seeded: deterministic


@pytest.mark.slow
def test_resnet50_top5_on_sample_and_tensor_input() -> None:
    import torch

    status, out = _call("resnet50")
    assert status == 200 and len(out["top5"]) == 5 and out["shape"] == [1, 3, 224, 224]
    scores = [c["score"] for c in out["top5"]]
    assert scores == sorted(scores, reverse=True)
    tensor = torch.zeros(3, 224, 224).tolist()
    status, out = _call("resnet50", json.dumps({"tensor": tensor}).encode())
    assert status == 200 and len(out["top5"]) == 5
    status, out = _call("resnet50", b'{"tensor": [1, 2]}')
    assert status == 400 and "3x224x224" in out["error"]


@pytest.mark.slow
def test_resnet50_accepts_an_encoded_image() -> None:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, format="PNG")
    body = json.dumps({"image_b64": base64.b64encode(buf.getvalue()).decode()}).encode()
    status, out = _call("resnet50", body)
    assert status == 200 and len(out["top5"]) == 5


@pytest.mark.slow
def test_bert_encoder() -> None:
    status, out = _call("bert")
    assert status == 200 and out["dim"] == 768 and out["tokens"] > 2
    status, short = _call("bert", b'{"text": "hello world"}')
    assert status == 200 and short["tokens"] == 4
    assert _call("bert", b'{"text": ""}')[0] == 400


@pytest.mark.slow
def test_minilm_real_embeddings_rank_similar_sentences_higher() -> None:
    def embed(text: str) -> list[float]:
        status, out = _call("minilm", json.dumps({"text": text}).encode())
        assert status == 200 and out["dim"] == 384
        return out["embedding"]

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))  # embeddings are L2-normalised

    cat = embed("A cat is sitting on the mat.")
    kitten = embed("A kitten sits on a rug.")
    stocks = embed("The stock market fell sharply after the interest rate decision.")
    assert cos(cat, kitten) > cos(cat, stocks) + 0.2
    status, out = _call("minilm")
    assert status == 200 and len(out["embedding"]) == 384
