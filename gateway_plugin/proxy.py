"""The invoke path: ``/function/<name>[.<namespace>][/<path>]`` to a ready replica and back.

Depends on the backend only for ``resolve`` and ``unreachable`` (a replica that refused the
connection is reported and another one tried) and, when nothing is ready, ``status``, ``scale`` and
``wait_ready`` to scale from zero. Request headers pass through minus hop-by-hop ones;
``X-Call-Id`` (the caller's, or a new one), ``X-Start-Time`` (Unix ns, as the gateway sets it)
and ``X-Forwarded-Host``/``-For`` are added; the response carries ``X-Call-Id``,
``X-Start-Time`` and ``X-Duration-Seconds``. Small responses are returned whole, large or
unsized ones streamed. It must not parse or buffer more of a body than it has to.

This is the provider's hot path, so it is a plain WSGI answer over a lean HTTP/1.1 client: the
request line, headers and body go to the replica in one ``sendall`` on a kept-alive socket
(urllib3 sent headers and body apart, checked every header and cost ~0.1 ms of CPU more per
request on the 2-core VM), and the answer is parsed by ``http.client.HTTPResponse``.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

from urllib3.util.wait import wait_for_read

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
ONE_SEND_MAX_BYTES = 64 * 1024
"""Request bodies up to this size go out in the same ``sendall`` as the head (a copy that costs
less than a second system call); larger ones are sent after it, uncopied."""
MAX_CACHED_REPLICAS = 512
"""Replicas whose connections are kept; past this many (replicas churned) all are dropped."""
DEFAULT_CONTENT_TYPE = "text/plain"
"""What faas-provider answers with when neither side named a Content-Type."""
INVOKE_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
CONNECT_ATTEMPTS = 3
"""Replicas tried for one invocation when connecting fails (nothing was sent: safe to retry)."""


def _connection_listed(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


def environ_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """The request's headers from a WSGI environ, named as Werkzeug's ``EnvironHeaders`` names
    them (``X-Call-Id``), in no particular order."""
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            out.append((key[5:].replace("_", "-").title(), value))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out.append((key.replace("_", "-").title(), value))
    return out


def upstream_headers(environ: dict[str, Any], headers: Iterable[tuple[str, str]], call_id: str,
                     start_ns: int) -> dict[str, str]:
    """Request headers for the replica: the caller's minus hop-by-hop ones, plus ours."""
    headers = list(headers)
    connection = next((v for k, v in headers if k.lower() == "connection"), None)
    drop = _NOT_FORWARDED | _connection_listed(connection) if connection else _NOT_FORWARDED
    out: dict[str, str] = {}
    for key, value in headers:
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


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def status_line(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Unknown')}"


class _ConnectFailed(Exception):
    """Connecting to a replica failed: nothing was sent (safe to try another one)."""


def replica_address(base_url: str) -> tuple[str, int, str, str]:
    """A replica's base URL -> (host, port, path prefix, Host header), for both invoke paths."""
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/"), parts.netloc


class _Replica:
    """Where one replica's sidecar listens, and its idle kept-alive sockets (last in, first out:
    a warm one is reused; a list's append and pop are atomic, threads or greenlets)."""

    __slots__ = ("host", "port", "prefix", "host_header", "idle")

    def __init__(self, base_url: str) -> None:
        self.host, self.port, self.prefix, self.host_header = replica_address(base_url)
        self.idle: list[socket.socket] = []


class Invoker:
    """Forwards one invocation; keeps the connections to replicas."""

    def __init__(self, backend: Backend, settings: ProviderSettings, metrics: ProviderMetrics) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._replicas: dict[str, _Replica] = {}
        self._max_idle = settings.upstream_pool_size

    # ---- replicas and connections -------------------------------------------------------

    def _replica(self, base_url: str) -> _Replica:
        rep = self._replicas.get(base_url)
        if rep is None:
            if len(self._replicas) >= MAX_CACHED_REPLICAS:  # replicas come and go: forget old ones
                self.close()
            rep = self._replicas.setdefault(base_url, _Replica(base_url))
        return rep

    def _connect(self, rep: _Replica) -> socket.socket:
        try:
            sock = socket.create_connection((rep.host, rep.port),
                                            timeout=self._settings.connect_timeout_s)
        except OSError as e:  # refused, unreachable, or no answer within the connect timeout
            raise _ConnectFailed(str(e) or type(e).__name__) from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._settings.invoke_timeout_s)
        return sock

    def _socket(self, rep: _Replica) -> socket.socket:
        """A kept-alive socket still open at the other end, else a new one."""
        idle = rep.idle
        while idle:
            try:
                sock = idle.pop()
            except IndexError:
                break
            if not wait_for_read(sock, timeout=0.0):  # readable when idle: closed by the replica
                return sock
            sock.close()
        return self._connect(rep)

    def _give_back(self, rep: _Replica, sock: socket.socket) -> None:
        if len(rep.idle) < self._max_idle:
            rep.idle.append(sock)
        else:
            sock.close()

    # ---- the invocation -----------------------------------------------------------------

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

    def invoke(self, environ: dict[str, Any], method: str, ref: str, name: str, namespace: str,
               sub_path: str) -> Answer:
        """Forward the request; errors raised here are mapped to status codes by the app."""
        start_ns = time.time_ns()
        started_s = time.perf_counter()
        fn_label = function_label(name, namespace)
        self._metrics.observe_started(fn_label)
        call_id = environ.get("HTTP_X_CALL_ID") or str(uuid.uuid4())
        body = read_body(environ, self._settings.max_invoke_body_bytes)
        out_headers = upstream_headers(environ, environ_headers(environ), call_id, start_ns)
        path = upstream_path(environ, ref, sub_path)
        head_lines = "".join(f"{k}: {v}\r\n" for k, v in out_headers.items())
        if body or method not in ("GET", "HEAD"):
            head_lines += f"Content-Length: {len(body)}\r\n"
        attempt = 0
        while True:
            attempt += 1
            base_url = self.pick_replica(namespace, name)
            rep = self._replica(base_url)
            try:
                sock = self._socket(rep)
            except _ConnectFailed as e:
                self._backend.unreachable(namespace, name, base_url)
                if attempt < CONNECT_ATTEMPTS:
                    log.info("could not connect to %s (%s): trying another replica", base_url, e)
                    continue
                self._metrics.observe_invocation(fn_label, 502, time.perf_counter() - started_s)
                raise UpstreamUnreachable(
                    f"can't reach service for: {name}.{namespace} ({e})") from e
            break
        head = f"{method} {rep.prefix}{path} HTTP/1.1\r\nHost: {rep.host_header}\r\n{head_lines}\r\n"
        upstream: http.client.HTTPResponse | None = None
        try:
            if len(body) <= ONE_SEND_MAX_BYTES:
                sock.sendall(head.encode("latin-1") + body)
            else:
                sock.sendall(head.encode("latin-1"))
                sock.sendall(body)
            upstream = http.client.HTTPResponse(sock, method=method)
            upstream.begin()
        except TimeoutError as e:
            _discard(sock, upstream)
            self._metrics.observe_invocation(fn_label, 504, time.perf_counter() - started_s)
            raise UpstreamTimeout(
                f"{name}.{namespace} did not answer within {self._settings.invoke_timeout_s:g} s"
            ) from e
        except (OSError, http.client.HTTPException) as e:
            _discard(sock, upstream)
            self._metrics.observe_invocation(fn_label, 502, time.perf_counter() - started_s)
            raise UpstreamUnreachable(
                f"can't reach service for: {name}.{namespace} ({type(e).__name__}: {e})") from e
        duration_s = time.perf_counter() - started_s
        self._metrics.observe_invocation(fn_label, upstream.status, duration_s)
        return self._answer(rep, sock, upstream, out_headers, environ, duration_s)

    def _answer(self, rep: _Replica, sock: socket.socket, upstream: http.client.HTTPResponse,
                out_headers: dict[str, str], environ: dict[str, Any], duration_s: float) -> Answer:
        raw = upstream.getheaders()
        connection = upstream.getheader("Connection")
        drop = HOP_BY_HOP | _connection_listed(connection) if connection else HOP_BY_HOP
        headers = [(k, v) for k, v in raw if k.lower() not in drop]
        if upstream.getheader("Content-Type") is None:
            headers.append(("Content-Type", environ.get("CONTENT_TYPE") or DEFAULT_CONTENT_TYPE))
        headers += [("X-Call-Id", out_headers["X-Call-Id"]),
                    ("X-Start-Time", out_headers["X-Start-Time"]),
                    ("X-Duration-Seconds", f"{duration_s:f}")]
        status = status_line(upstream.status)
        length = upstream.length
        if length is not None and not upstream.chunked and length <= WHOLE_BODY_MAX_BYTES:
            try:
                data = upstream.read()
            except (OSError, http.client.HTTPException) as e:
                _discard(sock, upstream)
                raise UpstreamUnreachable(f"replica broke off its response: {e}") from e
            if upstream.will_close:
                sock.close()
            else:
                self._give_back(rep, sock)
            return Answer(status, headers, [data])
        return Answer(status, headers, _UpstreamBody(self, rep, sock, upstream))

    def close(self) -> None:
        replicas, self._replicas = self._replicas, {}
        for rep in replicas.values():
            while rep.idle:
                try:
                    rep.idle.pop().close()
                except IndexError:
                    break


class Answer:
    """A replica's answer as a WSGI application (what the fast path and Flask both serve)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: str, headers: list[tuple[str, str]], body: Iterable[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(self.status, self.headers)
        return self.body


def _discard(sock: socket.socket, upstream: http.client.HTTPResponse | None) -> None:
    """Close a socket that must not be reused (and the reader over it, which holds it open)."""
    if upstream is not None:
        upstream.close()
    sock.close()


class _UpstreamBody:
    """A streamed replica response; its socket goes back to the pool only when read to the end."""

    def __init__(self, invoker: Invoker, rep: _Replica, sock: socket.socket,
                 upstream: http.client.HTTPResponse) -> None:
        self._invoker = invoker
        self._rep = rep
        self._sock: socket.socket | None = sock
        self._upstream = upstream

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                part = self._upstream.read1(STREAM_CHUNK_BYTES)
                if not part:
                    break
                yield part
        except (OSError, http.client.HTTPException) as e:  # headers are gone: all we can do is stop
            log.warning("replica broke off a streamed response: %s", e)
        finally:
            self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._upstream.isclosed() and not self._upstream.will_close:
            self._invoker._give_back(self._rep, sock)
        else:  # unread bytes left on the socket (or the replica closes it): not reusable
            _discard(sock, self._upstream)
