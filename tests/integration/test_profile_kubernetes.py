"""Profiling and autoscaling on the Kubernetes backend, end to end: the profiler and the scheduler's
loop drive the provider (the real app over real HTTP) through ``fastgshare.provider_client``; the
provider runs the Kubernetes backend against kmock; real sidecars and workers stand in for the pods.

kmock runs no controllers, so ``Kubelet`` below plays the Deployment controller, the kubelet and the
EndpointSlice controller, as ``test_kubernetes_backend.play_controllers`` does, but with live
processes: each revision of a Deployment's pod template gets its replicas as pods, each a real
``fast_manager.sidecar`` started with the environment the backend wrote into the template (only
this machine's addresses and paths swapped in, and the cores a CPU manager would give its share)
on its own loopback address (``127.0.0.N``, as pods have their own IPs), and, once its health
check answers, the Pod, the EndpointSlice and the Deployment status a cluster would show. So the
shadow deployment per configuration, readiness, the replica addresses (the EndpointSlice's,
through ``/system/fastgshare/replicas``), the table, and the scheduler's added replicas all flow
through the backend; nothing reads a backend key or guesses an address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock._internal.parsing as kmock_parsing
import pytest
import redis
import requests
from kubernetes import client
from werkzeug.serving import make_server

from fast_manager.node_agent import discover_cpu, register
from fast_profiler import store
from fast_profiler.gateway import Gateway
from fast_profiler.jobs import profile_and_store
from fast_profiler.planner import GridSpec
from fast_profiler.store import ProfileState
from fast_profiler.table import ProfilePoint, ProfileTable, device_type_of
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.loop import LoopSettings, SchedulerLoop
from fastgshare import keys
from fastgshare.cores import pick_cores
from fastgshare.provider_client import ProviderClient
from fastgshare.redis_server import EmbeddedRedis, free_port
from gateway_plugin import k8s_specs as specs
from gateway_plugin.app import create_app
from gateway_plugin.k8s_endpoints import SERVICE_NAME_LABEL
from gateway_plugin.kubernetes_backend import KubernetesSettings, make_kubernetes_backend
from gateway_plugin.settings import ProviderSettings
from tests.integration.kube_helpers import FakeApiServer, _parse_path_with_namespaces
from tests.integration.platform_helpers import FAST_PROFILE

pytestmark = pytest.mark.slow

NS = "openfaas-fn"
REPO = Path(__file__).resolve().parents[2]
HANDLER = Path(__file__).parent / "handlers" / "matmul"
MERGE = "application/merge-patch+json"


@dataclass
class Pod:
    name: str
    deployment: str
    template: str
    """The pod template it runs (JSON), to see a new revision."""
    ip: str
    port: int
    cores: tuple[int, ...]
    proc: subprocess.Popen[bytes]
    published: bool = False


@dataclass
class Kubelet:
    """The controllers kmock lacks, for every Deployment in ``NS``, with real sidecar processes."""

    api: client.ApiClient
    redis_url: str
    log_dir: Path
    pods: dict[str, list[Pod]] = field(default_factory=dict)
    """A Deployment's pods, by its name."""
    started: list[Pod] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Kubelet:
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubelet")
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for pods in list(self.pods.values()):
            for pod in pods:
                self._kill(pod)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._sync()
            except Exception as e:  # a test assertion reports it; the loop keeps playing
                self.errors.append(repr(e))

    def _sync(self) -> None:
        apps = client.AppsV1Api(self.api)
        deps = json.loads(apps.list_namespaced_deployment(NS, _preload_content=False).data)["items"]
        live = set()
        for dep in deps:
            name = dep["metadata"]["name"]
            live.add(name)
            template = json.dumps(dep["spec"]["template"], sort_keys=True)
            want = int(dep["spec"].get("replicas") or 0)
            pods = self.pods.setdefault(name, [])
            for pod in [p for p in pods if p.template != template]:
                self._delete(pod)
            for pod in pods[want:]:
                self._delete(pod)
            while len(pods) < want:
                self._create(name, dep, template)
            for pod in pods:
                if not pod.published and self._healthy(pod):
                    self._publish(pod, dep)
        for name in set(self.pods) - live:
            for pod in list(self.pods[name]):
                self._delete(pod)

    def _create(self, deployment: str, dep: dict[str, Any], template: str) -> Pod:
        n = len(self.started) + 2
        name, ip, port = f"{deployment}-pod-{n}", f"127.0.0.{n}", free_port()
        container = dep["spec"]["template"]["spec"]["containers"][0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGSHARE_")}
        env.update({e["name"]: e["value"] for e in container.get("env") or [] if "value" in e})
        # What a CPU manager would give a pod with this share: that many whole cores, the least
        # used first.
        load = Counter(c for pods in self.pods.values() for p in pods for c in p.cores)
        cores = pick_cores(sorted(os.sched_getaffinity(0)), int(env.get("FASTGSHARE_SM_PCT", "100")), load)
        secrets = self.log_dir / name / "secrets"
        secrets.mkdir(parents=True)
        env.update({  # this machine's addresses and paths for the image's
            "FASTGSHARE_REPLICA": name, "FASTGSHARE_BIND": ip, "FASTGSHARE_PORT": str(port),
            "FASTGSHARE_HANDLER_DIR": str(HANDLER), "FASTGSHARE_SECRETS_DIR": str(secrets),
            "FASTGSHARE_CPU_CORES": ",".join(map(str, cores)),
        })
        command = [sys.executable if c == "python" else c for c in container["command"]]
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        pod = Pod(name, deployment, template, ip, port, cores, proc)
        self.pods[deployment].append(pod)
        self.started.append(pod)
        return pod

    @staticmethod
    def _healthy(pod: Pod) -> bool:
        try:
            return requests.get(f"http://{pod.ip}:{pod.port}/_/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _publish(self, pod: Pod, dep: dict[str, Any]) -> None:
        template = dep["spec"]["template"]
        service = template["metadata"]["labels"][specs.FUNCTION_LABEL]
        client.CoreV1Api(self.api).create_namespaced_pod(NS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": NS, "labels": template["metadata"]["labels"],
                         "annotations": template["metadata"].get("annotations") or {}},
            "spec": {"containers": [{"name": "function", "image": "x"}]},
            "status": {"podIP": pod.ip, "conditions": [{"type": "Ready", "status": "True"}]},
        })
        client.DiscoveryV1Api(self.api).create_namespaced_endpoint_slice(NS, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": pod.name, "namespace": NS,
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [pod.ip], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": pod.port, "protocol": "TCP"}],
        })
        pod.published = True
        self._available(pod.deployment)

    def _available(self, deployment: str) -> None:
        n = sum(1 for p in self.pods.get(deployment, []) if p.published)
        try:
            client.AppsV1Api(self.api).patch_namespaced_deployment_status(
                deployment, NS, {"status": {"availableReplicas": n}}, _content_type=MERGE)
        except client.ApiException as e:
            if e.status != 404:  # removed meanwhile
                raise

    def _delete(self, pod: Pod) -> None:
        self.pods[pod.deployment].remove(pod)
        if pod.published:
            client.CoreV1Api(self.api).delete_namespaced_pod(pod.name, NS)
            client.DiscoveryV1Api(self.api).delete_namespaced_endpoint_slice(pod.name, NS)
            self._available(pod.deployment)
        self._kill(pod)

    @staticmethod
    def _kill(pod: Pod) -> None:
        if pod.proc.poll() is None:
            pod.proc.send_signal(signal.SIGTERM)
            try:
                pod.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait()


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, str, Kubelet]]:
    """(provider URL, Redis URL, kubelet): the provider on the Kubernetes backend over kmock."""
    monkeypatch.setattr(kmock_parsing, "parse_path", _parse_path_with_namespaces(kmock_parsing.parse_path))
    fake = FakeApiServer().start()
    rds = EmbeddedRedis(tmp_path / "redis", persist=False).start()
    cfg = client.Configuration()
    cfg.host = fake.url
    api = client.ApiClient(cfg)
    client.CoreV1Api(api).create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": NS}})
    backend = make_kubernetes_backend(KubernetesSettings(
        api_url=fake.url, request_timeout_s=5, endpoints_refresh_s=0.2,
        pod=specs.PodSettings(redis_url=rds.url)))
    settings = ProviderSettings(state_dir=tmp_path, backend_kind="kubernetes", basic_auth=False,
                                invoke_timeout_s=30.0)
    server = make_server("127.0.0.1", 0, create_app(backend, settings), threaded=True)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    (tmp_path / "pods").mkdir()
    kubelet = Kubelet(api, rds.url, tmp_path / "pods").start()
    # The node agent's DaemonSet registers the node's device.
    node = redis.Redis.from_url(rds.url)
    register(node, [discover_cpu("node-a", time.time())], ttl_s=3600)
    node.close()
    try:
        yield f"http://127.0.0.1:{server.server_port}", rds.url, kubelet
    finally:
        kubelet.close()
        server.shutdown()
        serving.join(5)
        backend.close()
        api.close()
        rds.stop()
        fake.stop()


def test_profile_on_the_kubernetes_backend(cluster: tuple[str, str, Kubelet]) -> None:
    url, redis_url, kubelet = cluster
    provider = ProviderClient(url)
    assert provider.orchestration() == "kubernetes"
    # The user's function (scaled to zero: the profile runs on its shadow alone).
    provider.deploy({"service": "mm", "image": "registry.local/mm:1",
                     "annotations": {"fastgshare/slo_ms": "250"},
                     "labels": {"com.openfaas.scale.min": "0"}})
    rds = redis.Redis.from_url(redis_url)
    gw = Gateway(url, None, rds)
    cores = len(os.sched_getaffinity(0))
    spec = GridSpec(sm_grid=(50, 100), quota_grid=(0.5, 1.0), device_cores=cores)
    result = profile_and_store(gw, "mm", spec=spec, settings=FAST_PROFILE)
    assert not kubelet.errors, kubelet.errors

    # Every configuration measured ran in a pod of its own, at the address its EndpointSlice gave.
    shadows = [p for p in kubelet.started if p.deployment == "mm-profile"]
    assert len(shadows) == len(result.measurements) >= 2
    assert len({p.ip for p in shadows}) == len(shadows)
    table = result.table
    assert table.function == "mm" and table.device_type == device_type_of(gw.device())
    assert all(p.error_rate < 0.05 for p in result.points)
    assert table.throughput(100, 1.0) > 0 and table.throughput(100, 0.5) > 0
    # Stored, marked done, and the shadow is gone from the cluster (its pod stopped).
    assert store.load(rds, "mm", table.device_type) == table
    assert store.get_status(rds, NS, "mm")["state"] == ProfileState.DONE.value
    assert provider.replicas_of("mm-profile") == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(p.proc.poll() is None for p in shadows):
        time.sleep(0.2)
    assert all(p.proc.poll() is not None for p in shadows)
    rds.close()


def test_autoscale_on_the_kubernetes_backend(cluster: tuple[str, str, Kubelet]) -> None:
    """The scheduler's loop, as ``python -m fast_scheduler`` runs it, on the same provider: from a
    profile table and the demand the provider counted, it adds replicas through the provider, the
    backend makes them Deployments, and the requests reach every new pod at its EndpointSlice
    address. Time is the loop's clock, stepped by the test between bursts of real requests."""
    url, redis_url, kubelet = cluster
    provider = ProviderClient(url)
    provider.deploy({"service": "mm", "image": "registry.local/mm:1",
                     "annotations": {"fastgshare/slo_ms": "250", "fastgshare/gpu_sm_partition": "50"},
                     "labels": {"com.openfaas.scale.min": "1", "com.openfaas.scale.max": "4"}})
    rds = redis.Redis.from_url(redis_url)
    device_type = device_type_of(Gateway(url, None, rds).device())
    # One config (half the cores, full quota) credited with 10 rps: 15 rps needs a second replica,
    # which fits on the node's other half (the base replica has one half).
    store.save(rds, ProfileTable("mm", device_type, (ProfilePoint(50, 1.0, 1, 10.0, 50.0, 55.0, 60.0),),
                                 mem_bytes=200 * 2**20))
    wait_until(lambda: len([r for r in provider.replicas_of("mm") if r.url]) == 1, 120, "the base pod")

    now = [1000.0]
    loop = SchedulerLoop(provider, rds, LoopSettings(
        namespace=NS, autoscale=AutoscaleSettings(standby_frac=0.0, scale_down_delay_s=1e6,
                                                  idle_to_zero_s=1e6)), clock=lambda: now[0])
    with ThreadPoolExecutor(8) as pool:
        for _ in range(4):
            loop.tick()
            codes = list(pool.map(lambda _: provider.invoke("mm", b"{}", timeout_s=60).status_code,
                                  range(15)))
            assert codes == [200] * 15
            now[0] += 1.0  # 15 requests in the loop's second: 15 rps
        loop.tick()
    decision = json.loads(rds.hget(keys.scheduler_decisions(), f"{NS}/mm") or b"{}")
    assert decision.get("replicas") == 2 and decision.get("feasible"), decision

    # The added replicas run as pods at their own EndpointSlice addresses, and serve.
    wait_until(lambda: len([r for r in provider.replicas_of("mm") if r.url]) >= 2, 180,
               "the replicas the scheduler added")
    ready = [r for r in provider.replicas_of("mm") if r.url]
    assert len({r.url for r in ready}) == len(ready)
    assert all(r.url.startswith("http://127.0.0.") for r in ready)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: provider.invoke("mm", b"{}", timeout_s=60).status_code, range(40)))
    assert codes == [200] * 40
    served = [requests.get(f"{r.url}/_/stats", timeout=5).json()["requests"] for r in ready]
    assert all(n > 0 for n in served), served
    assert not kubelet.errors, kubelet.errors
    rds.close()


def wait_until(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
