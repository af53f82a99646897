"""The per-replica sidecar: ``python -m fast_manager.sidecar`` (the role of-watchdog plays).

It starts the worker with the replica's share applied (``sidecar_worker``), queues requests in
arrival order, takes a device-time token before each execution and returns it with the busy time
the worker measured, and reports per-replica metrics. Served by ``fast_manager.sidecar_server``
(a lean HTTP/1.1 server on uvloop); routes (all in ``route``):

    GET /_/health    200 once the worker has loaded, 503 before and while it restarts
    GET /_/metrics   Prometheus text (own registry)
    GET /_/stats     JSON summary
    anything else    queued -> token -> forwarded to the worker -> token released

Dynamic batching (``FASTGSHARE_BATCH=B`` > 1 in the function's environment): up to B requests are
forwarded to the worker at once, each on its own kept-alive connection, so that the worker can run
them as one batch; they share one token (the first takes it, the others ride on it), and the token
goes back when the last of them is answered, charged with the sum of their busy times (the worker
splits a batch's device time over its requests, so the batch is counted once).

Fatal device faults (``fast_manager.device_faults``): an execution that hit a context-fatal device
error is answered 500, reported on the device's fault channel, and its worker restarted; on a GPU
every other sidecar of the device restarts its worker too (the MPS server recovers only when all its
clients have exited), and runs again the requests that restart cut short.

Must not import torch (import-linter): it runs beside every replica and must stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict
from prometheus_client import disable_created_metrics

from fast_manager.device_faults import FAULT_HEADER, FaultChannel, is_collateral
from fast_manager.logline import setup_logging
from fast_manager.memory import MemoryEnforcement, MemoryGuard
from fast_manager.settings import SidecarSettings
from fast_manager.sidecar_gate import FifoGate
from fast_manager.sidecar_http import WorkerClient, WorkerHttpError
from fast_manager.sidecar_metrics import ReplicaMetrics
from fast_manager.sidecar_server import LeanServer, Request, Response
from fast_manager.sidecar_worker import WorkerProcess, prepare
from fast_manager.token_factory import make_token_client
from fast_manager.tokens import Lease, TokenClient
from fastgshare.headers import BUSY_HEADER, HOLD_HEADER, WAIT_HEADER

log = logging.getLogger("sidecar")

CONTROL_HEADER = "X-Fastgshare-Control"
"""Request header carrying the replica's control token (``PUT /_/batch``)."""
MAX_BATCH = 1024
"""Largest batch a run-time change may set."""
DRAIN_TIMEOUT_S = 30.0
"""On SIGTERM, how long the requests already taken may take to finish before the worker is stopped
anyway (below ``fastgshare.local_replicas.STOP_GRACE_S``, after which the group is killed)."""
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})


@dataclass
class _GateTimes:
    """Monotonic times one request entered and left the gate (for the wait and hold headers)."""

    entered: float | None = None
    left: float | None = None



@dataclass
class _SharedLease:
    """One token shared by up to ``batch`` requests forwarded together (dynamic batching)."""

    lease: asyncio.Future[Lease | None]
    members: int = 1
    """Requests that joined (at most the batch size)."""
    running: int = 1
    """Members not yet answered: the token goes back when this reaches 0."""
    busy_ms: float = 0.0
    closed: bool = False


def _text(status: int, message: str, retry_after_s: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return Response(status, headers=headers, text=message + "\n")


class Sidecar:
    """The request path of one replica; dependencies are given, never looked up."""

    def __init__(self, settings: SidecarSettings, tokens: TokenClient, worker: WorkerProcess,
                 metrics: ReplicaMetrics | None = None, batch: int = 1) -> None:
        self.settings = settings
        self.tokens = tokens
        self.worker = worker
        self.metrics = metrics or ReplicaMetrics(settings)
        self.batch = max(1, batch)
        """The worker's B_max (its largest batch)."""
        self.inflight_max = worker_inflight_max(self.batch)
        """Requests forwarded to the worker at once: the gate's capacity."""
        self._gate = FifoGate(self.inflight_max)
        self._idle_clients = [WorkerClient() for _ in range(self.inflight_max)]
        """Worker connections not in use: one per request in flight, made once."""
        self._shared: _SharedLease | None = None
        self._inflight = 0
        self.faults: FaultChannel | None = None
        """The device's fault channel (set by ``start_sidecar``; None in tests that need none)."""
        self._fault_epoch = 0
        """Bumped whenever the worker is restarted for a device fault: requests it cut short run again."""
        self.device_faults = 0
        worker.on_state_change = self._worker_state

    def _worker_state(self, up: bool) -> None:
        self.metrics.worker_state(up, restarted=not up and self.worker.restarts > 0)

    async def start(self) -> None:
        self.metrics.token_mode(self.tokens.mode)
        self.worker.start()
        if self.faults is not None:
            self.faults.start()

    async def close(self) -> None:
        if self.faults is not None:
            await self.faults.close()
        await self.worker.stop()
        with contextlib.suppress(Exception):
            await self.tokens.close()
        for client in self._idle_clients:
            client.close()

    # ---- routes ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        if self.worker.ready:
            return Response(text="OK")
        return _text(503, "worker is not ready (loading or restarting)", retry_after_s=1)

    async def prometheus(self, request: Request) -> Response:
        self.metrics.token_mode(self.tokens.mode)
        self.metrics.memory(self.worker.memory.mode.value, self.worker.memory.limit_bytes,
                            self.worker.memory.breaches)
        return Response(body=self.metrics.prometheus_text(),
                        content_type="text/plain; version=0.0.4; charset=utf-8")

    async def stats(self, request: Request) -> Response:
        m, w, s = self.metrics, self.worker, self.settings
        return Response.json({
            "function": s.function, "namespace": s.namespace, "replica": s.replica,
            "device": s.device, "cores": list(s.cpu_cores),
            "requests": m.requests, "errors": m.errors, "rejected": m.rejected,
            "inflight": m.inflight, "queued": self._gate.waiting,
            "latency_ms": m.latency_ms(), "busy_ms_total": round(m.busy_ms_total, 3),
            "held_ms_total": round(float(getattr(self.tokens, "held_ms_total", 0.0)), 3),
            "token_mode": self.tokens.mode.value,
            "token_fallbacks": getattr(self.tokens, "fallback_switches", 0),
            "tokens_total": getattr(self.tokens, "tokens_total", 0),
            "tokens_pushed": getattr(self.tokens, "tokens_pushed", 0),
            "tokens_kept": getattr(self.tokens, "kept", 0),
            "token_keeps_dropped": getattr(self.tokens, "keeps_dropped", 0),
            "token_renewals": getattr(self.tokens, "renewals", 0),
            "token_leases_lost": getattr(self.tokens, "leases_lost", 0),
            "memory": {"limit_bytes": w.memory.limit_bytes, "enforcement": w.memory.mode.value,
                       "cgroup": str(w.memory.cgroup) if w.memory.cgroup else None,
                       "breaches": w.memory.breaches},
            "worker": {"pid": w.pid, "ready": w.ready, "port": w.port, "restarts": w.restarts,
                       "last_exit_code": w.last_exit_code},
            "device_faults": self.device_faults,
            "batching": {"max_batch": self.batch, "inflight_bound": self.inflight_max,
                         **m.batch_summary()},
        })

    async def set_batch(self, request: Request) -> Response:
        """``PUT /_/batch`` ``{"maxBatch": B}``: the worker's largest batch, changed at run time
        (the scheduler's first lever of a burst). Only with this replica's control token (the
        node agent's; ``X-Fastgshare-Control``): 403 otherwise, 404 where there is none. The
        gate admits 2 x B at once from now on, and the worker is told (409 when its handler
        cannot batch: nothing changes then)."""
        token = self.settings.control_token
        if not token:
            return _text(404, "this replica takes no run-time changes (no control token)")
        if not hmac.compare_digest(request.headers.get(CONTROL_HEADER, ""), token):
            return _text(403, f"{CONTROL_HEADER}: not this replica's control token")
        try:
            value = json.loads(request.body or b"null")
            batch = value["maxBatch"] if isinstance(value, dict) else None
        except ValueError:
            batch = None
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_BATCH:
            return _text(400, f"maxBatch: must be an integer in [1, {MAX_BATCH}]")
        client = WorkerClient()
        try:
            async with asyncio.timeout(5.0):
                status, _, body = await client.request(
                    self.worker.port, "PUT", "/_/batching",
                    [("Content-Type", "application/json")],
                    json.dumps({"max_batch": batch}).encode())
        except (WorkerHttpError, TimeoutError) as e:
            return _text(503, f"the worker did not take the new batch ({e}); retry")
        finally:
            client.close()
        if status != 200:
            return Response(status, body, {"Content-Type": "text/plain; charset=utf-8"})
        old, self.batch = self.batch, batch
        self.inflight_max = worker_inflight_max(batch)
        self._gate.resize(self.inflight_max)
        log.info("batch %d -> %d (in flight at most %d)", old, batch, self.inflight_max)
        return Response.json({"maxBatch": self.batch, "inflightBound": self.inflight_max})

    async def invoke(self, request: Request) -> Response:
        t0 = time.monotonic()
        gate = _GateTimes()
        try:
            response = await self._invoke(request, t0, gate)
        except Exception:
            log.exception("request %s %s failed in the sidecar", request.method, request.path)
            response = _text(500, "sidecar error while serving the request")
        entered, left = gate.entered, gate.left
        if entered is not None:
            response.headers[WAIT_HEADER] = f"{(entered - t0) * 1000.0:.3f}"
            if left is not None:
                response.headers[HOLD_HEADER] = f"{(left - entered) * 1000.0:.3f}"
        self.metrics.answered(response.status, time.monotonic() - t0)
        return response

    # ---- the request path ------------------------------------------------------------------

    async def _invoke(self, request: Request, t0: float, gate: _GateTimes) -> Response:
        s = self.settings
        if self._gate.busy and self._gate.waiting >= s.queue_max:
            retry_s = max(1, math.ceil((self._gate.waiting + 1) * self.metrics.p50_s()))
            return _text(429, f"replica queue is full ({s.queue_max} waiting); retry later",
                         retry_after_s=retry_s)
        body = await request.read()
        deadline = t0 + s.queue_timeout_s
        self.metrics.set_queued(self._gate.waiting + 1)
        entered = await self._gate.enter(deadline - time.monotonic())
        self.metrics.set_queued(self._gate.waiting)
        waited_s = time.monotonic() - t0
        if not entered:
            return _text(504, f"timed out after {waited_s:.1f}s waiting for device time "
                              f"(queued behind other requests; queue timeout {s.queue_timeout_s:g}s)")
        gate.entered = t0 + waited_s
        try:
            self.metrics.queue_waited(waited_s)
            self._inflight += 1
            self.metrics.set_inflight(self._inflight)
            if not await self.worker.wait_ready(deadline - time.monotonic()):
                return _text(503, f"worker not ready after {time.monotonic() - t0:.1f}s "
                                  "(loading or restarting); retry later", retry_after_s=1)
            if self.batch > 1:
                return await self._invoke_batched(request, body, t0, deadline)
            tw0 = time.monotonic()
            lease = await self.tokens.acquire(max(0.0, deadline - tw0))
            self.metrics.token_waited(time.monotonic() - tw0)
            self.metrics.token_mode(self.tokens.mode)  # cheap when unchanged; follows fallbacks
            if lease is None:
                return _text(504, f"timed out after {time.monotonic() - t0:.1f}s waiting for "
                                  f"device time (no token granted by the device arbiter, "
                                  f"mode {self.tokens.mode.value})")
            return await self._execute(request, body, lease)
        finally:
            self._inflight -= 1
            self.metrics.set_inflight(self._inflight)
            gate.left = time.monotonic()
            self._gate.leave()

    async def _invoke_batched(self, request: Request, body: bytes, t0: float,
                              deadline: float) -> Response:
        """Inside the gate, batch > 1: lead a new shared token or ride on the open one."""
        shared = self._shared
        # Everything in flight rides on one token (the next batch forms while one runs).
        lead = shared is None or shared.closed or shared.members >= self.inflight_max
        if lead:
            shared = self._shared = _SharedLease(asyncio.get_running_loop().create_future())
        else:
            assert shared is not None
            shared.members += 1
            shared.running += 1
        busy_ms: float | None = None
        te: float | None = None
        try:
            if lead:
                tw0 = time.monotonic()
                lease: Lease | None = None
                try:
                    lease = await self.tokens.acquire(max(0.0, deadline - tw0))
                finally:  # riders wait on this future, whatever happens to the leader
                    shared.closed = lease is None
                    shared.lease.set_result(lease)
                self.metrics.token_waited(time.monotonic() - tw0)
                self.metrics.token_mode(self.tokens.mode)
            else:
                lease = await asyncio.shield(shared.lease)
            if lease is None:
                return _text(504, f"timed out after {time.monotonic() - t0:.1f}s waiting for "
                                  f"device time (no token granted by the device arbiter, "
                                  f"mode {self.tokens.mode.value})")
            te = time.monotonic()
            response, busy_ms = await self._forward(request, body)
            return response
        finally:
            if te is not None:
                charged = busy_ms if busy_ms is not None else (time.monotonic() - te) * 1000.0
                self.metrics.busy(charged)
                shared.busy_ms += charged
            shared.running -= 1
            if shared.running == 0:  # the last one out gives the shared token back
                shared.closed = True
                granted = shared.lease.result() if shared.lease.done() else None
                if granted is not None:
                    try:
                        await self.tokens.release(granted, shared.busy_ms,
                                                  next_waiting=self._gate.waiting > 0)
                    except Exception:  # a lost release expires with the lease; the answer goes out
                        log.exception("token release failed")

    async def _execute(self, request: Request, body: bytes, lease: Lease) -> Response:
        busy_ms: float | None = None
        t0 = time.monotonic()
        try:
            response, busy_ms = await self._forward(request, body)
            return response
        finally:
            charged = busy_ms if busy_ms is not None else (time.monotonic() - t0) * 1000.0
            self.metrics.busy(charged)
            try:
                await self.tokens.release(lease, charged, next_waiting=self._gate.waiting > 0)
            except Exception:  # a lost release expires with the lease; the answer still goes out
                log.exception("token release failed")

    async def _forward(self, request: Request,
                       body: bytes) -> tuple[Response, float | None]:
        """Forward to the worker; an execution cut short by a device fault elsewhere runs again
        (once) when the worker is back; one that faulted itself is answered 500."""
        for attempt in (1, 2):
            epoch = self._fault_epoch
            response, busy_ms, fault = await self._forward_once(request, body, epoch)
            if fault is None:
                return response, busy_ms
            collateral = fault == "" or is_collateral(fault)
            if not collateral:
                await self._own_fault(fault)
                return _text(500, f"the execution hit a fatal device error ({fault}); the "
                                  f"replicas of {self.settings.device} are restarting so that it "
                                  "recovers"), busy_ms
            if fault:  # the worker answered with the echo of a neighbour's fault: its context is dead
                await self._restart_for_fault(f"its execution was terminated by a device fault "
                                              f"elsewhere ({fault})")
            ready = await self.worker.wait_ready(self.settings.queue_timeout_s)
            if attempt == 1 and ready:
                log.warning("%s %s was cut short by a device fault; running it again",
                            request.method, request.path)
                continue
            break
        return _text(503, f"the device {self.settings.device} is recovering from a fault; "
                          "retry later", retry_after_s=1), None

    async def _own_fault(self, reason: str) -> None:
        log.error("device fault in this replica's execution: %s", reason)
        if self.faults is not None:
            await self.faults.report(reason)
        await self._restart_for_fault(f"its execution hit a fatal device error ({reason})")

    async def _restart_for_fault(self, why: str) -> None:
        self._fault_epoch += 1
        self.device_faults += 1
        await self.worker.kill(why)

    async def on_neighbour_fault(self, fault: Mapping[str, object]) -> None:
        """Another replica of this device faulted: on a GPU, restart this worker as well."""
        if not self.settings.is_gpu:
            log.info("replica %s of this CPU device reported a fault (%s): nothing to do here",
                     fault.get("replica"), fault.get("reason"))
            return
        await self._restart_for_fault(
            f"replica {fault.get('replica')} of {self.settings.device} hit a fatal device error "
            f"({fault.get('reason')}): every MPS client of the GPU restarts so that its MPS server "
            "recovers")

    async def _forward_once(self, request: Request, body: bytes,
                            epoch: int) -> tuple[Response, float | None, str | None]:
        """One try: (response, busy_ms, fault); fault is None, the worker's fault text, or ""
        for a request cut short by a restart for a device fault."""
        s = self.settings
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        try:
            client = self._idle_clients.pop() if self._idle_clients else WorkerClient()
            try:
                async with asyncio.timeout(s.exec_timeout_s):
                    status, raw_headers, out_body = await client.request(
                        self.worker.port, request.method, request.raw_path, headers, body)
            finally:
                self._idle_clients.append(client)
        except TimeoutError:
            await self.worker.kill(f"execution exceeded {s.exec_timeout_s:g}s")
            return _text(504, f"execution exceeded the {s.exec_timeout_s:g}s limit; "
                              "the worker is being restarted"), None, None
        except WorkerHttpError as e:
            if self._fault_epoch != epoch:  # restarted for a device fault while this ran
                return _text(503, "restarted for a device fault"), None, ""
            if self.worker.memory.breached():
                log.error("request %s %s failed: %s", request.method, request.path,
                          self.worker.memory.message())
                await self.worker.kill("it exceeded its memory limit")
                return _text(502, f"{self.worker.memory.message()} during the request; "
                                  "it is being restarted"), None, None
            log.warning("worker failed during %s %s: %s", request.method, request.path, e)
            # Stop routing to it now; waiting for its exit to be noticed would fail the next one.
            await self.worker.kill("it failed during a request")
            return _text(502, f"the function worker failed during the request ({e}); "
                              "it is being restarted"), None, None
        out_headers = CIMultiDict(
            (k, v) for k, v in raw_headers if k.lower() not in _HOP_BY_HOP)
        busy_ms = _busy_ms(out_headers.get(BUSY_HEADER))
        self.metrics.batched(out_headers.get("X-Fastgshare-Batch"))
        fault = out_headers.pop(FAULT_HEADER, None)
        return Response(status, out_body, out_headers), busy_ms, fault


def _busy_ms(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 and value == value else None


DEFAULT_MAX_BATCH = 16
"""The worker's B_max when only ``FASTGSHARE_SLO_MS`` is set (its ``DEFAULT_MAX_BATCH``)."""


def worker_inflight_max(batch: int) -> int:
    """THE bound on requests in flight to the worker (the gate's capacity and the size of the
    worker connection pool), from the worker's batch size B_max: 2 x B_max when it batches, so
    the next batch forms in the worker while one runs; 1 otherwise."""
    return 2 * batch if batch > 1 else 1


def batch_size(env: Mapping[str, str]) -> int:
    """The worker's B_max: ``FASTGSHARE_BATCH``, else ``DEFAULT_MAX_BATCH`` when only
    ``FASTGSHARE_SLO_MS`` is set (the worker batches by deadline), else 1."""
    try:
        b = int(env.get("FASTGSHARE_BATCH", "") or 0)
    except ValueError:
        b = 0
    if b == 0 and (env.get("FASTGSHARE_SLO_MS") or "").strip():
        b = DEFAULT_MAX_BATCH
    return b if b > 1 else 1


async def route(sidecar: Sidecar, request: Request) -> Response:
    """Every sidecar route, in one place: ``GET``/``HEAD`` of ``/_/health``, ``/_/metrics`` and
    ``/_/stats``, ``PUT /_/batch`` (the node agent's, with its token); any other ``/_/`` path is
    404 (the worker's control routes are the sidecar's alone); anything else is an invocation."""
    if request.method == "PUT" and request.path == "/_/batch":
        return await sidecar.set_batch(request)
    if request.method in ("GET", "HEAD"):
        if request.path == "/_/health":
            return await sidecar.health(request)
        if request.path == "/_/metrics":
            return await sidecar.prometheus(request)
        if request.path == "/_/stats":
            return await sidecar.stats(request)
    if request.path.startswith("/_/"):  # the worker's own routes (/_/batching) are not for callers
        return _text(404, f"{request.path}: reserved for the platform")
    return await sidecar.invoke(request)


async def start_sidecar(settings: SidecarSettings, env: Mapping[str, str],
                        tokens: TokenClient | None = None, worker_base_nice: int | None = None,
                        worker: WorkerProcess | None = None) -> tuple[Sidecar, LeanServer, int]:
    """Start the worker and the HTTP server; returns the port actually bound.
    ``worker_base_nice``: the niceness the worker starts from when this process raised its own
    priority (``raise_own_priority``). ``worker``: made (and maybe forked) already (``prepare``)."""
    tokens = tokens if tokens is not None else make_token_client(settings)
    if worker is None:
        memory = (MemoryGuard(MemoryEnforcement.OFF, None, why="GPU memory is limited by MPS")
                  if settings.is_gpu else
                  MemoryGuard.open(settings.share.mem_bytes,
                                   f"fastgshare-{settings.replica}-{os.getpid()}",
                                   settings.mem_enforce))
        worker = WorkerProcess(settings, env, memory=memory, base_nice=worker_base_nice)
    memory = worker.memory
    sidecar = Sidecar(settings, tokens, worker, batch=batch_size(env))
    sidecar.faults = FaultChannel(settings.redis_url, settings.device, settings.replica,
                                  sidecar.on_neighbour_fault)
    server = LeanServer(lambda request: route(sidecar, request),
                        max_body_bytes=settings.max_body_bytes)
    port = await server.start(settings.bind, settings.port, backlog=1024)
    await sidecar.start()
    # Everything made so far lives as long as the process: keep it out of every collection (a
    # full one walked it all; the request path allocates little that is cyclic).
    gc.freeze()
    log.info("sidecar for %s.%s replica %s listening on %s:%d, device %s, queue max %d, "
             "batch %d, token mode %s", settings.function, settings.namespace, settings.replica,
             settings.bind, port, settings.device, settings.queue_max, sidecar.batch,
             tokens.mode.value)
    log.info("%s", memory.describe())
    return sidecar, server, port


async def stop_sidecar(sidecar: Sidecar, server: LeanServer) -> None:
    """Drain, then stop the worker: stop listening, let every request already taken (running or
    queued) finish, for ``DRAIN_TIMEOUT_S`` at most, and only then stop the worker (one SIGTERM:
    the sidecar alone is signalled by whoever stops the replica, so the worker is still there
    for what is queued)."""
    await server.shutdown(DRAIN_TIMEOUT_S)
    await sidecar.close()


async def serve(settings: SidecarSettings, env: Mapping[str, str],
                worker_base_nice: int | None = None, worker: WorkerProcess | None = None) -> None:
    sidecar, server, _ = await start_sidecar(settings, env, worker_base_nice=worker_base_nice,
                                             worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining (%d in flight, %d queued), then the worker",
             sidecar._inflight, sidecar._gate.waiting)
    await stop_sidecar(sidecar, server)
    log.info("stopped")


def main() -> None:
    setup_logging()
    run(*prepare(os.environ))


def run(settings: SidecarSettings, base_nice: int | None, worker: WorkerProcess) -> None:
    """Serve until SIGTERM, then drain (``prepare``'s results: ``fast_manager.sidecar_start``)."""
    disable_created_metrics()  # the *_created series double the scrape for no use here
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(settings, os.environ, base_nice, worker))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (its transports cost about half of asyncio's per
    request on the invoke path), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
