"""ResNet-50 image classification (MLPerf's image model), plain torch, seeded random weights.

Random weights: no weights can be downloaded here, and the cost of inference does not depend on
their values. Output classes are therefore meaningless but deterministic.

Input (POST body), one of:
- ``{}`` or empty: a built-in seeded 224x224 sample;
- ``{"image_b64": "<base64 of a JPEG/PNG file>"}`` (needs Pillow): resized to 224x224;
- ``{"tensor": [[[...]]]}``: a float tensor 3x224x224 (already normalised), as nested lists;
- an ``application/octet-stream`` body: the preprocessed 3x224x224 float32 tensor's bytes with
  ``X-Tensor-Shape: 3,224,224`` (``X-Tensor-Dtype`` float32 by default; see ``fastgshare_inputs``),
  as MLPerf's harnesses send it;
- a raw image body with ``Content-Type: image/*``.
Output: ``{"top5": [{"class": id, "score": probability}, ...], "shape": [1, 3, 224, 224]}``.

``handle_batch`` (dynamic batching): the requests' inputs go through one forward pass; each answer
is the one ``handle`` gives for that request alone (on a GPU's fast path, to half precision: the
kernels cuDNN picks differ with the batch's bucket). It opts in to the fast path
(``fastgshare_fastpath``: autocast fp16, channels_last, CUDA graphs per batch bucket;
``FASTGSHARE_FAST_PATH=off`` opts out).
"""

import base64
import json

import torch
from fastgshare_fastpath import fast_path
from fastgshare_inputs import image_batch, image_tensor
from fastgshare_runtime import load_shared
from torch import nn

SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000, layers=(3, 4, 6, 3)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, layers[0])
        self.layer2 = self._layer(128, layers[1], stride=2)
        self.layer3 = self._layer(256, layers[2], stride=2)
        self.layer4 = self._layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * 4, num_classes)

    def _layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride,
                                                 bias=False), nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build():
    torch.manual_seed(0)  # seeded: every replica (and the store) gets the same weights
    return ResNet50()


model = runner = None
device = "cpu"
sample = None


def load():
    global model, runner, device, sample
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # One copy of the weights per device when the replicas share a fastgshare/model.
    model = load_shared("resnet50", build, device=device).eval().to(device)
    runner = fast_path(model, (3, SIZE, SIZE), device, default_on=True)
    sample = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    if hasattr(runner, "warm"):
        runner.warm()  # the CUDA graphs of the worker's batch buckets, before requests
    runner(sample)  # warm-up: the first call allocates; keep it off the first request


def parse_input(event):
    x = image_batch(event, SIZE, MEAN, STD)  # binary tensor or image body
    if x is not None:
        return x
    payload = json.loads(event.body or b"{}")
    if "image_b64" in payload:
        return image_tensor(base64.b64decode(payload["image_b64"]), SIZE, MEAN, STD)
    if "tensor" in payload:
        x = torch.tensor(payload["tensor"], dtype=torch.float32)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != (3, SIZE, SIZE):
            raise ValueError(f"tensor must be 3x{SIZE}x{SIZE}, got {list(x.shape)}")
        return x
    return sample


def _bad_input(e):  # bad input is the caller's error, not ours
    return {"statusCode": 400, "body": {"error": f"{type(e).__name__}: {e}"}}


def _answer(probs, shape):
    top = torch.topk(probs, 5)
    return {"statusCode": 200, "body": {
        "top5": [{"class": int(i), "score": round(float(s), 6)}
                 for s, i in zip(top.values, top.indices, strict=True)],
        "shape": list(shape),
    }}


def handle(event, context):
    try:
        x = parse_input(event)
    except Exception as e:
        return _bad_input(e)
    return _answer(torch.softmax(runner(x), dim=1)[0], x.shape)


def handle_batch(events, context):
    """One forward pass over every valid request's input; answers in the requests' order."""
    answers, inputs = [None] * len(events), []
    for i, event in enumerate(events):
        try:
            inputs.append((i, parse_input(event)))
        except Exception as e:
            answers[i] = _bad_input(e)
    if inputs:
        xs = [x for _, x in inputs]
        probs = torch.softmax(runner(torch.cat(xs)), dim=1)
        start = 0
        for (i, x) in inputs:
            answers[i] = _answer(probs[start], x.shape)  # row 0 of its own input, as handle()
            start += x.shape[0]
    return answers
