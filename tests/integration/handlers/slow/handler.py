"""A function that takes as long as it is asked to (``{"sleep_s": S}``) and says which process
answered: for tests of draining, stopping and routing, where the model does not matter."""

import json
import os
import time


def load():
    pass


def handle(event, context):
    req = json.loads(event.body or b"{}")
    time.sleep(float(req.get("sleep_s", 0)))
    return {"statusCode": 200, "body": json.dumps({"pid": os.getpid()}),
            "headers": {"Content-Type": "application/json"}}
