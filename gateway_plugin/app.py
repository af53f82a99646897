"""The provider's Flask app: every faas-provider route, registered in one place.

``create_app(backend, settings)`` is the whole contract on one screen; handlers live in
``handlers`` (``/system/*``) and ``proxy`` (``/function/*``) and receive their dependencies.
Errors become HTTP statuses in exactly one function, ``gateway_plugin.errors.http_status``,
and every error body is ``text/plain``, as Go's ``http.Error`` writes it. A refusal after which
the connection cannot carry another request (malformed framing, a body too large to drain) is
answered with ``Connection: close`` and a lingering close (``_closing``), not a reset.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask, Response, has_request_context, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException

from gateway_plugin import types
from gateway_plugin.auth import REALM_HEADER, REFUSAL_TEXT, is_authorized, read_basic_auth
from gateway_plugin.backend import Backend
from gateway_plugin.errors import BadFraming, ClientGone, PayloadTooLarge, http_status
from gateway_plugin.extensions import ExtensionHandlers
from gateway_plugin.handlers import SystemHandlers
from gateway_plugin.metrics import ProviderMetrics
from gateway_plugin.proxy import INVOKE_METHODS, Invoker
from gateway_plugin.readiness import Readiness, as_provider_error
from gateway_plugin.records import PlatformRecords, platform_records_for
from gateway_plugin.settings import ProviderSettings

log = logging.getLogger(__name__)

EXTENSION_KEY = "fastgshare"
"""``app.extensions[EXTENSION_KEY]`` holds the backend, invoker and metrics (for shutdown)."""
CLOSE_KEY = "fastgshare.close_connection"
"""Set in the WSGI environ by ``error_response`` when the connection must close after the answer."""
LINGER_S = 5.0
"""After such an answer, how long the rest of the request is read and dropped before closing (so
the kernel sends FIN, not RST, and the client reads the answer; nginx's ``lingering_close``)."""
LINGER_MAX_BYTES = 64 << 20
"""... and how much of it at most."""
CLOSING_ERRORS = (BadFraming, ClientGone, PayloadTooLarge)
"""Refusals after which where the next request starts on the connection is unknown (or far)."""


def error_response(err: Exception) -> Response:
    """The one place an exception becomes a response."""
    if isinstance(err, HTTPException):
        status = err.code or 500
        text = f"{err.name}: {err.description}"
    else:
        err = as_provider_error(err)
        status = http_status(err)
        text = str(err) if status < 500 or status in (502, 503, 504) else f"internal error: {err}"
        if status == 500:
            log.error("request failed: %s", err, exc_info=err)
        elif isinstance(err, (BadFraming, ClientGone)):  # one line, no traceback: the client's
            log.warning("bad request from %s: %s", _peer(), err)
        if isinstance(err, CLOSING_ERRORS) and has_request_context():
            request.environ[CLOSE_KEY] = True
    response = Response(text + "\n", status=status, mimetype="text/plain")
    retry_after_s = getattr(err, "retry_after_s", None)
    if status == 503 and retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    if isinstance(err, HTTPException):  # keep e.g. Allow on 405
        for key, value in err.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
    return response


def create_app(backend: Backend, settings: ProviderSettings, *,
               registry: CollectorRegistry | None = None, records: PlatformRecords | None = None) -> Flask:
    """The provider over ``backend``. Reads basic-auth files now when ``settings.basic_auth``;
    ``records`` (image registry, profile tables) default to ``settings.redis_url``'s."""
    app = Flask("gateway_plugin")
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ProviderMetrics(registry, backend)
    records = records if records is not None else platform_records_for(settings.redis_url)
    system = SystemHandlers(backend, settings, metrics, records)
    invoker = Invoker(backend, settings, metrics)
    extensions = ExtensionHandlers(backend, settings, records)
    readiness = Readiness(backend, settings.redis_url)
    credentials = read_basic_auth(settings.secrets_dir) if settings.basic_auth else None
    app.extensions[EXTENSION_KEY] = {"backend": backend, "invoker": invoker, "metrics": metrics,
                                     "readiness": readiness, "settings": settings}

    def route(rule: str, handler: Any, *methods: str, **options: Any) -> None:
        app.add_url_rule(rule, endpoint=f"{handler.__name__}:{rule}", view_func=handler,
                         methods=list(methods), **options)

    # --- system (basic auth when on) -------------------------------------------------------------
    route("/system/functions", system.list_functions, "GET")
    route("/system/functions", system.deploy, "POST")
    route("/system/functions", system.update, "PUT")
    route("/system/functions", system.delete, "DELETE")
    route("/system/function/<name>", system.function_status, "GET")
    route("/system/scale-function/<name>", system.scale, "POST")
    route("/system/info", system.info, "GET")
    route("/system/namespaces", system.namespaces, "GET")
    route("/system/secrets", system.list_secrets, "GET")
    route("/system/secrets", system.create_secret, "POST")
    route("/system/secrets", system.update_secret, "PUT")
    route("/system/secrets", system.delete_secret, "DELETE")
    route("/system/logs", system.logs, "GET")
    # FaST-GShare's own (replica placement and shares; the scheduler's configurations)
    route("/system/fastgshare/replicas", extensions.replicas, "GET")
    route("/system/fastgshare/configurations/<name>", extensions.apply_configurations, "PUT")
    route("/system/fastgshare/images", extensions.register_image, "PUT")

    # --- open --------------------------------------------------------------------------------------
    def healthz() -> Response:
        """Alive (always 200 while the process serves); the body says whether it is ready too."""
        problems = readiness.problems()
        text = "OK" if not problems else "OK (alive; not ready: " + "; ".join(problems) + ")"
        return Response(text, mimetype="text/plain")

    def readyz() -> Response:
        """Ready: Redis reachable and the backend answering; else 503 naming what is not."""
        problems = readiness.problems()
        if not problems:
            return Response("ready", mimetype="text/plain")
        response = Response("not ready: " + "; ".join(problems) + "\n", status=503,
                            mimetype="text/plain")
        response.headers["Retry-After"] = "1"
        return response

    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    def invoke(ref: str, sub_path: str = "") -> Any:
        name, namespace = types.split_function_ref(ref)
        return invoker.invoke(request.environ, request.method, ref, name, namespace, sub_path)

    route("/healthz", healthz, "GET")
    route("/readyz", readyz, "GET")
    route("/metrics", prometheus_metrics, "GET")
    for rule in ("/function/<ref>", "/function/<ref>/", "/function/<ref>/<path:sub_path>"):
        route(rule, invoke, *INVOKE_METHODS, provide_automatic_options=False)

    # --- cross-cutting -------------------------------------------------------------------------------
    if credentials is not None:
        @app.before_request
        def require_basic_auth() -> Response | None:
            if not request.path.startswith("/system/"):
                return None
            if is_authorized(request.headers.get("Authorization"), credentials):
                return None
            response = Response(REFUSAL_TEXT, status=401, mimetype="text/plain")
            response.headers["WWW-Authenticate"] = REALM_HEADER
            return response

    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(Exception, error_response)
    app.wsgi_app = _invoke_fast_path(_closing(app.wsgi_app), invoker)  # type: ignore[method-assign]
    return app


def _peer() -> str:
    return str(request.environ.get("REMOTE_ADDR") or "?") if has_request_context() else "?"


def _closing(flask_wsgi: Any) -> Any:
    """Close the connection after an answer that set ``CLOSE_KEY``: gunicorn is told through its
    response object (``force_close``: it then writes ``Connection: close``; an application's own
    hop-by-hop headers are dropped by gunicorn), other servers by the header; then the rest of the
    request is drained for a while before the socket closes (``_LingeringClose``)."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if environ.get(CLOSE_KEY):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if callable(force_close):
                    force_close()
                else:
                    headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)

        body = flask_wsgi(environ, start)
        if environ.get(CLOSE_KEY) and environ.get("gunicorn.socket") is not None:
            return _LingeringClose(body, environ["gunicorn.socket"])
        return body

    return wsgi


class _LingeringClose:
    """A response body that, once sent (``close()``, which the server calls after the last byte),
    half-closes the socket and reads what the client still sends, so that closing does not reset
    a connection with unread data (the client would lose the answer)."""

    def __init__(self, body: Iterable[bytes], sock: socket.socket) -> None:
        self._body = body
        self._sock = sock

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        try:
            self._sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            drained = 0
            while drained < LINGER_MAX_BYTES:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                self._sock.settimeout(left_s)
                data = self._sock.recv(64 * 1024)
                if not data:
                    break
                drained += len(data)
        except OSError:  # the client went first: nothing to linger for
            pass


def _invoke_fast_path(flask_wsgi: Any, invoker: Invoker) -> Any:
    """Serve ``/function/<ref>[/<path>]`` without Flask's request machinery.

    Invocations are the hot path; Flask's routing and request objects cost ~1 ms of CPU per
    request on a small VM. Same semantics as the routes registered above (which still serve
    everything this does not take: an empty ref, a method outside INVOKE_METHODS)."""
    methods = frozenset(INVOKE_METHODS)

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if not path.startswith("/function/") or method not in methods:
            return flask_wsgi(environ, start_response)
        ref, _, sub_path = path[len("/function/"):].partition("/")
        if not ref:
            return flask_wsgi(environ, start_response)
        try:
            name, namespace = types.split_function_ref(ref)
            answer: Any = invoker.invoke(environ, method, ref, name, namespace, sub_path)
        except Exception as err:  # the same single mapping as every other route
            answer = error_response(err)
        return answer(environ, start_response)

    return wsgi
