"""The embedded Redis's supervisor (issue 21): a server that dies is started again on the same port
and data directory, with backoff while it cannot start, each exit and restart logged; the data
written before the death is there after it (append-only file)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import redis

from fastgshare.redis_server import EmbeddedRedis, RedisSupervisor
from tests.waiting import wait_for


def test_a_killed_server_comes_back_on_its_port_with_its_data_after_backoff(tmp_path: Path) -> None:
    notes: list[str] = []
    server = EmbeddedRedis(tmp_path / "redis").start()
    supervisor = RedisSupervisor(server, note=notes.append, backoff_s=(0.5, 0.3)).start()
    client = redis.Redis(port=server.port, socket_connect_timeout=1)
    try:
        client.set("kept", "yes")
        time.sleep(1.1)  # the append-only file is synced every second
        port, pid = server.port, server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with socket.socket() as squatter:  # the port is taken: the first restarts fail
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            wait_for(lambda: _bind(squatter, port), timeout_s=2, what="the port freed by the kill")
            squatter.listen()
            wait_for(lambda: any("failed" in n for n in notes), timeout_s=5, what="a failed restart")
        wait_for(lambda: supervisor.restarts == 1, timeout_s=5, what="the restart")
        assert server.port == port and server.pid != pid
        assert client.get("kept") == b"yes"
        assert "exited with status -9" in notes[0] and notes[-1].startswith("Redis restarted on port")
    finally:
        client.close()
        supervisor.stop()
        server.stop()
    assert supervisor.restarts == 1  # stopping the supervisor first: the stop is not a death


def _bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
