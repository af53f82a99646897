"""The invoke path on the worker's event loop: ``/function/*`` with no thread and no WSGI.

``gateway_plugin.asgi`` hands every invocation here when the provider runs under its uvicorn
worker (``gateway_plugin.gunicorn_uvicorn``, the default). Same semantics as the threaded
``gateway_plugin.proxy.Invoker``, which still serves the WSGI workers and Flask's own
``/function`` routes: the caller's headers minus hop-by-hop ones plus ``X-Call-Id``,
``X-Start-Time`` and ``X-Forwarded-Host``/``-For``; ``X-Call-Id``, ``X-Start-Time`` and
``X-Duration-Seconds`` on the answer; a refused connection reported to the backend and another
replica tried; small answers sent whole, large or unsized ones streamed; every error answered by
``gateway_plugin.app.error_response``, the one mapping.

Per request: the body is taken from the server as it arrives (a client that stops sending for
``read_timeout_s`` is answered 408; past ``max_invoke_body_bytes``, 413), a replica is picked
from the backend's in-memory table (the scale-from-zero wait, which blocks, runs in a thread),
and the request goes out in one write on a kept-alive connection from this worker's pool for that
replica. A pooled connection the replica closed while idle is noticed before use, or, if it
closes as the request goes out (before any answer byte), the request is sent once more on a new
connection (nothing reached the replica's handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from fastgshare import http1
from gateway_plugin.app import error_response
from gateway_plugin.backend import Backend
from gateway_plugin.errors import (
    ClientGone,
    NoReplicaReady,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway_plugin.metrics import ProviderMetrics, function_label
from gateway_plugin.proxy import (
    CONNECT_ATTEMPTS,
    DEFAULT_CONTENT_TYPE,
    HOP_BY_HOP,
    MAX_CACHED_REPLICAS,
    STREAM_CHUNK_BYTES,
    WHOLE_BODY_MAX_BYTES,
    Invoker,
    replica_address,
)
from gateway_plugin.settings import ProviderSettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
_HEAD_LIMIT_BYTES = 256 * 1024
"""Longest status line + headers accepted from a replica."""
_RESERVED_OUT = frozenset({"x-call-id", "x-start-time", "x-duration-seconds"})


class _Pool:
    """One replica's address and its idle kept-alive connections (last in, first out)."""

    __slots__ = ("host", "port", "prefix", "host_header", "idle", "closed")

    def __init__(self, base_url: str) -> None:
        self.host, self.port, self.prefix, self.host_header = replica_address(base_url)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.closed = False


def _usable(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    reader, writer = conn
    return not (writer.is_closing() or reader.at_eof() or reader._buffer)  # type: ignore[attr-defined]


class _ConnectFailed(Exception):
    pass


class _Retry(Exception):
    """A reused connection was closed by the replica before it answered a byte: send again."""


class AsyncInvoker:
    """Forwards invocations from the event loop; keeps this worker's connections to replicas."""

    def __init__(self, backend: Backend, settings: ProviderSettings, metrics: ProviderMetrics,
                 invoker: Invoker, *, read_timeout_s: float) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._invoker = invoker
        self._read_timeout_s = read_timeout_s
        self._pools: dict[str, _Pool] = {}
        self._resolve_inline = bool(getattr(backend, "resolve_never_blocks", False))
        """The backend's ``resolve`` only reads memory (local): called on the loop."""
        self._try_resolve: Callable[[str, str], str | None] | None = getattr(
            backend, "try_resolve", None)
        """Else a lookup that never blocks, where the backend has one (Kubernetes: its endpoint
        table); ``resolve`` in a thread when it finds nothing."""

    # ---- the request --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, ref: str, name: str,
                       namespace: str) -> None:
        start_ns = time.time_ns()
        started_s = time.perf_counter()
        fn_label = function_label(name, namespace)
        self._metrics.observe_started(fn_label)
        method: str = scope["method"]
        try:
            headers, call_id = self._upstream_headers(scope, start_ns)
            body = await self._read_body(scope, receive)
            target = self._upstream_target(scope, ref)
            await self._forward(send, method, target, headers, body, call_id, start_ns,
                                namespace, name, fn_label, started_s)
        except ClientGone:
            return  # nobody to answer
        except Exception as err:  # mapped to a status in one place, as for every route
            await send_error(send, err)

    def _upstream_headers(self, scope: Scope, start_ns: int) -> tuple[list[str], str]:
        """``Name: value`` lines for the replica (names as Go's server canonicalizes them, as
        the threaded path sends them), and the call id."""
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        drop = _NOT_FORWARDED
        for k, v in raw:
            if k == b"connection":
                drop = drop | {t.strip().lower() for t in v.decode("latin-1").split(",")}
        lines: list[str] = []
        call_id = start = fwd_host = fwd_for = ""
        host = ""
        for k, v in raw:
            key = k.decode("latin-1")
            value = v.decode("latin-1")
            if key == "x-call-id":
                call_id = call_id or value
                continue
            if key == "x-start-time":
                start = start or value
            elif key == "x-forwarded-host":
                fwd_host = value
            elif key == "x-forwarded-for":
                fwd_for = value
            elif key == "host":
                host = value
            if key not in drop:
                lines.append(f"{key.title()}: {value}\r\n")
        call_id = call_id or str(uuid.uuid4())
        lines.append(f"X-Call-Id: {call_id}\r\n")
        if not start:
            lines.append(f"X-Start-Time: {start_ns}\r\n")
        if not fwd_host and host:
            lines.append(f"X-Forwarded-Host: {host}\r\n")
        client = scope.get("client")
        if not fwd_for and client:
            lines.append(f"X-Forwarded-For: {client[0]}\r\n")
        return lines, call_id

    @staticmethod
    def _upstream_target(scope: Scope, ref: str) -> str:
        """The path after ``/function/<ref>``, as the client spelled it, plus the raw query."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
        path = raw_path.decode("latin-1")
        prefix = f"/function/{ref}"
        if path.startswith(prefix):
            path = path[len(prefix):]
        else:  # the client escaped part of the ref: take the decoded rest, escaped again
            path = quote(scope["path"].split("/", 3)[3] if scope["path"].count("/") >= 3 else "")
        if not path.startswith("/"):
            path = "/" + path
        query: bytes = scope.get("query_string") or b""
        return f"{path}?{query.decode('latin-1')}" if query else path

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        return await read_body(scope, receive, self._settings.max_invoke_body_bytes,
                               self._read_timeout_s)

    # ---- replicas and connections -------------------------------------------------------

    async def _pick(self, namespace: str, name: str) -> str:
        if self._resolve_inline:
            try:
                return self._backend.resolve(namespace, name)
            except NoReplicaReady:
                pass
        elif self._try_resolve is not None:
            url = self._try_resolve(namespace, name)
            if url is not None:
                return url
        # Scale from zero and wait, or a backend whose resolve may do I/O: off the loop.
        return await asyncio.to_thread(self._invoker.pick_replica, namespace, name)

    def _pool(self, base_url: str) -> _Pool:
        pool = self._pools.get(base_url)
        if pool is None:
            if len(self._pools) >= MAX_CACHED_REPLICAS:  # replicas come and go: forget old ones
                self.close()
            pool = self._pools[base_url] = _Pool(base_url)
        return pool

    async def _connection(self, pool: _Pool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, reused): an idle one still open at the other end, else a new one."""
        while pool.idle:
            conn = pool.idle.pop()
            if _usable(conn):
                return conn[0], conn[1], True
            conn[1].close()
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                reader, writer = await asyncio.open_connection(pool.host, pool.port,
                                                               limit=_HEAD_LIMIT_BYTES)
        except (OSError, TimeoutError) as e:
            raise _ConnectFailed(str(e) or type(e).__name__) from e
        return reader, writer, False

    def _give_back(self, pool: _Pool, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        if len(pool.idle) < self._settings.upstream_pool_size and not pool.closed:
            pool.idle.append((reader, writer))
        else:
            writer.close()

    # ---- forwarding ---------------------------------------------------------------------

    async def _forward(self, send: Send, method: str, target: str, headers: list[str], body: bytes,
                       call_id: str, start_ns: int, namespace: str, name: str, fn_label: str,
                       started_s: float) -> None:
        length_line = (f"Content-Length: {len(body)}\r\n"
                       if body or method not in ("GET", "HEAD") else "")
        attempt = 0
        resent = False
        while True:
            attempt += 1
            base_url = await self._pick(namespace, name)
            pool = self._pool(base_url)
            try:
                reader, writer, reused = await self._connection(pool)
            except _ConnectFailed as e:
                self._backend.unreachable(namespace, name, base_url)
                if attempt < CONNECT_ATTEMPTS:
                    log.info("could not connect to %s (%s): trying another replica", base_url, e)
                    continue
                self._metrics.observe_invocation(fn_label, 502, time.perf_counter() - started_s)
                raise UpstreamUnreachable(
                    f"can't reach service for: {name}.{namespace} ({e})") from e
            head = (f"{method} {pool.prefix}{target} HTTP/1.1\r\nHost: {pool.host_header}\r\n"
                    f"{''.join(headers)}{length_line}\r\n").encode("latin-1")
            try:
                answer = await self._exchange(reader, writer, head, body, reused and not resent)
            except _Retry:
                resent = True
                attempt -= 1
                continue
            except TimeoutError as e:
                writer.close()
                self._metrics.observe_invocation(fn_label, 504, time.perf_counter() - started_s)
                raise UpstreamTimeout(f"{name}.{namespace} did not answer within "
                                      f"{self._settings.invoke_timeout_s:g} s") from e
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                writer.close()
                self._metrics.observe_invocation(fn_label, 502, time.perf_counter() - started_s)
                raise UpstreamUnreachable(f"can't reach service for: {name}.{namespace} "
                                          f"({type(e).__name__}: {e})") from e
            break
        duration_s = time.perf_counter() - started_s
        self._metrics.observe_invocation(fn_label, answer.status, duration_s)
        await self._respond(send, method, pool, reader, writer, answer, call_id, start_ns,
                            duration_s)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        head: bytes, body: bytes, may_resend: bool) -> http1.Head:
        if len(body) <= 65536:
            writer.write(head + body)
        else:
            writer.write(head)
            writer.write(body)
            await writer.drain()
        try:
            async with asyncio.timeout(self._settings.invoke_timeout_s):
                return await http1.read_head(reader)
        except (asyncio.IncompleteReadError, ConnectionResetError) as e:
            partial = getattr(e, "partial", b"")
            if may_resend and not partial:
                writer.close()
                raise _Retry() from e
            raise

    async def _respond(self, send: Send, method: str, pool: _Pool, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, answer: http1.Head, call_id: str,
                       start_ns: int, duration_s: float) -> None:
        drop = HOP_BY_HOP | _RESERVED_OUT
        content_type = False
        out: list[tuple[bytes, bytes]] = []
        for k, v in answer.headers:
            lk = k.lower()
            if lk == "connection":
                drop = drop | {t.strip().lower() for t in v.split(",")}
        for k, v in answer.headers:
            lk = k.lower()
            if lk in drop:
                continue
            if lk == "content-type":
                content_type = True
            out.append((k.encode("latin-1"), v.encode("latin-1")))
        if not content_type:
            out.append((b"Content-Type", DEFAULT_CONTENT_TYPE.encode()))
        out += [(b"X-Call-Id", call_id.encode("latin-1")),
                (b"X-Start-Time", str(start_ns).encode()),
                (b"X-Duration-Seconds", f"{duration_s:f}".encode())]
        ends = answer.ends_connection(method)
        if not answer.has_body(method):
            await send({"type": "http.response.start", "status": answer.status, "headers": out})
            await send({"type": "http.response.body", "body": b""})
            self._finish(pool, reader, writer, ends)
            return
        if answer.length is not None and answer.length <= WHOLE_BODY_MAX_BYTES:
            try:
                async with asyncio.timeout(self._settings.invoke_timeout_s):
                    data = await reader.readexactly(answer.length)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                writer.close()
                raise UpstreamUnreachable(f"replica broke off its response: {e}") from e
            self._finish(pool, reader, writer, ends)
            await send({"type": "http.response.start", "status": answer.status, "headers": out})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        complete = False
        try:
            async for part in _stream(reader, answer):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            complete = True
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            log.warning("replica broke off a streamed response: %s", e)
        finally:
            if complete:
                self._finish(pool, reader, writer, ends)
            else:
                writer.close()
        await send({"type": "http.response.body", "body": b""})

    def _finish(self, pool: _Pool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                ends: bool) -> None:
        if ends:
            writer.close()
        else:
            self._give_back(pool, reader, writer)

    def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.closed = True
            for _, writer in pool.idle:
                writer.close()
            pool.idle.clear()


async def read_body(scope: Scope, receive: Receive, max_bytes: int, read_timeout_s: float) -> bytes:
    """A request's whole body from the server: 413 (``PayloadTooLarge``) past ``max_bytes``, by
    its Content-Length at once or as it arrives; 408 (``RequestTimeout``) when nothing arrives for
    ``read_timeout_s``; ``ClientGone`` when the client leaves first."""
    for k, v in scope["headers"]:
        if k == b"content-length" and v.isdigit() and int(v) > max_bytes:
            raise PayloadTooLarge(f"request body is larger than the {max_bytes} bytes allowed here")
    parts: list[bytes] = []
    total = 0
    while True:
        try:
            async with asyncio.timeout(read_timeout_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout("the request body stopped arriving (read timeout)") from None
        if message["type"] == "http.disconnect":
            raise ClientGone("the client closed the connection in the middle of the body")
        part = message.get("body", b"")
        if part:
            total += len(part)
            if total > max_bytes:
                raise PayloadTooLarge(f"request body is larger than the {max_bytes} bytes "
                                      "allowed here")
            parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


async def send_error(send: Send, err: Exception, *, close: bool = False) -> None:
    """Answer ``err`` as every route does (``gateway_plugin.app.error_response``); ``close``:
    with ``Connection: close`` (the request's body was not read to its end)."""
    response = error_response(err)
    headers = [(k.encode("latin-1"), str(v).encode("latin-1"))
               for k, v in response.headers.items() if k.lower() != "content-length"]
    if close:
        headers.append((b"Connection", b"close"))
    with contextlib.suppress(Exception):  # the client may be gone, or an answer begun
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})
        await send({"type": "http.response.body", "body": response.get_data()})


async def _stream(reader: asyncio.StreamReader, answer: http1.Head):  # type: ignore[no-untyped-def]
    """A large, chunked or unframed body, piece by piece."""
    if answer.chunked:
        async for chunk in http1.iter_chunks(reader):
            if chunk:
                yield chunk
        return
    if answer.length is not None:
        left = answer.length
        while left > 0:
            part = await reader.read(min(left, STREAM_CHUNK_BYTES))
            if not part:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(part)
            yield part
        return
    while part := await reader.read(STREAM_CHUNK_BYTES):
        yield part
