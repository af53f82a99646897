"""The sidecar's HTTP/1.1 server: asyncio protocols over httptools' parser, nothing else.

The sidecar serves one client that matters, the provider (or a gateway) on kept-alive
connections, and a handful of routes; a general framework's request and response machinery cost
more per request than everything the sidecar itself does (aiohttp's was about 0.1 ms of CPU per
request on a 2-core VM, beside the invoke path's ~0.15). This is the same job as uvicorn's
httptools protocol, without ASGI between it and the handler:

- a request is parsed by httptools (lengths and chunked bodies, malformed framing answered 400),
  read whole (past ``max_body_bytes``: 413 and the connection closed), and handed to
  ``handler(request) -> Response``; requests on one connection are answered in order;
- ``Expect: 100-continue`` is answered before the body; HTTP/1.0 and ``Connection: close`` end
  the connection after the answer; a client that leaves does not cancel its request (it holds a
  token and a place in the worker: it runs to its end, as aiohttp's default does);
- ``shutdown(timeout_s)`` drains: stop listening, close idle connections, let every request
  already taken finish (its connection closes after its answer), for ``timeout_s`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import httptools
from multidict import CIMultiDict

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Request:
    """One request, read whole."""

    __slots__ = ("method", "raw_path", "path", "headers", "body", "keep_alive")

    def __init__(self, method: str, raw_path: str, headers: CIMultiDict[str], body: bytes,
                 keep_alive: bool) -> None:
        self.method = method
        self.raw_path = raw_path
        """The target as sent: path and query, undecoded."""
        self.path = raw_path.split("?", 1)[0]
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    async def read(self) -> bytes:
        return self.body


class Response:
    """An answer: status, headers (case-insensitive, mutable until written) and a body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int = 200, body: bytes = b"", headers: Any = None, *,
                 text: str | None = None, content_type: str | None = None) -> None:
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers or ())
        if text is not None:
            body = text.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        self.body = body

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode(), content_type="application/json")

    def encode(self, head_only: bool, close: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (self.status, _REASONS.get(self.status, b"Unknown"))]
        for k, v in self.headers.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                lines.append(f"{k}: {v}\r\n".encode("latin-1"))
        lines.append(b"Content-Length: %d\r\n" % len(self.body))
        if close:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        if not head_only:
            lines.append(self.body)
        return b"".join(lines)


Handler = Callable[[Request], Awaitable[Response]]


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: LeanServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self.closing = False

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served here")
        except httptools.HttpParserError as e:
            if not self._too_large:
                self._refuse(400, f"malformed HTTP request: {e}")

    # ---- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for k, v in self._headers:
            if k.lower() == "expect" and v.lower() == "100-continue" and self._transport:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body_bytes:
            if not self._too_large:
                self._too_large = True
                self._refuse(413, f"request body is larger than the {self._server.max_body_bytes} "
                                  "bytes allowed here")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(self._parser.get_method().decode("latin-1"),
                          self._url.decode("latin-1"), CIMultiDict(self._headers), body,
                          self._parser.should_keep_alive())
        self._pending.append(request)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._answer_all())
            self._server.busy.add(self._task)

    # ---- answering ----------------------------------------------------------------------

    async def _answer_all(self) -> None:
        try:
            while self._pending:
                request = self._pending.popleft()
                try:
                    response = await self._server.handler(request)
                except Exception:
                    log.exception("request %s %s failed", request.method, request.path)
                    response = Response(500, text="sidecar error while serving the request\n")
                close = not request.keep_alive or self.closing
                if self._transport is None:
                    return  # the client left; its request ran to its end anyway
                self._transport.write(response.encode(request.method == "HEAD", close))
                if close:
                    self._transport.close()
                    return
        finally:
            assert self._task is not None
            self._server.busy.discard(self._task)
            self._task = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer at once and close: the rest of what the client sends is not read."""
        if self._transport is None:
            return
        self._transport.write(Response(status, text=message + "\n").encode(False, True))
        self._transport.close()

    def close_if_idle(self) -> None:
        """Draining: an idle connection closes now, a busy one after its answer."""
        self.closing = True
        if self._task is None and self._transport is not None:
            self._transport.close()


class LeanServer:
    """Listens on one TCP address and serves ``handler``; ``shutdown`` drains."""

    def __init__(self, handler: Handler, *, max_body_bytes: int) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.busy: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        """Start listening; returns the port bound (``port`` 0: a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port,
                                                backlog=backlog)
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self, timeout_s: float) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        if self.busy:
            _, pending = await asyncio.wait(set(self.busy), timeout=timeout_s)
            if pending:
                log.warning("%d requests still running after the %g s drain", len(pending),
                            timeout_s)
        for conn in list(self.connections):
            if conn._transport is not None:
                conn._transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
