"""A hello-world python3-torch function.

``load()`` runs once per replica before the first request: build or load the model there (the
replica's CPU cores / GPU share are already in force). ``handle(event, context)`` runs once per
request, one at a time. ``event`` has ``body`` (bytes), ``headers``, ``method``, ``query``, ``path``;
``context`` has ``hostname`` and ``secret(name)``. Return a dict with ``statusCode``/``body``/
``headers``, or a str, bytes, or a dict/list (sent as JSON).

Build the model through ``load_shared``: with a ``fastgshare/model`` annotation, every replica on
the device maps one read-only copy of the weights; without it (or with
``FASTGSHARE_MODEL_SHARING=off``) it is exactly ``build()``. ``build`` must be deterministic (seed
it) or pass the real weights as ``load_shared(name, build, weights)``.

Input: ``{"x": [numbers]}`` or ``{}`` (a built-in sample). Output: ``{"y": [...]}`` where ``y`` is
a small seeded linear layer applied to ``x``.
"""

import json

import torch
from fastgshare_runtime import load_shared

model = None


def build():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


def load():
    global model
    model = load_shared("hello", build).eval()


def handle(event, context):
    try:
        payload = json.loads(event.body or b"{}")
    except ValueError:
        return {"statusCode": 400, "body": {"error": "body must be JSON: {\"x\": [4 numbers]}"}}
    x = payload.get("x", [1.0, 2.0, 3.0, 4.0])
    if len(x) != 4:
        return {"statusCode": 400, "body": {"error": "x must have 4 numbers"}}
    with torch.inference_mode():
        y = model(torch.tensor([x], dtype=torch.float32))[0]
    return {"statusCode": 200, "body": {"y": [round(float(v), 6) for v in y]}}
