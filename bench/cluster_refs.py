"""What ``bench.cluster`` wraps around this project's policy in a simulation: ``GapProbe`` (records
each tick to split the gap to the LP bound) and ``Foresight`` (the perfect-foresight reference).
Both take the simulator's policy calls (``desired``, ``apply``, ``after``) and pass them on."""

from __future__ import annotations

from typing import Any

from fast_scheduler.autoscale import AutoscaleSettings, split_standby
from fast_scheduler.choices import plan_for_rate
from fast_scheduler.evaluation.policies import this_policy
from fast_scheduler.evaluation.simulator import SimFunction
from fast_scheduler.placement import Snapshot


class GapProbe:
    """Wraps an ``AutoscaledPolicy`` in a simulation and records, each tick, its decisions and the
    snapshot after placement and re-pack: what ``decomposition`` splits the gap to the bound into."""

    def __init__(self, policy: Any, specs: list[SimFunction], skip_s: float = 60.0) -> None:
        self.policy, self.specs, self.skip_s = policy, specs, skip_s
        self.name = policy.name
        self.ticks: list[tuple[float, dict[str, float], dict[str, tuple], Snapshot | None]] = []

    def desired(self, now_s: float, observed: Any, current: Any) -> Any:
        out = self.policy.desired(now_s, observed, current)
        targets = {n: d.target_rps for n, d in self.policy.decisions.items()}
        self.ticks.append((now_s, targets, dict(out), None))
        return out

    def fast(self, *args: Any) -> Any:
        return self.policy.fast(*args)

    def take_batch_limits(self) -> Any:
        return self.policy.take_batch_limits()

    def observe_recent(self, *args: Any) -> None:
        self.policy.observe_recent(*args)

    def apply(self, snapshot: Snapshot, adds: Any) -> Any:
        return self.policy.apply(snapshot, adds)

    def after(self, snapshot: Snapshot) -> Any:
        snap, moved = self.policy.after(snapshot)
        if self.ticks:
            self.ticks[-1] = (*self.ticks[-1][:3], snap)
        return snap, moved

    def decomposition(self, trace: Any, lp: list[float], gpus: list[int]) -> dict[str, float]:
        """Time means over the ticks after ``skip_s``, each a step from the LP's value to the GPUs:
        ``lp``; ``best_config_area``: the rate at this policy's most efficient config, fractional
        (its configs against the LP's); ``plan_area``: the areas of ``plan_for_rate`` at the true
        rate (whole replicas); ``target_over_rate``, ``plan_capacity_over_rate`` (whole replicas
        for the target), ``running_capacity_over_rate`` (after scale-down hysteresis);
        ``planned_area``, ``standby_area``: what runs; ``height``: SM strips' heights summed
        (devices); ``devices``: devices in use after placement; ``gpus``: the simulator's count
        (draining ones too)."""
        rows = []
        for now_s, targets, want, snap in self.ticks:
            k = int(round(now_s / trace.step_s))
            if now_s < self.skip_s or snap is None or k >= len(lp):
                continue
            rate = {s.name: float(trace.rates_rps[s.name][k]) for s in self.specs}
            total = sum(rate.values()) or 1.0
            best = plan = pcap = rcap = 0.0
            for s in self.specs:
                cs = self.policy.states[s.name].choice_set
                if not cs:
                    continue
                b = cs.choices[0]
                best += rate[s.name] * b.config.area / b.capacity_rps
                plan += sum(c.config.area for c in plan_for_rate(cs, rate[s.name], s.max_replicas)[0])
                pcap += sum(c.capacity_rps for c in plan_for_rate(cs, targets.get(s.name, 0.0),
                                                                 s.max_replicas)[0])
                rcap += cs.totals(split_standby(want.get(s.name, ()))[0])[1]
            used = [d for d in snap.devices if d.replicas]
            rows.append({
                "lp": lp[k], "best_config_area": best, "plan_area": plan,
                "target_over_rate": sum(targets.values()) / total,
                "plan_capacity_over_rate": pcap / total, "running_capacity_over_rate": rcap / total,
                "planned_area": sum(r.area for d in used for r in d.replicas if not r.standby),
                "standby_area": sum(r.area for d in used for r in d.replicas if r.standby),
                "height": sum(d.height_used_pct for d in used) / 100, "devices": float(len(used)),
                "gpus": float(gpus[k]),
            })
        return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]} if rows else {}


class Foresight:
    """A reference, not a policy: this policy's own code (configs, whole replicas, placement,
    re-pack) fed, at each tick, each function's *true* highest rate over the ``ahead_steps`` until
    what it starts can serve (a tick plus a cold start; through the autoscaler's forecaster, as an
    observed rate would go), with no headroom for what it cannot know (no burst headroom,
    volatility term or standby; it has no fast path). With ``delay_s`` (the scale-down delay) 0 it
    is what the machinery costs when the forecast is perfect; the gap from it to ``this`` is what
    not knowing the future costs.

    ``start_s`` (the replicas' start) sets its re-pack cadence as it sets this policy's
    (``repack.every_ticks_for_start``), so the two pack alike; ``repack_every_ticks`` overrides it
    (6: the reference of the runs before the cadence followed the start)."""

    def __init__(self, specs: list[SimFunction], trace: Any, ahead_steps: int, delay_s: float,
                 mem_bytes: int, start_s: float = 5.0, repack_every_ticks: int | None = None) -> None:
        st = AutoscaleSettings(device_mem_bytes=mem_bytes, burst_k=0.0, volatility_k=0.0,
                               standby_frac=0.0, scale_down_delay_s=delay_s, seasonal_forecast=False,
                               calm_scale_down_delay_s=delay_s, start_s=start_s)
        self.policy, self.trace, self.ahead = this_policy(specs, st), trace, ahead_steps
        if repack_every_ticks is not None:
            self.policy.repack_every_ticks = repack_every_ticks
        self.name = "foresight"

    def desired(self, now_s: float, observed: Any, current: Any) -> Any:
        k = int(round(now_s / self.trace.step_s))
        true = {n: max(r[k : k + self.ahead], default=0.0) for n, r in self.trace.rates_rps.items()}
        return self.policy.desired(now_s, true, current)

    def apply(self, snapshot: Snapshot, adds: Any) -> Any:
        return self.policy.apply(snapshot, adds)

    def after(self, snapshot: Snapshot) -> Any:
        return self.policy.after(snapshot)
