"""The provider's default gunicorn worker: uvicorn (uvloop, httptools) over ``gateway_plugin.asgi``.

gunicorn loads the same Flask app as for every worker class (``gateway_plugin.wsgi:app``); this
worker wraps it with ``gateway_plugin.asgi.provider_asgi`` so that invocations run on the event
loop and everything else runs in a thread pool (``threads`` of them). What gunicorn's gevent and
gthread workers left to a read timeout per socket operation, the event loop does per request:
a slow client holds a coroutine, not a thread, and a request body that stops arriving is
answered 408 after ``read_timeout_s``.

Imports uvicorn and uvloop: only the master that runs this worker class and its workers load them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from gateway_plugin.gunicorn_worker import DEFAULT_READ_TIMEOUT_S


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on a request's head: a connection that has
    sent nothing ``header_timeout_s`` after it opened, or whose request line and headers are not
    complete that long after their first byte (a client that drips them), is closed. uvicorn
    bounds only the idle time between requests (``timeout_keep_alive``), which this leaves
    alone; a stalled body is the ASGI app's (408)."""

    header_timeout_s = DEFAULT_READ_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class ProviderUvicornWorker(UvicornWorker):
    """uvicorn with uvloop and httptools (with a deadline on each request's head), no Server
    header, the client's address as sent (no X-Forwarded-For rewriting: the invoke path forwards
    it), and the provider's ASGI front."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (uvicorn_worker's own class attribute)
        "loop": "uvloop", "http": HeaderDeadlineProtocol, "lifespan": "on", "server_header": False,
        "proxy_headers": False,
    }
    read_timeout_s = DEFAULT_READ_TIMEOUT_S
    wsgi_threads = 128

    def load_wsgi(self) -> None:
        super().load_wsgi()
        from gateway_plugin.asgi import provider_asgi

        self.wsgi = provider_asgi(self.wsgi, read_timeout_s=self.read_timeout_s,
                                  wsgi_threads=self.wsgi_threads)
