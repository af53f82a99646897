"""The provider under real gunicorn (the gunicorn_conf we ship), with each serving model: chunked
bodies over a raw connection, as the OpenFaaS gateway sends them, on a system route and on the
invoke path; the read timeout on a stalled body; an idle kept-alive connection outliving it."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastgshare.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
AUTH = "Basic " + base64.b64encode(b"admin:pw").decode()


READ_TIMEOUT_S = 1.0


@pytest.fixture(scope="module", params=["uvicorn", "gevent", "gthread"])
def provider_port(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "basic-auth-user").write_text("admin")
    (secrets / "basic-auth-password").write_text("pw")
    port = free_port()
    env = {**os.environ, "secret_mount_path": str(secrets), "basic_auth": "true",
           "FASTGSHARE_STATE_DIR": str(secrets.parent), "PYTHONPATH": str(ROOT),
           "FASTGSHARE_PROVIDER_WORKER_CLASS": request.param,
           "FASTGSHARE_PROVIDER_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:gateway_plugin.gunicorn_conf",
         "-b", f"127.0.0.1:{port}", "tests.fakes:make_gunicorn_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"gunicorn did not start: {err[-2000:]}")
                time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def chunked(conn: http.client.HTTPConnection, method: str, path: str, body: bytes,
            headers: dict[str, str]) -> http.client.HTTPResponse:
    """Send ``body`` in several chunks with Transfer-Encoding: chunked and no Content-Length."""
    pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
    conn.request(method, path, body=iter(pieces), headers=headers, encode_chunked=True)
    return conn.getresponse()


def test_chunked_bodies_under_gunicorn(provider_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", provider_port, timeout=10)
    fn = {"service": "echo", "image": "echo:latest", "envVars": {"PAD": "x" * 3000}}
    r = chunked(conn, "POST", "/system/functions", json.dumps(fn).encode(),
                {"Authorization": AUTH, "Content-Type": "application/json"})
    assert r.status == 202, r.read()
    r.read()

    conn.request("GET", "/system/function/echo", headers={"Authorization": AUTH})
    r = conn.getresponse()
    status = json.loads(r.read())
    assert r.status == 200 and status["envVars"]["PAD"] == "x" * 3000

    payload = bytes(range(256)) * 40
    r = chunked(conn, "POST", "/function/echo/path?q=1", payload, {"X-Call-Id": "gw-1"})
    seen = json.loads(r.read())
    assert r.status == 200 and r.getheader("X-Call-Id") == "gw-1"
    assert base64.b64decode(seen["body_b64"]) == payload and seen["query"] == "q=1"

    conn.request("GET", "/system/functions")
    r = conn.getresponse()
    r.read()
    assert r.status == 401 and r.getheader("WWW-Authenticate") == 'Basic realm="Restricted"'
    conn.close()


def _deploy_echo(conn: http.client.HTTPConnection) -> None:
    """On this connection (so on its worker: each worker has its own fake backend)."""
    conn.request("POST", "/system/functions", body=json.dumps({"service": "echo", "image": "echo"}),
                 headers={"Authorization": AUTH, "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status in (202, 409)


def test_a_stalled_body_is_answered_408_after_the_read_timeout(provider_port: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", provider_port), timeout=10) as s:
        s.sendall(b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        t0 = time.monotonic()
        answer = s.recv(4096)  # the body is read before the function is looked up
        waited_s = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert READ_TIMEOUT_S * 0.8 <= waited_s < READ_TIMEOUT_S + 3


def test_an_idle_kept_alive_connection_outlives_the_read_timeout(provider_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", provider_port, timeout=10)
    _deploy_echo(conn)
    for _ in range(2):
        conn.request("POST", "/function/echo", body=b"hi")
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["body_b64"]) == (200, "aGk=")
        time.sleep(READ_TIMEOUT_S * 1.5)  # longer than the read timeout, shorter than keepalive
    sock = conn.sock
    conn.request("POST", "/function/echo", body=b"again")
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())["body_b64"]) == (200, "YWdhaW4=")
    assert conn.sock is sock  # the same connection, not a reconnect
    conn.close()


def test_a_client_that_drips_its_headers_is_cut_off(provider_port: int,
                                                    request: pytest.FixtureRequest) -> None:
    """uvicorn (the default): the head of a request must be complete within the read timeout of
    its first byte, and a connection that sends nothing is closed as well; the gevent and gthread
    workers bound each read instead."""
    import socket

    if "uvicorn" not in request.node.callspec.id:
        pytest.skip("the deadline on a request's head is the uvicorn worker's")
    with socket.create_connection(("127.0.0.1", provider_port), timeout=10) as drip, \
            socket.create_connection(("127.0.0.1", provider_port), timeout=10) as mute:
        t0 = time.monotonic()
        drip.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(int(READ_TIMEOUT_S * 4) + 2):  # a byte every quarter of the timeout
            time.sleep(READ_TIMEOUT_S / 4)
            try:
                drip.sendall(b"X")
            except OSError:
                break
        assert drip.recv(4096) == b""  # closed, without an answer
        assert mute.recv(4096) == b""
        assert time.monotonic() - t0 < READ_TIMEOUT_S * 3 + 2
