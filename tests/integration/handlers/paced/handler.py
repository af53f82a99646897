"""A small real torch function with a paced cost: a tiny matmul, then 45 ms of waiting that stands for
device time. A replica serves about 20 requests/s whatever else the shared test machine runs, so
the autoscaling test measures the scheduler, not the machine's load."""

import json
import time

import torch

a = None


def load():
    global a
    torch.manual_seed(0)
    a = torch.rand(32, 32)


def handle(event, context):
    with torch.inference_mode():
        s = float((a @ a).sum())
    time.sleep(0.045)
    return {"statusCode": 200, "body": json.dumps({"sum": s}),
            "headers": {"Content-Type": "application/json"}}
