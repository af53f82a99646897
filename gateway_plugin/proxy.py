"""The invoke path: ``/function/<name>[.<namespace>][/<path>]`` to a ready replica and back.

Depends on the backend only for ``resolve`` and ``unreachable`` (a replica that refused the
connection is reported and another one tried) and, when nothing is ready, ``status``, ``scale`` and
``wait_ready`` to scale from zero. Request headers pass through minus hop-by-hop ones;
``X-Call-Id`` (the caller's, or a new one), ``X-Start-Time`` (Unix ns, as the gateway sets it)
and ``X-Forwarded-Host``/``-For`` are added; the response carries ``X-Call-Id``,
``X-Start-Time`` and ``X-Duration-Seconds``. Small responses are returned whole, large or
unsized ones streamed. It must not parse or buffer more of a body than it has to.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError
from urllib3.exceptions import HTTPError as Urllib3Error
from werkzeug.wrappers import Response

from gateway_plugin.backend import Backend
from gateway_plugin.body import read_body
from gateway_plugin.errors import (
    NoReplicaReady,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway_plugin.metrics import ProviderMetrics, function_label
from gateway_plugin.settings import ProviderSettings

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
})
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
WHOLE_BODY_MAX_BYTES = 256 * 1024
"""Responses up to this size (with a Content-Length) are read whole: cheaper than streaming."""
STREAM_CHUNK_BYTES = 64 * 1024
MAX_CACHED_POOLS = 512
"""Replica pools kept; past this many (replicas churned) all are dropped and rebuilt on use."""
DEFAULT_CONTENT_TYPE = "text/plain"
"""What faas-provider answers with when neither side named a Content-Type."""
INVOKE_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
CONNECT_ATTEMPTS = 3
"""Replicas tried for one invocation when connecting fails (nothing was sent: safe to retry)."""


def _connection_listed(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


def upstream_headers(environ: dict[str, Any], headers: Any, call_id: str, start_ns: int) -> dict[str, str]:
    """Request headers for the replica: the caller's minus hop-by-hop ones, plus ours."""
    drop = _NOT_FORWARDED | _connection_listed(headers.get("Connection"))
    out: dict[str, str] = {}
    for key, value in headers.items():
        if key.lower() not in drop:
            out[key] = f"{out[key]}, {value}" if key in out else value
    out["X-Call-Id"] = call_id
    out.setdefault("X-Start-Time", str(start_ns))
    if "X-Forwarded-Host" not in out and environ.get("HTTP_HOST"):
        out["X-Forwarded-Host"] = environ["HTTP_HOST"]
    if "X-Forwarded-For" not in out and environ.get("REMOTE_ADDR"):
        out["X-Forwarded-For"] = environ["REMOTE_ADDR"]
    return out


def upstream_path(environ: dict[str, Any], ref: str, sub_path: str) -> str:
    """The path after ``/function/<ref>``, kept as the client spelled it, plus the raw query."""
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    prefix = f"/function/{ref}"
    if raw_uri:
        path = raw_uri.split("?", 1)[0]
        path = path[len(prefix):] if path.startswith(prefix) else "/" + quote(sub_path)
    else:
        path = environ.get("PATH_INFO", "")[len(prefix):]
        path = quote(path, safe="/:@!$&'()*+,;=-._~")
    if not path.startswith("/"):
        path = "/" + path
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


class Invoker:
    """Forwards one invocation; holds the connection pool to replicas."""

    def __init__(self, backend: Backend, settings: ProviderSettings, metrics: ProviderMetrics) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._timeout = urllib3.Timeout(
            connect=settings.connect_timeout_s, read=settings.invoke_timeout_s)
        self._pools: dict[str, tuple[urllib3.HTTPConnectionPool, str]] = {}
        self._pools_lock = threading.Lock()

    def _pool_for(self, base_url: str) -> tuple[urllib3.HTTPConnectionPool, str]:
        """A keep-alive pool per replica and the replica's path prefix, cached by base URL
        (skips PoolManager's per-request URL parsing)."""
        entry = self._pools.get(base_url)
        if entry is None:
            with self._pools_lock:
                entry = self._pools.get(base_url)
                if entry is None:
                    pool = urllib3.connection_from_url(
                        base_url, maxsize=self._settings.upstream_pool_size, block=False,
                        retries=False, timeout=self._timeout)
                    if len(self._pools) >= MAX_CACHED_POOLS:  # replicas come and go: forget old ones
                        for old, _ in list(self._pools.values()):
                            old.close()
                        self._pools.clear()
                    entry = (pool, urlsplit(base_url).path.rstrip("/"))
                    self._pools[base_url] = entry
        return entry

    def pick_replica(self, namespace: str, name: str) -> str:
        """A ready replica's base URL; scales from zero and waits when none is ready. Gives up
        early when, while it waits, the function is scaled to zero (or removed)."""
        try:
            return self._backend.resolve(namespace, name)
        except NoReplicaReady:
            pass
        state = self._backend.status(namespace, name)
        if state.replicas == 0:
            target = max(1, state.spec.scale.min_replicas)
            log.info("scaling %s.%s from zero to %d for an invocation", name, namespace, target)
            self._backend.scale(namespace, name, target)
        wait_s = self._settings.scale_from_zero_timeout_s
        deadline_s = time.monotonic() + wait_s
        while True:
            if self._backend.wait_ready(namespace, name, max(0.0, deadline_s - time.monotonic())):
                try:
                    return self._backend.resolve(namespace, name)
                except NoReplicaReady:  # went again between the two looks
                    pass
            if time.monotonic() >= deadline_s:
                break
            if self._backend.status(namespace, name).replicas == 0:  # NotFound if removed
                raise NoReplicaReady(
                    f"{name}.{namespace} was scaled to zero while this request waited for a "
                    "replica; retry to start one")
        raise NoReplicaReady(
            f"no replica of {name}.{namespace} became ready within {wait_s:g} s "
            f"({state.replicas} desired)"
        )

    def invoke(self, environ: dict[str, Any], headers: Any, method: str, ref: str,
               name: str, namespace: str, sub_path: str) -> Response:
        """Forward the request; errors raised here are mapped to status codes by the app."""
        start_ns = time.time_ns()
        started_s = time.perf_counter()
        fn_label = function_label(name, namespace)
        self._metrics.observe_started(fn_label)
        call_id = headers.get("X-Call-Id") or str(uuid.uuid4())
        body = read_body(environ, self._settings.max_invoke_body_bytes)
        out_headers = upstream_headers(environ, headers, call_id, start_ns)
        path = upstream_path(environ, ref, sub_path)
        attempt = 0
        while True:
            attempt += 1
            base_url = self.pick_replica(namespace, name)
            try:
                pool, prefix = self._pool_for(base_url)
                upstream = pool.urlopen(
                    method, prefix + path,
                    body=body if body or method not in ("GET", "HEAD") else None,
                    headers=out_headers, preload_content=False, redirect=False, retries=False,
                    decode_content=False)
                break
            except ConnectTimeoutError as e:  # refused or unanswered connect: nothing was sent
                self._backend.unreachable(namespace, name, base_url)
                if attempt < CONNECT_ATTEMPTS:
                    log.info("could not connect to %s (%s): trying another replica", base_url, e)
                    continue
                self._metrics.observe_invocation(fn_label, 502, time.perf_counter() - started_s)
                raise UpstreamUnreachable(
                    f"can't reach service for: {name}.{namespace} ({e})") from e
            except ReadTimeoutError as e:
                self._metrics.observe_invocation(fn_label, 504, time.perf_counter() - started_s)
                raise UpstreamTimeout(
                    f"{name}.{namespace} did not answer within {self._settings.invoke_timeout_s:g} s"
                ) from e
            except Urllib3Error as e:
                self._metrics.observe_invocation(fn_label, 502, time.perf_counter() - started_s)
                raise UpstreamUnreachable(f"can't reach service for: {name}.{namespace} ({e})") from e
        duration_s = time.perf_counter() - started_s
        self._metrics.observe_invocation(fn_label, upstream.status, duration_s)
        return self._make_response(upstream, headers, call_id, out_headers["X-Start-Time"], duration_s)

    def _make_response(self, upstream: Any, req_headers: Any, call_id: str, start: str,
                       duration_s: float) -> Response:
        drop = HOP_BY_HOP | _connection_listed(upstream.headers.get("Connection"))
        resp_headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in drop]
        if upstream.headers.get("Content-Type") is None:
            resp_headers.append(("Content-Type", req_headers.get("Content-Type") or DEFAULT_CONTENT_TYPE))
        resp_headers += [("X-Call-Id", call_id), ("X-Start-Time", start),
                         ("X-Duration-Seconds", f"{duration_s:f}")]
        length = upstream.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= WHOLE_BODY_MAX_BYTES:
            try:
                data = upstream.read()
            except Urllib3Error as e:
                raise UpstreamUnreachable(f"replica broke off its response: {e}") from e
            finally:
                upstream.release_conn()
            response = Response(data, status=upstream.status)
        else:
            response = Response(_UpstreamBody(upstream), status=upstream.status, direct_passthrough=True)
        response.headers.clear()
        for key, value in resp_headers:
            response.headers.add(key, value)
        return response

    def close(self) -> None:
        with self._pools_lock:
            for pool, _ in self._pools.values():
                pool.close()
            self._pools.clear()


class _UpstreamBody:
    """A streamed replica response that always gives its connection back, read or not."""

    def __init__(self, upstream: Any) -> None:
        self._upstream = upstream
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._upstream.stream(STREAM_CHUNK_BYTES, decode_content=False)
            self._done = True
        except Urllib3Error as e:  # headers are gone already: all we can do is stop
            log.warning("replica broke off a streamed response: %s", e)
        finally:
            self.close()

    def close(self) -> None:
        if not self._done:  # unread bytes left on the socket: it must not go back to the pool
            self._upstream.close()
        self._upstream.release_conn()
