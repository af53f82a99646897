"""The provider's gevent worker: gunicorn's ``gevent`` with the read timeout of ``ProviderWorker``.

gunicorn's gevent worker bounds only the wait for a request's headers (by ``keepalive``) and
nothing after: a client that stops in the middle of a body holds its greenlet until it closes.
Here every blocking read or write on a client socket gives up after ``read_timeout_s`` without
progress (a stalled body is answered 408), except the idle wait for the next request on a
kept-alive connection, which gunicorn ends quietly after ``keepalive`` seconds as before (so the
provider never closes an idle connection before the gateway does).

Imports gevent: only the master that runs this worker class and its workers load it.
"""

from __future__ import annotations

from typing import Any

import gevent.socket
from gunicorn.workers.ggevent import GeventWorker

from gateway_plugin.gunicorn_worker import DEFAULT_READ_TIMEOUT_S


class _ClientSocket(gevent.socket.socket):  # type: ignore[misc]
    """A client socket with ``read_timeout_s`` on each operation, but none on the first read of a
    request that follows another on the same connection (``between_requests``)."""

    read_timeout_s = DEFAULT_READ_TIMEOUT_S
    between_requests = False

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.read_timeout_s)
        else:
            super().setblocking(False)

    def recv(self, *args: Any) -> bytes:
        if not self.between_requests:
            return super().recv(*args)
        self.settimeout(None)  # gunicorn's keepalive timer bounds this wait
        try:
            return super().recv(*args)
        finally:
            self.between_requests = False
            self.settimeout(self.read_timeout_s)


class ProviderGeventWorker(GeventWorker):
    """gevent with ``read_timeout_s`` on client sockets (set by ``gunicorn_conf``)."""

    read_timeout_s = DEFAULT_READ_TIMEOUT_S

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        sock = _ClientSocket(client.family, client.type, client.proto, fileno=client.detach())
        sock.read_timeout_s = self.read_timeout_s
        super().handle(listener, sock, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if isinstance(sock, _ClientSocket):
                sock.between_requests = True
