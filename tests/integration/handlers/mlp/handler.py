"""A deep, narrow MLP (32 layers of 512): one request is a matrix-vector product per layer, a batch a
matrix-matrix product, so batching pays on a CPU (~3x per sample at batch 4 on one core here).

``handle_batch`` stacks the requests' inputs for one forward pass (dynamic batching, FASTGSHARE_BATCH).
"""

import json

import torch

WIDTH, DEPTH = 512, 32
model = None
sample = None


def load():
    global model, sample
    torch.manual_seed(0)
    layers = []
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers).eval()
    sample = torch.rand(1, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        model(sample)
        model(sample.repeat(4, 1))


def _answer(row):
    return {"statusCode": 200, "body": json.dumps({"sum": round(float(row.sum()), 4)}),
            "headers": {"Content-Type": "application/json"}}


def handle(event, context):
    with torch.inference_mode():
        return _answer(model(sample)[0])


def handle_batch(events, context):
    with torch.inference_mode():
        out = model(sample.repeat(len(events), 1))
    return [_answer(row) for row in out]
