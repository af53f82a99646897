"""The provider's gunicorn worker: gunicorn's ``gthread`` with a read timeout on client sockets.

gthread hands a connection to a thread as soon as some bytes arrive and then reads the rest
blocking, with no limit: a client that sends half a request holds that thread until it closes,
and 128 of them froze a worker (``/healthz`` and every invocation waited). Here every blocking
read or write on a client socket gives up after ``read_timeout_s`` without progress (like nginx's
``client_header_timeout`` / ``client_body_timeout``, per operation), which closes the connection and
frees the thread.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

DEFAULT_READ_TIMEOUT_S = 10.0
"""Longest wait for the next bytes of a request (or for a client to take response bytes)."""


class _ClientSocket(socket.socket):
    """A client socket whose blocking mode carries a timeout (gthread switches sockets between
    non-blocking, in its poller, and blocking, in a thread, with ``setblocking``)."""

    read_timeout_s = DEFAULT_READ_TIMEOUT_S

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(self.read_timeout_s)
        else:
            super().setblocking(False)


class ProviderWorker(ThreadWorker):
    """gthread with ``read_timeout_s`` on every client socket (set by ``gunicorn_conf``)."""

    read_timeout_s = DEFAULT_READ_TIMEOUT_S

    def accept(self, listener: Any) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except BlockingIOError:
            return
        except OSError:
            return
        self.nr_conns += 1
        sock = _ClientSocket(client_sock.family, client_sock.type, client_sock.proto,
                             fileno=client_sock.detach())
        sock.read_timeout_s = self.read_timeout_s
        sock.setblocking(True)
        self.enqueue_req(TConn(self.cfg, sock, client_addr, listener.getsockname()))
