"""A paced function that batches: one request waits 50 ms (standing for device time), a batch of n
waits 40 + 10 n ms, so a replica serves 20 requests/s one at a time and about 66/s at batch 8,
whatever else the shared test machine runs. ``load`` takes ``LOAD_S`` (a model's load), so a
replica is ready some seconds after its start and a test can tell what served before any new
replica did."""

import json
import os
import time

LOAD_S = 4.0


def load():
    time.sleep(LOAD_S)


def _answer(n):
    return {"statusCode": 200, "body": json.dumps({"batch": n, "pid": os.getpid()}),
            "headers": {"Content-Type": "application/json"}}


def handle(event, context):
    time.sleep(0.05)
    return _answer(1)


def handle_batch(events, context):
    time.sleep(0.04 + 0.01 * len(events))
    return [_answer(len(events)) for _ in events]
