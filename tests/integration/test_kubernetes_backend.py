"""The Kubernetes backend against kmock's fake API server, over real HTTP, with the real client.

kmock stores objects and answers create/read/list/patch/delete with 404/409 like an API server, but
it runs no controllers and has gaps (see ``../shared/LIBRARIES.md``). Where a controller would act,
the tests act for it, and say so: they write Deployment status, Pods and EndpointSlices themselves.
The backend re-applies label selectors client-side, so kmock ignoring them does not hide bugs in
what it filters. The server runs on its own event loop in a thread, so the tests stay synchronous,
as the provider is.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kmock
import kmock._internal.parsing as kmock_parsing
import pytest
from kubernetes import client

from fastgshare.resources import GpuShare, ScaleBounds
from fastgshare.specs import FunctionSpec, Placement, ReplicaConfig
from gateway_plugin import k8s_specs as specs
from gateway_plugin.backend import SecretValue
from gateway_plugin.errors import BackendFailure, Conflict, Invalid, NoReplicaReady, NotFound
from gateway_plugin.kubernetes_backend import (
    KubernetesBackend,
    KubernetesSettings,
    make_kubernetes_backend,
)
from tests.integration.kube_helpers import FakeApiServer, _parse_path_with_namespaces

NS = "openfaas-fn"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    monkeypatch.setattr(kmock_parsing, "parse_path",
                        _parse_path_with_namespaces(kmock_parsing.parse_path))
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(fake: FakeApiServer) -> Iterator[client.ApiClient]:
    """A second client, playing the controllers and kubectl."""
    cfg = client.Configuration()
    cfg.host = fake.url
    c = client.ApiClient(cfg)
    yield c
    c.close()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(fake: FakeApiServer, clock: Clock) -> Iterator[KubernetesBackend]:
    settings = KubernetesSettings(api_url=fake.url, request_timeout_s=5)
    b = make_kubernetes_backend(settings)
    # Same backend, with the test's clock (the factory wires the real one).
    b = KubernetesBackend(b._api, settings, monotonic=clock, sleep=clock.sleep,
                          now=lambda: datetime(2025, 1, 1, 0, 1, tzinfo=UTC))
    yield b
    b.close()


def raw(api: client.ApiClient, fn: Any, *args: Any) -> dict[str, Any]:
    return json.loads(fn(*args, _preload_content=False).data)


def make_spec(**kw: Any) -> FunctionSpec:
    base: dict[str, Any] = dict(
        name="resnet", image="registry.local/resnet:1", namespace=NS,
        env_vars={"MODE": "fast"}, labels={"team": "vision"},
        annotations={"fastgshare/gpu_uuid": "GPU-1234", "fastgshare/node": "node-a"},
        limits={"memory": "2Gi"}, requests={"cpu": "500m"},
        share=GpuShare(sm_pct=24, quota_request_frac=0.4, quota_limit_frac=0.8,
                       mem_bytes=2**30),
        scale=ScaleBounds(2, 5),
    )
    base.update(kw)
    return FunctionSpec(**base)


def play_controllers(api: client.ApiClient, name: str, ips: list[str], ready: bool = True,
                     available: int | None = None) -> None:
    """Do what the Deployment, kubelet and EndpointSlice controllers would do (kmock has none)."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    disc = client.DiscoveryV1Api(api)
    apps.patch_namespaced_deployment_status(
        name, NS, {"status": {"availableReplicas": len(ips) if available is None else available}},
        _content_type="application/merge-patch+json")
    for i, ip in enumerate(ips):
        core.create_namespaced_pod(NS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-pod-{i}", "namespace": NS,
                         "labels": {specs.FUNCTION_LABEL: name, specs.CONFIG_LABEL: ""},
                         "annotations": {"fastgshare/gpu_sm_partition": "24",
                                         specs.GPU_UUID_KEY: "GPU-1234"}},
            "spec": {"containers": [{"name": "function", "image": "x"}]},
            "status": {"podIP": ip, "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [{"name": "function", "restartCount": i, "ready": ready,
                                       "image": "x", "imageID": "", "state": {}}]},
        })
    disc.create_namespaced_endpoint_slice(NS, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-abcde", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip in ips],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })


def test_deploy_creates_deployment_and_service(backend: KubernetesBackend,
                                               api: client.ApiClient) -> None:
    spec = make_spec()
    backend.deploy(spec)
    dep = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet", NS)
    assert dep["spec"]["replicas"] == 2  # com.openfaas.scale.min
    assert dep["metadata"]["labels"][specs.FUNCTION_LABEL] == "resnet"
    assert dep["metadata"]["annotations"]["fastgshare/gpu_sm_partition"] == "24"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FASTGSHARE_DEVICE"] == "gpu:GPU-1234"
    assert env["FASTGSHARE_QUOTA_REQUEST"] == "0.4"
    assert env["MODE"] == "fast"
    svc = raw(api, client.CoreV1Api(api).read_namespaced_service, "resnet", NS)
    assert svc["spec"]["selector"] == {specs.FUNCTION_LABEL: "resnet"}

    with pytest.raises(Conflict) as e:
        backend.deploy(spec)
    assert "409" in str(e.value) and e.value.__cause__ is not None


def test_deploy_refuses_missing_secret_and_unlabelled_namespace(
        backend: KubernetesBackend) -> None:
    with pytest.raises(Invalid, match="secrets: 'db-password'"):
        backend.deploy(make_spec(secrets=("db-password",)))
    with pytest.raises(Invalid, match="openfaas=1"):
        backend.deploy(make_spec(namespace="elsewhere"))


def test_update_replaces_spec_and_keeps_replicas(backend: KubernetesBackend,
                                                 api: client.ApiClient) -> None:
    backend.deploy(make_spec())
    backend.scale(NS, "resnet", 4)
    backend.update(make_spec(image="registry.local/resnet:2", env_vars={"OTHER": "1"},
                             labels={}, share=GpuShare(sm_pct=50)))
    dep = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet", NS)
    assert dep["spec"]["replicas"] == 4
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/resnet:2"
    env = {e["name"] for e in container["env"]}
    assert "OTHER" in env and "MODE" not in env  # removed env vars are gone, not merged
    assert "team" not in dep["metadata"]["labels"]  # removed labels are deleted by the patch
    assert "fastgshare/gpu_mem" not in dep["metadata"]["annotations"]
    assert backend.status(NS, "resnet").spec.share.sm_pct == 50

    with pytest.raises(NotFound):
        backend.update(make_spec(name="nothing"))


def test_scale_status_and_list(backend: KubernetesBackend, api: client.ApiClient) -> None:
    backend.deploy(make_spec())
    state = backend.status(NS, "resnet")
    assert (state.replicas, state.available_replicas, state.status) == (2, 0, "starting")
    assert state.spec == make_spec()  # rebuilt from the cluster alone: the provider is stateless

    play_controllers(api, "resnet", ["10.0.0.1", "10.0.0.2"])
    backend.scale(NS, "resnet", 3)
    state = backend.status(NS, "resnet")
    assert (state.replicas, state.available_replicas, state.status) == (3, 2, "ready")
    assert [r.url for r in state.replica_status] == ["http://10.0.0.1:8080",
                                                     "http://10.0.0.2:8080"]
    assert state.replica_status[0].device_id == "gpu:GPU-1234"
    assert state.replica_status[1].restarts == 1

    backend.deploy(make_spec(name="bert", share=GpuShare()))
    assert [s.spec.name for s in backend.list(NS)] == ["bert", "resnet"]
    with pytest.raises(NotFound):
        backend.scale(NS, "nothing", 1)
    with pytest.raises(NotFound):
        backend.status(NS, "nothing")


def test_configurations_are_deployments_of_their_own(backend: KubernetesBackend,
                                                     api: client.ApiClient) -> None:
    backend.deploy(make_spec())
    wide = ReplicaConfig("sm50", GpuShare(sm_pct=50), 1, Placement("node-b", "GPU-9"))
    backend.apply_configurations(NS, "resnet", [wide])
    dep = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet-sm50", NS)
    assert dep["spec"]["template"]["metadata"]["annotations"]["fastgshare/gpu_sm_partition"] == "50"
    assert backend.status(NS, "resnet").replicas == 3

    backend.apply_configurations(NS, "resnet", [replace(wide, replicas=2, batch=4)])
    assert backend.status(NS, "resnet").replicas == 4
    (cfg,) = backend.status(NS, "resnet").configs
    assert cfg.batch == 4  # read back from the Deployment
    dep = raw(api, client.AppsV1Api(api).read_namespaced_deployment, "resnet-sm50", NS)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FASTGSHARE_BATCH"] == "4"
    assert "FASTGSHARE_SLO_MS" not in env  # no fastgshare/slo_ms: no deadline batching
    backend.apply_configurations(NS, "resnet", [])
    with pytest.raises(client.ApiException):
        client.AppsV1Api(api).read_namespaced_deployment("resnet-sm50", NS)
    with pytest.raises(Invalid):
        backend.apply_configurations(NS, "resnet", [replace(wide, config_id="Not_A_Label")])


def test_remove_deletes_everything(backend: KubernetesBackend, api: client.ApiClient) -> None:
    backend.deploy(make_spec())
    backend.apply_configurations(NS, "resnet", [ReplicaConfig("c1", GpuShare(), 1)])
    backend.remove(NS, "resnet")
    assert backend.list(NS) == []
    with pytest.raises(client.ApiException):
        client.CoreV1Api(api).read_namespaced_service("resnet", NS)
    with pytest.raises(NotFound):
        backend.remove(NS, "resnet")


def test_resolve_picks_ready_endpoints_round_robin(backend: KubernetesBackend,
                                                   api: client.ApiClient, clock: Clock) -> None:
    with pytest.raises(NotFound):
        backend.resolve(NS, "resnet")
    backend.deploy(make_spec())
    with pytest.raises(NoReplicaReady):
        backend.resolve(NS, "resnet")
    assert backend.wait_ready(NS, "resnet", timeout_s=1.0) is False
    play_controllers(api, "resnet", ["10.0.0.1", "10.0.0.2"])
    assert backend.wait_ready(NS, "resnet", timeout_s=1.0) is True
    picks = {backend.resolve(NS, "resnet") for _ in range(4)}
    assert picks == {"http://10.0.0.1:8080", "http://10.0.0.2:8080"}


def test_resolve_skips_unready_endpoints(backend: KubernetesBackend,
                                         api: client.ApiClient) -> None:
    backend.deploy(make_spec())
    play_controllers(api, "resnet", ["10.0.0.7"], ready=False, available=0)
    with pytest.raises(NoReplicaReady):
        backend.resolve(NS, "resnet")
    assert backend.status(NS, "resnet").replica_status[0].ready is False


def test_logs_from_pods_oldest_first(backend: KubernetesBackend, api: client.ApiClient,
                                     fake: FakeApiServer) -> None:
    backend.deploy(make_spec())
    play_controllers(api, "resnet", ["10.0.0.1", "10.0.0.2"])
    # kmock has no kubelet: the log subresource answers what the test tells it, as text/plain.
    plain = kmock.headers({"Content-Type": "text/plain"})
    fake.react(f"get /api/v1/namespaces/{NS}/pods/resnet-pod-0/log", plain,
               b"2025-01-01T00:00:01.000000001Z 2025-01-01T00:00:00.500000Z loaded\n"
               b"2025-01-01T00:00:03Z served\n")
    fake.react(f"get /api/v1/namespaces/{NS}/pods/resnet-pod-1/log", plain,
               b"2025-01-01T00:00:02Z other replica\nnot a log line\n")
    lines = list(backend.logs(NS, "resnet", since=None, tail=None, follow=False))
    assert [(ln.instance, ln.text) for ln in lines] == [
        ("resnet-pod-0", "loaded"), ("resnet-pod-1", "other replica"), ("resnet-pod-0", "served")]
    assert lines[0].timestamp == datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)

    since = datetime(2025, 1, 1, 0, 0, 2, tzinfo=UTC)
    assert [ln.text for ln in backend.logs(NS, "resnet", since=since, tail=None,
                                           follow=False)] == ["other replica", "served"]
    assert [ln.text for ln in backend.logs(NS, "resnet", since=None, tail=1,
                                           follow=False)] == ["served"]
    followed = list(backend.logs(NS, "resnet", since=None, tail=None, follow=True))
    assert sorted(ln.text for ln in followed) == ["loaded", "other replica", "served"]
    with pytest.raises(NotFound):
        list(backend.logs(NS, "nothing", since=None, tail=None, follow=False))


def test_secrets_and_namespaces(backend: KubernetesBackend, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for name, labels in (("team-a", {"openfaas": "1"}), ("kube-system", {})):
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": name, "labels": labels}})
    assert backend.namespaces() == [NS, "team-a"]

    backend.create_secret(SecretValue("db", NS, b"s3cret"))
    with pytest.raises(Conflict):
        backend.create_secret(SecretValue("db", NS, b"again"))
    core.create_namespaced_secret(NS, {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "not-ours"}, "data": {}})
    assert backend.list_secrets(NS) == ["db"]
    backend.update_secret(SecretValue("db", NS, b"n3w"))
    stored = raw(api, core.read_namespaced_secret, "db", NS)
    assert base64.b64decode(stored["data"]["db"]) == b"n3w"
    with pytest.raises(NotFound, match="not an OpenFaaS function secret"):
        backend.remove_secret(NS, "not-ours")
    with pytest.raises(NotFound):
        backend.update_secret(SecretValue("nope", NS, b""))

    backend.deploy(make_spec(secrets=("db",)))  # the secret exists now
    backend.remove_secret(NS, "db")
    assert backend.list_secrets(NS) == []
    with pytest.raises(NotFound):
        backend.remove_secret(NS, "db")


@pytest.mark.parametrize(("status", "error"), [
    (400, Invalid), (422, Invalid), (403, BackendFailure), (500, BackendFailure),
    (404, NotFound), (409, Conflict)])
def test_api_errors_are_mapped_with_cause(backend: KubernetesBackend, fake: FakeApiServer,
                                          status: int, error: type[Exception]) -> None:
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": status,
            "reason": "Testing", "message": f"the server said no ({status})"}
    fake.react(f"post /apis/apps/v1/namespaces/{NS}/deployments",
               kmock.headers({"Content-Type": "application/json"}), status, body)
    with pytest.raises(error) as e:
        backend.deploy(make_spec())
    assert f"the server said no ({status})" in str(e.value)
    assert isinstance(e.value.__cause__, client.ApiException)


def test_unreachable_api_is_a_backend_failure(fake: FakeApiServer) -> None:
    url = fake.url
    fake.stop()
    b = make_kubernetes_backend(KubernetesSettings(api_url=url, request_timeout_s=1))
    with pytest.raises(BackendFailure, match="unreachable"):
        b.list(NS)
    b.close()


def test_resolve_reads_a_table_refreshed_in_the_background(fake: FakeApiServer,
                                                           api: client.ApiClient) -> None:
    """The invoke path no longer lists EndpointSlices per request: a new endpoint shows up only
    when the background thread re-lists (and then without any call from resolve)."""
    settings = KubernetesSettings(api_url=fake.url, request_timeout_s=5, endpoints_refresh_s=0.3)
    backend = make_kubernetes_backend(settings)
    try:
        backend.deploy(make_spec())
        play_controllers(api, "resnet", ["10.0.0.1"])
        assert backend.resolve(NS, "resnet") == "http://10.0.0.1:8080"  # lists the namespace once
        client.DiscoveryV1Api(api).create_namespaced_endpoint_slice(NS, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "resnet-fghij", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": "resnet"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.2"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
        assert {backend.resolve(NS, "resnet") for _ in range(4)} == {"http://10.0.0.1:8080"}
        deadline = time.monotonic() + 10
        while len({backend.resolve(NS, "resnet") for _ in range(4)}) < 2:
            assert time.monotonic() < deadline, "the background refresh never saw the new slice"
            time.sleep(0.05)
        backend.unreachable(NS, "resnet", "http://10.0.0.2:8080")  # refused: skipped at once
        assert {backend.resolve(NS, "resnet") for _ in range(4)} == {"http://10.0.0.1:8080"}
    finally:
        backend.close()
