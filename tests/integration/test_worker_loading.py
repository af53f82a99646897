"""The python3-torch worker serves /_/ready (503) while the handler's load() runs; a request sent in
that window waits for load() to return and is answered by the loaded handler."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from fastgshare.redis_server import free_port

RUNTIME = Path(__file__).resolve().parents[2] / "function_templates" / "python3-torch" / "index.py"
SLOW_LOAD = '''
import time

state = None


def load():
    global state
    time.sleep(1.5)
    state = "loaded"


def handle(event, context):
    return {"statusCode": 200, "body": {"state": state}}
'''


def test_a_request_during_load_waits_for_the_loaded_handler(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(SLOW_LOAD)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
    env |= {"FASTGSHARE_HANDLER_DIR": str(tmp_path), "FASTGSHARE_WORKER_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(RUNTIME)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # the server answers before load() returns: "loading"
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            try:
                r = requests.get(f"{url}/_/ready", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert r.status_code == 503 and r.text == "loading"
        answer = requests.post(url, data=b"{}", timeout=30)
        assert answer.status_code == 200 and answer.json() == {"state": "loaded"}
        assert requests.get(f"{url}/_/ready", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
