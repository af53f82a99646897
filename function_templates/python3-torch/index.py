"""The python3-torch worker runtime: loads ``handler.py`` once and serves it one execution at a time.

Started by the FaST-GShare sidecar with its spatial share already applied (CPU affinity set before
exec, OMP_NUM_THREADS, or the MPS variables on a GPU). It listens on
``127.0.0.1:$FASTGSHARE_WORKER_PORT`` with a small HTTP/1.1 keep-alive server: ``GET /_/ready``
answers 200 once ``load()`` has returned; any other request becomes ``handle(event, context)``,
with the same event/context shape as the OpenFaaS python3-http template. Every answer carries
``X-Fastgshare-Busy-Ms``: the device time the execution used (CUDA events when the handler used
CUDA, otherwise the wall time of the call on the pinned cores).

Dynamic batching (``fastgshare_batcher``, policy in ``fastgshare_batch_policy``): a handler with
``handle_batch(events, context)`` (a list of answers in the same order) gets batches when the
function declares an SLO (``FASTGSHARE_SLO_MS``, from ``fastgshare/slo_ms``: batches formed by the
oldest request's deadline, up to B_max) or a fixed size (``FASTGSHARE_BATCH`` > 1); see
``batch_settings``. A batch's device time is split evenly over its requests (each answer's busy
header carries its share, ``X-Fastgshare-Batch`` the batch's size, ``X-Fastgshare-Batch-Wait-Ms``
its wait in the worker), so the sidecar's sum counts it once; ``GET /_/batching`` shows the
policy's state. A batch that raises is retried one request at a time, so a bad input fails only
its own request. A handler without ``handle_batch`` is served one request at a time.

Standalone on purpose (stdlib only; torch only if the handler imports it): it runs inside function
images that do not carry the rest of this project. Its sibling ``fastgshare_runtime`` (imported by
handlers that share their model's weights: ``load_shared``) is importable from ``handler.py``; on
SIGTERM the worker exits through ``sys.exit`` so that module's exit hook gives its model back to the
device's store at once (a crash leaves that to the node agent's GC).
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(1, str(Path(__file__).resolve().parent))  # its siblings, also when imported
import fastgshare_batch_policy as policy  # noqa: E402
from fastgshare_batcher import Batcher  # noqa: E402
from fastgshare_peers import peer_allowed  # noqa: E402

BUSY_HEADER = "X-Fastgshare-Busy-Ms"
BATCH_HEADER = "X-Fastgshare-Batch"
"""How many requests the execution that answered this one served (dynamic batching)."""
BATCH_WAIT_HEADER = "X-Fastgshare-Batch-Wait-Ms"
"""How long this request waited in the worker for its batch to start."""
BATCH_ENV = "FASTGSHARE_BATCH"
SLO_ENV = "FASTGSHARE_SLO_MS"
BATCH_DELAY_ENV = "FASTGSHARE_BATCH_DELAY_MS"
BATCH_PATH_ENV = "FASTGSHARE_BATCH_PATH_MS"
BATCH_PROFILE_ENV = "FASTGSHARE_BATCH_PROFILE_MS"
DEFAULT_BATCH_DELAY_MS = policy.DEFAULT_FIXED_DELAY_MS
"""Fixed-size batching: how long the first request of a batch waits for more."""
DEFAULT_SECRETS_DIR = "/var/openfaas/secrets"


class Event:
    """One request, as python3-http's handlers see it."""

    def __init__(self, body: bytes, headers: dict[str, str], method: str, query: dict,
                 path: str) -> None:
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path


class Context:
    """What the handler may ask about its environment."""

    def __init__(self, secrets_dir: str | None = None) -> None:
        self.hostname = os.getenv("HOSTNAME", "localhost")
        self.secrets_dir = secrets_dir or os.getenv("FASTGSHARE_SECRETS_DIR") or DEFAULT_SECRETS_DIR

    def secret(self, name: str) -> str:
        """The value of secret ``name`` (stripped), as OpenFaaS mounts it in the function."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"invalid secret name {name!r}")
        with open(os.path.join(self.secrets_dir, name), encoding="utf-8") as f:
            return f.read().strip()


def import_handler(handler_dir: str | os.PathLike, module_name: str = "handler"):
    """Import ``handler.py`` from ``handler_dir`` (the folder goes on sys.path for its siblings,
    this template's folder after it, for ``fastgshare_runtime``)."""
    folder = str(Path(handler_dir).resolve())
    template = str(Path(__file__).resolve().parent)
    if template not in sys.path:
        sys.path.append(template)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(folder, "handler.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"no handler.py in {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def apply_share_to_torch() -> None:
    """Match torch's threads to the pinned cores and cap its CUDA memory, before any real work."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    cores = len(os.sched_getaffinity(0))
    try:  # the sidecar's count (the core set's size; a small pool for a GPU worker)
        threads = int(os.getenv("OMP_NUM_THREADS") or cores)
    except ValueError:
        threads = cores
    torch.set_num_threads(max(1, min(threads, cores)))
    frac = os.getenv("FASTGSHARE_MEM_FRACTION")
    mem_bytes = os.getenv("FASTGSHARE_MEM_BYTES")
    if os.getenv("CUDA_VISIBLE_DEVICES") and torch.cuda.is_available() and (frac or mem_bytes):
        if not frac:
            total = torch.cuda.get_device_properties(0).total_memory
            frac = str(min(1.0, int(mem_bytes) / total))
        torch.cuda.set_per_process_memory_fraction(float(frac), 0)


def as_response(result) -> tuple[int, dict[str, str], bytes]:
    """A handler's return value -> (status, headers, body), as python3-http accepts them."""
    if isinstance(result, dict) and ("statusCode" in result or "body" in result):
        status = int(result.get("statusCode", 200))
        headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        body = result.get("body", b"")
    else:
        status, headers, body = 200, {}, result
    if body is None:
        body = b""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode("utf-8")
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body = str(body).encode("utf-8")
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    return status, headers, bytes(body)


class _BusyClock:
    """Device time of one execution: CUDA events if the handler used CUDA, else wall time."""

    def __init__(self) -> None:
        torch = sys.modules.get("torch")
        self._cuda = torch.cuda if torch is not None and torch.cuda.is_initialized() else None
        self._t0 = time.perf_counter()
        if self._cuda is not None:
            self._start = self._cuda.Event(enable_timing=True)
            self._start.record()

    def stop_ms(self) -> float:
        if self._cuda is not None:
            end = self._cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return float(self._start.elapsed_time(end))
        return (time.perf_counter() - self._t0) * 1000.0


def make_event(method: str, target: str, headers: dict[str, str], body: bytes) -> Event:
    url = urlsplit(target)
    query = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(url.query).items()}
    return Event(body, headers, method, query, url.path or "/")


FAULT_HEADER = "X-Fastgshare-Device-Fault"
"""Tells the sidecar an execution hit a context-fatal device error (see fast_manager.device_faults)."""
FATAL_DEVICE_ERRORS = (
    "illegal memory access", "unspecified launch failure", "misaligned address",
    "illegal instruction", "device-side assert", "uncorrectable ecc", "hardware stack error",
    "mps client terminated", "mpsclientterminated", "mps client has been terminated",
    "mps server is not ready", "launch timed out",
)
"""Texts of CUDA errors after which the process's CUDA context is unusable (sticky errors)."""


def fatal_device_error(e: BaseException) -> str | None:
    """The error's text if it is a sticky CUDA error (the worker must restart), else None."""
    text = f"{type(e).__name__}: {e}"
    low = text.lower().replace("_", " ")
    if "cuda" in low or "mps" in low:
        for marker in FATAL_DEVICE_ERRORS:
            if marker in low or marker in low.replace(" ", ""):
                return " ".join(text.split())[:300]
    return None


def _error_response(e: Exception) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    fatal = fatal_device_error(e)
    if fatal is not None:
        headers[FAULT_HEADER] = fatal.encode("ascii", "replace").decode()
    return 500, headers, f"{type(e).__name__}: {e}".encode()


def run_one(module, context: Context, event: Event) -> tuple[int, dict[str, str], bytes, float]:
    """``handle`` on one event: (status, headers, body, busy_ms). Handler errors become a 500."""
    clock = _BusyClock()
    try:
        status, out_headers, out_body = as_response(module.handle(event, context))
    except Exception as e:  # the worker outlives a failing request
        traceback.print_exc()
        status, out_headers, out_body = _error_response(e)
    return status, out_headers, out_body, clock.stop_ms()


def call_handler(module, context: Context, method: str, target: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, dict[str, str], bytes, float]:
    """Run ``handle`` once: (status, headers, body, busy_ms). Handler errors become a 500."""
    return run_one(module, context, make_event(method, target, headers, body))


def run_batch(module, context: Context,
              events: list[Event]) -> list[tuple[int, dict[str, str], bytes, float]]:
    """``handle_batch`` on ``events`` (``handle`` for a batch of one, or without ``handle_batch``):
    one (status, headers, body, busy_ms) per event, busy_ms being its share of the batch's device
    time. A batch that raises (or answers the wrong number of results) is retried one at a time."""
    handle_batch = getattr(module, "handle_batch", None)
    if len(events) == 1 or not callable(handle_batch):
        return [run_one(module, context, ev) for ev in events]
    clock = _BusyClock()
    try:
        results = list(handle_batch(events, context))
        if len(results) != len(events):
            raise ValueError(f"handle_batch answered {len(results)} results for {len(events)} requests")
        answers = [as_response(r) for r in results]
    except Exception:
        traceback.print_exc()
        failed_ms = clock.stop_ms() / len(events)
        return [(st, h, b, ms + failed_ms) for st, h, b, ms in
                (run_one(module, context, ev) for ev in events)]
    share_ms = clock.stop_ms() / len(events)
    return [(st, h, b, share_ms) for st, h, b in answers]


def _number(env, name: str, cast, lo: float):
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = cast(raw)
    except ValueError:
        print(f"ignoring {name}={raw!r} (not a number)", flush=True)
        return None
    if not value >= lo:
        print(f"ignoring {name}={raw!r} (below {lo})", flush=True)
        return None
    return value


def batch_settings(env=os.environ) -> policy.BatchSettings:
    """How this worker batches, from its environment (the one place it is read):

    - ``FASTGSHARE_SLO_MS`` (the function's ``fastgshare/slo_ms``): batches are formed by deadline
      (``fastgshare_batch_policy``), up to B_max = ``FASTGSHARE_BATCH`` if set, else the largest
      profiled size that fits (``FASTGSHARE_BATCH_PROFILE_MS``, e.g. ``1:8.5,4:14,8:25``), else
      ``DEFAULT_MAX_BATCH``; ``FASTGSHARE_BATCH=1`` turns batching off.
    - no SLO, ``FASTGSHARE_BATCH=B`` > 1: fixed size B, the first request waiting at most
      ``FASTGSHARE_BATCH_DELAY_MS`` (default 2 ms) for the rest.
    - ``FASTGSHARE_BATCH_PATH_MS``: the part of the SLO left for the path outside the worker.
    """
    size = _number(env, BATCH_ENV, int, 1)
    slo_ms = _number(env, SLO_ENV, float, 1e-3)
    delay_ms = _number(env, BATCH_DELAY_ENV, float, 0.0)
    path_ms = _number(env, BATCH_PATH_ENV, float, 0.0)
    profile = policy.parse_profile(env.get(BATCH_PROFILE_ENV, ""))
    base = policy.BatchSettings(
        max_batch=size or 1, slo_ms=slo_ms, path_ms=path_ms, profile_ms=profile,
        fixed_delay_ms=DEFAULT_BATCH_DELAY_MS if delay_ms is None else delay_ms)
    if slo_ms is None or size == 1:
        return base
    ceiling = size or policy.DEFAULT_MAX_BATCH
    b_max = (policy.max_batch_from_profile(profile, base.budget_ms, ceiling) if profile
             else ceiling)
    return policy.BatchSettings(**{**base.__dict__, "max_batch": b_max})


class Runtime:
    """The loaded handler, served one execution at a time: a lock, or a batcher when the handler
    has ``handle_batch`` and the settings allow batches above 1."""

    def __init__(self, module, context: Context,
                 settings: policy.BatchSettings | None = None, loaded: bool = True) -> None:
        self.module = module
        self.context = context
        self.lock = threading.Lock()
        self.ready = threading.Event()  # set once the handler's load() has returned
        if loaded:
            self.ready.set()
        self.settings = settings or policy.BatchSettings()
        self.batcher = (self._new_batcher(self.settings) if self.settings.max_batch > 1
                        and callable(getattr(module, "handle_batch", None)) else None)

    def _new_batcher(self, settings: policy.BatchSettings) -> Batcher:
        def run(events):  # one execution at a time, batched or not (the batch may start mid-run)
            with self.lock:
                return run_batch(self.module, self.context, events)
        return Batcher(run, settings)

    def set_max_batch(self, size: int) -> tuple[int, dict]:
        """B_max changed at run time (``PUT /_/batching``, from the sidecar): (status, state).
        409 when the handler cannot batch (no ``handle_batch``) and ``size`` asks for it."""
        if not callable(getattr(self.module, "handle_batch", None)):
            if size > 1:
                return 409, {"error": "the handler has no handle_batch: it serves one request "
                                      "at a time"}
            return 200, self.batching()
        self.settings = policy.BatchSettings(**{**self.settings.__dict__, "max_batch": size})
        if self.batcher is None:
            if size > 1:
                self.batcher = self._new_batcher(self.settings)
        else:
            self.batcher.resize(size)
        return 200, self.batching()

    def execute(self, method: str, target: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes, float, int]:
        """(status, headers, body, busy_ms, batch size) for one request; one that arrives
        while ``load()`` runs waits for it (the sidecar only sends after ``/_/ready``)."""
        self.ready.wait()
        event = make_event(method, target, headers, body)
        if self.batcher is not None:
            item = self.batcher.submit(event)
            assert item.answer is not None
            status, out_headers, out_body, busy_ms = item.answer
            out_headers[BATCH_WAIT_HEADER] = f"{item.wait_ms:.3f}"
            return status, out_headers, out_body, busy_ms, item.size
        with self.lock:
            return (*run_one(self.module, self.context, event), 1)

    def batching(self) -> dict:
        """The batcher's state (``GET /_/batching``)."""
        if self.batcher is None:
            return {"mode": "off", "max_batch": 1}
        return self.batcher.summary()


def make_request_handler(runtime: Runtime) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # a response is one write; never wait for a delayed ACK

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
            return None  # the sidecar counts requests; per-request lines would drown the log

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            reason = self.responses.get(status, ("",))[0]
            lines = [f"HTTP/1.1 {status} {reason}"]
            for k, v in headers.items():
                if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                    lines.append(f"{k}: {v}")
            lines.append(f"Content-Length: {len(body)}")
            if self.close_connection:
                lines.append("Connection: close")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
            self.wfile.write(head + body)

        def _serve(self) -> None:
            body = self._body()
            if self.path == "/_/batching":
                status, state = 200, runtime.batching()
                if self.command == "PUT":
                    try:
                        size = json.loads(body or b"null")["max_batch"]
                        ok = isinstance(size, int) and not isinstance(size, bool) and size >= 1
                    except (ValueError, TypeError, KeyError):
                        ok = False
                    status, state = (runtime.set_max_batch(size) if ok else
                                     (400, {"error": "max_batch: an integer >= 1"}))
                self._send(status, {"Content-Type": "application/json"}, json.dumps(state).encode())
                return
            if self.path == "/_/ready":
                ok = runtime.ready.is_set()
                self._send(200 if ok else 503, {"Content-Type": "text/plain"},
                           b"ready" if ok else b"loading")
                return
            headers = {k: v for k, v in self.headers.items()}
            status, out_headers, out_body, busy_ms, size = runtime.execute(
                self.command, self.path, headers, body)
            out_headers[BUSY_HEADER] = f"{busy_ms:.3f}"
            if runtime.batcher is not None:
                out_headers[BATCH_HEADER] = str(size)
            self._send(status, out_headers, out_body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    return Handler


class WorkerServer(ThreadingHTTPServer):
    """Answers its sidecar only (``fastgshare_peers``): not another local user's process.

    The check reads the kernel's whole socket table (10-30 ms on a busy machine), so it runs in
    the connection's own thread, not in the accept loop (``verify_request``), where eight
    connections opened at once (a batch's worth) queued behind each other, overflowed the listen
    backlog and were retried by their clients a second later; the backlog is larger for the same
    reason."""

    request_queue_size = 128

    def finish_request(self, request, client_address) -> None:
        if peer_allowed(client_address, self.server_address):
            super().finish_request(request, client_address)


def main() -> None:
    handler_dir = os.getenv("FASTGSHARE_HANDLER_DIR") or str(Path(__file__).parent / "function")
    port = int(os.getenv("FASTGSHARE_WORKER_PORT", "5000") or 5000)
    t0 = time.monotonic()
    # SIGTERM -> SystemExit: exit hooks run (a shared model's user record is released at once).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # A write to shared (read-only mapped) weights is a SIGSEGV: say where, loudly, before dying.
    faulthandler.enable()
    module = import_handler(handler_dir)
    apply_share_to_torch()  # after the handler's imports (torch), before load() does real work
    runtime = Runtime(module, Context(), batch_settings(), loaded=False)
    server = WorkerServer(("127.0.0.1", port), make_request_handler(runtime))
    server.daemon_threads = True
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Serve /_/ready (503) while loading, so the sidecar can tell "loading" from "dead".
    threading.Thread(target=server.serve_forever, daemon=True).start()
    load = getattr(module, "load", None)
    if callable(load):
        load()
    runtime.ready.set()
    cores = sorted(os.sched_getaffinity(0))
    print(f"worker ready on 127.0.0.1:{port} in {time.monotonic() - t0:.2f}s, "
          f"handler {handler_dir}, cores {cores}"
          + (f", batching {json.dumps(runtime.batching())}" if runtime.batcher else ""), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
