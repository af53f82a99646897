"""Kubernetes objects for functions, as plain dicts, and the reverse translation.

Pure: no ``kubernetes`` import, no I/O, no clock, no environment. ``kubernetes_backend`` sends what
``make_*`` builds and reads back what ``as_*`` parses; the manifest tests validate the same dicts
against the Kubernetes OpenAPI schemas. Pods get the sidecar as their entrypoint with the environment
of ``docs/architecture.md``; the desired spec travels in an annotation so that the provider can be
stateless and rebuild a ``FunctionSpec`` from the cluster alone.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastgshare.redis_acl import SIDECAR_USER as SIDECAR_REDIS_USER
from fastgshare.resources import GpuShare, ScaleBounds, merged_labels
from fastgshare.specs import FunctionSpec, Placement, ReplicaConfig

from .backend import LogLine, ReplicaStatus, SecretValue
from .errors import FunctionCannotStart

FUNCTION_LABEL = "faas_function"
"""Label OpenFaaS (faas-netes) puts on a function's Deployment, pods and Service."""
CONFIG_LABEL = "fastgshare/config"
"""Label naming the replica configuration a Deployment runs (empty for the base one)."""
BATCH_KEY = "fastgshare/batch"
"""Annotation of a configuration's Deployment: its workers' dynamic batch size."""
BATCH_LIMIT_KEY = "fastgshare/batch-limit"
"""Annotation of a configuration's Deployment, on the Deployment only (not its pod template, so a
change starts no rollout): the scheduler's batch limit (``ReplicaConfig.batch_limit``), recorded
and reported but applied to no pod here (docs/kubernetes.md)."""
SPEC_ANNOTATION = "fastgshare/spec"
"""Deployment annotation holding the desired ``FunctionSpec`` as JSON (the provider keeps none)."""
NODE_KEY = "fastgshare/node"
"""Annotation/label: the node the scheduler placed a configuration on."""
GPU_UUID_KEY = "fastgshare/gpu_uuid"
"""Annotation/label: the GPU (NVML UUID) the scheduler placed a configuration on."""
SECRET_MANAGED_BY = ("app.kubernetes.io/managed-by", "openfaas")
"""Label faas-netes puts on function secrets; only such secrets are listed, changed or removed."""
NAMESPACE_LABEL = ("openfaas", "1")
"""Label of namespaces functions may be deployed to (as faas-netes)."""

SIDECAR_PORT = 8080
"""The sidecar listens here in every pod; the Service and probes point at it."""
HEALTH_PATH = "/_/health"
METRICS_PATH = "/_/metrics"
SECRETS_DIR = "/var/openfaas/secrets"
"""Where a function's secrets appear, one file per secret (OpenFaaS convention)."""
CONTAINER_NAME = "function"


FUNCTION_UID = 12000
"""The python3-torch template's ``app`` user (function_templates/python3-torch/Dockerfile)."""
REDIS_PASSWORD_VAR = "FASTGSHARE_REDIS_PASSWORD"
"""The sidecar's Redis password, from ``PodSettings.redis_secret``; never passed to the worker."""


def pod_redis_url(url: str, with_secret: bool) -> str:
    """The sidecar's ``REDIS_URL``: the sidecar user with its password expanded by the kubelet
    from ``REDIS_PASSWORD_VAR`` (defined before it in the container's env)."""
    scheme, sep, rest = url.partition("://")
    host = rest.rpartition("@")[2]
    if not with_secret:
        return f"{scheme}{sep}{host}"
    return f"{scheme}{sep}{SIDECAR_REDIS_USER}:$({REDIS_PASSWORD_VAR})@{host}"


@dataclass(frozen=True)
class PodSettings:
    """What every function pod shares, set by the operator rather than per function."""

    redis_url: str = "redis://redis.openfaas:6379/0"
    """The shared Redis (token arbiter, metrics) as seen from pods."""
    sidecar_command: tuple[str, ...] = ("python", "-m", "fast_manager.sidecar")
    """The container entrypoint: the sidecar, which starts the worker."""
    handler_dir: str = "/home/app/function"
    """``FASTGSHARE_HANDLER_DIR`` inside function images (the python3-torch template layout)."""
    mps_pipe_dir: str = "/tmp/nvidia-mps"
    """Host directory of the MPS control daemon's pipes, mounted at the same path in GPU pods."""
    runtime_class: str = ""
    """``runtimeClassName`` for GPU pods (e.g. ``nvidia``); empty uses the node's default runtime."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of function containers."""
    redis_secret: str = "fastgshare-redis-sidecar"
    """Secret in the function namespace whose key ``password`` is the sidecars' Redis password
    (``python -m fastgshare.redis_acl kubernetes``); empty: pods reach Redis unauthenticated."""
    run_as_user: int = FUNCTION_UID
    """Numeric uid (and gid) of function containers: ``runAsNonRoot`` can only be checked
    against a number, and every pod on an MPS GPU must share one (MPS serves one user at a time)."""


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def placement_of(spec: FunctionSpec) -> Placement:
    """The placement named by the spec's annotations (or labels), if any."""
    merged = merged_labels(spec.labels, spec.annotations)
    return Placement(merged.get(NODE_KEY, ""), merged.get(GPU_UUID_KEY, ""))


def deployment_name(name: str, config_id: str = "") -> str:
    """The base Deployment keeps the function's name (as faas-netes); configurations add a suffix."""
    return f"{name}-{config_id}" if config_id else name


def valid_config_id(config_id: str) -> bool:
    """A configuration id must make a DNS label together with the function name."""
    return bool(_NAME_RE.match(config_id)) and len(config_id) <= 20


def device_id(placement: Placement) -> str:
    """``gpu:<uuid>`` when placed on a GPU; otherwise the replica runs on its pod's CPU."""
    return f"gpu:{placement.gpu_uuid}" if placement.gpu_uuid else "cpu:0"


def spec_as_json(spec: FunctionSpec) -> str:
    """The spec as the JSON stored in ``SPEC_ANNOTATION``."""
    return json.dumps({
        "name": spec.name, "image": spec.image, "namespace": spec.namespace,
        "envProcess": spec.env_process, "envVars": dict(spec.env_vars),
        "constraints": list(spec.constraints), "secrets": list(spec.secrets),
        "labels": dict(spec.labels), "annotations": dict(spec.annotations),
        "limits": dict(spec.limits), "requests": dict(spec.requests),
        "readOnlyRootFilesystem": spec.read_only_root_filesystem,
        "share": {
            "sm_pct": spec.share.sm_pct, "quota_request_frac": spec.share.quota_request_frac,
            "quota_limit_frac": spec.share.quota_limit_frac, "mem_bytes": spec.share.mem_bytes,
            "slo_ms": spec.share.slo_ms, "model": spec.share.model,
        },
        "scale": {"min": spec.scale.min_replicas, "max": spec.scale.max_replicas},
    }, sort_keys=True)


def spec_from_json(raw: str) -> FunctionSpec:
    """Inverse of ``spec_as_json``; raises ValueError (or KeyError) on a damaged annotation."""
    d = json.loads(raw)
    return FunctionSpec(
        name=d["name"], image=d["image"], namespace=d["namespace"],
        env_process=d.get("envProcess", ""), env_vars=d.get("envVars", {}),
        constraints=tuple(d.get("constraints", ())), secrets=tuple(d.get("secrets", ())),
        labels=d.get("labels", {}), annotations=d.get("annotations", {}),
        limits=d.get("limits", {}), requests=d.get("requests", {}),
        read_only_root_filesystem=bool(d.get("readOnlyRootFilesystem", False)),
        share=GpuShare(**d.get("share", {})),
        scale=ScaleBounds(d["scale"]["min"], d["scale"]["max"]) if "scale" in d else ScaleBounds(),
    )


def _node_selector(constraints: Sequence[str]) -> dict[str, str]:
    # faas-netes turns "key=value" (or "key==value") constraints into a nodeSelector.
    out: dict[str, str] = {}
    for c in constraints:
        key, sep, value = c.replace("==", "=").partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _env(spec: FunctionSpec, share: GpuShare, placement: Placement,
         pod: PodSettings, batch: int = 1) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in sorted(spec.env_vars.items())]
    if spec.env_process:
        env.append({"name": "fprocess", "value": spec.env_process})
    ours: dict[str, str] = {
        "FASTGSHARE_FUNCTION": spec.name,
        "FASTGSHARE_NAMESPACE": spec.namespace,
        "FASTGSHARE_PORT": str(SIDECAR_PORT),
        "FASTGSHARE_BIND": "0.0.0.0",
        "FASTGSHARE_HANDLER_DIR": pod.handler_dir,
        "FASTGSHARE_SM_PCT": str(share.sm_pct),
        "FASTGSHARE_QUOTA_REQUEST": f"{share.quota_request_frac:g}",
        "FASTGSHARE_QUOTA_LIMIT": f"{share.quota_limit_frac:g}",
        "FASTGSHARE_SECRETS_DIR": SECRETS_DIR,
        "REDIS_URL": pod_redis_url(pod.redis_url, bool(pod.redis_secret)),
        # The worker shares the sidecar's user here: the sidecar makes itself non-dumpable, so
        # the worker cannot read its environment (the Redis password) from /proc.
        "FASTGSHARE_SIDECAR_UNDUMPABLE": "on",
    }
    if share.mem_bytes is not None:
        ours["FASTGSHARE_MEM_BYTES"] = str(share.mem_bytes)
    if share.model:
        ours["FASTGSHARE_MODEL"] = share.model
    if share.slo_ms is not None:  # the worker forms batches by this deadline, up to FASTGSHARE_BATCH
        ours["FASTGSHARE_SLO_MS"] = f"{share.slo_ms:g}"
    ours["FASTGSHARE_DEVICE"] = device_id(placement)
    if batch > 1:
        ours["FASTGSHARE_BATCH"] = str(batch)
    if placement.gpu_uuid:
        ours["FASTGSHARE_MPS_PIPE_DIR"] = pod.mps_pipe_dir
        # The NVIDIA container runtime exposes exactly this GPU; no nvidia.com/gpu request, since
        # the device plugin would hand out whole GPUs, which is what sharing avoids.
        ours["NVIDIA_VISIBLE_DEVICES"] = placement.gpu_uuid
    env = [e for e in env if e["name"] not in ours and e["name"] != REDIS_PASSWORD_VAR]
    if pod.redis_secret:  # before REDIS_URL, which refers to it
        env.append({"name": REDIS_PASSWORD_VAR, "valueFrom": {"secretKeyRef": {
            "name": pod.redis_secret, "key": "password"}}})
    env += [{"name": k, "value": v} for k, v in ours.items()]
    # The replica id is the pod name, known only once the pod exists.
    env.append({"name": "FASTGSHARE_REPLICA",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    return env


def _probe(failure_threshold: int, period_s: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": HEALTH_PATH, "port": SIDECAR_PORT},
        "periodSeconds": period_s, "timeoutSeconds": 2, "failureThreshold": failure_threshold,
    }


def _share_annotations(share: GpuShare, placement: Placement) -> dict[str, str]:
    out = share.as_annotations()
    if placement.node:
        out[NODE_KEY] = placement.node
    if placement.gpu_uuid:
        out[GPU_UUID_KEY] = placement.gpu_uuid
    return out


def make_deployment(spec: FunctionSpec, *, replicas: int, pod: PodSettings,
                    config: ReplicaConfig | None = None) -> dict[str, Any]:
    """The Deployment running ``spec`` (its base configuration, or ``config``)."""
    share = config.share if config else spec.share
    placement = config.placement if config else placement_of(spec)
    config_id = config.config_id if config else ""
    name = deployment_name(spec.name, config_id)
    selector = {FUNCTION_LABEL: spec.name, CONFIG_LABEL: config_id}
    labels = {**spec.labels, **selector}
    batch = {BATCH_KEY: str(config.batch)} if config and config.batch > 1 else {}
    limit = ({BATCH_LIMIT_KEY: str(config.batch_limit)}
             if config and config.batch_limit is not None else {})
    pod_annotations = {
        **spec.annotations, **_share_annotations(share, placement), **batch,
        "prometheus.io/scrape": "true", "prometheus.io/port": str(SIDECAR_PORT),
        "prometheus.io/path": METRICS_PATH,
    }
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": pod.image_pull_policy,
        "command": list(pod.sidecar_command),
        "env": _env(spec, share, placement, pod, config.batch if config else 1),
        "ports": [{"name": "http", "containerPort": SIDECAR_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe(failure_threshold=3, period_s=2),
        "livenessProbe": _probe(failure_threshold=3, period_s=10),
        # Loading a model can take minutes; liveness starts only after the first success.
        "startupProbe": _probe(failure_threshold=120, period_s=5),
        "volumeMounts": [],
    }
    resources = {k: v for k, v in (("limits", dict(spec.limits)),
                                   ("requests", dict(spec.requests))) if v}
    if resources:
        container["resources"] = resources
    volumes: list[dict[str, Any]] = []
    if spec.secrets:
        volumes.append({"name": "secrets", "projected": {"sources": [
            {"secret": {"name": s, "items": [{"key": s, "path": s}]}} for s in spec.secrets]}})
        container["volumeMounts"].append(
            {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True})
    # The function's code is someone else's: no root, no new privileges, no capabilities, the
    # runtime's default seccomp filter (the restricted Pod Security Standard).
    container["securityContext"] = {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}}
    if spec.read_only_root_filesystem:
        container["securityContext"]["readOnlyRootFilesystem"] = True
        volumes.append({"name": "tmp", "emptyDir": {}})
        container["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    pod_spec: dict[str, Any] = {
        "containers": [container], "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # a function has no business with the API server
        "securityContext": {"runAsNonRoot": True, "runAsUser": pod.run_as_user,
                            "runAsGroup": pod.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if placement.gpu_uuid:
        # MPS clients must share the IPC namespace and pipe directory of the control daemon.
        pod_spec["hostIPC"] = True
        volumes.append({"name": "mps", "hostPath": {"path": pod.mps_pipe_dir,
                                                    "type": "DirectoryOrCreate"}})
        container["volumeMounts"].append({"name": "mps", "mountPath": pod.mps_pipe_dir})
        if pod.runtime_class:
            pod_spec["runtimeClassName"] = pod.runtime_class
    if not container["volumeMounts"]:
        del container["volumeMounts"]
    if volumes:
        pod_spec["volumes"] = volumes
    node_selector = _node_selector(spec.constraints)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if placement.node:
        # matchFields on metadata.name pins to the node by name, as the DaemonSet controller does,
        # while the default scheduler still checks that the pod fits.
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [placement.node]}]}]}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": spec.namespace, "labels": labels,
            "annotations": {**spec.annotations, **_share_annotations(share, placement), **batch,
                            **limit, SPEC_ANNOTATION: spec_as_json(spec)},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def make_service(spec: FunctionSpec) -> dict[str, Any]:
    """The function's ClusterIP Service, selecting the pods of every configuration."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": spec.namespace,
                     "labels": {FUNCTION_LABEL: spec.name}},
        "spec": {
            "type": "ClusterIP",
            "selector": {FUNCTION_LABEL: spec.name},
            "ports": [{"name": "http", "port": SIDECAR_PORT, "targetPort": SIDECAR_PORT,
                       "protocol": "TCP"}],
        },
    }


def make_secret(secret: SecretValue) -> dict[str, Any]:
    """A function secret: one key named like the secret, so it mounts as ``SECRETS_DIR/<name>``."""
    key, value = SECRET_MANAGED_BY
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret.name, "namespace": secret.namespace, "labels": {key: value}},
        "data": {secret.name: base64.b64encode(secret.raw).decode("ascii")},
    }


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 JSON merge patch turning ``old`` into ``new`` (keys removed become null).

    Used for updates instead of PUT so that fields Kubernetes owns (status, defaults) stay intact
    while keys the provider wrote before and no longer wants are deleted.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif old[k] != v:
            patch[k] = merge_patch(old[k], v)
    return patch


def has_labels(obj: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    """Whether ``obj`` carries every label of ``wanted`` (servers may ignore selectors)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def parse_time(raw: str | None) -> datetime | None:
    """An RFC 3339 timestamp (Kubernetes metadata, log prefixes, nanoseconds allowed) in UTC."""
    if not raw:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", raw)
    if not m:
        return None
    frac = (m.group(2) or "")[:7]  # Python keeps microseconds
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(m.group(1) + frac + zone).astimezone(UTC)
    except ValueError:
        return None


def as_log_line(raw: str, *, namespace: str, name: str, instance: str) -> LogLine | None:
    """One line of ``kubectl logs --timestamps``; the sidecar's own timestamp wins when present."""
    stamp, _, text = raw.rstrip("\r\n").partition(" ")
    when = parse_time(stamp)
    if when is None:
        return None
    inner, _, rest = text.partition(" ")
    inner_when = parse_time(inner)
    if inner_when is not None:
        when, text = inner_when, rest
    return LogLine(name=name, namespace=namespace, instance=instance, timestamp=when, text=text)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def as_replica_status(pod: Mapping[str, Any]) -> ReplicaStatus:
    """A pod as the provider sees a replica."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    ip = status.get("podIP") or ""
    ready = _pod_ready(pod)
    restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
    try:
        sm_pct = int(annotations.get("fastgshare/gpu_sm_partition", 100))
    except ValueError:
        sm_pct = 100
    return ReplicaStatus(
        replica_id=meta.get("name", ""),
        device_id=device_id(Placement(gpu_uuid=annotations.get(GPU_UUID_KEY, ""))),
        ready=ready,
        url=f"http://{ip}:{SIDECAR_PORT}" if ip and ready else "",
        sm_pct=sm_pct,
        restarts=restarts,
    )


START_FAILURES_TO_REFUSE = 3
"""A pod whose container restarted this often without becoming ready counts as unable to start
(as ``fastgshare.local_state.START_FAILURES_TO_REFUSE`` in local mode)."""
NEVER_STARTS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                          "CreateContainerConfigError", "CreateContainerError"})
"""Waiting reasons of a container that waiting alone does not cure."""


def cannot_start_reason(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why none of a function's pods can become ready (each unready, each with a container that
    restarted ``START_FAILURES_TO_REFUSE`` times or waits for a reason in ``NEVER_STARTS``), with
    the container's last error; None while some pod may still come up."""
    first = None
    for pod in pods:
        if _pod_ready(pod):
            return None
        found = None
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (c.get("state") or {}).get("waiting") or {}
            last = (c.get("lastState") or {}).get("terminated") or {}
            restarts = int(c.get("restartCount") or 0)
            if restarts >= START_FAILURES_TO_REFUSE or waiting.get("reason") in NEVER_STARTS:
                detail = (last.get("message") or waiting.get("message") or last.get("reason")
                          or waiting.get("reason") or "no reason given")
                found = (f"pod {(pod.get('metadata') or {}).get('name', '?')}: "
                         f"{waiting.get('reason') or 'not ready'} after {restarts} restarts: "
                         f"{str(detail)[-400:]}")
        if found is None:
            return None
        first = first or found
    return first


def check_can_start(namespace: str, name: str, pods: Sequence[Mapping[str, Any]]) -> None:
    """FunctionCannotStart (503 at once, with the reason) when none of ``pods`` can start."""
    reason = cannot_start_reason(pods)
    if reason is not None:
        raise FunctionCannotStart(f"function {namespace}/{name} cannot start: {reason}")


def ready_addresses(slices: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sidecar base URLs of the ready endpoints in a Service's EndpointSlices, sorted."""
    urls: set[str] = set()
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("port")), SIDECAR_PORT)
        for ep in s.get("endpoints") or []:
            # An absent ``ready`` means unknown, which Kubernetes says to treat as ready.
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for addr in ep.get("addresses") or []:
                host = f"[{addr}]" if ":" in addr else addr
                urls.add(f"http://{host}:{port}")
    return sorted(urls)
