"""Handlers of the ``/system/*`` routes, built around the dependencies they are given.

Each handler reads the request, parses it with ``gateway_plugin.types`` (pure), calls the
backend, and answers as faas-netes does. Errors are raised, never answered here: the app maps
every one to its status in one place (``gateway_plugin.errors.http_status``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, request

import fastgshare
from gateway_plugin import types
from gateway_plugin.backend import Backend, LogLine
from gateway_plugin.body import read_body
from gateway_plugin.errors import Invalid
from gateway_plugin.metrics import ProviderMetrics, function_label
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

    def __init__(self, backend: Backend, settings: ProviderSettings, metrics: ProviderMetrics) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics

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

    # ---- functions ----------------------------------------------------------------------------

    def list_functions(self) -> Response:
        namespace = self._namespace(request.args.get("namespace"))
        states = self._backend.list(namespace)
        return json_response([self._status_json(s) for s in states])

    def _status_json(self, state: Any) -> dict[str, Any]:
        label = function_label(state.spec.name, state.spec.namespace)
        return types.make_status_json(state, self._metrics.invocation_count(label),
                                      self._metrics.started_count(label))

    def deploy(self) -> Response:
        spec = types.as_function_spec(self._body_object("FunctionDeployment"))
        self._namespace(spec.namespace)
        self._check_secrets_exist(spec.namespace, spec.secrets)
        self._backend.deploy(spec)
        self._metrics.forget(function_label(spec.name, spec.namespace))
        return accepted()

    def update(self) -> Response:
        spec = types.as_function_spec(self._body_object("FunctionDeployment"))
        self._namespace(spec.namespace)
        self._check_secrets_exist(spec.namespace, spec.secrets)
        self._backend.update(spec)
        return accepted()

    def delete(self) -> Response:
        namespace = self._namespace(request.args.get("namespace"))
        name = types.as_delete_request(self._body_object("DeleteFunctionRequest"))
        self._backend.remove(namespace, name)
        self._metrics.forget(function_label(name, namespace))
        return accepted()

    def function_status(self, name: str) -> Response:
        types.validate_name(name, "name")
        namespace = self._namespace(request.args.get("namespace"))
        return json_response(self._status_json(self._backend.status(namespace, name)))

    def scale(self, name: str) -> Response:
        types.validate_name(name, "name")
        body = self._body_object("ScaleServiceRequest")
        namespace = self._namespace(request.args.get("namespace") or body.get("namespace"))
        requested = types.as_scale_replicas(body)
        state = self._backend.status(namespace, name)
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
