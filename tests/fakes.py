"""Test doubles that implement the real protocols: ``FakeBackend`` (the ``Backend`` protocol, in
memory) and ``EchoServer`` (a real loopback HTTP server standing in for a replica).

The fake keeps the same rules the real backends keep (Conflict on a second deploy, NotFound on
unknown names, desired replicas, readiness) so the provider's contract can be tested without
processes. ``make_gunicorn_app()`` builds a provider over them for gunicorn to import.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from fastgshare.specs import DEFAULT_NAMESPACE, FunctionSpec, ReplicaConfig
from gateway_plugin.backend import FunctionState, LogLine, ReplicaStatus, SecretValue
from gateway_plugin.errors import Conflict, Invalid, NoReplicaReady, NotFound

# ---- a replica on loopback -------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers every request with JSON describing it; a few paths behave specially.

    ``/stream``: chunked response of 3 lines, no Content-Length. ``/big?bytes=N``: N bytes.
    ``/status/<code>``: that status. ``/sleep?s=X``: answers after X seconds.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = -1  # headers and body leave in one segment (no Nagle / delayed-ACK stalls)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self) -> None:
        body = self._body()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"line {i}\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/big":
            data = b"x" * int(query.get("bytes", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        if url.path == "/sleep":
            time.sleep(float(query.get("s", ["0"])[0]))
        status = int(url.path.split("/")[2]) if url.path.startswith("/status/") else 200
        payload = json.dumps({
            "method": self.command, "path": url.path, "query": url.query, "raw_path": self.path,
            "headers": {k: v for k, v in self.headers.items()},
            "body_b64": base64.b64encode(body).decode(),
        }).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "keep-alive")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("X-Replica", "echo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _answer


class EchoServer:
    """A threaded HTTP echo server on a free loopback port."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClosingReplica:
    """A replica that answers one request per connection (``ok``) and then closes it: after
    ``idle_close_s`` (its keep-alive timeout), or at once with ``Connection: close`` (None)."""

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


# ---- the backend ---------------------------------------------------------------------------------


@dataclass
class _Fn:
    spec: FunctionSpec
    replicas: int
    created_at: datetime
    ready_at_s: float = 0.0
    """Monotonic time after which its replicas count as ready."""
    configs: tuple[ReplicaConfig, ...] = ()


@dataclass
class FakeBackend:
    """In-memory ``Backend``. Replicas "run" on ``replica_url`` once ``start_delay_s`` passed."""

    replica_url: str = "http://127.0.0.1:9"
    start_delay_s: float = 0.0
    """How long a replica takes to become ready after a deploy or scale up."""
    follow_idle_s: float = 0.5
    """A followed log ends after this long without new lines (real backends follow until closed)."""
    allowed_namespaces: tuple[str, ...] = (DEFAULT_NAMESPACE,)
    never_ready: set[str] = field(default_factory=set)
    """Names of functions whose replicas never become ready (to test 503)."""
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    _fns: dict[tuple[str, str], _Fn] = field(default_factory=dict)
    _secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    _logs: list[LogLine] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False
    _open_follows: int = 0

    # -- helpers for tests
    def add_log(self, namespace: str, name: str, instance: str, text: str,
                ts: datetime | None = None) -> None:
        with self._cond:
            self._logs.append(LogLine(name, namespace, instance, ts or datetime.now(UTC), text))
            self._cond.notify_all()

    def secret_value(self, namespace: str, name: str) -> bytes:
        return self._secrets[namespace][name]

    def snapshot(self) -> dict[str, object]:
        """Everything stored, to assert that a refused request changed nothing."""
        with self._cond:
            return {
                "functions": {k: (f.spec, f.replicas) for k, f in self._fns.items()},
                "secrets": {ns: dict(v) for ns, v in self._secrets.items()},
            }

    def _get(self, namespace: str, name: str) -> _Fn:
        fn = self._fns.get((namespace, name))
        if fn is None:
            raise NotFound(f"function {name!r} not found in namespace {namespace!r}")
        return fn

    def _ready(self, fn: _Fn) -> int:
        if fn.spec.name in self.never_ready or time.monotonic() < fn.ready_at_s:
            return 0
        return fn.replicas

    def _state(self, fn: _Fn) -> FunctionState:
        ready = self._ready(fn)
        reps = tuple(
            ReplicaStatus(f"{fn.spec.name}-{i}", "cpu:0", i < ready, self.replica_url if i < ready else "",
                          (0,), fn.spec.share.sm_pct, None, 0)
            for i in range(fn.replicas))
        return FunctionState(fn.spec, fn.replicas, ready, fn.created_at, reps, configs=fn.configs)

    def _check_namespace(self, namespace: str) -> None:
        if namespace not in self.allowed_namespaces:
            raise Invalid(f"namespace {namespace!r} is not allowed")

    # -- Backend protocol
    def deploy(self, spec: FunctionSpec) -> None:
        with self._cond:
            self.calls.append(("deploy", (spec,)))
            self._check_namespace(spec.namespace)
            if (spec.namespace, spec.name) in self._fns:
                raise Conflict(f"function {spec.name!r} already exists in {spec.namespace!r}")
            self._fns[(spec.namespace, spec.name)] = _Fn(
                spec, spec.scale.min_replicas, datetime.now(UTC),
                time.monotonic() + self.start_delay_s)
            self._cond.notify_all()

    def update(self, spec: FunctionSpec) -> None:
        with self._cond:
            self.calls.append(("update", (spec,)))
            fn = self._get(spec.namespace, spec.name)
            fn.spec = spec
            fn.replicas = min(max(fn.replicas, spec.scale.min_replicas), spec.scale.max_replicas)
            self._cond.notify_all()

    def remove(self, namespace: str, name: str) -> None:
        with self._cond:
            self.calls.append(("remove", (namespace, name)))
            self._get(namespace, name)
            del self._fns[(namespace, name)]
            self._cond.notify_all()

    def apply_configurations(self, namespace: str, name: str, configs: Sequence[ReplicaConfig]) -> None:
        with self._cond:
            self.calls.append(("apply_configurations", (namespace, name, tuple(configs))))
            self._get(namespace, name).configs = tuple(configs)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        with self._cond:
            self.calls.append(("scale", (namespace, name, replicas)))
            if replicas < 0:
                raise Invalid(f"replicas must be >= 0 (got {replicas})")
            fn = self._get(namespace, name)
            if fn.replicas == 0 and replicas > 0:
                fn.ready_at_s = time.monotonic() + self.start_delay_s
            fn.replicas = replicas
            self._cond.notify_all()

    def list(self, namespace: str) -> list[FunctionState]:
        with self._cond:
            return [self._state(f) for (ns, _), f in sorted(self._fns.items()) if ns == namespace]

    def status(self, namespace: str, name: str) -> FunctionState:
        with self._cond:
            return self._state(self._get(namespace, name))

    def unreachable(self, namespace: str, name: str, url: str) -> None:
        with self._cond:
            self.calls.append(("unreachable", (namespace, name, url)))

    def resolve(self, namespace: str, name: str) -> str:
        with self._cond:
            fn = self._get(namespace, name)
            if not self._ready(fn):
                raise NoReplicaReady(f"no replica of {name!r} is ready ({fn.replicas} desired)")
            return self.replica_url

    def wait_ready(self, namespace: str, name: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._ready(self._get(namespace, name)):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.01))

    def logs(self, namespace: str, name: str, *, since: datetime | None, tail: int | None,
             follow: bool) -> Iterator[LogLine]:
        with self._cond:
            self._get(namespace, name)
            mine = [ln for ln in self._logs if (ln.namespace, ln.name) == (namespace, name)
                    and (since is None or ln.timestamp >= since)]
            seen = len(self._logs)
        if tail is not None:
            mine = mine[-tail:] if tail > 0 else []
        return self._follow(namespace, name, mine, seen, follow)

    def _follow(self, namespace: str, name: str, first: list[LogLine], seen: int,
                follow: bool) -> Iterator[LogLine]:
        with self._cond:
            self._open_follows += 1
        try:
            yield from first
            while follow:
                with self._cond:
                    if self._closed or (namespace, name) not in self._fns:
                        return
                    if len(self._logs) == seen and not self._cond.wait(self.follow_idle_s):
                        return
                    new = [ln for ln in self._logs[seen:]
                           if (ln.namespace, ln.name) == (namespace, name)]
                    seen = len(self._logs)
                yield from new
        finally:
            with self._cond:
                self._open_follows -= 1

    def open_follows(self) -> int:
        """Log streams begun and not yet closed (a stream whose client left must be closed)."""
        with self._cond:
            return self._open_follows

    def namespaces(self) -> list[str]:
        return list(self.allowed_namespaces)

    def list_secrets(self, namespace: str) -> list[str]:
        with self._cond:
            return sorted(self._secrets.get(namespace, {}))

    def create_secret(self, secret: SecretValue) -> None:
        with self._cond:
            self.calls.append(("create_secret", (secret.namespace, secret.name)))
            store = self._secrets.setdefault(secret.namespace, {})
            if secret.name in store:
                raise Conflict(f"secret {secret.name!r} already exists in {secret.namespace!r}")
            store[secret.name] = secret.raw

    def update_secret(self, secret: SecretValue) -> None:
        with self._cond:
            store = self._secrets.get(secret.namespace, {})
            if secret.name not in store:
                raise NotFound(f"secret {secret.name!r} not found in {secret.namespace!r}")
            store[secret.name] = secret.raw

    def remove_secret(self, namespace: str, name: str) -> None:
        with self._cond:
            store = self._secrets.get(namespace, {})
            if name not in store:
                raise NotFound(f"secret {name!r} not found in {namespace!r}")
            del store[name]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def make_gunicorn_app():  # type: ignore[no-untyped-def]
    """For ``gunicorn 'tests.fakes:make_gunicorn_app()'``: the provider over a fake backend
    whose replicas are an echo server in the same process; settings from the environment."""
    from gateway_plugin.app import create_app
    from gateway_plugin.settings import provider_settings_from_env

    echo = EchoServer().start()
    return create_app(FakeBackend(replica_url=echo.url), provider_settings_from_env())
