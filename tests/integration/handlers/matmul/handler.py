"""A small real torch function with a steady cost (~10 ms on one core): the profiler's e2e target.

Reads ``FASTGSHARE_BATCH`` (how many samples one request carries) the way a batching handler would.
"""

import json
import os

import torch

BATCH = int(os.environ.get("FASTGSHARE_BATCH", "1") or 1)
a = None


def load():
    global a
    torch.manual_seed(0)
    a = torch.rand(BATCH, 192, 192)


def handle(event, context):
    x = a
    with torch.inference_mode():
        for _ in range(24):
            x = torch.tanh(x @ a)
    return {"statusCode": 200, "body": json.dumps({"sum": float(x.sum())}),
            "headers": {"Content-Type": "application/json"}}
