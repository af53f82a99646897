"""The invoke path's own HTTP client against replicas that close kept-alive connections: a socket
the replica closed while idle is not reused (no 502 for the next request), and an answer with
``Connection: close`` is not kept."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from gateway_plugin.app import create_app
from gateway_plugin.backend import FunctionSpec
from gateway_plugin.settings import ProviderSettings
from tests.fakes import FakeBackend


class _ClosingReplica:
    """Answers one request per connection with ``body`` and then closes it, after ``idle_close_s``
    (a replica's keep-alive timeout) or at once with ``Connection: close``."""

    def __init__(self, idle_close_s: float | None) -> None:
        self.idle_close_s = idle_close_s
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    return
                data += part
            close = self.idle_close_s is None
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                         + (b"Connection: close\r\n" if close else b"") + b"\r\nok")
            if not close:
                time.sleep(self.idle_close_s or 0.0)

    def close(self) -> None:
        self._stop = True
        self._listener.close()


@pytest.fixture(params=[0.05, None], ids=["idle-close", "connection-close"])
def replica(request: pytest.FixtureRequest) -> Iterator[_ClosingReplica]:
    rep = _ClosingReplica(request.param)
    yield rep
    rep.close()


def test_a_connection_the_replica_closed_is_not_reused(replica: _ClosingReplica) -> None:
    backend = FakeBackend(replica_url=replica.url)
    backend.deploy(FunctionSpec("echo", "echo"))
    app = create_app(backend, ProviderSettings(basic_auth=False), registry=CollectorRegistry(),
                     records=None)
    client = app.test_client()
    for _ in range(3):
        resp = client.post("/function/echo", data=b"hi")
        assert (resp.status_code, resp.data) == (200, b"ok")
        time.sleep(0.2)  # the replica closes its side meanwhile
    assert replica.connections == 3
