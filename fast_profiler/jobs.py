"""A profile as a job: run it with its status in Redis, store the table; and the background watcher.

The watcher profiles every deployed function that asks for autoscaling (``fastgshare/slo_ms``) and
has no table for this device type yet, one at a time (a profile wants the device to itself), and
claims each function in Redis first so that two watchers never profile the same one.

A profile belongs to the code it measured: it stops as soon as its function is removed or
redeployed with other code (``ProfileCancelled``; the status is dropped so that a later deploy is
profiled afresh), and its table records that code's identity (``fast_profiler.shadow``), which the
provider compares on the next redeploy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from fast_profiler import store
from fast_profiler.errors import ProfileCancelled, ProfileError
from fast_profiler.gateway import Gateway
from fast_profiler.interference import CpuMonitor
from fast_profiler.planner import GridSpec
from fast_profiler.runner import (
    ProfileResult,
    Progress,
    Runner,
    RunSettings,
    as_function_source,
    grid_for_device,
    profile_function,
)
from fast_profiler.shadow import code_identity
from fast_profiler.store import ProfileState
from fast_profiler.table import device_type_of
from fastgshare.resources import SLO_MS

log = logging.getLogger("fast_profiler")


def profile_and_store(gw: Gateway, name: str, *, namespace: str = "openfaas-fn", spec: GridSpec | None = None,
                      settings: RunSettings | None = None, slo_ms: float | None = None, body: bytes = b"{}",
                      on_progress: Callable[[Progress], None] | None = None,
                      monitor: CpuMonitor | None = None) -> ProfileResult:
    """Profile the deployed function ``name``, store its table in Redis, keep its status current."""
    status = gw.provider.status(name, namespace)
    if status is None:
        raise ProfileError(f"function {name!r} is not deployed in {namespace!r}")
    src = as_function_source(status, body=body, slo_ms=slo_ms)
    device = gw.device()
    device_type = device_type_of(device)
    spec = spec or grid_for_device(device)
    client = gw.redis_client
    identity = identity_of(gw, status)
    stop_reason = make_stop_reason(gw, name, namespace, identity)

    def progress(p: Progress) -> None:
        store.set_status(client, namespace, name, ProfileState.PROFILING, measured=p.measured,
                         planned=p.planned, current=_cfg_text(p), elapsed_s=p.elapsed_s,
                         device_type=device_type)
        if on_progress:
            on_progress(p)

    store.set_status(client, namespace, name, ProfileState.PROFILING, device_type=device_type,
                     message="starting")
    try:
        result = profile_function(Runner(gw, src, settings, monitor=monitor, stop_reason=stop_reason),
                                  spec, device_type, on_progress=progress)
        reason = stop_reason()
        if reason:
            raise ProfileCancelled(f"profile of {name!r} stopped: {reason}")
    except ProfileCancelled:
        store.forget_status(client, namespace, name)
        raise
    except Exception as e:
        # A removal can reach the run's requests (404 from the shadow) before its next look.
        reason = stop_reason()
        if reason:
            store.forget_status(client, namespace, name)
            raise ProfileCancelled(f"profile of {name!r} stopped: {reason}") from e
        store.set_status(client, namespace, name, ProfileState.FAILED, device_type=device_type,
                         message=f"{type(e).__name__}: {e}"[:500])
        raise
    measured = sum(1 for _ in result.measurements)
    store.save(client, result.table, store.detail_json(result.points, seconds=result.seconds,
                                                       slo_ms=src.slo_ms, measured=measured,
                                                       code_identity=identity))
    reason = stop_reason()  # a redeploy between the last look and the save: the table is stale
    if reason:
        store.invalidate(client, namespace, name)
        raise ProfileCancelled(f"profile of {name!r} dropped: {reason}")
    store.set_status(client, namespace, name, ProfileState.DONE, measured=measured, planned=measured,
                     elapsed_s=result.seconds, device_type=device_type,
                     message=f"{len(result.points)} points, {measured} configurations measured")
    return result


def identity_of(gw: Gateway, status: dict[str, object]) -> str:
    """The code identity of a deployed function (its ``FunctionStatus``) as the provider sees it."""
    image = str(status.get("image") or "")
    return code_identity(image, str(status.get("envProcess") or ""),
                         store.image_record(gw.redis_client, image))


def make_stop_reason(gw: Gateway, name: str, namespace: str, identity: str) -> Callable[[], str | None]:
    """Why a profile of ``name`` must stop: the function is gone, or runs other code than
    ``identity`` now. A provider that does not answer is no reason (the run's own requests fail
    if it stays away)."""

    def reason() -> str | None:
        try:
            status = gw.provider.status(name, namespace)
        except Exception as e:  # any failure to ask is "go on"
            log.debug("could not ask for %s: %s", name, e)
            return None
        if status is None:
            return f"function {name!r} was removed from {namespace!r}"
        if identity_of(gw, status) != identity:
            return f"function {name!r} was redeployed with other code (image {status.get('image')!r})"
        return None

    return reason


def _cfg_text(p: Progress) -> str:
    c = p.current
    return "" if c is None else f"sm {c.sm_pct}% quota {c.quota_frac:g} batch {c.batch}"


@dataclass
class Watcher:
    """Profiles functions with an SLO and no table, one at a time."""

    gw: Gateway
    namespaces: tuple[str, ...] = ("openfaas-fn",)
    poll_s: float = 5.0
    settings: RunSettings | None = None

    def candidates(self) -> list[tuple[str, str]]:
        device_type = device_type_of(self.gw.device())
        out = []
        for ns in self.namespaces:
            for f in self.gw.provider.functions(ns):
                merged = {**dict(f.get("labels") or {}), **dict(f.get("annotations") or {})}  # type: ignore[call-overload]
                name = str(f["name"])
                if SLO_MS in merged and not store.has_table(self.gw.redis_client, name, device_type):
                    out.append((ns, name))
        return out

    def run_once(self) -> int:
        """Profile what needs it now; returns how many profiles were made."""
        made = 0
        for ns, name in self.candidates():
            if not store.claim(self.gw.redis_client, ns, name):
                continue
            log.info("profiling %s/%s", ns, name)
            try:
                profile_and_store(self.gw, name, namespace=ns, settings=self.settings)
                made += 1
            except ProfileCancelled as e:
                log.info("%s", e)
            except Exception:  # one function's failure must not stop the watcher
                log.exception("profile of %s/%s failed", ns, name)
        return made

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("watcher pass failed")
            stop.wait(self.poll_s)
