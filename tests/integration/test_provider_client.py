"""The provider client against the real provider app over real HTTP (werkzeug on port 0), with the
fake backend behind it: every call the CLI, profiler, scheduler and benchmarks make."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from werkzeug.serving import make_server

from fastgshare.provider_client import (
    ProviderClient,
    ProviderRefused,
    ProviderUnreachable,
    ReplicaAddress,
)
from gateway_plugin.app import create_app
from gateway_plugin.backend import ReplicaStatus
from gateway_plugin.k8s_endpoints import at_endpoints
from gateway_plugin.settings import ProviderSettings
from tests.fakes import EchoServer, FakeBackend
from tests.integration.provider_fixtures import *  # noqa: F403
from tests.integration.provider_fixtures import PASSWORD, USER

BODY = {"service": "resnet", "image": "reg/resnet:1",
        "annotations": {"fastgshare/gpu_sm_partition": "24"}}


@pytest.fixture
def provider(backend: FakeBackend, settings: ProviderSettings) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app(backend, settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def pc(provider: str) -> Iterator[ProviderClient]:
    c = ProviderClient(provider + "/", (USER, PASSWORD), timeout_s=5)
    yield c
    c.close()


def test_deploy_puts_then_posts_and_lists(pc: ProviderClient, backend: FakeBackend) -> None:
    assert pc.deploy(BODY) == 202  # PUT answered 404: created by POST
    assert [c[0] for c in backend.calls] == ["update", "deploy"]
    assert pc.deploy({**BODY, "image": "reg/resnet:2"}) == 202  # now an update
    assert [c[0] for c in backend.calls] == ["update", "deploy", "update"]
    (fn,) = pc.functions()
    assert (fn["name"], fn["image"]) == ("resnet", "reg/resnet:2")
    status = pc.status("resnet")
    assert status is not None and status["replicas"] == 1
    assert pc.status("nothing") is None


def test_replicas_carry_each_invoke_address(pc: ProviderClient, echo: EchoServer) -> None:
    pc.deploy(BODY)
    pc.scale("resnet", 2)
    (entry,) = pc.replicas()
    assert entry["name"] == "resnet" and entry["replicas"] == 2
    assert pc.replicas_of("resnet") == [
        ReplicaAddress("resnet-0", echo.url, True, 24, "", "cpu:0"),
        ReplicaAddress("resnet-1", echo.url, True, 24, "", "cpu:0")]
    assert pc.replicas_of("nothing") == []


def test_configurations_scale_remove(pc: ProviderClient, backend: FakeBackend) -> None:
    pc.deploy(BODY)
    pc.apply_configurations("resnet", [{"configId": "c1", "replicas": 2, "batch": 4,
                                        "share": {"fastgshare/gpu_sm_partition": "50"}}])
    (cfg,) = pc.replicas()[0]["configurations"]
    assert (cfg["configId"], cfg["replicas"], cfg["batch"]) == ("c1", 2, 4)
    pc.scale("resnet", 3)
    assert backend.calls[-1] == ("scale", ("openfaas-fn", "resnet", 3))
    assert pc.remove("resnet") is True
    assert pc.remove("resnet") is False
    assert pc.functions() == []


def test_invoke_and_logs(pc: ProviderClient, backend: FakeBackend) -> None:
    pc.deploy(BODY)
    resp = pc.invoke("resnet", b'{"x": 1}')
    assert resp.status_code == 200
    assert base64.b64decode(resp.json()["body_b64"]) == b'{"x": 1}'
    assert pc.invoke("nothing", b"{}").status_code == 404  # a function's answer, not an error
    backend.add_log("openfaas-fn", "resnet", "resnet-0", "loaded")
    backend.add_log("openfaas-fn", "resnet", "resnet-0", "serving")
    assert [m["text"] for m in pc.logs("resnet")] == ["loaded", "serving"]
    assert [m["text"] for m in pc.logs("resnet", tail=1)] == ["serving"]


def test_refusals_name_status_and_credentials(provider: str, pc: ProviderClient) -> None:
    with pytest.raises(ProviderRefused) as e:
        pc.deploy({**BODY, "annotations": {"fastgshare/gpu_sm_partition": "0"}})
    assert e.value.status == 400 and "fastgshare/gpu_sm_partition" in e.value.text
    with pytest.raises(ProviderRefused) as e:
        pc.scale("nothing", 1)
    assert e.value.status == 404
    wrong = ProviderClient(provider, (USER, "wrong"), auth_source="faas-cli config")
    with pytest.raises(ProviderRefused) as e:
        wrong.functions()
    assert e.value.status == 401 and "credentials: faas-cli config" in str(e.value)
    with pytest.raises(ProviderRefused):
        list(wrong.logs("resnet"))


def test_unreachable_provider_chains_the_cause() -> None:
    pc = ProviderClient("http://127.0.0.1:9", timeout_s=1)
    with pytest.raises(ProviderUnreachable) as e:
        pc.functions()
    assert e.value.__cause__ is not None
    with pytest.raises(ProviderUnreachable):
        pc.invoke("x", b"{}")


def test_kubernetes_replicas_take_their_endpoint_address() -> None:
    """A pod's address is its ready EndpointSlice entry (with the slice's port); none: no address."""
    pods = [ReplicaStatus("a", "gpu:G", True, "http://10.0.0.1:8080"),
            ReplicaStatus("b", "gpu:G", True, "http://10.0.0.2:8080"),
            ReplicaStatus("c", "gpu:G", False, "")]
    got = at_endpoints(pods, ["http://10.0.0.1:18080"])
    assert [r.url for r in got] == ["http://10.0.0.1:18080", "", ""]
    assert got[0] == replace(pods[0], url="http://10.0.0.1:18080")
