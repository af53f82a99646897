"""The Kubernetes backend: functions as Deployments, Services and Secrets in the cluster.

The only module that imports ``kubernetes``. It sends the dicts ``k8s_specs`` builds, reads raw
JSON back (``_preload_content=False``) and parses it with ``k8s_specs.as_*``, and maps every
``ApiException`` to ``gateway_plugin.errors`` with the cause chained. It keeps no desired state:
the spec lives in a Deployment annotation, so the provider can restart freely. Only the endpoints
table (``k8s_endpoints``, refreshed in the background) and round-robin counters live in memory.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fastgshare.errors import ValidationError
from fastgshare.resources import parse_share
from fastgshare.specs import DEFAULT_NAMESPACE, FunctionSpec, Placement, ReplicaConfig

from . import k8s_specs as specs
from .backend import FunctionState, LogLine, ReplicaStatus, SecretValue
from .errors import BackendFailure, Conflict, Invalid, NoReplicaReady, NotFound, ProviderError
from .k8s_endpoints import SERVICE_NAME_LABEL, EndpointsTable

log = logging.getLogger(__name__)

_MERGE = "application/merge-patch+json"
_EPOCH = datetime.fromtimestamp(0, UTC)
_WAIT_POLL_S = 0.25


@dataclass(frozen=True)
class KubernetesSettings:
    """How the provider reaches the cluster and what it puts in every function pod."""

    functions_namespace: str = DEFAULT_NAMESPACE
    """Namespace functions go to by default; always allowed, labelled or not."""
    kubeconfig: str = ""
    """Path of a kubeconfig; empty: in-cluster service account, then ``~/.kube/config``."""
    context: str = ""
    """kubeconfig context; empty: the current one."""
    api_url: str = ""
    """An explicit API server URL with no authentication (tests against a fake server)."""
    request_timeout_s: float = 10.0
    """Timeout of each Kubernetes API call (not of followed log streams)."""
    endpoints_refresh_s: float = 0.5
    """How often a background thread re-lists the EndpointSlices of the namespaces in use (the
    invoke path reads that table, never the API)."""
    pod: specs.PodSettings = field(default_factory=specs.PodSettings)
    """What every function pod gets (Redis URL, sidecar command, MPS pipe directory, ...)."""


def kubernetes_settings_from_env(env: Mapping[str, str]) -> KubernetesSettings:
    """Settings from an environment mapping; the provider's one settings function calls this."""
    d, p = KubernetesSettings(), specs.PodSettings()
    return KubernetesSettings(
        functions_namespace=env.get("FASTGSHARE_FUNCTIONS_NAMESPACE", d.functions_namespace),
        kubeconfig=env.get("KUBECONFIG", d.kubeconfig),
        context=env.get("FASTGSHARE_KUBE_CONTEXT", d.context),
        api_url=env.get("FASTGSHARE_KUBE_API_URL", d.api_url),
        request_timeout_s=float(env.get("FASTGSHARE_KUBE_TIMEOUT_S", d.request_timeout_s)),
        endpoints_refresh_s=float(env.get("FASTGSHARE_ENDPOINTS_REFRESH_S",
                                          d.endpoints_refresh_s)),
        pod=specs.PodSettings(
            redis_url=env.get("FASTGSHARE_POD_REDIS_URL", env.get("REDIS_URL", p.redis_url)),
            handler_dir=env.get("FASTGSHARE_POD_HANDLER_DIR", p.handler_dir),
            mps_pipe_dir=env.get("FASTGSHARE_MPS_PIPE_DIR", p.mps_pipe_dir),
            runtime_class=env.get("FASTGSHARE_GPU_RUNTIME_CLASS", p.runtime_class),
            image_pull_policy=env.get("FASTGSHARE_IMAGE_PULL_POLICY", p.image_pull_policy),
            redis_secret=env.get("FASTGSHARE_POD_REDIS_SECRET", p.redis_secret),
            run_as_user=int(env.get("FASTGSHARE_POD_RUN_AS_USER", p.run_as_user)),
        ),
    )


def as_provider_error(err: ApiException, what: str) -> ProviderError:
    """Map a Kubernetes API error to the provider's; the caller chains it (``from err``)."""
    detail = err.reason or ""
    try:
        detail = json.loads(err.body or "{}").get("message") or detail
    except (ValueError, AttributeError):
        pass
    msg = f"{what}: Kubernetes answered {err.status} {err.reason}: {detail}"
    if err.status == 404:
        return NotFound(msg)
    if err.status == 409:
        return Conflict(msg)
    if err.status in (400, 422):
        return Invalid(msg)
    return BackendFailure(msg)


def make_kubernetes_backend(settings: KubernetesSettings) -> KubernetesBackend:
    """Connect to the cluster named by ``settings`` and return the backend."""
    cfg = client.Configuration()
    try:
        if settings.api_url:
            cfg.host = settings.api_url
        elif settings.kubeconfig:
            config.load_kube_config(config_file=settings.kubeconfig,
                                    context=settings.context or None, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(context=settings.context or None,
                                        client_configuration=cfg)
    except (config.ConfigException, OSError) as e:
        raise BackendFailure(f"cannot configure the Kubernetes client: {e}") from e
    return KubernetesBackend(client.ApiClient(cfg), settings)


class KubernetesBackend:
    """``Backend`` over the Kubernetes API. Thread-safe: the provider calls it from many threads."""

    def __init__(self, api: client.ApiClient, settings: KubernetesSettings, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sleep: Callable[[float], None] = time.sleep,
                 refresh_endpoints: bool = True) -> None:
        self._api = api
        self._settings = settings
        self._core = client.CoreV1Api(api)
        self._apps = client.AppsV1Api(api)
        self._discovery = client.DiscoveryV1Api(api)
        self._monotonic, self._now, self._sleep = monotonic, now, sleep
        self._lock = threading.Lock()
        self._endpoints = EndpointsTable(self._list_slices, settings.endpoints_refresh_s,
                                         start_thread=refresh_endpoints)
        self._turn: dict[tuple[str, str], int] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def _raw(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        kw.setdefault("_request_timeout", self._settings.request_timeout_s)
        try:
            return fn(*args, _preload_content=False, **kw)
        except ApiException as e:
            raise as_provider_error(e, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise BackendFailure(f"{what}: Kubernetes API unreachable: {e}") from e

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> dict[str, Any]:
        resp = self._raw(what, fn, *args, **kw)
        try:
            data = json.loads(resp.data or b"{}")
        except ValueError as e:
            raise BackendFailure(f"{what}: Kubernetes answered with non-JSON: {e}") from e
        return data if isinstance(data, dict) else {}

    def _items(self, what: str, fn: Callable[..., Any], namespace: str | None,
               labels: Mapping[str, str | None]) -> list[dict[str, Any]]:
        """List with a label selector, re-applied here in case a server ignores selectors."""
        selector = ",".join(k if v is None else f"{k}={v}" for k, v in labels.items())
        args = (namespace,) if namespace is not None else ()
        items = self._call(what, fn, *args, label_selector=selector).get("items") or []

        def ok(obj: Mapping[str, Any]) -> bool:
            have = (obj.get("metadata") or {}).get("labels") or {}
            return all(k in have if v is None else have.get(k) == v for k, v in labels.items())
        return [o for o in items if ok(o)]

    def _base(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"read function {namespace}/{name}",
                          self._apps.read_namespaced_deployment, name, namespace)

    def _deployments(self, namespace: str, name: str | None) -> list[dict[str, Any]]:
        return self._items(f"list Deployments in {namespace}",
                           self._apps.list_namespaced_deployment, namespace,
                           {specs.FUNCTION_LABEL: name})

    def _pods(self, namespace: str, name: str | None) -> list[dict[str, Any]]:
        pods = self._items(f"list pods in {namespace}", self._core.list_namespaced_pod,
                           namespace, {specs.FUNCTION_LABEL: name})
        live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
        return sorted(live, key=lambda p: p["metadata"]["name"])

    @staticmethod
    def _spec_of(dep: Mapping[str, Any]) -> FunctionSpec | None:
        raw = ((dep.get("metadata") or {}).get("annotations") or {}).get(specs.SPEC_ANNOTATION)
        if not raw:
            return None
        try:
            return specs.spec_from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            name = (dep.get("metadata") or {}).get("name")
            log.warning("Deployment %s has a damaged %s annotation: %s",
                        name, specs.SPEC_ANNOTATION, e)
            return None

    def _check_namespace(self, namespace: str) -> None:
        if namespace != self._settings.functions_namespace and namespace not in self.namespaces():
            key, value = specs.NAMESPACE_LABEL
            raise Invalid(f"namespace {namespace!r} is not available for functions: allowed "
                          f"{self._settings.functions_namespace!r} or one labelled {key}={value}")

    def _check_secrets(self, spec: FunctionSpec) -> None:
        for secret in spec.secrets:
            try:
                self._call(f"read Secret {spec.namespace}/{secret}",
                           self._core.read_namespaced_secret, secret, spec.namespace)
            except NotFound as e:
                raise Invalid(f"secrets: {secret!r} does not exist in namespace "
                              f"{spec.namespace!r}; create it first") from e

    def _patch_deployment(self, what: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        meta = new["metadata"]
        self._call(what, self._apps.patch_namespaced_deployment, meta["name"], meta["namespace"],
                   specs.merge_patch(old, new), _content_type=_MERGE)

    def _ensure_service(self, spec: FunctionSpec) -> None:
        body = specs.make_service(spec)
        what = f"create Service {spec.namespace}/{spec.name}"
        try:
            self._call(what, self._core.create_namespaced_service, spec.namespace, body)
        except Conflict:
            # Left behind by an interrupted remove, or made by hand: make it ours.
            self._call(f"patch Service {spec.namespace}/{spec.name}",
                       self._core.patch_namespaced_service, spec.name, spec.namespace,
                       {"metadata": body["metadata"], "spec": body["spec"]}, _content_type=_MERGE)

    # -- functions ----------------------------------------------------------------------------

    def deploy(self, spec: FunctionSpec) -> None:
        self._check_namespace(spec.namespace)
        self._check_secrets(spec)
        body = specs.make_deployment(spec, replicas=spec.scale.min_replicas,
                                     pod=self._settings.pod)
        self._call(f"create function {spec.namespace}/{spec.name}",
                   self._apps.create_namespaced_deployment, spec.namespace, body)
        try:
            self._ensure_service(spec)
        except ProviderError:
            # Leave nothing half-made: a function without its Service cannot be invoked.
            try:
                self._delete_deployment(spec.namespace, spec.name)
            except ProviderError as cleanup:
                log.warning("could not roll back Deployment %s/%s: %s",
                            spec.namespace, spec.name, cleanup)
            raise

    def update(self, spec: FunctionSpec) -> None:
        current = self._base(spec.namespace, spec.name)
        self._check_secrets(spec)
        replicas = int((current.get("spec") or {}).get("replicas") or 0)
        old_spec = self._spec_of(current)
        new = specs.make_deployment(spec, replicas=replicas, pod=self._settings.pod)
        old = (specs.make_deployment(old_spec, replicas=replicas, pod=self._settings.pod)
               if old_spec else {})
        self._patch_deployment(f"update function {spec.namespace}/{spec.name}", old, new)
        for dep in self._deployments(spec.namespace, spec.name):
            cfg = self._config_of(dep)
            if cfg is None:
                continue
            pod = self._settings.pod
            self._patch_deployment(
                f"update configuration {cfg.config_id} of {spec.namespace}/{spec.name}",
                specs.make_deployment(old_spec, replicas=cfg.replicas, pod=pod, config=cfg)
                if old_spec else {},
                specs.make_deployment(spec, replicas=cfg.replicas, pod=pod, config=cfg))
        self._ensure_service(spec)

    def _delete_deployment(self, namespace: str, name: str) -> None:
        self._call(f"delete Deployment {namespace}/{name}",
                   self._apps.delete_namespaced_deployment, name, namespace,
                   body={"propagationPolicy": "Background"})

    def remove(self, namespace: str, name: str) -> None:
        self._base(namespace, name)
        for dep in self._deployments(namespace, name):
            try:
                self._delete_deployment(namespace, dep["metadata"]["name"])
            except NotFound:
                pass  # removed concurrently; the goal is reached
        try:
            self._call(f"delete Service {namespace}/{name}",
                       self._core.delete_namespaced_service, name, namespace)
        except NotFound:
            pass
        self._endpoints.forget(namespace, name)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        if replicas < 0:
            raise Invalid(f"replicas: allowed an integer >= 0 (got {replicas})")
        self._call(f"scale function {namespace}/{name}",
                   self._apps.patch_namespaced_deployment_scale, name, namespace,
                   {"spec": {"replicas": replicas}}, _content_type=_MERGE)

    @staticmethod
    def _config_of(dep: Mapping[str, Any]) -> ReplicaConfig | None:
        meta = dep.get("metadata") or {}
        config_id = (meta.get("labels") or {}).get(specs.CONFIG_LABEL, "")
        if not config_id:
            return None
        annotations = meta.get("annotations") or {}
        try:
            share = parse_share(annotations)
        except ValidationError:
            log.warning("configuration Deployment %s has invalid share annotations", meta.get("name"))
            return None
        try:
            batch = max(1, int(annotations.get(specs.BATCH_KEY, "1")))
        except ValueError:
            batch = 1
        try:
            raw_limit = annotations.get(specs.BATCH_LIMIT_KEY)
            limit = None if raw_limit is None else max(1, int(raw_limit))
        except ValueError:
            limit = None
        return ReplicaConfig(
            config_id, share, int((dep.get("spec") or {}).get("replicas") or 0),
            Placement(annotations.get(specs.NODE_KEY, ""),
                            annotations.get(specs.GPU_UUID_KEY, "")), batch, limit)

    def apply_configurations(self, namespace: str, name: str,
                             configs: Sequence[ReplicaConfig]) -> None:
        """Make the function's extra replica configurations exactly ``configs`` (the scheduler's
        decision): one Deployment each, created, patched or deleted. The base Deployment (which
        ``scale`` acts on) is left alone."""
        base = self._base(namespace, name)
        spec = self._spec_of(base)
        if spec is None:
            raise BackendFailure(f"function {namespace}/{name} has no {specs.SPEC_ANNOTATION} "
                                 "annotation; redeploy it through the provider")
        for c in configs:
            if not specs.valid_config_id(c.config_id) or c.replicas < 0:
                raise Invalid(f"configuration {c.config_id!r}: allowed a DNS label of at most 20 "
                              "characters and replicas >= 0")
        existing = {cfg.config_id: cfg for dep in self._deployments(namespace, name)
                    if (cfg := self._config_of(dep)) is not None}
        pod = self._settings.pod
        for c in configs:
            new = specs.make_deployment(spec, replicas=c.replicas, pod=pod, config=c)
            if c.config_id in existing:
                old = specs.make_deployment(spec, replicas=existing[c.config_id].replicas,
                                            pod=pod, config=existing[c.config_id])
                self._patch_deployment(f"update configuration {c.config_id} of {name}", old, new)
            else:
                self._call(f"create configuration {c.config_id} of {namespace}/{name}",
                           self._apps.create_namespaced_deployment, namespace, new)
        for config_id in set(existing) - {c.config_id for c in configs}:
            try:
                self._delete_deployment(namespace, specs.deployment_name(name, config_id))
            except NotFound:
                pass

    def _state(self, base: Mapping[str, Any], deps: Sequence[Mapping[str, Any]],
               pods: Sequence[Mapping[str, Any]]) -> FunctionState | None:
        spec = self._spec_of(base)
        if spec is None:
            return None
        desired = sum(int((d.get("spec") or {}).get("replicas") or 0) for d in deps)
        available = sum(int((d.get("status") or {}).get("availableReplicas") or 0) for d in deps)
        # kmock and other fakes set no creationTimestamp; a real API server always does.
        created = specs.parse_time((base.get("metadata") or {}).get("creationTimestamp"))
        status = "ready" if available else ("starting" if desired else "idle")
        return FunctionState(
            spec=spec, replicas=desired, available_replicas=available,
            created_at=created or _EPOCH, status=status,
            replica_status=self._endpoints.replicas_at(spec.namespace, spec.name,
                                                       map(specs.as_replica_status, pods)),
            configs=tuple(c for d in deps if (c := self._config_of(d)) is not None))

    def list(self, namespace: str) -> list[FunctionState]:
        deps = self._deployments(namespace, None)
        pods = self._pods(namespace, None)
        out = []
        for base in deps:
            labels = base["metadata"].get("labels") or {}
            if labels.get(specs.CONFIG_LABEL):
                continue
            fn = labels[specs.FUNCTION_LABEL]
            mine = [d for d in deps if d["metadata"]["labels"].get(specs.FUNCTION_LABEL) == fn]
            my_pods = [p for p in pods if p["metadata"]["labels"].get(specs.FUNCTION_LABEL) == fn]
            state = self._state(base, mine, my_pods)
            if state is not None:
                out.append(state)
        return sorted(out, key=lambda s: s.spec.name)

    def status(self, namespace: str, name: str) -> FunctionState:
        base = self._base(namespace, name)
        configs = [d for d in self._deployments(namespace, name)
                   if (d["metadata"].get("labels") or {}).get(specs.CONFIG_LABEL)]
        state = self._state(base, [base, *configs], self._pods(namespace, name))
        if state is None:
            raise NotFound(f"function {namespace}/{name}: the Deployment exists but was not made "
                           f"by this provider (no {specs.SPEC_ANNOTATION} annotation)")
        return state

    def replicas(self, namespace: str, name: str) -> tuple[ReplicaStatus, ...]:
        """The function's pods as replicas (a cheaper ``status`` for the scheduler)."""
        return self._endpoints.replicas_at(namespace, name,
                                           map(specs.as_replica_status, self._pods(namespace, name)))

    # -- invocation ---------------------------------------------------------------------------

    def _list_slices(self, namespace: str) -> list[dict[str, Any]]:
        return self._items(f"list EndpointSlices of {namespace}",
                           self._discovery.list_namespaced_endpoint_slice, namespace,
                           {SERVICE_NAME_LABEL: None})

    def resolve(self, namespace: str, name: str) -> str:
        """A ready endpoint, round robin, from the background table (the first call in a
        namespace lists it once)."""
        url = self.try_resolve(namespace, name)
        if url is not None:
            return url
        if self._endpoints.urls(namespace, name) is None:
            self._endpoints.refresh(namespace)
            url = self.try_resolve(namespace, name)
            if url is not None:
                return url
        self._base(namespace, name)  # NotFound when the function does not exist
        raise NoReplicaReady(f"function {namespace}/{name} has no ready replica")

    def try_resolve(self, namespace: str, name: str) -> str | None:
        """``resolve`` from the background table alone, with no API call: None when it has no
        ready endpoint of the function (the event-loop invoke path then calls ``resolve`` in a
        thread)."""
        urls = self._endpoints.urls(namespace, name)
        if not urls:
            return None
        # Round robin: the sidecars queue and meter device time themselves, and the provider
        # cannot see their queues without a round trip per request.
        key = (namespace, name)
        with self._lock:
            turn = self._turn.get(key, 0)
            self._turn[key] = turn + 1
        return urls[turn % len(urls)]

    def unreachable(self, namespace: str, name: str, url: str) -> None:
        self._endpoints.evict(namespace, name, url)

    def wait_ready(self, namespace: str, name: str, timeout_s: float) -> bool:
        """Lists now and then (the slow path: no replica was ready); False early once the
        function is scaled to zero; FunctionCannotStart once none of its pods can start."""
        deadline_s = self._monotonic() + timeout_s
        while True:
            self._endpoints.refresh(namespace)
            if self._endpoints.urls(namespace, name):
                return True
            base = self._base(namespace, name)
            if not (base.get("spec") or {}).get("replicas"):
                return False
            specs.check_can_start(namespace, name, self._pods(namespace, name))  # else 503 now
            if self._monotonic() >= deadline_s:
                return False
            self._sleep(_WAIT_POLL_S)

    # -- logs ---------------------------------------------------------------------------------

    def _log_args(self, since: datetime | None, tail: int | None) -> dict[str, Any]:
        kw: dict[str, Any] = {"container": specs.CONTAINER_NAME, "timestamps": True}
        if tail is not None:
            kw["tail_lines"] = max(0, tail)
        if since is not None:
            # The API wants whole seconds back from its own clock; one more for skew, then the
            # lines are filtered here exactly.
            kw["since_seconds"] = max(1, math.ceil((self._now() - since).total_seconds()) + 1)
        return kw

    def logs(self, namespace: str, name: str, *, since: datetime | None, tail: int | None,
             follow: bool) -> Iterator[LogLine]:
        self._base(namespace, name)
        pods = [p["metadata"]["name"] for p in self._pods(namespace, name)]
        if follow:
            return self._follow(namespace, name, pods, since, tail)
        lines: list[LogLine] = []
        for pod in pods:
            try:
                resp = self._raw(f"read logs of pod {namespace}/{pod}",
                                 self._core.read_namespaced_pod_log, pod, namespace,
                                 **self._log_args(since, tail))
            except (NotFound, Invalid):
                continue  # the pod is gone or its container has not started: no lines yet
            for raw in resp.data.decode("utf-8", "replace").splitlines():
                line = specs.as_log_line(raw, namespace=namespace, name=name, instance=pod)
                if line and (since is None or line.timestamp >= since):
                    lines.append(line)
        lines.sort(key=lambda ln: ln.timestamp)
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        return iter(lines)

    def _follow(self, namespace: str, name: str, pods: Sequence[str], since: datetime | None,
                tail: int | None) -> Iterator[LogLine]:
        """Lines of the pods alive now, as they come; ends when every stream ends or on close."""
        lines: queue.Queue[LogLine] = queue.Queue(maxsize=10_000)
        stop = threading.Event()
        streams: list[Any] = []

        def pump(pod: str) -> None:
            try:
                resp = self._raw(f"follow logs of pod {namespace}/{pod}",
                                 self._core.read_namespaced_pod_log, pod, namespace,
                                 follow=True, _request_timeout=None,
                                 **self._log_args(since, tail))
            except ProviderError as e:
                log.info("not following pod %s/%s: %s", namespace, pod, e)
                return
            streams.append(resp)
            pending = b""
            try:
                for chunk in resp.stream(4096, decode_content=True):
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        line = specs.as_log_line(raw.decode("utf-8", "replace"),
                                                 namespace=namespace, name=name, instance=pod)
                        if line and (since is None or line.timestamp >= since):
                            lines.put(line)
                    if stop.is_set():
                        return
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if not stop.is_set():
                    log.info("log stream of pod %s/%s ended: %s", namespace, pod, e)

        threads = [threading.Thread(target=pump, args=(p,), daemon=True,
                                    name=f"logs-{namespace}-{p}") for p in pods]
        for t in threads:
            t.start()
        try:
            while True:
                try:
                    yield lines.get(timeout=0.2)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and lines.empty():
                        return
        finally:
            stop.set()
            for resp in streams:
                resp.release_conn()

    # -- namespaces and secrets -----------------------------------------------------------------

    def namespaces(self) -> list[str]:
        key, value = specs.NAMESPACE_LABEL
        found = self._items("list namespaces", self._core.list_namespace, None, {key: value})
        names = {n["metadata"]["name"] for n in found}
        names.add(self._settings.functions_namespace)
        return sorted(names)

    def _managed_secret(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self._call(f"read Secret {namespace}/{name}",
                         self._core.read_namespaced_secret, name, namespace)
        key, value = specs.SECRET_MANAGED_BY
        if not specs.has_labels(obj, {key: value}):
            raise NotFound(f"Secret {namespace}/{name} exists but is not an OpenFaaS function "
                           f"secret (no {key}={value} label); it is left alone")
        return obj

    def list_secrets(self, namespace: str) -> list[str]:
        self._check_namespace(namespace)
        key, value = specs.SECRET_MANAGED_BY
        found = self._items(f"list Secrets in {namespace}", self._core.list_namespaced_secret,
                            namespace, {key: value})
        return sorted(s["metadata"]["name"] for s in found)

    def create_secret(self, secret: SecretValue) -> None:
        self._check_namespace(secret.namespace)
        self._call(f"create Secret {secret.namespace}/{secret.name}",
                   self._core.create_namespaced_secret, secret.namespace,
                   specs.make_secret(secret))

    def update_secret(self, secret: SecretValue) -> None:
        old = self._managed_secret(secret.namespace, secret.name)
        new = specs.make_secret(secret)
        patch = {"data": specs.merge_patch(old.get("data") or {}, new["data"])}
        self._call(f"update Secret {secret.namespace}/{secret.name}",
                   self._core.patch_namespaced_secret, secret.name, secret.namespace, patch,
                   _content_type=_MERGE)

    def remove_secret(self, namespace: str, name: str) -> None:
        self._managed_secret(namespace, name)
        self._call(f"delete Secret {namespace}/{name}",
                   self._core.delete_namespaced_secret, name, namespace)

    def close(self) -> None:
        self._endpoints.close()
        self._api.close()
