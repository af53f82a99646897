"""The example handlers with binary bodies (real torch on the CPU): a preprocessed tensor sent as
``application/octet-stream`` gets the answer its JSON form gets, the fast path (CPU: channels_last)
answers as the plain one, and a real worker behind a real sidecar takes the binary body and its
headers over HTTP."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import requests
import torch

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "function_templates" / "python3-torch"
sys.path.insert(0, str(TEMPLATE))
import index  # noqa: E402


def _binary(t: torch.Tensor, dtype: str = "float32") -> tuple[bytes, dict[str, str]]:
    return t.numpy().tobytes(), {"Content-Type": "application/octet-stream",
                                 "X-Tensor-Shape": ",".join(map(str, t.shape)),
                                 "X-Tensor-Dtype": dtype}


def _answer(module, body: bytes, headers: dict[str, str] | None = None):
    status, _, out = index.as_response(module.handle(index.make_event("POST", "/", headers or {}, body),
                                                     index.Context("/x")))[:3]
    return status, json.loads(out)


def _load(name: str, alias: str):
    module = index.import_handler(REPO / "functions" / name, alias)
    module.load()
    return module


def test_mobilenet_binary_equals_json_and_fast_path_equals_plain(monkeypatch) -> None:
    t = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("FASTGSHARE_FAST_PATH", "off")  # the example opts in by default
    plain = _load("mobilenet", "mobilenet_plain")
    by_json = _answer(plain, json.dumps({"tensor": t.tolist()}).encode())
    by_binary = _answer(plain, *_binary(t))
    assert by_json == by_binary and by_json[0] == 200
    body, headers = _binary(t)
    assert _answer(plain, body[:-4], headers)[0] == 400  # short body: the caller's error
    monkeypatch.setenv("FASTGSHARE_FAST_PATH", "on")
    fast = _load("mobilenet", "mobilenet_fast")
    assert fast.runner.path == "cpu" and plain.runner.path == "eager"
    status, out = _answer(fast, *_binary(t))
    assert status == 200
    assert [c["class"] for c in out["top5"]] == [c["class"] for c in by_json[1]["top5"]]
    for a, b in zip(out["top5"], by_json[1]["top5"], strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4


@pytest.mark.parametrize("name", ["mobilenet", "resnet50", "bert"])
def test_a_byte_body_labelled_octet_stream_without_a_shape_is_json(name: str) -> None:
    """aiohttp, and so the profiler and the benchmarks' load, label ``{}`` sent as bytes
    application/octet-stream: each example answers it as JSON (its sample), not with a 400 asking
    for X-Tensor-Shape (which broke profiling the examples)."""
    module = _load(name, f"{name}_octet")
    assert _answer(module, b"{}", {"Content-Type": "application/octet-stream"}) == _answer(module, b"{}")
    assert _answer(module, b"{}", {"Content-Type": "application/octet-stream"})[0] == 200


@pytest.mark.slow
def test_bert_token_ids_equal_text() -> None:
    bert = _load("bert", "bert_ids")
    text = "a longer sentence, with punctuation and more words"
    ids, _, n = bert.tokenize(text)
    by_text = _answer(bert, json.dumps({"text": text}).encode())
    by_ids = _answer(bert, *_binary(ids[0].int(), "int32"))
    assert by_text == by_ids and by_ids[1]["tokens"] == n
    assert _answer(bert, *_binary(ids[0][:100].int(), "int32"))[0] == 400
    batch = [index.make_event("POST", "/", h, b) for b, h in
             (_binary(ids[0].long(), "int64"), (json.dumps({"text": text}).encode(), {}))]
    answers = [json.loads(index.as_response(a)[2]) for a in bert.handle_batch(batch, index.Context("/x"))]
    assert answers[0] == answers[1] == by_text[1]


@pytest.mark.slow
def test_binary_body_through_a_real_sidecar(tmp_path: Path) -> None:
    from bench import replicas as rp

    spec = {"name": "bin", "FASTGSHARE_ARBITER": "off", "FASTGSHARE_SLO_MS": "1000",
            "FASTGSHARE_HANDLER_DIR": str(REPO / "functions" / "mobilenet")}
    (rep,) = rp.start_replicas([spec], tmp_path)
    try:
        t = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(5))
        body, headers = _binary(t)
        r = requests.post(rep.url + "/", data=body, headers=headers, timeout=60)
        j = requests.post(rep.url + "/", json={"tensor": t.tolist()}, timeout=60)
        assert r.status_code == 200 and r.json() == j.json()
        assert r.headers["X-Fastgshare-Batch"] == "1"
        bad = requests.post(rep.url + "/", data=body, timeout=60,
                            headers={**headers, "X-Tensor-Shape": "3,96"})
        assert bad.status_code == 400 and "X-Tensor-Shape" in bad.text
    finally:
        rp.stop_replicas([rep])
    assert os.path.exists(rep.log)
