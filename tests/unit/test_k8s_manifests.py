"""Every object the spec builders make, and every manifest, against the Kubernetes OpenAPI schemas.

``kubernetes-validate`` bundles the schemas, so this runs offline; strict mode also rejects unknown
fields (a typo in a field name is otherwise silently dropped by the API server). Versions: the
oldest and newest the installed package bundles, which bracket what the manifests support.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastgshare.redis_acl import RedisPasswords, kubernetes_secrets
from fastgshare.resources import GpuShare, ScaleBounds
from fastgshare.specs import FunctionSpec, Placement, ReplicaConfig
from gateway_plugin import k8s_specs as specs
from gateway_plugin.backend import SecretValue

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.25.0", "1.37.0")
"""Oldest and newest Kubernetes versions supported (and bundled by kubernetes-validate 1.37)."""

FULL = FunctionSpec(
    name="resnet", image="registry.local/resnet:1", env_process="python index.py",
    env_vars={"MODE": "fast", "FASTGSHARE_SM_PCT": "ignored: ours wins"},
    constraints=("node.kubernetes.io/instance-type=p3.2xlarge", "gpu==v100"),
    secrets=("db", "api-key"), labels={"team": "vision"},
    annotations={specs.NODE_KEY: "node-a", specs.GPU_UUID_KEY: "GPU-1234",
                 "topic": "images"},
    limits={"memory": "2Gi", "cpu": "2"}, requests={"memory": "1Gi", "cpu": "500m"},
    read_only_root_filesystem=True,
    share=GpuShare(24, 0.4, 0.8, 2**30, 69.0, "resnet50"), scale=ScaleBounds(0, 5),
)
MINIMAL = FunctionSpec(name="echo", image="echo:1")


def generated() -> list[tuple[str, dict[str, Any]]]:
    pod = specs.PodSettings(runtime_class="nvidia")
    config = ReplicaConfig("sm50", GpuShare(sm_pct=50), 2, Placement("n2", "GPU-9"))
    return [
        ("full deployment", specs.make_deployment(FULL, replicas=1, pod=pod)),
        ("minimal deployment", specs.make_deployment(MINIMAL, replicas=0, pod=pod)),
        ("configuration deployment",
         specs.make_deployment(FULL, replicas=2, pod=pod, config=config)),
        ("service", specs.make_service(FULL)),
        ("secret", specs.make_secret(SecretValue("db", "openfaas-fn", b"\x00\xffbytes"))),
        *((f"redis acl {s['metadata']['name']}", s) for s in kubernetes_secrets(RedisPasswords("a", "b"))),
    ]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{i} {doc['kind']}/{doc['metadata']['name']}", doc))
    return out


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("what", "obj"), generated() + manifests(),
                         ids=[w for w, _ in generated() + manifests()])
def test_valid_in_strict_mode(what: str, obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_pod_carries_the_sidecar_contract() -> None:
    dep = specs.make_deployment(FULL, replicas=1, pod=specs.PodSettings())
    pod = dep["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert container["command"] == ["python", "-m", "fast_manager.sidecar"]
    assert env["FASTGSHARE_SM_PCT"] == "24"  # the share wins over a user env var of that name
    assert env["FASTGSHARE_DEVICE"] == "gpu:GPU-1234"
    assert env["FASTGSHARE_MEM_BYTES"] == str(2**30)
    assert env["FASTGSHARE_SECRETS_DIR"] == "/var/openfaas/secrets"
    assert env["FASTGSHARE_REPLICA"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["fprocess"] == "python index.py"
    assert env["FASTGSHARE_MODEL"] == "resnet50"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-1234"
    assert pod["spec"]["hostIPC"] is True
    assert pod["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "p3.2xlarge",
                                           "gpu": "v100"}
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchFields"][0]["values"] == ["node-a"]
    assert pod["metadata"]["annotations"]["fastgshare/gpu_quota_limit"] == "0.8"
    sources = pod["spec"]["volumes"][0]["projected"]["sources"]
    assert [s["secret"]["items"][0]["path"] for s in sources] == ["db", "api-key"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/_/health", "port": 8080}


def test_unplaced_pod_is_a_cpu_replica_without_host_ipc() -> None:
    pod = specs.make_deployment(MINIMAL, replicas=1, pod=specs.PodSettings())["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["FASTGSHARE_DEVICE"] == "cpu:0"
    assert "hostIPC" not in pod["spec"] and "affinity" not in pod["spec"]


def test_spec_round_trips_through_its_annotation() -> None:
    assert specs.spec_from_json(specs.spec_as_json(FULL)) == FULL


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 3}}, {"b": {"c": 3, "d": None}}),
    ({"l": [1, 2]}, {"l": [2]}, {"l": [2]}),
    ({}, {"x": {"y": 1}}, {"x": {"y": 1}}),
])
def test_merge_patch(old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]) -> None:
    assert specs.merge_patch(old, new) == patch


@pytest.mark.parametrize(("raw", "text", "micros"), [
    ("2025-01-01T00:00:01.123456789Z hello world", "hello world", 123456),
    ("2025-01-01T00:00:01Z 2025-01-01T00:00:00.5+00:00 inner", "inner", 500000),
])
def test_log_lines(raw: str, text: str, micros: int) -> None:
    line = specs.as_log_line(raw, namespace="ns", name="f", instance="p")
    assert line is not None and line.text == text and line.timestamp.microsecond == micros


def test_ready_addresses_skip_unready_and_bracket_ipv6() -> None:
    slices = [{"ports": [{"port": 8080}], "endpoints": [
        {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
        {"addresses": ["fd00::1"]}]}]
    assert specs.ready_addresses(slices) == ["http://10.0.0.2:8080", "http://[fd00::1]:8080"]


def test_compose_file_is_valid() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; .ci/run does)")
    result = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_provider_deployment_runs_the_shipped_gunicorn_settings() -> None:
    """The Kubernetes manifest, the compose file and the image's default command all start the
    provider with gateway_plugin/gunicorn_conf.py (threads, keep-alive, the worker-exit hook), not
    settings of their own on the command line."""
    conf = ["gunicorn", "-c", "python:gateway_plugin.gunicorn_conf"]
    deployment = next(o for _, o in manifests() if o["kind"] == "Deployment"
                      and o["metadata"]["name"] == "fastgshare-provider")
    k8s = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "provider")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["provider"]
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD"))
    for what, argv in (("provider.yaml", k8s["command"]), ("docker-compose.yml", compose["command"]),
                       ("Dockerfile", json.loads(cmd[len("CMD"):]))):
        assert argv[:3] == conf, what
        assert argv[-1] == "gateway_plugin.wsgi:app", what
        assert not {"--threads", "--workers", "--timeout", "-w"} & set(argv), what


@pytest.mark.parametrize("spec", [FULL, MINIMAL], ids=["full", "minimal"])
def test_function_pods_run_restricted(spec: FunctionSpec) -> None:
    pod = specs.make_deployment(spec, replicas=1, pod=specs.PodSettings())["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": specs.FUNCTION_UID,
                                      "runAsGroup": specs.FUNCTION_UID,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx.get("readOnlyRootFilesystem", False) is spec.read_only_root_filesystem


def test_the_sidecar_alone_gets_the_redis_credential_from_a_secret() -> None:
    pod = specs.PodSettings(redis_url="redis://someone:leaked@redis.openfaas:6379/0")
    container = specs.make_deployment(FULL, replicas=1, pod=pod)["spec"]["template"]["spec"][
        "containers"][0]
    names = [e["name"] for e in container["env"]]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env[specs.REDIS_PASSWORD_VAR] == {"secretKeyRef": {
        "name": "fastgshare-redis-sidecar", "key": "password"}}
    # defined before the URL that refers to it (the kubelet expands in order); no old credentials
    assert names.index(specs.REDIS_PASSWORD_VAR) < names.index("REDIS_URL")
    assert env["REDIS_URL"] == (f"redis://fastgshare-sidecar:$({specs.REDIS_PASSWORD_VAR})"
                                "@redis.openfaas:6379/0")
    assert env["FASTGSHARE_SIDECAR_UNDUMPABLE"] == "on"
    bare = specs.make_deployment(FULL, replicas=1, pod=specs.PodSettings(redis_secret=""))
    bare_env = {e["name"]: e.get("value") for e in
                bare["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert specs.REDIS_PASSWORD_VAR not in bare_env
    assert bare_env["REDIS_URL"] == "redis://redis.openfaas:6379/0"


def test_network_policies_guard_redis_and_the_provider() -> None:
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (MANIFESTS / "network-policies.yaml").read_text()) if d}
    redis_from = docs["redis-clients"]["spec"]["ingress"][0]["from"]
    assert redis_from[0]["podSelector"]["matchExpressions"][0]["values"] == [
        "fastgshare-provider", "fastgshare-scheduler", "fastgshare-node-agent"]
    provider_from = docs["provider-clients"]["spec"]["ingress"][0]["from"]
    assert "gateway" in provider_from[0]["podSelector"]["matchExpressions"][0]["values"]
    redis_yaml = (MANIFESTS / "redis.yaml").read_text()
    assert "--aclfile" in redis_yaml and "fastgshare-redis" in redis_yaml
