"""The small model: MobileNetV2 (width 0.5) on 96x96 images, plain torch, seeded random weights.

A few milliseconds per request on one CPU core: the light function that shares a device with the
heavy ones. Random weights: no weights can be downloaded here; outputs are stable but meaningless.

Input, one of: ``{}`` (a built-in seeded sample); ``{"tensor": [[[...]]]}`` (3x96x96 floats); an
``application/octet-stream`` body of 3x96x96 float32 with ``X-Tensor-Shape: 3,96,96`` (the
preprocessed tensor, as MLPerf's harnesses send it; see ``fastgshare_inputs``); an ``image/*``
body (needs Pillow). Output: ``{"top5": [{"class": id, "score": probability}, ...]}``.
``handle_batch``: one forward pass for a dynamic batch. It opts in to the fast path
(``fastgshare_fastpath``; ``FASTGSHARE_FAST_PATH=off`` opts out).
"""

import json

import torch
from fastgshare_fastpath import fast_path
from fastgshare_inputs import image_batch
from fastgshare_runtime import load_shared
from torch import nn

SIZE = 96
WIDTH = 0.5


def _div8(v):
    return max(8, int(v + 4) // 8 * 8)


def conv_bn(inp, out, k, stride, groups=1):
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp, out, stride, expand):
        super().__init__()
        hidden = inp * expand
        layers = [conv_bn(inp, hidden, 1, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, stride) from the MobileNetV2 paper
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width=WIDTH, num_classes=1000):
        super().__init__()
        inp = _div8(32 * width)
        layers = [conv_bn(3, inp, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            out = _div8(c * width)
            for i in range(n):
                layers.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        layers.append(conv_bn(inp, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def build():
    torch.manual_seed(0)  # seeded: every replica (and the store) gets the same weights
    return MobileNetV2()


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
model = runner = None
device = "cpu"
sample = None


def load():
    global model, runner, device, sample
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # One copy of the weights per device when the replicas share a fastgshare/model.
    model = load_shared("mobilenet", build, device=device).eval().to(device)
    runner = fast_path(model, (3, SIZE, SIZE), device, default_on=True)
    sample = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    if hasattr(runner, "warm"):
        runner.warm()  # the CUDA graphs of the worker's batch buckets, before requests
    runner(sample)  # warm-up off the first request


def parse_input(event):
    x = image_batch(event, SIZE, MEAN, STD)
    if x is not None:
        return x
    payload = json.loads(event.body or b"{}")
    x = sample
    if "tensor" in payload:
        x = torch.tensor(payload["tensor"], dtype=torch.float32)
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if tuple(x.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"tensor must be 3x{SIZE}x{SIZE}, got {list(x.shape)}")
    return x


def _answer(probs):
    top = torch.topk(probs, 5)
    return {"statusCode": 200, "body": {
        "top5": [{"class": int(i), "score": round(float(s), 6)}
                 for s, i in zip(top.values, top.indices, strict=True)],
    }}


def handle(event, context):
    try:
        x = parse_input(event)
    except (ValueError, TypeError) as e:
        return {"statusCode": 400, "body": {"error": str(e)}}
    return _answer(torch.softmax(runner(x), dim=1)[0])


def handle_batch(events, context):
    """Dynamic batching: one forward pass over every valid request; answers in their order."""
    answers, inputs = [None] * len(events), []
    for i, event in enumerate(events):
        try:
            inputs.append((i, parse_input(event)))
        except (ValueError, TypeError) as e:
            answers[i] = {"statusCode": 400, "body": {"error": str(e)}}
    if inputs:
        probs = torch.softmax(runner(torch.cat([x for _, x in inputs])), dim=1)
        start = 0
        for i, x in inputs:
            answers[i] = _answer(probs[start])
            start += x.shape[0]
    return answers
