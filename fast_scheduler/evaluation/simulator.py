"""A discrete-time simulator of a GPU cluster serving inference functions, to compare policies. Pure.

Driven by profile tables and a request trace (counts per step per function, from ``traces``). Every
``control_interval_s`` the policy under test sees the rate observed since its last tick and the
replicas running, and returns the replica set it wants per function (for this project: the same
``decide_replicas`` the control loop calls); new replicas are placed by the policy (for this
project: the same ``place``), and serve after ``cold_start_s``. A removed replica stops at once,
unless its function gets new replicas in the same tick: then it keeps serving (and its GPU counts
as used) until they are up (make-before-break), though its place is already free for placement;
a replica a re-pack moves does the same (``move_cold_start``).

Serving, per step and function: arrivals join a FIFO of (arrival time, count) chunks; ready
replicas drain it at their service rate (``latency.LatencyCurve.service_rps``: the profiled rate
over its utilisation; split in proportion to it, as the capacity-aware proxy does). A chunk served
in the step it arrived has the latency distribution of ``latency.LatencyCurve`` at the rate its
replica receives (the fraction over the SLO is that distribution's tail); a chunk that waited
across steps is late by its wait plus the light-load p99. So SLO attainment counts cold starts,
under-provisioning and backlog, not only the model.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from fast_profiler.table import ProfileTable
from fast_scheduler.choices import ShareConfig
from fast_scheduler.evaluation.serving import fresh_ok_fraction, fresh_terms, latency_quantile_ms
from fast_scheduler.latency import DEFAULT_MODEL, LatencyCurve, LatencyModel
from fast_scheduler.placement import Device, ReplicaRequest, Snapshot


@dataclass(frozen=True)
class SimFunction:
    name: str
    model: str
    table: ProfileTable
    slo_ms: float
    min_replicas: int = 1
    max_replicas: int = 1000
    device_type: str = ""
    """The device type ``table`` is for: its replicas are placed only there. "": any device."""
    serve_tables: tuple[tuple[str, ProfileTable], ...] = ()
    """What its replicas serve at on each device type of a mixed cluster, where not ``table``
    (a policy blind to types plans with ``table`` and is served at the device's own)."""


@dataclass(frozen=True)
class SimSettings:
    step_s: float = 1.0
    """Granularity of serving and accounting."""
    control_interval_s: float = 5.0
    """How often the policy decides."""
    fast_interval_s: float = 1.0
    """How often a policy with a fast scale-up path (``fast``) is given the rates since its last
    reading between ticks (the live loop's sub-tick); 0, or not shorter than the control interval:
    off. Policies without it (the original heuristic) decide on ticks only."""
    cold_start_s: float = 5.0
    """From placement to serving (context with its SM share, weights mapped from the model store)."""
    gpus: int = 512
    gpus_per_node: int = 8
    device_mem_bytes: int = 32 * 2**30
    device_types: tuple[tuple[str, int, int], ...] = ()
    """A mixed cluster: (type, devices, memory bytes) per type, in device order (``gpus`` and
    ``device_mem_bytes`` are then unused); empty: ``gpus`` untyped devices."""
    move_cold_start: bool = True
    """A replica moved by a re-pack starts on its new device (``cold_start_s``) while the copy on
    its old device serves and keeps that device in use (make-before-break, as
    ``fast_scheduler.repack`` moves them live; a replica still starting goes on starting there and
    serves until the new copy is up); False: moves are instant and free."""
    borrow_idle: bool = True
    """Replicas whose quota limit is above their request serve past it, up to the limit, on the
    device's idle SM-time (what the arbiter lends); False: every replica at its request."""
    recent_at_tick: bool = True
    """Before each tick, hand a policy with a fast path the rates of the last sub-window
    (``observe_recent``), which the tick's mean dilutes; False: the tick's rates only."""
    batch_lever: bool = True
    """Apply the batch raises a policy asks for (``take_batch_limits``): the running replicas serve
    at a batch up to the raised limit (the one that serves their share of the rate best, from the
    table's point at that batch) until their function has no replica starting."""
    record_latency: bool = False
    """Keep per-step served counts and latency terms per function (calibration; costs memory)."""
    latency: LatencyModel = DEFAULT_MODEL
    """The latency curve through each table point (the autoscaler's, by default)."""


@dataclass(frozen=True)
class Trace:
    """Arrivals per step (``counts``) and the rate they were drawn from (``rates_rps``)."""

    name: str
    step_s: float
    counts: Mapping[str, Sequence[int]]
    rates_rps: Mapping[str, Sequence[float]]

    @property
    def steps(self) -> int:
        return min(len(c) for c in self.counts.values())


class Policy(Protocol):
    name: str

    def desired(
        self,
        now_s: float,
        observed_rps: Mapping[str, float],
        current: Mapping[str, tuple[ShareConfig, ...]],
    ) -> Mapping[str, tuple[ShareConfig, ...]]:
        """The replica set each function should run."""
        ...

    def apply(
        self, snapshot: Snapshot, adds: Sequence[ReplicaRequest]
    ) -> tuple[Snapshot, list[ReplicaRequest]]:
        """``snapshot`` with ``adds`` placed; returns the ones that found no device."""
        ...

    def after(self, snapshot: Snapshot) -> tuple[Snapshot, int]:
        """A chance to re-pack; returns the snapshot and how many replicas moved."""
        ...


@dataclass
class FunctionResult:
    arrived: float = 0.0
    served: float = 0.0
    within_slo: float = 0.0
    area_s: float = 0.0
    """SM-time its replicas were guaranteed (sum of sm x quota request), integrated over time, in
    device-seconds (starting, standby and draining replicas included)."""
    served_by_step: list[float] = field(default_factory=list)
    late_by_step: list[float] = field(default_factory=list)
    """Requests served over the SLO, per step (only with ``SimSettings.record_latency``)."""
    latency_terms: list[tuple[float, float, float, float]] = field(default_factory=list)
    """(count, base_ms, rho, decay_per_ms): ``count`` requests whose latency exceeds ``base_ms + t``
    with probability ``rho * exp(-decay_per_ms * t)`` (rho 0: exactly ``base_ms``). Only with
    ``SimSettings.record_latency``."""

    def latency_quantile_ms(self, q: float = 0.99) -> float:
        return latency_quantile_ms(self.latency_terms, q)

    @property
    def slo_attainment(self) -> float:
        return self.within_slo / self.arrived if self.arrived else 1.0


@dataclass
class SimResult:
    policy: str
    trace: str
    step_s: float
    gpus: list[int] = field(default_factory=list)
    device_util: list[float] = field(default_factory=list)
    sm_occupancy: list[float] = field(default_factory=list)
    functions: dict[str, FunctionResult] = field(default_factory=dict)
    rejected: int = 0
    standby_refused: int = 0
    """Standby replicas that found no room beside planned replicas (not started; not ``rejected``)."""
    moves: int = 0
    replicas_started: int = 0
    replicas: list[int] = field(default_factory=list)
    """Ready (serving) replicas per step, all functions."""
    gpus_by_type: dict[str, list[int]] = field(default_factory=dict)
    """GPUs in use per step by device type (a mixed cluster only)."""

    def summary(self) -> dict[str, float]:
        arrived = sum(f.arrived for f in self.functions.values())
        ok = sum(f.within_slo for f in self.functions.values())
        served = sum(f.served for f in self.functions.values())
        used = [g for g in self.gpus if g]
        gmean = sum(self.gpus) / len(self.gpus) if self.gpus else 0.0
        duration_s = len(self.gpus) * self.step_s
        return {
            "gpus_mean": gmean,
            "gpus_peak": max(self.gpus, default=0),
            "slo_attainment": ok / arrived if arrived else 1.0,
            "slo_attainment_min_function": min(
                (f.slo_attainment for f in self.functions.values()), default=1.0
            ),
            "throughput_per_gpu_rps": served / duration_s / gmean if gmean else 0.0,
            "device_utilisation": _weighted(self.device_util, self.gpus),
            "sm_occupancy": _weighted(self.sm_occupancy, self.gpus),
            "rejected_replicas": self.rejected,
            "standby_refused": self.standby_refused,
            "moves": self.moves,
            "replicas_started": self.replicas_started,
            "gpu_steps_used": len(used),
        }


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    w = sum(weights)
    return sum(v * g for v, g in zip(values, weights, strict=True)) / w if w else 0.0


@dataclass
class _Replica:
    req: ReplicaRequest
    config: ShareConfig
    device_id: str
    ready_s: float
    curve: LatencyCurve
    stop_s: float = math.inf
    burst_rps: float = 0.0
    """Service rate at its quota limit (what it serves when the arbiter lends it idle time)."""
    rate_scale: float = 1.0
    """Its guaranteed rate as a share of ``curve``'s (a standby: its request over its limit)."""
    batch_limit: int = 0
    """A raised batch limit (``SimSettings.batch_lever``); 0: its configured batch."""
    batch_curves: tuple[LatencyCurve, ...] = ()
    """Its curves at each batch from its own up to ``batch_limit`` (its own first)."""

    @property
    def throughput_rps(self) -> float:
        """Its service rate at its quota request."""
        return self.curve.service_rps * self.rate_scale


def empty_cluster(settings: SimSettings) -> Snapshot:
    kinds = settings.device_types or (("", settings.gpus, settings.device_mem_bytes),)
    types = [(t, mem) for t, n, mem in kinds for _ in range(n)]
    return Snapshot(tuple(
        Device(f"gpu{i:04d}", f"node{i // settings.gpus_per_node:03d}", mem, device_type=t)
        for i, (t, mem) in enumerate(types)
    ))


def simulate(
    specs: Sequence[SimFunction], trace: Trace, policy: Policy, settings: SimSettings | None = None
) -> SimResult:
    """Run ``policy`` over ``trace``; deterministic given its inputs (the trace carries the randomness)."""
    cfg = settings or SimSettings()
    dt = trace.step_s
    by_name = {s.name: s for s in specs}
    res = SimResult(policy.name, trace.name, dt, functions={s.name: FunctionResult() for s in specs})
    snap = empty_cluster(cfg)
    type_of = {d.device_id: d.device_type for d in snap.devices}
    serve = {s.name: dict(s.serve_tables) for s in specs}
    replicas: dict[str, _Replica] = {}
    queues: dict[str, deque[list[float]]] = {s.name: deque() for s in specs}
    since_tick = dict.fromkeys(by_name, 0.0)
    last_tick_s: float | None = None
    serial = 0
    fn_reps: dict[str, list[_Replica]] = {n: [] for n in by_name}
    used_ids: list[str] = []
    draining: list[_Replica] = []
    every = max(1, round(cfg.control_interval_s / dt))

    fast_every = round(cfg.fast_interval_s / dt) if cfg.fast_interval_s > 0 else 0
    take_raises = getattr(policy, "take_batch_limits", None) if cfg.batch_lever else None
    raised: set[str] = set()
    fn_area = dict.fromkeys(by_name, 0.0)

    def raise_batches(now: float) -> None:
        """The policy's batch raises, onto the function's ready replicas of each raised config."""
        for n, limits in take_raises().items() if take_raises is not None else ():
            for r in replicas.values():
                b = limits.get(r.config, 0)
                if r.req.function != n or b <= r.config.batch or r.ready_s > now or r.rate_scale != 1.0:
                    continue
                tab = serve[n].get(type_of[r.device_id], by_name[n].table)
                if not r.batch_curves:
                    r.batch_curves = (r.curve,)
                for bb in tab.batches:
                    if bb > max(r.batch_limit, r.config.batch) and bb <= b:
                        p = tab.estimate(r.config.sm_pct, r.config.quota_request_frac, bb)
                        r.batch_curves += (LatencyCurve.from_point(
                            p.throughput_rps, p.latency_p50_ms, p.latency_p99_ms, cfg.latency),)
                r.batch_limit = max(r.batch_limit, b)
                raised.add(n)

    fast = getattr(policy, "fast", None) if 0 < fast_every < every else None
    recent = getattr(policy, "observe_recent", None) if fast is not None and cfg.recent_at_tick else None
    since_fast = dict.fromkeys(by_name, 0.0)
    last_fast_s: float | None = None

    def change(now: float, k: int, want: Mapping[str, tuple[ShareConfig, ...]],
               current: Mapping[str, tuple[ShareConfig, ...]], repack: bool) -> None:
        """Apply the wanted replica sets (functions absent from ``want`` keep theirs)."""
        nonlocal snap, serial, draining
        adds: list[ReplicaRequest] = []
        devs = snap.by_id()
        removed: dict[str, list[_Replica]] = {}
        for n in want:
            spec = by_name[n]
            have = Counter(current[n])
            target = Counter(want[n])
            for conf, extra in (have - target).items():
                # Remove from the least-used devices first, so whole devices empty out.
                mine = sorted(
                    (r for r in replicas.values() if r.req.function == n and r.config == conf),
                    key=lambda r: (r.ready_s <= now, devs[r.device_id].area_used, r.req.replica_id),
                )
                replacing = bool(target - have)
                for r in mine[:extra]:
                    devs[r.device_id] = devs[r.device_id].without(r.req.replica_id)
                    del replicas[r.req.replica_id]
                    removed.setdefault(n, []).append(r)
                    # Make-before-break: serve until the new ones are up (a standby just goes).
                    if replacing and r.ready_s <= now and not r.req.standby:
                        r.stop_s = now + cfg.cold_start_s
                        draining.append(r)
            for conf, extra in (target - have).items():
                for _ in range(extra):
                    serial += 1
                    adds.append(
                        ReplicaRequest(
                            f"{n}#{serial}",
                            n,
                            spec.model,
                            conf.sm_pct,
                            conf.quota_request_frac,
                            spec.table.mem_bytes,
                            spec.table.weight_bytes,
                            conf.quota_limit_frac,
                            conf.batch,
                            spec.device_type,
                        )
                    )
        if not adds and not removed and not repack:
            return
        snap = Snapshot(tuple(devs[d.device_id] for d in snap.devices))
        snap, rejected = policy.apply(snap, adds)
        # A standby that finds no room beside planned replicas is simply not started.
        res.standby_refused += sum(1 for a in rejected if a.standby)
        rejected = [a for a in rejected if not a.standby]
        res.rejected += len(rejected)
        # Make-before-break when the make fails: a function whose new replicas found no device
        # keeps what it was removing (where it still fits), as the live loop keeps its groups.
        for n in sorted({a.function for a in rejected}):
            devs = snap.by_id()
            for r in removed.get(n, ()):
                back = devs[r.device_id].with_replica(r.req)
                if back is None:
                    continue
                devs[r.device_id] = back
                r.stop_s = math.inf
                if r in draining:
                    draining.remove(r)
                replicas[r.req.replica_id] = r
            snap = Snapshot(tuple(devs[d.device_id] for d in snap.devices))
        if repack:
            snap, moved = policy.after(snap)
            res.moves += moved
        placed_on = {r.replica_id: d.device_id for d in snap.devices for r in d.replicas}
        for a in adds:
            if a.replica_id in placed_on:
                conf = a.config
                tab = serve[a.function].get(type_of[placed_on[a.replica_id]], by_name[a.function].table)
                ready_s = now + (cfg.cold_start_s if k else 0.0)  # the run starts warm
                if a.quota_request_frac < tab.quota_grid[0] - 1e-9:
                    # Below the table (a standby's token request): the curve of its limit, served
                    # at request / limit of that rate unless it borrows.
                    p = tab.estimate(a.sm_pct, a.quota_limit_frac, a.batch)
                    curve = LatencyCurve.from_point(
                        p.throughput_rps, p.latency_p50_ms, p.latency_p99_ms, cfg.latency
                    )
                    scale = a.quota_request_frac / a.quota_limit_frac
                    replicas[a.replica_id] = _Replica(a, conf, placed_on[a.replica_id], ready_s, curve,
                                                      burst_rps=curve.service_rps, rate_scale=scale)
                else:
                    p = tab.estimate(a.sm_pct, a.quota_request_frac, a.batch)
                    curve = LatencyCurve.from_point(
                        p.throughput_rps, p.latency_p50_ms, p.latency_p99_ms, cfg.latency
                    )
                    burst = curve.service_rps
                    if a.quota_limit_frac > a.quota_request_frac + 1e-9:
                        pl = tab.estimate(a.sm_pct, a.quota_limit_frac, a.batch)
                        burst = pl.throughput_rps / max(curve.rate_rps, 1e-9) * curve.service_rps
                    replicas[a.replica_id] = _Replica(
                        a, conf, placed_on[a.replica_id], ready_s, curve,
                        burst_rps=max(burst, curve.service_rps),
                    )
                res.replicas_started += 1
        for rid in list(replicas):
            if rid not in placed_on:  # evicted by the policy (a standby left alone on a device)
                del replicas[rid]
                continue
            r = replicas[rid]
            if r.device_id != placed_on[rid] and cfg.move_cold_start and k:
                # A re-pack move, make-before-break as the live loop does it: the copy on the old
                # device serves (and holds it in use) until the one on the new device is up. A copy
                # still starting there goes on starting and serves from its own ready time.
                draining.append(replace(r, stop_s=now + cfg.cold_start_s))
                r.ready_s = now + cfg.cold_start_s
            r.device_id = placed_on[rid]

    for k in range(trace.steps):
        now = k * dt
        ticked = k % every == 0
        if ticked:
            span = now - last_tick_s if last_tick_s is not None else cfg.control_interval_s
            observed = (
                {n: since_tick[n] / span for n in by_name}
                if last_tick_s is not None
                else dict.fromkeys(by_name, 0.0)
            )
            # On the very first tick the policy sees the first interval's demand, as a warm platform would.
            if last_tick_s is None:
                observed = {n: sum(trace.counts[n][:every]) / (every * dt) for n in by_name}
            if recent is not None and last_fast_s is not None and now > last_fast_s:
                # The last sub-window, which the tick's mean dilutes: a step there is planned for now.
                recent(now, {n: since_fast[n] / (now - last_fast_s) for n in by_name}, now - last_fast_s)
            last_tick_s, since_tick = now, dict.fromkeys(by_name, 0.0)
            last_fast_s, since_fast = now, dict.fromkeys(by_name, 0.0)
            current = {n: tuple(r.config for r in replicas.values() if r.req.function == n) for n in by_name}
            want = policy.desired(now, observed, current)
            change(now, k, {n: want.get(n, current[n]) for n in by_name}, current, True)
            raise_batches(now)
        elif fast is not None and k % fast_every == 0 and last_fast_s is not None:
            # The fast scale-up path: a sub-tick reads the counters since the last reading.
            span = now - last_fast_s
            observed = {n: since_fast[n] / span for n in by_name}
            last_fast_s, since_fast = now, dict.fromkeys(by_name, 0.0)
            current = {n: tuple(r.config for r in replicas.values() if r.req.function == n) for n in by_name}
            want = fast(now, observed, current, span)
            if want:
                change(now, k, dict(want), current, False)
                raise_batches(now)
                ticked = True
        if ticked or draining:
            draining = [r for r in draining if r.stop_s > now]
            fn_reps = {n: [r for r in replicas.values() if r.req.function == n] for n in by_name}
            for r in draining:
                fn_reps[r.req.function].append(r)
            used_ids = sorted(
                {d.device_id for d in snap.devices if d.replicas} | {r.device_id for r in draining}
            )
            fn_area = {n: sum(r.config.area for r in rs) for n, rs in fn_reps.items()}
        for n in list(raised):  # lowered once the function's new replicas are ready
            if all(r.ready_s <= now for r in fn_reps[n]):
                raised.discard(n)
                for r in fn_reps[n]:
                    if r.batch_curves:
                        r.curve, r.batch_limit, r.batch_curves = r.batch_curves[0], 0, ()

        util_by_dev: dict[str, list[float]] = {}
        # Pass 1: arrivals, each function's ready replicas and demand; the SM-time its replicas use
        # of their guaranteed request; what those with a limit above their request would borrow.
        step_ready: dict[str, list[_Replica]] = {}
        extra: dict[str, float] = {}
        used_area: dict[str, float] = {}
        wants: dict[str, list[tuple[_Replica, float, float]]] = {}
        for n in by_name:
            a = float(trace.counts[n][k])
            since_tick[n] += a
            since_fast[n] += a
            res.functions[n].arrived += a
            res.functions[n].area_s += fn_area[n] * dt
            q = queues[n]
            if a > 0:
                q.append([now, a])
            ready = [r for r in fn_reps[n] if r.ready_s <= now]
            step_ready[n] = ready
            if not ready or not q:
                continue
            if n in raised:
                _pick_batches(ready, trace.rates_rps[n][k] if k < len(trace.rates_rps[n]) else a / dt,
                              sum(c[1] for c in q) / dt, by_name[n].slo_ms)
            g = sum(r.throughput_rps for r in ready) * dt
            demand = sum(c[1] for c in q)
            busy = min(1.0, demand / g) if g > 0 else 0.0
            for r in ready:
                used_area[r.device_id] = used_area.get(r.device_id, 0.0) + r.config.area * busy
            if cfg.borrow_idle and demand > g:
                # While it has queued work a replica past its request takes every idle slice the
                # arbiter offers: it wants its whole potential (its rate up to its limit), whether
                # or not the queue needs all of it (its service rate is what sets its latency).
                for r in ready:
                    pot = (r.burst_rps - r.throughput_rps) * dt
                    if pot > 1e-12:
                        lend = r.config.quota_limit_frac - r.config.quota_request_frac
                        cost = r.config.sm_pct / 100 * lend / pot
                        wants.setdefault(r.device_id, []).append((r, pot, cost))
        # Pass 2: the arbiter lends each device's idle SM-time (not used by replicas within their
        # request) to replicas past their request, up to their limit, in proportion to what they want.
        for dev, ws in wants.items():
            idle = max(0.0, 1.0 - used_area.get(dev, 0.0))
            need = sum(w * c for _, w, c in ws)
            f = min(1.0, idle / need) if need > 0 else 0.0
            for r, w, _c in ws:
                extra[r.req.replica_id] = w * f
        # Pass 3: serve.
        for n, spec in by_name.items():
            fr = res.functions[n]
            q = queues[n]
            ready = step_ready[n]
            rates = [r.throughput_rps + extra.get(r.req.replica_id, 0.0) / dt for r in ready]
            mu = sum(rates)
            budget = mu * dt
            # The tail model wants the Poisson rate the step's arrivals were drawn from, not their count.
            rate_k = trace.rates_rps[n][k] if k < len(trace.rates_rps[n]) else 0.0
            lam = rate_k if rate_k > 0 else float(trace.counts[n][k]) / dt
            for r, rate in zip(ready, rates, strict=True):  # busy share for utilisation
                share = min(1.0, lam / mu) if mu else 0.0
                quota = r.config.quota_request_frac * rate / r.throughput_rps
                u = util_by_dev.setdefault(r.device_id, [0.0, 0.0])
                u[0] += quota * share
                u[1] += r.config.sm_pct / 100 * quota * share
            servers = [(rate, r.curve) for r, rate in zip(ready, rates, strict=True)]
            fresh_ok = fresh_ok_fraction(servers, lam, mu, spec.slo_ms) if ready else 0.0
            served_before, ok_before = fr.served, fr.within_slo
            full = budget
            while q and budget > 1e-9:
                t_arr, cnt = q[0]
                take = min(cnt, budget)
                # Fluid within the step: arrivals spread over their step, served in FIFO order at ``mu``.
                served_mid_s = now + (full - budget + take / 2) / mu
                budget -= take
                fr.served += take
                wait_ms = max(0.0, served_mid_s - (t_arr + dt / 2)) * 1000 if t_arr < now else 0.0
                if t_arr >= now:
                    fr.within_slo += take * fresh_ok
                    if cfg.record_latency:
                        fr.latency_terms.extend(fresh_terms(servers, take, lam, mu))
                else:
                    c = min((r.curve for r in ready), key=lambda c: c.light_p99_ms)
                    if wait_ms + c.light_p99_ms <= spec.slo_ms:
                        fr.within_slo += take
                    if cfg.record_latency:
                        base, decay = c.tail(c.light_p99_ms)
                        fr.latency_terms.append((take, wait_ms + base, 0.5, decay))
                if take >= cnt:
                    q.popleft()
                else:
                    q[0][1] = cnt - take
            if cfg.record_latency:
                fr.served_by_step.append(fr.served - served_before)
                fr.late_by_step.append((fr.served - served_before) - (fr.within_slo - ok_before))
        res.gpus.append(len(used_ids))
        if cfg.device_types:
            for t, _n, _m in cfg.device_types:
                res.gpus_by_type.setdefault(t, []).append(sum(1 for d in used_ids if type_of[d] == t))
        res.replicas.append(sum(1 for rs in fn_reps.values() for r in rs if r.ready_s <= now))
        if used_ids:
            zero = [0.0, 0.0]
            res.device_util.append(
                sum(min(1.0, util_by_dev.get(d, zero)[0]) for d in used_ids) / len(used_ids)
            )
            res.sm_occupancy.append(
                sum(min(1.0, util_by_dev.get(d, zero)[1]) for d in used_ids) / len(used_ids)
            )
        else:
            res.device_util.append(0.0)
            res.sm_occupancy.append(0.0)
    return res


def _pick_batches(ready: Sequence[_Replica], lam: float, queued_rps: float, slo_ms: float) -> None:
    """Each ready replica with a raised batch limit serves this step at the batch (its own up to the
    limit) that keeps most of its share of ``lam`` within the SLO; with a backlog past what its own
    batch drains (``queued_rps``), or when every batch is late, at the fastest one (a deadline
    batcher forms large batches only while requests queue)."""
    mu = sum(r.batch_curves[0].service_rps if r.batch_curves else r.curve.service_rps for r in ready)
    if mu <= 0:
        return
    for r in ready:
        if not r.batch_curves:
            continue
        base = r.batch_curves[0]
        w = base.service_rps / mu
        best, best_ok = base, -1.0
        for c in r.batch_curves:
            ok = 1.0 - c.late_fraction(lam * w, slo_ms)
            if ok > best_ok + 1e-12:
                best, best_ok = c, ok
        if best_ok <= 0 or queued_rps * w > base.service_rps:
            best = max(r.batch_curves, key=lambda c: c.service_rps)
        r.curve = best
