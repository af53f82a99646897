"""The provider as an ASGI application: invocations on the event loop, the rest through Flask.

``gateway_plugin.gunicorn_uvicorn.ProviderUvicornWorker`` (the default worker class) wraps the
Flask app that ``gateway_plugin.wsgi`` builds with ``provider_asgi``, so the command line and the
app are the same for every worker class. Requests go two ways:

- ``/function/<ref>[/<path>]`` with an invoke method: ``gateway_plugin.invoke_async``, on the
  loop, with no thread and no WSGI environ (the hot path).
- everything else (``/system/*``, ``/healthz``, ``/metrics``, and what the invoke path does not
  take): the Flask app in a thread pool through a2wsgi. The body is read here first (408 when it
  stops arriving for ``read_timeout_s``, 413 past the largest body any route takes, with
  ``Connection: close``), so a slow client holds no thread; and a client that goes away ends a
  streamed answer (``/system/logs?follow=true``) at its next line instead of holding its thread.

HTTP framing (chunked bodies, lengths, header syntax) is uvicorn's, over httptools: malformed
framing is answered 400 by the server before any of this runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import MutableMapping
from typing import Any

from a2wsgi.wsgi import WSGIMiddleware, WSGIResponder
from flask import Flask

from gateway_plugin import types
from gateway_plugin.app import EXTENSION_KEY
from gateway_plugin.errors import ClientGone, PayloadTooLarge, RequestTimeout
from gateway_plugin.invoke_async import AsyncInvoker, Receive, Scope, Send, read_body, send_error
from gateway_plugin.proxy import INVOKE_METHODS

log = logging.getLogger(__name__)

_INVOKE_METHODS = frozenset(INVOKE_METHODS)


class _ClientDisconnected(OSError):
    """Raised in a WSGI thread that sends to a client that has gone."""


class _Responder(WSGIResponder):
    """a2wsgi's responder, whose thread-side ``send`` stops once the client is gone (a2wsgi's own
    keeps feeding an answer nobody reads: a followed log would never end)."""

    def __init__(self, *args: Any, gone: threading.Event) -> None:
        super().__init__(*args)
        self._gone = gone

    def send(self, message: Any) -> None:
        if self._gone.is_set():
            raise _ClientDisconnected("the client closed the connection")
        super().send(message)


class _WSGIBridge(WSGIMiddleware):
    """The Flask app behind the loop: body read first, then the app in a pool thread."""

    def __init__(self, app: Any, *, workers: int, read_timeout_s: float, max_body_bytes: int) -> None:
        super().__init__(app, workers=workers)
        self._read_timeout_s = read_timeout_s
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        try:
            body = await self._read_body(scope, receive)
        except ClientGone:
            return
        except (PayloadTooLarge, RequestTimeout) as err:
            await send_error(send, err, close=True)
            return
        gone = threading.Event()
        left = asyncio.Event()
        delivered = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def watch() -> None:  # after the body, the next message is the client leaving
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                left.set()

        watcher = asyncio.create_task(watch())
        responder = _Responder(self.app, self.executor, self.send_queue_size, gone=gone)
        try:
            await responder(scope, replay, send)  # type: ignore[arg-type]
        except _ClientDisconnected:
            pass
        finally:
            watcher.cancel()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        return await read_body(scope, receive, self._max_body_bytes, self._read_timeout_s)


class ProviderASGI:
    """The ASGI callable: the invoke path on the loop, everything else to Flask."""

    def __init__(self, flask_app: Flask, *, read_timeout_s: float, wsgi_threads: int) -> None:
        parts = flask_app.extensions[EXTENSION_KEY]
        settings = parts["settings"]
        self.flask_app = flask_app
        self.invoker = AsyncInvoker(parts["backend"], settings, parts["metrics"], parts["invoker"],
                                    read_timeout_s=read_timeout_s)
        self._wsgi = _WSGIBridge(
            flask_app, workers=wsgi_threads, read_timeout_s=read_timeout_s,
            max_body_bytes=max(settings.max_system_body_bytes, settings.max_invoke_body_bytes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/function/") and scope["method"] in _INVOKE_METHODS:
                ref = path[10:].partition("/")[0]
                if ref:
                    try:
                        name, namespace = types.split_function_ref(ref)
                    except Exception as err:  # an invalid name: 400, as Flask's route answers
                        await send_error(send, err)
                        return
                    await self.invoker(scope, receive, send, ref, name, namespace)
                    return
            await self._wsgi(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.invoker.close()
                self._wsgi.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


def provider_asgi(flask_app: Flask, *, read_timeout_s: float, wsgi_threads: int) -> ProviderASGI:
    return ProviderASGI(flask_app, read_timeout_s=read_timeout_s, wsgi_threads=wsgi_threads)
