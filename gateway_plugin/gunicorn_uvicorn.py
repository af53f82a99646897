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

from typing import Any

from uvicorn_worker import UvicornWorker

from gateway_plugin.gunicorn_worker import DEFAULT_READ_TIMEOUT_S


class ProviderUvicornWorker(UvicornWorker):
    """uvicorn with uvloop and httptools, no Server header, the client's address as sent (no
    X-Forwarded-For rewriting: the invoke path forwards it), and the provider's ASGI front."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (uvicorn_worker's own class attribute)
        "loop": "uvloop", "http": "httptools", "lifespan": "on", "server_header": False,
        "proxy_headers": False,
    }
    read_timeout_s = DEFAULT_READ_TIMEOUT_S
    wsgi_threads = 128

    def load_wsgi(self) -> None:
        super().load_wsgi()
        from gateway_plugin.asgi import provider_asgi

        self.wsgi = provider_asgi(self.wsgi, read_timeout_s=self.read_timeout_s,
                                  wsgi_threads=self.wsgi_threads)
