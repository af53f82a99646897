"""A small real torch function for end-to-end tests: y = W x + b with known weights.

Also answers ``{"secret": NAME}`` with the secret's value (read the OpenFaaS way, from the
secrets folder) and ``{"env": NAME}`` with an environment variable, so tests can check both.
"""

import json
import os
from pathlib import Path

import torch

model = None


def load():
    global model
    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.arange(8.0).reshape(2, 4))
        model.bias.fill_(1.0)
    print("linear model loaded", flush=True)


def handle(event, context):
    req = json.loads(event.body or b"{}")
    if "secret" in req:
        folder = Path(os.environ.get("FASTGSHARE_SECRETS_DIR", "/var/openfaas/secrets"))
        return {"statusCode": 200, "body": (folder / req["secret"]).read_text()}
    if "env" in req:
        return {"statusCode": 200, "body": os.environ.get(req["env"], "")}
    x = torch.tensor(req.get("x", [1.0, 1.0, 1.0, 1.0]), dtype=torch.float32)
    with torch.no_grad():
        y = model(x)
    print(f"handled x={x.tolist()}", flush=True)
    return {"statusCode": 200, "body": json.dumps({"y": y.tolist(), "pid": os.getpid()}),
            "headers": {"Content-Type": "application/json"}}
