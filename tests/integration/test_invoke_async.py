"""The provider's ASGI front (``gateway_plugin.asgi``) served by real uvicorn on loopback, as the
default gunicorn worker runs it, over a fake backend whose replicas are real HTTP servers: the
invoke path on the event loop (headers, bodies chunked or sized, streamed answers, kept-alive
connections the replica closes, refused connections, size and time limits) and the Flask side
behind it (system routes, and a followed log that ends when its client leaves)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from fastgshare.resources import GpuShare
from fastgshare.specs import FunctionSpec
from gateway_plugin.app import create_app
from gateway_plugin.asgi import provider_asgi
from gateway_plugin.settings import ProviderSettings
from tests.fakes import ClosingReplica, EchoServer, FakeBackend

READ_TIMEOUT_S = 0.5


@dataclass
class Front:
    port: int
    backend: FakeBackend

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


def serve_front(backend: FakeBackend, settings: ProviderSettings) -> Iterator[Front]:
    app = provider_asgi(create_app(backend, settings, registry=CollectorRegistry(), records=None),
                        read_timeout_s=READ_TIMEOUT_S, wsgi_threads=8)
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="on",
                            log_level="warning", server_header=False, proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Front(sock.getsockname()[1], backend)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def front(echo: EchoServer) -> Iterator[Front]:
    backend = FakeBackend(replica_url=echo.url, follow_idle_s=30.0)
    backend.deploy(FunctionSpec("echo", "echo"))
    yield from serve_front(backend, ProviderSettings(basic_auth=False, max_invoke_body_bytes=1 << 20))


def _chunked(conn: http.client.HTTPConnection, path: str, body: bytes,
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
    conn.request("POST", path, body=iter(pieces), headers=headers or {}, encode_chunked=True)
    return conn.getresponse()


def test_headers_path_and_query_reach_the_replica_and_ours_come_back(front: Front) -> None:
    conn = front.conn()
    conn.request("POST", "/function/echo/a%20b/c?q=1&r=%2F", body=b"hi",
                 headers={"X-Call-Id": "call-7", "X-Custom": "v", "Connection": "keep-alive, X-Drop",
                          "X-Drop": "secret", "Content-Type": "application/x-thing"})
    resp = conn.getresponse()
    seen = json.loads(resp.read())
    assert resp.status == 200
    assert seen["path"] == "/a%20b/c" and seen["query"] == "q=1&r=%2F"  # as the client spelled it
    assert base64.b64decode(seen["body_b64"]) == b"hi"
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert sent["x-call-id"] == "call-7" and sent["x-custom"] == "v"
    assert "x-drop" not in sent  # listed in Connection: hop-by-hop
    assert sent["x-forwarded-for"] == "127.0.0.1" and sent["x-forwarded-host"]
    assert int(sent["x-start-time"]) > 0
    assert resp.getheader("X-Call-Id") == "call-7"
    assert float(resp.getheader("X-Duration-Seconds")) > 0
    assert resp.getheader("X-Start-Time") == sent["x-start-time"]


def test_a_call_id_is_made_when_the_caller_sent_none(front: Front) -> None:
    conn = front.conn()
    conn.request("GET", "/function/echo")
    resp = conn.getresponse()
    seen = json.loads(resp.read())
    sent = {k.lower(): v for k, v in seen["headers"].items()}
    assert resp.status == 200 and len(resp.getheader("X-Call-Id")) == 36
    assert sent["x-call-id"] == resp.getheader("X-Call-Id")


def test_chunked_and_sized_bodies_arrive_whole_on_one_kept_alive_connection(front: Front) -> None:
    conn = front.conn()
    payload = bytes(range(256)) * 300  # 76,800 bytes: past the one-write size
    resp = _chunked(conn, "/function/echo", payload)
    assert resp.status == 200 and base64.b64decode(json.loads(resp.read())["body_b64"]) == payload
    sock = conn.sock
    conn.request("PUT", "/function/echo.openfaas-fn/x", body=b"z" * 10)
    resp = conn.getresponse()
    assert resp.status == 200 and base64.b64decode(json.loads(resp.read())["body_b64"]) == b"z" * 10
    assert conn.sock is sock


@pytest.mark.parametrize("path", ["/function/echo/big?bytes=1048576", "/function/echo/stream"])
def test_large_and_chunked_answers_are_streamed_intact(front: Front, path: str) -> None:
    conn = front.conn()
    want = b"x" * 1048576 if "big" in path else b"line 0\nline 1\nline 2\n"
    for _ in range(2):  # and the connection to the replica is reusable after each
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == want


@pytest.mark.parametrize("idle_close_s", [0.05, None], ids=["idle-close", "connection-close"])
def test_a_connection_the_replica_closed_is_not_reused(idle_close_s: float | None) -> None:
    replica = ClosingReplica(idle_close_s)
    backend = FakeBackend(replica_url=replica.url)
    backend.deploy(FunctionSpec("echo", "echo"))
    for front in serve_front(backend, ProviderSettings(basic_auth=False)):
        conn = front.conn()
        for _ in range(3):
            conn.request("POST", "/function/echo", body=b"hi")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"ok")
            time.sleep(0.2)  # the replica closes its side meanwhile
    assert replica.connections == 3


def test_a_refused_connection_is_reported_and_answered_502() -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there now
    backend = FakeBackend(replica_url=url)
    backend.deploy(FunctionSpec("gone", "gone"))
    for front in serve_front(backend, ProviderSettings(basic_auth=False)):
        conn = front.conn()
        conn.request("POST", "/function/gone", body=b"x")
        resp = conn.getresponse()
        text = resp.read().decode()
        assert resp.status == 502 and "can't reach service for: gone.openfaas-fn" in text
        assert [c for c in backend.calls if c[0] == "unreachable"] == [
            ("unreachable", ("openfaas-fn", "gone", url))] * 3  # tried three times, reported each


def test_unknown_function_and_invalid_name_are_client_errors(front: Front) -> None:
    conn = front.conn()
    conn.request("POST", "/function/nothere", body=b"x")
    resp = conn.getresponse()
    assert resp.status == 404 and resp.getheader("Content-Type").startswith("text/plain")
    resp.read()
    conn.request("POST", "/function/Bad_Name", body=b"x")
    resp = conn.getresponse()
    assert resp.status == 400
    resp.read()


def test_an_oversized_body_is_413_and_the_connection_closes(front: Front) -> None:
    conn = front.conn()
    conn.request("POST", "/function/echo", body=b"x" * ((1 << 20) + 1))
    resp = conn.getresponse()
    assert resp.status == 413
    resp.read()
    resp = _chunked(front.conn(), "/function/echo", b"y" * ((1 << 20) + 1000))
    assert resp.status == 413


def test_a_stalled_body_is_408_and_a_slow_client_holds_nothing(front: Front) -> None:
    slow = [socket.create_connection(("127.0.0.1", front.port)) for _ in range(50)]
    for s in slow:  # half-sent requests, on both sides of the front
        s.sendall(b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    conn = front.conn()
    conn.request("GET", "/healthz")  # answered while 50 clients stall
    assert conn.getresponse().status == 200
    s = slow[0]
    s.settimeout(5)
    assert s.recv(4096).startswith(b"HTTP/1.1 408")
    for s in slow:
        s.close()


def test_malformed_chunked_framing_is_a_400_not_a_500(front: Front) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as s:
        s.sendall(b"POST /function/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\nhello\r\n0\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")


def test_system_routes_are_served_by_flask_behind_the_loop(front: Front) -> None:
    conn = front.conn()
    fn = {"service": "other", "image": "img", "envVars": {"PAD": "x" * 3000}}
    resp = _chunked(conn, "/system/functions", json.dumps(fn).encode(),
                    {"Content-Type": "application/json"})
    assert resp.status == 202, resp.read()
    resp.read()
    conn.request("GET", "/system/function/other")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["envVars"]["PAD"] == "x" * 3000
    conn.request("POST", "/system/functions", body=b"{not json",
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400
    resp.read()


def test_a_followed_log_ends_when_its_client_leaves(front: Front) -> None:
    front.backend.add_log("openfaas-fn", "echo", "r1", "first line")
    before = threading.active_count()
    conn = front.conn()
    conn.request("GET", "/system/logs?name=echo&follow=true")
    resp = conn.getresponse()
    assert resp.status == 200 and b"first line" in resp.readline()
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    time.sleep(0.3)
    # The next line finds the client gone: the stream (and its source) is closed, not fed on.
    front.backend.add_log("openfaas-fn", "echo", "r1", "second line")
    deadline = time.monotonic() + 5
    while front.backend.open_follows() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert front.backend.open_follows() == 0
    assert threading.active_count() <= before + 8  # the pool's threads at most, none stuck


def test_the_kubernetes_backend_behind_the_loop(monkeypatch: pytest.MonkeyPatch,
                                                echo: EchoServer) -> None:
    """The Kubernetes backend (kmock for the API server) under the ASGI front: the first
    invocation, before its namespace was listed, resolves in a thread; later ones from the
    endpoint table on the loop (``try_resolve``), at the address the EndpointSlice gives."""
    import kmock._internal.parsing as kmock_parsing
    from kubernetes import client

    from gateway_plugin.kubernetes_backend import KubernetesSettings, make_kubernetes_backend
    from tests.integration.kube_helpers import FakeApiServer, _parse_path_with_namespaces
    from tests.integration.test_kubernetes_backend import NS, make_spec

    monkeypatch.setattr(kmock_parsing, "parse_path",
                        _parse_path_with_namespaces(kmock_parsing.parse_path))
    fake = FakeApiServer().start()
    cfg = client.Configuration()
    cfg.host = fake.url
    api = client.ApiClient(cfg)
    backend = make_kubernetes_backend(KubernetesSettings(api_url=fake.url, request_timeout_s=5))
    try:
        backend.deploy(make_spec(name="echo", annotations={}, share=GpuShare(), limits={},
                                 requests={}))
        client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(NS, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-abcde", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": int(echo.url.rsplit(":", 1)[1]),
                       "protocol": "TCP"}],
        })
        assert backend.try_resolve(NS, "echo") is None  # not listed yet: no API call made here
        for front in serve_front(backend, ProviderSettings(basic_auth=False)):  # type: ignore[arg-type]
            conn = front.conn()
            for i in range(3):
                conn.request("POST", "/function/echo/k8s", body=f"req {i}".encode())
                resp = conn.getresponse()
                seen = json.loads(resp.read())
                assert resp.status == 200 and seen["path"] == "/k8s"
                assert base64.b64decode(seen["body_b64"]) == f"req {i}".encode()
        assert backend.try_resolve(NS, "echo") == echo.url  # the table the loop reads
    finally:
        backend.close()
        api.close()
        fake.stop()
