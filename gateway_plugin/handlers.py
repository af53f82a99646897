"""Handlers of the ``/system/*`` routes, built around the dependencies they are given.

Each handler reads the request, parses it with ``gateway_plugin.types`` (pure), calls the
backend, and answers as faas-netes does. Errors are raised, never answered here: the app maps
every one to its status in one place (``gateway_plugin.errors.http_status``).

The profiler's shadow functions (a spec labelled ``fastgshare/profile-of``, see
``fast_profiler.shadow``) are the platform's: the contract's read routes leave them out, removing a
function removes its shadow, and a shadow whose function is gone is refused. All of it is decided
from the stored spec, so every provider worker decides alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, request

import fastgshare
from fast_manager.settings_check import check_function_env
from fast_profiler.shadow import PROFILE_OF_LABEL, profile_of
from fastgshare.errors import ValidationError
from fastgshare.specs import FunctionSpec
from gateway_plugin import types
from gateway_plugin.backend import Backend, FunctionState, LogLine
from gateway_plugin.body import read_body
from gateway_plugin.errors import Conflict, Invalid, NotFound
from gateway_plugin.metrics import ProviderMetrics, function_label
from gateway_plugin.records import PlatformRecords
from gateway_plugin.settings import ProviderSettings

log = logging.getLogger(__name__)

PROVIDER_NAME = "fastgshare"
NDJSON = "application/x-ndjson"


def json_response(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, mimetype="application/json")


def accepted() -> Response:
    """202 with an empty body, as faas-netes answers every mutation."""
    return Response(b"", status=202)


class SystemHandlers:
    """The provider API over one backend."""

    def __init__(self, backend: Backend, settings: ProviderSettings, metrics: ProviderMetrics,
                 records: PlatformRecords | None = None) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._records = records
        """Profile tables a redeploy makes stale; None: no Redis configured (nothing to drop)."""

    # ---- helpers ------------------------------------------------------------------------------

    def _body_object(self, what: str) -> dict[str, Any]:
        body = read_body(request.environ, self._settings.max_system_body_bytes)
        return types.parse_json_object(body, what)

    def _namespace(self, raw: object) -> str:
        """A namespace from a query or body: default when empty; must be one the backend serves."""
        namespace = types.validate_namespace(raw)
        allowed = self._backend.namespaces()
        if namespace not in allowed:
            raise Invalid(f"namespace: ({namespace!r}) is not allowed: must be one of {allowed}")
        return namespace

    def _check_secrets_exist(self, namespace: str, wanted: tuple[str, ...]) -> None:
        if not wanted:
            return
        have = set(self._backend.list_secrets(namespace))
        missing = [s for s in wanted if s not in have]
        if missing:
            raise Invalid(f"secrets: {missing} not found in namespace {namespace!r}: create them first")

    @staticmethod
    def _check_sidecar_env(spec: FunctionSpec) -> None:
        """The sidecar's settings in ``envVars``, parsed as the sidecar will: a value it would
        refuse at start would crash-loop every replica, so it is refused now."""
        try:
            check_function_env(spec.env_vars)
        except ValidationError as e:
            raise Invalid(f"envVars.{e.field}: {e}") from e

    def _existing(self, namespace: str, name: str) -> FunctionState | None:
        try:
            return self._backend.status(namespace, name)
        except NotFound:
            return None

    def _visible(self, namespace: str, name: str) -> FunctionState:
        """A user's function; a shadow is answered as absent (it is the platform's)."""
        state = self._backend.status(namespace, name)
        if profile_of(state.spec.labels) is not None:
            raise NotFound(f"function {name!r} not found in namespace {namespace!r}")
        return state

    def _check_shadow(self, spec: FunctionSpec, existing: FunctionState | None) -> None:
        """A shadow may only stand beside its deployed function, and neither kind may take the
        other's place."""
        parent = profile_of(spec.labels)
        if existing is not None and (profile_of(existing.spec.labels) is None) != (parent is None):
            whose = (f"the platform's profiling run of {profile_of(existing.spec.labels)!r}"
                     if parent is None else "a user's function")
            raise Conflict(f"service: {spec.name!r} is taken by {whose} in {spec.namespace!r}: "
                           "choose another name")
        if parent is None:
            return
        owner = self._existing(spec.namespace, parent)
        if owner is None or profile_of(owner.spec.labels) is not None:
            raise Invalid(f"labels.{PROFILE_OF_LABEL}: function {parent!r} is not deployed in "
                          f"{spec.namespace!r}: a profiling run needs its function")

    def _shadow_outlived(self, spec: FunctionSpec) -> bool:
        """After deploying a shadow: its function was removed meanwhile (by another request that
        did not see the shadow yet). Then the shadow goes too."""
        parent = profile_of(spec.labels)
        if parent is None or self._existing(spec.namespace, parent) is not None:
            return False
        self._remove_quietly(spec.namespace, spec.name)
        return True

    def _remove_quietly(self, namespace: str, name: str) -> None:
        try:
            self._backend.remove(namespace, name)
        except NotFound:
            pass
        self._metrics.forget(function_label(name, namespace))

    # ---- functions ----------------------------------------------------------------------------

    def list_functions(self) -> Response:
        namespace = self._namespace(request.args.get("namespace"))
        states = [s for s in self._backend.list(namespace) if profile_of(s.spec.labels) is None]
        return json_response([self._status_json(s) for s in states])

    def _status_json(self, state: Any) -> dict[str, Any]:
        label = function_label(state.spec.name, state.spec.namespace)
        return types.make_status_json(state, self._metrics.invocation_count(label),
                                      self._metrics.started_count(label))

    def deploy(self) -> Response:
        spec = types.as_function_spec(self._body_object("FunctionDeployment"))
        self._check_sidecar_env(spec)
        self._namespace(spec.namespace)
        self._check_secrets_exist(spec.namespace, spec.secrets)
        self._check_shadow(spec, self._existing(spec.namespace, spec.name))
        self._backend.deploy(spec)
        self._metrics.forget(function_label(spec.name, spec.namespace))
        if self._shadow_outlived(spec):
            raise Invalid(f"labels.{PROFILE_OF_LABEL}: function {profile_of(spec.labels)!r} was "
                          f"removed from {spec.namespace!r}")
        if self._records is not None and profile_of(spec.labels) is None:
            self._records.after_deploy(spec, None)
        return accepted()

    def update(self) -> Response:
        spec = types.as_function_spec(self._body_object("FunctionDeployment"))
        self._check_sidecar_env(spec)
        self._namespace(spec.namespace)
        self._check_secrets_exist(spec.namespace, spec.secrets)
        old = self._existing(spec.namespace, spec.name)
        self._check_shadow(spec, old)
        self._backend.update(spec)
        if self._shadow_outlived(spec):
            raise Invalid(f"labels.{PROFILE_OF_LABEL}: function {profile_of(spec.labels)!r} was "
                          f"removed from {spec.namespace!r}")
        if self._records is not None and profile_of(spec.labels) is None:
            self._records.after_deploy(spec, old.spec if old else None)
        return accepted()

    def delete(self) -> Response:
        """Remove a function, and with it its profiling run (its shadow), if one is deployed."""
        namespace = self._namespace(request.args.get("namespace"))
        name = types.as_delete_request(self._body_object("DeleteFunctionRequest"))
        missing: NotFound | None = None
        try:
            self._backend.remove(namespace, name)
        except NotFound as e:  # a shadow left behind by a crash still goes
            missing = e
        self._metrics.forget(function_label(name, namespace))
        shadows = [s.spec.name for s in self._backend.list(namespace) if profile_of(s.spec.labels) == name]
        for shadow in shadows:
            self._remove_quietly(namespace, shadow)
        if self._records is not None:
            self._records.forget_profile_status(namespace, name)
        if missing is not None and not shadows:
            raise missing
        return accepted()

    def function_status(self, name: str) -> Response:
        types.validate_name(name, "name")
        namespace = self._namespace(request.args.get("namespace"))
        return json_response(self._status_json(self._visible(namespace, name)))

    def scale(self, name: str) -> Response:
        types.validate_name(name, "name")
        body = self._body_object("ScaleServiceRequest")
        namespace = self._namespace(request.args.get("namespace") or body.get("namespace"))
        requested = types.as_scale_replicas(body)
        state = self._visible(namespace, name)
        replicas = types.clamp_replicas(requested, state.spec.scale)
        if replicas != requested:
            log.info("scale %s.%s: %d requested, clamped to %d", name, namespace, requested, replicas)
        self._backend.scale(namespace, name, replicas)
        return accepted()

    # ---- provider -----------------------------------------------------------------------------

    def info(self) -> Response:
        return json_response(types.make_info_json(
            PROVIDER_NAME, self._settings.backend_kind, fastgshare.__version__, self._settings.git_sha))

    def namespaces(self) -> Response:
        return json_response(list(self._backend.namespaces()))

    # ---- secrets ------------------------------------------------------------------------------

    def list_secrets(self) -> Response:
        namespace = self._namespace(request.args.get("namespace"))
        names = self._backend.list_secrets(namespace)
        return json_response([types.make_secret_json(n, namespace) for n in names])

    def _secret_body(self) -> tuple[dict[str, Any], str]:
        body = self._body_object("Secret")
        raw_ns = body.get("namespace") if body.get("namespace") else request.args.get("namespace")
        return body, self._namespace(raw_ns)

    def create_secret(self) -> Response:
        body, namespace = self._secret_body()
        self._backend.create_secret(types.as_secret(body, namespace))
        return accepted()

    def update_secret(self) -> Response:
        body, namespace = self._secret_body()
        self._backend.update_secret(types.as_secret(body, namespace))
        return accepted()

    def delete_secret(self) -> Response:
        body, namespace = self._secret_body()
        self._backend.remove_secret(namespace, types.validate_secret_name(body.get("name")))
        return accepted()

    # ---- logs ---------------------------------------------------------------------------------

    def logs(self) -> Response:
        query = types.as_log_query(request.args)
        self._namespace(query.namespace)
        self._backend.status(query.namespace, query.name)  # 404 before any byte is streamed
        lines = self._backend.logs(
            query.namespace, query.name, since=query.since, tail=query.tail, follow=query.follow)
        return Response(_NdjsonLines(lines, query.instance), status=200, mimetype=NDJSON,
                        direct_passthrough=True)


class _NdjsonLines:
    """Log lines as newline-delimited JSON, one flushable chunk per line; closes its source."""

    def __init__(self, lines: Iterator[LogLine], instance: str) -> None:
        self._lines = lines
        self._instance = instance

    def __iter__(self) -> Iterator[bytes]:
        try:
            for line in self._lines:
                if self._instance and line.instance != self._instance:
                    continue
                yield (json.dumps(types.make_log_json(line)) + "\n").encode()
        except Exception:  # the status line is sent already; end the stream cleanly
            log.exception("log stream failed")
        finally:
            self.close()

    def close(self) -> None:
        close = getattr(self._lines, "close", None)
        if close is not None:
            close()
