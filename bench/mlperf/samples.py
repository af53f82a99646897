"""What the MLPerf harness sends each function: preprocessed binary tensors, as MLPerf's own harnesses
do (the image already decoded, resized and normalised; the text already tokenized), so the worker
only views the bytes. Pure apart from numpy: seeded, the same bytes in every run.

- ``resnet50``: a 3x224x224 float32 tensor (588 KiB), ``X-Tensor-Shape: 3,224,224``;
- ``mobilenet``: 3x96x96 float32 (108 KiB);
- ``bert``: 128 int32 token ids ([CLS], 100 word ids, [SEP], padding 0), ``X-Tensor-Dtype: int32``;
- ``minilm`` (``--quick``'s stand-in for BERT): JSON text (its real tokenizer runs in the worker);
- anything else: ``{}``.
"""

from __future__ import annotations

import json

import numpy as np

SHAPES = {"resnet50": (3, 224, 224), "mobilenet": (3, 96, 96)}
BERT_SEQ_LEN = 128
BERT_WORDS = 100
VOCAB = 30522


def _binary(array: np.ndarray, dtype: str) -> tuple[bytes, dict[str, str]]:
    return array.astype(dtype).tobytes(), {
        "Content-Type": "application/octet-stream",
        "X-Tensor-Shape": ",".join(map(str, array.shape)), "X-Tensor-Dtype": dtype}


def request_for(function: str, seed: int = 1) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of one query to ``function``."""
    rng = np.random.default_rng(seed)
    if function in SHAPES:
        return _binary(rng.standard_normal(SHAPES[function], dtype=np.float32), "float32")
    if function == "bert":
        ids = np.zeros(BERT_SEQ_LEN, dtype=np.int32)
        ids[0], ids[BERT_WORDS + 1] = 101, 102
        ids[1:BERT_WORDS + 1] = rng.integers(1000, VOCAB, BERT_WORDS)
        return _binary(ids, "int32")
    if function == "minilm":
        text = "a query as MLPerf sends it, tokenized by the function's own tokenizer"
        return json.dumps({"text": text}).encode(), {"Content-Type": "application/json"}
    return b"{}", {"Content-Type": "application/json"}
