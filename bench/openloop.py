"""An open-loop HTTP load generator: Poisson arrivals, each request sent at its arrival time
whether or not earlier ones have been answered. Runs in its own process so that it does not share
a GIL with what it measures:

    python -m bench.openloop --url http://127.0.0.1:PORT/path --rate-rps R --duration-s D [--seed S]

It prints ``ready``, waits for one line on stdin (the start, as a ``time.monotonic()`` value, or
empty for "now"), runs, and prints one JSON line: per request its scheduled arrival (seconds from
the start), its latency (ms, from the moment it was written to its socket to its whole answer), its
send lag (ms, written - arrival: how late the generator itself was) and its status (0: no answer in
time, -1: not sent, the connection cap reached); and the generator's own CPU seconds. Open loop: no
request waits for another, so a slow server shows as latency, never as a lower rate; the lag (a
CPU-starved generator, not the server) is kept apart so that the machine's scheduling of the
generator is not counted as the server's latency, and reported.

Built for low overhead rather than generality (an asyncio version cost ~0.13 ms of CPU per request
here, as much as the server it measured): one thread, non-blocking sockets and one ``select()``
per wake-up, HTTP/1.1 keep-alive with one request at a time per connection and a new connection
whenever none is idle, the request encoded once, answers parsed only for status, length and
chunked framing. ``select()`` rather than epoll because its timeout is in microseconds (Python's
epoll rounds up to whole milliseconds: every send up to 1 ms late); hence at most 900 connections
(FD_SETSIZE), beyond which an arrival is counted as not sent.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import random
import resource
import select
import socket
import sys
import time
from urllib.parse import urlsplit

_SELECT_MAX_CONNS = 900
"""Most connections open at once (select() handles file descriptors below FD_SETSIZE, 1024)."""


def _complete(buf: bytearray) -> tuple[int, int, bool] | None:
    """(status, bytes used, connection closes) once ``buf`` holds one whole answer, else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).lower()
    code = int(head[9:12])
    close = b"\nconnection: close" in head
    body_start = head_end + 4
    cl = head.find(b"\ncontent-length:")
    if cl >= 0:
        eol = head.find(b"\r", cl + 1)
        length = int(head[cl + 16:eol if eol >= 0 else len(head)])
        end = body_start + length
        return (code, end, close) if len(buf) >= end else None
    if b"\ntransfer-encoding: chunked" in head:
        pos = body_start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # no trailers expected: the closing CRLF
                return (code, end + 4, close) if end >= 0 else None
            pos = eol + 2 + size + 2
            if len(buf) < pos:
                return None
    if code in (204, 304) or 100 <= code < 200:
        return code, body_start, close
    return None  # read-until-close answers are not used by anything measured here


class _Conn:
    """One kept-alive connection: its socket, what it has read, and the request in flight."""

    __slots__ = ("sock", "buf", "index")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.index = -1


class Generator:
    """Arrivals at ``times_s`` (from the start), each sent to one URL as it comes."""

    def __init__(self, url: str, method: str, body: bytes, times_s: list[float],
                 max_conns: int, timeout_s: float) -> None:
        u = urlsplit(url)
        self.addr = (u.hostname or "127.0.0.1", u.port or 80)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.request = (f"{method} {target} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                        f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
                        ).encode("latin-1") + body
        self.times_s = times_s
        n = len(times_s)
        self.latency_ms: list[float | None] = [None] * n
        self.sent_s = [0.0] * n
        self.lag_ms = [0.0] * n
        self.status = [0] * n
        self.max_conns = min(max_conns, _SELECT_MAX_CONNS)
        self.timeout_s = timeout_s
        self.connections = 0

    def run(self, t0: float) -> None:
        """Send every arrival at its time; read answers in between; return when all are answered
        or ``timeout_s`` after the last arrival."""
        times, clock = self.times_s, time.monotonic
        idle: list[_Conn] = []
        busy: dict[int, _Conn] = {}
        """Connections with a request in flight (read interest), by file descriptor."""
        connecting: dict[int, _Conn] = {}
        """New connections not yet established, each with its first request (write interest)."""
        n, i = len(times), 0
        end = t0 + (times[-1] if times else 0.0) + self.timeout_s
        while True:
            now = clock() - t0
            while i < n and times[i] <= now:
                self.lag_ms[i] = (now - times[i]) * 1000.0
                self.sent_s[i] = clock()
                if idle:
                    conn = idle.pop()
                    conn.index = i
                    self._send(conn, busy)
                else:
                    conn = self._connect(i)
                    if conn is not None:
                        connecting[conn.sock.fileno()] = conn
                i += 1
            if i >= n and (not busy and not connecting or clock() >= end):
                break
            wait_s = (times[i] - now) if i < n else end - clock()
            readable, writable, _ = select.select(list(busy), list(connecting), [],
                                                  max(0.0, wait_s))
            for fd in writable:
                conn = connecting.pop(fd)
                if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    self._send(conn, busy)
                else:
                    self._fail(conn, conn.index)
            for fd in readable:
                conn = busy[fd]
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    del busy[fd]
                    self._fail(conn, conn.index)
                    continue
                conn.buf += data
                done = _complete(conn.buf)
                if done is None:
                    continue
                code, used, close = done
                del conn.buf[:used]
                index, conn.index = conn.index, -1
                self.latency_ms[index] = (clock() - self.sent_s[index]) * 1000.0
                self.status[index] = code
                del busy[fd]
                if close:
                    conn.sock.close()
                    self.connections -= 1
                else:
                    idle.append(conn)
        for conn in [*idle, *busy.values(), *connecting.values()]:
            conn.sock.close()

    def _send(self, conn: _Conn, busy: dict[int, _Conn]) -> None:
        try:
            conn.sock.send(self.request)
            busy[conn.sock.fileno()] = conn
        except OSError:
            self._fail(conn, conn.index)

    def _connect(self, index: int) -> _Conn | None:
        """A new non-blocking connection carrying ``index`` once it is up (a blocking connect
        would stall every later arrival, by a whole SYN retry when a backlog overflows)."""
        if self.connections >= self.max_conns:
            self.status[index] = -1
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return None  # status stays 0: not answered
        self.connections += 1
        conn = _Conn(sock)
        conn.index = index
        return conn

    def _fail(self, conn: _Conn, index: int) -> None:
        conn.sock.close()
        self.connections -= 1
        if index >= 0:
            self.latency_ms[index] = (time.monotonic() - self.sent_s[index]) * 1000.0


def poisson_times(rate_rps: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    out, t = [], rng.expovariate(rate_rps)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_rps)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--method", default="POST")
    ap.add_argument("--body", default="{}")
    ap.add_argument("--rate-rps", type=float, required=True)
    ap.add_argument("--duration-s", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-conns", type=int, default=_SELECT_MAX_CONNS)
    ap.add_argument("--timeout-s", type=float, default=5.0,
                    help="how long after the last arrival answers are waited for")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError):  # best effort: the generator must not be the one starved
        os.nice(-10)
    gc.disable()  # it makes no cycles; a collection's pause would show as lag
    times_s = poisson_times(args.rate_rps, args.duration_s, args.seed)
    gen = Generator(args.url, args.method, args.body.encode(), times_s, args.max_conns,
                    args.timeout_s)
    print("ready", flush=True)
    line = sys.stdin.readline().strip()
    start = float(line) if line else time.monotonic()
    cpu0 = time.process_time()
    gen.run(start)
    json.dump({"times_s": [round(t, 6) for t in times_s],
               "latency_ms": [None if x is None else round(x, 4) for x in gen.latency_ms],
               "lag_ms": [round(x, 4) for x in gen.lag_ms], "status": gen.status,
               "cpu_s": round(time.process_time() - cpu0, 4), "connections": gen.connections},
              sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
