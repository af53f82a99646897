"""A discrete-time simulator of a GPU cluster serving inference functions, to compare policies. Pure.

Driven by profile tables and a request trace (counts per step per function, from ``traces``). Every
``control_interval_s`` the policy under test sees the rate observed since its last tick and the
replicas running, and returns the replica set it wants per function (for this project: the same
``decide_replicas`` the control loop calls); new replicas are placed by the policy (for this
project: the same ``place``), and serve after ``cold_start_s``. A removed replica stops at once,
unless its function gets new replicas in the same tick: then it keeps serving (and its GPU counts
as used) until they are up (make-before-break), though its place is already free for placement.

Serving, per step and function: arrivals join a FIFO of (arrival time, count) chunks; ready
replicas drain it at their table throughput (split in proportion to throughput, as the
capacity-aware proxy does). A chunk served in the step it arrived meets the SLO unless its
replica's service p99 plus the M/D/1 waiting tail (``autoscale.wait_p99_ms``'s model) exceeds it
(the violating fraction is the tail probability); a chunk that waited across steps is late by its
wait. So SLO attainment counts cold starts, under-provisioning and backlog, not only the model.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fast_profiler.table import ProfileTable
from fast_scheduler.autoscale import ReplicaConfig
from fast_scheduler.placement import Device, ReplicaRequest, Snapshot


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    model: str
    table: ProfileTable
    slo_ms: float
    min_replicas: int = 1
    max_replicas: int = 1000


@dataclass(frozen=True)
class SimSettings:
    step_s: float = 1.0
    """Granularity of serving and accounting."""
    control_interval_s: float = 5.0
    """How often the policy decides."""
    cold_start_s: float = 5.0
    """From placement to serving (context with its SM share, weights mapped from the model store)."""
    gpus: int = 512
    gpus_per_node: int = 8
    device_mem_bytes: int = 32 * 2**30


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
        current: Mapping[str, tuple[ReplicaConfig, ...]],
    ) -> Mapping[str, tuple[ReplicaConfig, ...]]:
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
    moves: int = 0
    replicas_started: int = 0

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
    config: ReplicaConfig
    device_id: str
    ready_s: float
    throughput_rps: float
    service_p99_ms: float
    stop_s: float = math.inf


def empty_cluster(settings: SimSettings) -> Snapshot:
    return Snapshot(
        tuple(
            Device(f"gpu{i:04d}", f"node{i // settings.gpus_per_node:03d}", settings.device_mem_bytes)
            for i in range(settings.gpus)
        )
    )


def simulate(
    specs: Sequence[FunctionSpec], trace: Trace, policy: Policy, settings: SimSettings | None = None
) -> SimResult:
    """Run ``policy`` over ``trace``; deterministic given its inputs (the trace carries the randomness)."""
    cfg = settings or SimSettings()
    dt = trace.step_s
    by_name = {s.name: s for s in specs}
    res = SimResult(policy.name, trace.name, dt, functions={s.name: FunctionResult() for s in specs})
    snap = empty_cluster(cfg)
    replicas: dict[str, _Replica] = {}
    queues: dict[str, deque[list[float]]] = {s.name: deque() for s in specs}
    since_tick = dict.fromkeys(by_name, 0.0)
    last_tick_s: float | None = None
    serial = 0
    fn_reps: dict[str, list[_Replica]] = {n: [] for n in by_name}
    used_ids: list[str] = []
    draining: list[_Replica] = []
    every = max(1, round(cfg.control_interval_s / dt))

    for k in range(trace.steps):
        now = k * dt
        if k % every == 0:
            span = now - last_tick_s if last_tick_s is not None else cfg.control_interval_s
            observed = (
                {n: since_tick[n] / span for n in by_name}
                if last_tick_s is not None
                else dict.fromkeys(by_name, 0.0)
            )
            # On the very first tick the policy sees the first interval's demand, as a warm platform would.
            if last_tick_s is None:
                observed = {n: sum(trace.counts[n][:every]) / (every * dt) for n in by_name}
            last_tick_s, since_tick = now, dict.fromkeys(by_name, 0.0)
            current = {n: tuple(r.config for r in replicas.values() if r.req.function == n) for n in by_name}
            want = policy.desired(now, observed, current)
            adds: list[ReplicaRequest] = []
            devs = snap.by_id()
            for n, spec in by_name.items():
                have = Counter(current[n])
                target = Counter(want.get(n, current[n]))
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
                        if (
                            replacing and r.ready_s <= now
                        ):  # make-before-break: serve until the new ones are up
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
                            )
                        )
            snap = Snapshot(tuple(devs[d.device_id] for d in snap.devices))
            snap, rejected = policy.apply(snap, adds)
            res.rejected += len(rejected)
            snap, moved = policy.after(snap)
            res.moves += moved
            placed_on = {r.replica_id: d.device_id for d in snap.devices for r in d.replicas}
            for a in adds:
                if a.replica_id in placed_on:
                    conf = ReplicaConfig(a.sm_pct, a.quota_request_frac, a.quota_limit_frac, a.batch)
                    p = by_name[a.function].table.estimate(a.sm_pct, a.quota_request_frac, a.batch)
                    ready_s = now + (cfg.cold_start_s if k else 0.0)  # the run starts warm
                    replicas[a.replica_id] = _Replica(
                        a, conf, placed_on[a.replica_id], ready_s, p.throughput_rps, p.latency_p99_ms
                    )
                    res.replicas_started += 1
            for rid, r in replicas.items():
                r.device_id = placed_on[rid]
        if k % every == 0 or draining:
            draining = [r for r in draining if r.stop_s > now]
            fn_reps = {n: [r for r in replicas.values() if r.req.function == n] for n in by_name}
            for r in draining:
                fn_reps[r.req.function].append(r)
            used_ids = sorted(
                {d.device_id for d in snap.devices if d.replicas} | {r.device_id for r in draining}
            )

        util_by_dev: dict[str, list[float]] = {}
        for n, spec in by_name.items():
            a = float(trace.counts[n][k])
            since_tick[n] += a
            fr = res.functions[n]
            fr.arrived += a
            q = queues[n]
            if a > 0:
                q.append([now, a])
            ready = [r for r in fn_reps[n] if r.ready_s <= now]
            mu = sum(r.throughput_rps for r in ready)
            budget = mu * dt
            lam = a / dt
            for r in ready:  # busy share for utilisation
                share = min(1.0, lam / mu) if mu else 0.0
                util_by_dev.setdefault(r.device_id, [0.0, 0.0])
                util_by_dev[r.device_id][0] += r.config.quota_request_frac * share
                util_by_dev[r.device_id][1] += r.config.sm_pct / 100 * r.config.quota_request_frac * share
            fresh_ok = _fresh_ok_fraction(ready, lam, mu, spec.slo_ms) if ready else 0.0
            while q and budget > 1e-9:
                t_arr, cnt = q[0]
                take = min(cnt, budget)
                budget -= take
                fr.served += take
                wait_ms = (now - t_arr) * 1000
                if wait_ms <= 0:
                    fr.within_slo += take * fresh_ok
                else:
                    svc = min(r.service_p99_ms for r in ready)
                    if wait_ms + svc <= spec.slo_ms:
                        fr.within_slo += take
                if take >= cnt:
                    q.popleft()
                else:
                    q[0][1] = cnt - take
        res.gpus.append(len(used_ids))
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


def _fresh_ok_fraction(ready: Sequence[_Replica], lam: float, mu: float, slo_ms: float) -> float:
    """Share of requests served in their arrival step within the SLO (M/D/1 tail per replica)."""
    if lam <= 0:
        return 1.0
    if lam >= mu:
        return 0.0
    ok = 0.0
    for r in ready:
        w = r.throughput_rps / mu
        lam_i = lam * w
        slack_s = (slo_ms - r.service_p99_ms) / 1000
        if slack_s < 0:
            continue
        rho = lam_i / r.throughput_rps
        late = min(1.0, rho * math.exp(-2 * (r.throughput_rps - lam_i) * slack_s))
        ok += w * (1 - late)
    return ok
