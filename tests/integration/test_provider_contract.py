"""The faas-provider contract, route by route, over a fake backend and a real echo replica.

Covers every route, status code and field; chunked bodies; auth on and off; bad input (each a
clear 4xx with the stored state unchanged); scale from zero; header and query pass-through.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from gateway_plugin.app import create_app
from gateway_plugin.auth import CredentialsMissing
from gateway_plugin.settings import ProviderSettings
from tests.fakes import FakeBackend
from tests.integration.provider_fixtures import *  # noqa: F403
from tests.integration.provider_fixtures import AUTH

FN = {"service": "echo", "image": "echo:latest",
      "annotations": {"fastgshare/gpu_sm_partition": "50", "fastgshare/gpu_quota_limit": "0.5"},
      "labels": {"com.openfaas.scale.max": "4"}}


def send(client: FlaskClient, method: str, path: str, body: Any = None, *, chunked: bool = False,
         auth: bool = True, headers: dict[str, str] | None = None, **kw: Any) -> TestResponse:
    """A request as the gateway sends it; ``chunked``: Transfer-Encoding chunked, no length."""
    h = dict(AUTH if auth else {})
    h.update(headers or {})
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if chunked and data is not None:
        h["Transfer-Encoding"] = "chunked"
        return client.open(path, method=method, input_stream=io.BytesIO(data), headers=h, **kw)
    return client.open(path, method=method, data=data, headers=h, **kw)


def deploy(client: FlaskClient, **extra: Any) -> TestResponse:
    r = send(client, "POST", "/system/functions", {**FN, **extra})
    assert r.status_code == 202, r.text
    return r


# ---- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/system/functions"), ("POST", "/system/functions"), ("PUT", "/system/functions"),
    ("DELETE", "/system/functions"), ("GET", "/system/function/echo"),
    ("POST", "/system/scale-function/echo"), ("GET", "/system/info"), ("GET", "/system/namespaces"),
    ("GET", "/system/secrets"), ("POST", "/system/secrets"), ("PUT", "/system/secrets"),
    ("DELETE", "/system/secrets"), ("GET", "/system/logs?name=echo"), ("GET", "/system/nope"),
])
def test_system_routes_need_basic_auth(client: FlaskClient, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
                    {"Authorization": "Bearer x"}, {"Authorization": "Basic !!!"}):
        r = client.open(path, method=method, headers=headers)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="Restricted"'
        assert r.text == "invalid credentials"


def test_open_routes_need_no_auth(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/function/echo").status_code == 200


def test_auth_off(backend: FakeBackend, settings: ProviderSettings, tmp_path: Any) -> None:
    from dataclasses import replace
    off = create_app(backend, replace(settings, basic_auth=False, secret_mount_path=tmp_path / "none"))
    assert off.test_client().get("/system/functions").status_code == 200


def test_auth_on_without_credential_files_refuses_to_start(backend: FakeBackend, tmp_path: Any) -> None:
    with pytest.raises(CredentialsMissing, match="basic-auth-user"):
        create_app(backend, ProviderSettings(state_dir=tmp_path, basic_auth=True))


# ---- functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_deploy_list_describe(client: FlaskClient, backend: FakeBackend, chunked: bool) -> None:
    r = send(client, "POST", "/system/functions", {**FN, "envVars": {"A": "1"}, "secrets": []},
             chunked=chunked)
    assert r.status_code == 202 and r.data == b""
    r = send(client, "GET", "/system/functions")
    assert r.status_code == 200 and r.mimetype == "application/json"
    [status] = r.json
    assert status["name"] == "echo" and status["image"] == "echo:latest"
    assert status["namespace"] == "openfaas-fn" and status["envVars"] == {"A": "1"}
    assert status["replicas"] == 1 and status["availableReplicas"] == 1
    assert status["invocationCount"] == 0
    assert datetime.fromisoformat(status["createdAt"]) <= datetime.now(UTC)
    assert status["createdAt"].endswith("Z")
    assert status["labels"] == {"com.openfaas.scale.max": "4"}
    assert status["annotations"]["fastgshare/gpu_sm_partition"] == "50"
    assert status["annotations"]["fastgshare/gpu_quota_request"] == "0.5"  # effective share shown
    assert "secrets" not in status and "limits" not in status  # omitempty
    one = send(client, "GET", "/system/function/echo")
    assert one.status_code == 200 and one.json == status
    assert send(client, "GET", "/system/function/echo?namespace=openfaas-fn").json == status


def test_post_existing_is_409_and_put_updates(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    assert send(client, "POST", "/system/functions", FN).status_code == 409
    r = send(client, "PUT", "/system/functions", {**FN, "image": "echo:2"}, chunked=True)
    assert r.status_code == 202
    assert send(client, "GET", "/system/function/echo").json["image"] == "echo:2"


def test_put_and_delete_unknown_are_404(client: FlaskClient, backend: FakeBackend) -> None:
    assert send(client, "PUT", "/system/functions", FN).status_code == 404
    assert send(client, "DELETE", "/system/functions", {"functionName": "echo"}).status_code == 404
    assert send(client, "GET", "/system/function/echo").status_code == 404
    assert send(client, "POST", "/system/scale-function/echo", {"replicas": 1}).status_code == 404


@pytest.mark.parametrize("chunked", [False, True])
def test_delete(client: FlaskClient, backend: FakeBackend, chunked: bool) -> None:
    deploy(client)
    r = send(client, "DELETE", "/system/functions?namespace=openfaas-fn", {"functionName": "echo"},
             chunked=chunked)
    assert r.status_code == 202
    assert send(client, "GET", "/system/functions").json == []


def test_scale(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    r = send(client, "POST", "/system/scale-function/echo", {"serviceName": "echo", "replicas": 3},
             chunked=True)
    assert r.status_code == 202
    assert send(client, "GET", "/system/function/echo").json["replicas"] == 3
    send(client, "POST", "/system/scale-function/echo?namespace=openfaas-fn", {"replicas": 99})
    assert send(client, "GET", "/system/function/echo").json["replicas"] == 4  # clamped to max
    send(client, "POST", "/system/scale-function/echo", {"replicas": 0})
    status = send(client, "GET", "/system/function/echo").json
    assert status["replicas"] == 0 and status["availableReplicas"] == 0


def test_info_and_namespaces(client: FlaskClient) -> None:
    info = send(client, "GET", "/system/info").json
    assert info["provider"] == "fastgshare" and info["orchestration"] == "local"
    assert set(info["version"]) == {"sha", "release"}
    assert send(client, "GET", "/system/namespaces").json == ["openfaas-fn"]


def test_unknown_route_and_method(client: FlaskClient) -> None:
    assert send(client, "GET", "/system/nope").status_code == 404
    r = send(client, "PATCH", "/system/functions")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


# ---- bad input: a clear 4xx and nothing stored changes ----------------------------------------------


BAD_REQUESTS = [
    ("POST", "/system/functions", b"{not json", 400, "malformed JSON"),
    ("POST", "/system/functions", b"[]", 400, "JSON object"),
    ("POST", "/system/functions", b"", 400, "malformed JSON"),
    ("POST", "/system/functions", {**FN, "service": "Bad_Name"}, 400, "service"),
    ("POST", "/system/functions", {**FN, "service": "x" * 64}, 400, "service"),
    ("POST", "/system/functions", {**FN, "image": ""}, 400, "image"),
    ("POST", "/system/functions", {**FN, "namespace": "other"}, 400, "namespace"),
    ("POST", "/system/functions", {**FN, "secrets": ["missing"]}, 400, "missing"),
    ("POST", "/system/functions", {**FN, "service": "new",
                                   "annotations": {"fastgshare/gpu_sm_partition": "150"}},
     400, "fastgshare/gpu_sm_partition"),
    ("POST", "/system/functions", {**FN, "service": "new",
                                   "labels": {"fastgshare/gpu_quota_request": "2"}},
     400, "fastgshare/gpu_quota_request"),
    ("POST", "/system/functions", {**FN, "service": "new",
                                   "labels": {"com.openfaas.scale.max": "-3"}},
     400, "com.openfaas.scale.max"),
    ("POST", "/system/functions", {**FN, "service": "new", "x": "y" * 70_000}, 413, "larger"),
    ("PUT", "/system/functions", {**FN, "annotations": {"fastgshare/gpu_mem": "lots"}},
     400, "fastgshare/gpu_mem"),
    ("PUT", "/system/functions", b"{", 400, "malformed JSON"),
    ("DELETE", "/system/functions", b"{}", 400, "functionName"),
    ("DELETE", "/system/functions", b"nope", 400, "malformed JSON"),
    ("DELETE", "/system/functions?namespace=Bad", {"functionName": "echo"}, 400, "namespace"),
    ("POST", "/system/scale-function/echo", b"{", 400, "malformed JSON"),
    ("POST", "/system/scale-function/echo", {"replicas": -1}, 400, "replicas"),
    ("POST", "/system/scale-function/echo", {"replicas": "2"}, 400, "replicas"),
    ("POST", "/system/scale-function/echo", {}, 400, "replicas"),
    ("POST", "/system/scale-function/Bad_Name", {"replicas": 1}, 400, "name"),
    ("GET", "/system/function/Bad_Name", None, 400, "name"),
    ("GET", "/system/functions?namespace=kube-system", None, 400, "namespace"),
    ("POST", "/system/secrets", {"name": "Bad Name", "value": "x"}, 400, "name"),
    ("POST", "/system/secrets", {"name": "k", "rawValue": "***"}, 400, "rawValue"),
    ("POST", "/system/secrets", {"name": "existing", "value": "x"}, 409, "exists"),
    ("PUT", "/system/secrets", {"name": "absent", "value": "x"}, 404, "not found"),
    ("DELETE", "/system/secrets", {"name": "absent"}, 404, "not found"),
    ("POST", "/system/secrets", b"[", 400, "malformed JSON"),
    ("GET", "/system/logs", None, 400, "name"),
    ("GET", "/system/logs?name=echo&tail=x", None, 400, "tail"),
    ("GET", "/system/logs?name=echo&since=yesterday", None, 400, "since"),
    ("GET", "/system/logs?name=absent", None, 404, "not found"),
]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("method, path, body, status, words", BAD_REQUESTS)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    client: FlaskClient, backend: FakeBackend, method: str, path: str, body: Any, status: int,
    words: str, chunked: bool,
) -> None:
    deploy(client)
    assert send(client, "POST", "/system/secrets", {"name": "existing", "value": "v"}).status_code == 202
    before = backend.snapshot()
    r = send(client, method, path, body, chunked=chunked)
    assert r.status_code == status, r.text
    assert words in r.text and r.mimetype == "text/plain"
    assert backend.snapshot() == before


# ---- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_secret_lifecycle(client: FlaskClient, backend: FakeBackend, chunked: bool) -> None:
    assert send(client, "GET", "/system/secrets").json == []
    r = send(client, "POST", "/system/secrets", {"name": "api-key", "value": "one"}, chunked=chunked)
    assert r.status_code == 202
    raw = bytes(range(256))
    r = send(client, "POST", "/system/secrets",
             {"name": "blob", "namespace": "openfaas-fn", "rawValue": base64.b64encode(raw).decode()},
             chunked=chunked)
    assert r.status_code == 202 and backend.secret_value("openfaas-fn", "blob") == raw
    listed = send(client, "GET", "/system/secrets?namespace=openfaas-fn").json
    assert listed == [{"name": "api-key", "namespace": "openfaas-fn"},
                      {"name": "blob", "namespace": "openfaas-fn"}]
    assert send(client, "PUT", "/system/secrets", {"name": "api-key", "value": "two"},
                chunked=chunked).status_code == 202
    assert backend.secret_value("openfaas-fn", "api-key") == b"two"
    deploy(client, secrets=["api-key"])
    assert send(client, "DELETE", "/system/secrets", {"name": "api-key"}, chunked=chunked).status_code == 202
    assert [s["name"] for s in send(client, "GET", "/system/secrets").json] == ["blob"]


# ---- logs ---------------------------------------------------------------------------------------------


def _lines(r: TestResponse) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.data.decode().splitlines()]


def test_logs(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    t0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    for i in range(5):
        backend.add_log("openfaas-fn", "echo", f"echo-{i % 2}", f"line {i}", t0 + timedelta(seconds=i))
    r = send(client, "GET", "/system/logs?name=echo")
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    lines = _lines(r)
    assert [m["text"] for m in lines] == [f"line {i}" for i in range(5)]
    assert lines[0] == {"name": "echo", "namespace": "openfaas-fn", "instance": "echo-0",
                        "timestamp": "2024-05-01T10:00:00Z", "text": "line 0"}
    assert [m["text"] for m in _lines(send(client, "GET", "/system/logs?name=echo&tail=2"))] == \
        ["line 3", "line 4"]
    since = "2024-05-01T12:00:03%2B02:00"
    got = _lines(send(client, "GET", f"/system/logs?name=echo&namespace=openfaas-fn&since={since}"))
    assert [m["text"] for m in got] == ["line 3", "line 4"]
    got = _lines(send(client, "GET", "/system/logs?name=echo&instance=echo-1&tail=-1"))
    assert [m["text"] for m in got] == ["line 1", "line 3"]


def test_logs_follow_streams_new_lines(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    backend.add_log("openfaas-fn", "echo", "echo-0", "before")
    r = send(client, "GET", "/system/logs?name=echo&follow=true", buffered=False)
    assert r.status_code == 200
    chunks = iter(r.response)
    assert json.loads(next(chunks))["text"] == "before"
    threading.Timer(0.05, backend.add_log, ("openfaas-fn", "echo", "echo-0", "after")).start()
    assert json.loads(next(chunks))["text"] == "after"
    r.close()


# ---- invoke ------------------------------------------------------------------------------------------


def test_invoke_passes_method_path_query_headers_and_body(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    r = client.post("/function/echo.openfaas-fn/a/b%20c/?x=1&y=%2F&x=2", data=b"payload",
                    headers={"X-Custom": "yes", "Connection": "X-Hop", "X-Hop": "drop me",
                             "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x",
                             "Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    seen = r.json
    assert seen["method"] == "POST" and seen["path"] == "/a/b%20c/" and seen["query"] == "x=1&y=%2F&x=2"
    assert base64.b64decode(seen["body_b64"]) == b"payload"
    h = {k.lower(): v for k, v in seen["headers"].items()}
    assert h["x-custom"] == "yes" and h["content-type"] == "application/octet-stream"
    for gone in ("x-hop", "keep-alive", "proxy-authorization"):
        assert gone not in h
    assert h["x-call-id"] == r.headers["X-Call-Id"] and len(h["x-call-id"]) >= 32
    assert h["x-start-time"] == r.headers["X-Start-Time"] and int(h["x-start-time"]) > 0
    assert "x-forwarded-for" in h and "x-forwarded-host" in h
    assert float(r.headers["X-Duration-Seconds"]) >= 0
    assert r.headers["X-Replica"] == "echo" and "Keep-Alive" not in r.headers


def test_invoke_keeps_callers_call_id_and_reads_chunked_bodies(
    client: FlaskClient, backend: FakeBackend,
) -> None:
    deploy(client)
    body = b"0123456789" * 10_000
    r = send(client, "PUT", "/function/echo", body, chunked=True, auth=False,
             headers={"X-Call-Id": "abc-123", "X-Start-Time": "42"})
    assert r.status_code == 200 and r.headers["X-Call-Id"] == "abc-123"
    assert base64.b64decode(r.json["body_b64"]) == body
    assert r.json["headers"]["X-Start-Time"] == "42"
    for method in ("GET", "DELETE", "PATCH", "OPTIONS"):
        r = client.open("/function/echo/", method=method)
        assert r.status_code == 200 and r.json["method"] == method and r.json["path"] == "/"
    r = client.head("/function/echo")
    assert r.status_code == 200 and r.data == b""


def test_invoke_streams_and_passes_status(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client)
    r = client.get("/function/echo/stream")
    assert r.status_code == 200 and r.data == b"line 0\nline 1\nline 2\n"
    assert r.is_streamed or r.headers.get("Content-Length") is None
    r = client.get("/function/echo/big?bytes=1048576")
    assert r.status_code == 200 and len(r.data) == 1 << 20
    assert client.get("/function/echo/status/418").status_code == 418


def test_invoke_errors(client: FlaskClient, backend: FakeBackend, settings: ProviderSettings) -> None:
    r = client.get("/function/absent")
    assert r.status_code == 404 and "absent" in r.text
    assert client.get("/function/Bad_Name").status_code == 400
    deploy(client)
    r = client.post("/function/echo", data=b"x" * (settings.max_invoke_body_bytes + 1))
    assert r.status_code == 413
    r = send(client, "POST", "/function/echo", b"x" * (settings.max_invoke_body_bytes + 1), chunked=True)
    assert r.status_code == 413


def test_invoke_503_when_no_replica_becomes_ready(backend: FakeBackend, settings: ProviderSettings) -> None:
    from dataclasses import replace
    client = create_app(backend, replace(settings, scale_from_zero_timeout_s=0.1)).test_client()
    deploy(client, service="stuck")
    backend.never_ready.add("stuck")
    r = client.get("/function/stuck")
    assert r.status_code == 503 and "stuck" in r.text and "ready" in r.text
    # never answered by a replica, but it arrived: demand the scheduler must see
    status = send(client, "GET", "/system/function/stuck").json
    assert status["fastgshareInvocationsStarted"] == 1 and status["invocationCount"] == 0
    assert 'gateway_function_invocation_started_total{function_name="stuck.openfaas-fn"} 1.0' \
        in client.get("/metrics").text


def test_invoke_502_when_replica_unreachable(settings: ProviderSettings) -> None:
    backend = FakeBackend(replica_url="http://127.0.0.1:9")  # discard port: nothing listens
    client = create_app(backend, settings).test_client()
    deploy(client)
    r = client.get("/function/echo")
    assert r.status_code == 502 and "echo" in r.text


def test_invoke_504_when_replica_too_slow(backend: FakeBackend, settings: ProviderSettings) -> None:
    from dataclasses import replace
    client = create_app(backend, replace(settings, invoke_timeout_s=0.2)).test_client()
    deploy(client)
    assert client.get("/function/echo/sleep?s=1").status_code == 504


def test_scale_from_zero_on_first_invoke(client: FlaskClient, backend: FakeBackend) -> None:
    deploy(client, labels={"com.openfaas.scale.min": "2"})
    send(client, "POST", "/system/scale-function/echo", {"replicas": 0})
    backend.start_delay_s = 0.2
    started = time.monotonic()
    r = client.post("/function/echo", data=b"wake up")
    assert r.status_code == 200 and base64.b64decode(r.json["body_b64"]) == b"wake up"
    assert time.monotonic() - started >= 0.15  # it waited for the replica, it was not refused
    assert ("scale", ("openfaas-fn", "echo", 2)) in backend.calls
    assert send(client, "GET", "/system/function/echo").json["replicas"] == 2


# ---- metrics -------------------------------------------------------------------------------------------


def test_metrics_use_gateway_names_and_feed_invocation_count(
    client: FlaskClient, backend: FakeBackend,
) -> None:
    deploy(client)
    for _ in range(3):
        client.get("/function/echo")
    client.get("/function/echo/status/500")
    text = client.get("/metrics").text
    assert 'gateway_function_invocation_total{code="200",function_name="echo.openfaas-fn"} 3.0' in text
    assert 'gateway_function_invocation_total{code="500",function_name="echo.openfaas-fn"} 1.0' in text
    assert 'gateway_functions_seconds_count{code="200",function_name="echo.openfaas-fn"} 3.0' in text
    assert 'gateway_service_count{function_name="echo.openfaas-fn"} 1.0' in text
    assert 'fastgshare_replica_ready{device="cpu:0",function_name="echo.openfaas-fn",replica="echo-0"} 1.0' \
        in text
    assert send(client, "GET", "/system/function/echo").json["invocationCount"] == 4
    listed = send(client, "GET", "/system/functions").json
    assert [f["fastgshareInvocationsStarted"] for f in listed if f["name"] == "echo"] == [4]
