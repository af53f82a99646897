"""A raw-socket fuzzer of the HTTP framing of ``/system/*`` against the provider as it is served
(our gunicorn_conf, default serving model, one worker, over a fake backend) (issue 21): chunk
sizes, lengths and headers, well formed or not. No answer is a 5xx, the server logs no traceback,
and nothing is stored (every body that does parse is a deploy with an out-of-range value).
Also: a bad chunk size is 400 with one log line and closes the connection; a client that hangs up
mid-chunk leaves no traceback; a 413 closes cleanly (``Connection: close``, no reset)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgshare.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
AUTH = "Basic " + base64.b64encode(b"admin:pw").decode()
BAD_DEPLOY = json.dumps({"service": "fuzzed", "image": "echo",
                         "annotations": {"fastgshare/gpu_mem": "9" * 400}}).encode()
"""Parses as JSON but is refused (400): whatever framing delivers it, nothing may be stored."""
MAX_SYSTEM_BODY_BYTES = 64 * 1024


class Server:
    def __init__(self, port: int, log_path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port, self.log_path, self.proc = port, log_path, proc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module", params=["default", "gthread"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default serving model (whose server parses the framing itself), and gthread (gunicorn's
    parser: its framing errors reach the app's body reader, ``gateway_plugin.body``)."""
    secrets = tmp_path_factory.mktemp("framing-secrets")
    (secrets / "basic-auth-user").write_text("admin")
    (secrets / "basic-auth-password").write_text("pw")
    port = free_port()
    log_path = secrets.parent / f"framing-provider-{request.param}.out"
    env = {**os.environ, "secret_mount_path": str(secrets), "basic_auth": "true",
           "FASTGSHARE_STATE_DIR": str(secrets.parent), "PYTHONPATH": str(ROOT),
           "FASTGSHARE_PROVIDER_WORKERS": "1", "FASTGSHARE_PROVIDER_READ_TIMEOUT_S": "2",
           "FASTGSHARE_MAX_SYSTEM_BODY_BYTES": str(MAX_SYSTEM_BODY_BYTES)}
    if request.param != "default":
        env["FASTGSHARE_PROVIDER_WORKER_CLASS"] = request.param
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:gateway_plugin.gunicorn_conf",
             "-b", f"127.0.0.1:{port}", "tests.fakes:make_gunicorn_app()"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while _status(_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the provider did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield Server(port, log_path, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exchange(port: int, raw: bytes, *, quiet_s: float = 0.3, timeout_s: float = 5.0) -> bytes:
    """Send ``raw`` and read the answer until the server closes or is quiet for ``quiet_s``; when
    nothing came, say we are done (FIN: a request still waiting for body ends) and read again."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            try:
                s.sendall(raw)
            except OSError:
                pass  # the server answered and closed before taking all of it: read the answer
            out = _read(s, quiet_s)
            if not out:
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                out = _read(s, timeout_s)
            return out
    except ConnectionRefusedError:
        return b""


def _read(s: socket.socket, quiet_s: float) -> bytes:
    s.settimeout(quiet_s)
    out = b""
    while True:
        try:
            part = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not part:
            return out
        out += part


def _status(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def _statuses(answer: bytes) -> list[int]:
    """Every status line in a (possibly pipelined) answer."""
    return [int(line.split(b" ", 2)[1]) for line in answer.split(b"\r\n")
            if line.startswith(b"HTTP/1.") and len(line.split(b" ", 2)) > 1
            and line.split(b" ", 2)[1].isdigit()]


def _head(path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: provider", f"Authorization: {AUTH}",
             "Content-Type: application/json"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


HEX_SIZE = st.one_of(
    st.just("exact"),
    st.sampled_from(["zz", "-1", "0x10", "ffffffffffffffffffffffff", "", " ", "1;ext=1", "5 ", "+5",
                     "١", "0", "7fffffffffffffff", "A\x00"]),
    st.integers(min_value=0, max_value=2**70).map(lambda n: format(n, "x")),
)
CHUNK = st.tuples(HEX_SIZE, st.integers(min_value=0, max_value=len(BAD_DEPLOY)),
                  st.sampled_from(["\r\n", "\n", "", "xx"]))
LENGTH = st.one_of(st.integers(min_value=-5, max_value=2**64).map(str),
                   st.sampled_from(["abc", "1e3", "", " 10", "10, 10", "-0", str(len(BAD_DEPLOY))]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/system/functions", "/system/secrets", "/system/scale-function/fuzzed"]),
       framing=st.sampled_from(["chunked", "length", "both", "te-unknown", "duplicate-length"]),
       chunks=st.lists(CHUNK, max_size=4), length=LENGTH, final=st.booleans(),
       trailer=st.sampled_from(["", "X-T: 1\r\n", "bad trailer\r\n"]))
def test_fuzzed_framing_never_gets_a_server_error(server: Server, path: str, framing: str,
                                                  chunks: list[tuple[str, int, str]], length: str,
                                                  final: bool, trailer: str) -> None:
    body = b""
    offset = 0
    for size, n, end in chunks:
        piece = BAD_DEPLOY[offset:offset + n]
        offset += n
        body += (format(len(piece), "x") if size == "exact" else size).encode() + b"\r\n"
        body += piece + end.encode()
    if final:
        body += b"0\r\n" + trailer.encode() + b"\r\n"
    headers = {"chunked": [("Transfer-Encoding", "chunked")],
               "length": [("Content-Length", length)],
               "both": [("Transfer-Encoding", "chunked"), ("Content-Length", length)],
               "te-unknown": [("Transfer-Encoding", "gzip, chunked")],
               "duplicate-length": [("Content-Length", length), ("Content-Length", "3")]}[framing]
    answer = _exchange(server.port, _head(path, headers) + body)
    assert all(code < 500 for code in _statuses(answer)), answer[:300]


def test_after_the_fuzzing_nothing_was_stored_and_nothing_was_a_traceback(server: Server) -> None:
    answer = _exchange(server.port, f"GET /system/functions HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}"
                                    "\r\n\r\n".encode())
    assert _status(answer) == 200 and answer.endswith(b"\r\n\r\n[]"), answer
    log = server.log()
    assert "Traceback" not in log and "request failed" not in log and server.proc.poll() is None


def test_a_bad_chunk_size_is_400_once_logged_and_closes_the_connection(server: Server) -> None:
    before = server.log().count("\n")
    raw = _head("/system/functions", [("Transfer-Encoding", "chunked")]) + b"zz\r\nabc\r\n0\r\n\r\n"
    answer = _exchange(server.port, raw)
    assert _status(answer) == 400 and b"connection: close" in answer.lower(), answer
    time.sleep(0.2)
    new_lines = [ln for ln in server.log().splitlines()[before:] if ln.strip()]
    assert len(new_lines) <= 1 and "Traceback" not in server.log(), new_lines


def test_a_client_gone_mid_chunk_leaves_no_traceback(server: Server) -> None:
    raw = _head("/system/functions", [("Transfer-Encoding", "chunked")]) + b"40\r\n" + BAD_DEPLOY[:10]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(raw)
        time.sleep(0.2)
    time.sleep(0.5)
    assert "Traceback" not in server.log()
    assert _status(_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


def test_413_on_a_system_route_closes_the_connection_cleanly(server: Server) -> None:
    size = 4 * MAX_SYSTEM_BODY_BYTES
    raw = _head("/system/functions", [("Content-Length", str(size))]) + b"x" * size
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(raw)  # all of it, as a client that does not read before it has sent does
        answer = b""
        while True:
            part = s.recv(65536)  # a reset here (ConnectionResetError) fails the test
            if not part:
                break
            answer += part
    assert _status(answer) == 413, answer[:300]
    assert b"connection: close" in answer.lower()
