"""A hostile function for the isolation test: each request names targets, and the handler tries
every one of them, reporting for each attempt either what it got or the error that stopped it.

It never raises: the test reads the report and decides which attempts had to fail.
"""

import json
import os
import signal
from pathlib import Path


def load():
    pass


def _read(path):
    return Path(path).read_bytes()[:200].decode("utf-8", "replace")


def _redis_ping(url):
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return repr(client.execute_command("ACL", "WHOAMI")) + " " + repr(client.keys("*")[:5])
    finally:
        client.close()


def _http_get(port):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_/ready", timeout=5) as resp:
        return f"HTTP {resp.status}"


def _attempt(what):
    try:
        return {"ok": True, "got": str(what())[:300]}
    except Exception as e:  # the report is the point: every refusal is an expected outcome
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}


def handle(event, context):
    t = json.loads(event.body or b"{}")
    report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
              "env_names": sorted(os.environ)}
    for path in t.get("read", []):
        report[f"read:{path}"] = _attempt(lambda p=path: _read(p))
    for path in t.get("list", []):
        report[f"list:{path}"] = _attempt(lambda p=path: os.listdir(p))
    ppid = os.getppid()
    report["read:sidecar environ"] = _attempt(lambda: _read(f"/proc/{ppid}/environ"))
    port = t.get("redis_port")
    if port:
        report["redis:no credentials"] = _attempt(lambda: _redis_ping(f"redis://127.0.0.1:{port}/0"))
        # "the sidecar's variables": whatever the worker was handed, or can find in its parent
        for name in ("REDIS_URL", "FASTGSHARE_SIDECAR_REDIS_URL"):
            report[f"redis:${name}"] = _attempt(lambda n=name: _redis_ping(os.environ[n]))
    for label, pid in t.get("signal", {}).items():
        report[f"signal:{label}"] = _attempt(lambda p=pid: os.kill(int(p), signal.SIGKILL))
    for label, port in t.get("http", {}).items():
        report[f"http:{label}"] = _attempt(lambda p=port: _http_get(p))
    for label, path in t.get("write", {}).items():
        report[f"write:{label}"] = _attempt(lambda p=path: Path(p).write_text("owned"))
    return {"statusCode": 200, "body": json.dumps(report),
            "headers": {"Content-Type": "application/json"}}
