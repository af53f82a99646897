"""The policies this project is compared against, runnable in the simulator.

- ``exclusive``: one replica per whole GPU (stock OpenFaaS / Kubernetes ``nvidia.com/gpu: 1``);
- ``time_sharing``: whole-GPU SM partitions with quotas summing to <= 1 (Gemini, KubeShare);
- ``mps_equal``: equal SM shares per GPU, full quota (NVIDIA device plugin with MPS, 4 slots);
- ``FastGShareOriginal``: the original FaST-GShare heuristic, kept faithful to its published code:
  capacity is the profiled throughput (not SLO-aware); the predicted rate is the 10 s rate plus its
  growth over the last 30 s when growing, times a trend multiplier; the most efficient config by
  throughput per unit of (quota x SM) serves the bulk and the smallest sufficient config the
  residual; scale-down after three consecutive ticks with load under half the capacity and a falling
  rate; placement by MaxRects best-area-fit (``rectpack.MaxRectsBaf``, no rotation) of
  (quota x 1000, SM %) rectangles, first-fit over GPUs.

The first three reuse this project's autoscaler (the same demand forecast and SLO-aware sizing)
over their restricted configs, so the comparison isolates the sharing mode. The original is given
working scale-down (its public code never removed replicas) and the same memory accounting with
model sharing, so it is compared at its best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rectpack import MaxRectsBaf, PackingMode, newPacker

from fast_profiler.table import ProfilePoint
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.evaluation.policies import AutoscaledPolicy, restricted
from fast_scheduler.evaluation.simulator import SimFunction
from fast_scheduler.placement import Device, ReplicaRequest, Snapshot, fits_memory

QUOTA_UNITS = 1000
"""Width of a GPU bin in the original's packing: quota x 1000."""
SM_UNITS = 100
"""Height of a GPU bin: SM percent."""
ORIGINAL_TREND_MULTIPLIER = 1.5
"""The published autoscaler's scale factor on the predicted rate (``SCALE_FACTOR``)."""
ORIGINAL_SCALE_DOWN_TICKS = 3
ORIGINAL_SCALE_DOWN_LOAD = 0.5
MPS_SLOTS = 4
"""Replicas per GPU under MPS-equal: each gets 100 / MPS_SLOTS % of the SMs."""


def _point(spec: SimFunction, sm_pct: int, quota_frac: float, batch: int) -> ProfilePoint:
    e = spec.table.estimate(sm_pct, quota_frac, batch)
    return ProfilePoint(
        sm_pct,
        quota_frac,
        batch,
        e.throughput_rps,
        e.latency_p50_ms,
        e.latency_p95_ms,
        e.latency_p99_ms,
        e.measured,
    )


def only_empty(req: ReplicaRequest, dev: Device) -> str | None:
    return "exclusive: device in use" if dev.replicas else None


def exclusive(specs: Sequence[SimFunction], settings: AutoscaleSettings | None = None) -> AutoscaledPolicy:
    pts = restricted(lambda s: [_point(s, 100, 1.0, b) for b in s.table.batches])
    return AutoscaledPolicy(
        "exclusive", specs, settings or AutoscaleSettings(), pts, filters=(fits_memory, only_empty)
    )


def time_sharing(
    specs: Sequence[SimFunction], settings: AutoscaleSettings | None = None
) -> AutoscaledPolicy:
    pts = restricted(lambda s: [_point(s, 100, q, b) for b in s.table.batches for q in s.table.quota_grid])
    return AutoscaledPolicy("time_sharing", specs, settings or AutoscaleSettings(), pts)


def mps_equal(specs: Sequence[SimFunction], settings: AutoscaleSettings | None = None) -> AutoscaledPolicy:
    sm = 100 // MPS_SLOTS
    pts = restricted(lambda s: [_point(s, sm, 1.0, b) for b in s.table.batches])
    return AutoscaledPolicy("mps_equal", specs, settings or AutoscaleSettings(), pts)


# ---- the original FaST-GShare heuristic ----------------------------------------------------


def rect_of(r: ReplicaRequest) -> tuple[int, int]:
    return max(1, round(r.quota_request_frac * QUOTA_UNITS)), max(1, int(r.sm_pct))


def maxrects_fits(rects: Sequence[tuple[int, int]]) -> bool:
    """Do all rectangles pack into one GPU bin by MaxRects best-area-fit? (No rectangle may drop.)"""
    packer = newPacker(mode=PackingMode.Offline, pack_algo=MaxRectsBaf, rotation=False)
    packer.add_bin(QUOTA_UNITS, SM_UNITS)
    for i, (w, h) in enumerate(rects):
        packer.add_rect(w, h, rid=i)
    packer.pack()
    return len(packer.rect_list()) == len(rects)


@dataclass
class _OrigFn:
    history: list[float] = field(default_factory=list)
    low_ticks: int = 0


@dataclass
class FastGShareOriginal:
    specs: Sequence[SimFunction]
    control_interval_s: float = 5.0
    trend_multiplier: float = ORIGINAL_TREND_MULTIPLIER
    name: str = "fastgshare_original"
    fns: dict[str, _OrigFn] = field(default_factory=dict)
    fit_cache: dict[tuple[tuple[int, int], ...], bool] = field(default_factory=dict)
    dropped_checks: int = 0
    """Packings where MaxRects dropped a rectangle (the replica was then refused, never lost)."""

    def _configs(self, spec: SimFunction) -> list[tuple[ShareConfig, float]]:
        out = []
        for p in spec.table.grid():
            if p.batch == 1 and p.latency_p99_ms < spec.slo_ms and p.throughput_rps > 0:
                out.append((ShareConfig(p.sm_pct, p.quota_frac, p.quota_frac, 1), p.throughput_rps))
        return out

    def _fill(self, configs: list[tuple[ShareConfig, float]], rps: float) -> list[ShareConfig]:
        if rps <= 0 or not configs:
            return []
        best = max(configs, key=lambda c: (c[1] / c[0].area, c[1]))
        n = int(rps // best[1])
        out = [best[0]] * n
        resid = rps - n * best[1]
        if resid > 1e-9:
            ok = [c for c in configs if c[1] >= resid]
            out.append(min(ok, key=lambda c: (c[0].area, -c[1]))[0] if ok else best[0])
        return out

    def desired(
        self,
        now_s: float,
        observed_rps: Mapping[str, float],
        current: Mapping[str, tuple[ShareConfig, ...]],
    ) -> dict[str, tuple[ShareConfig, ...]]:
        per = max(1, round(10 / self.control_interval_s))
        out = {}
        for s in self.specs:
            st = self.fns.setdefault(s.name, _OrigFn())
            st.history = (st.history + [observed_rps.get(s.name, 0.0)])[-6 * per :]
            h = st.history
            rps10 = sum(h[-per:]) / len(h[-per:])
            rps30 = sum(h[-3 * per :]) / len(h[-3 * per :])
            early = h[: -3 * per] or h[:1]
            rps30_earlier = sum(early) / len(early)
            growth = rps10 - rps30_earlier
            predicted = rps10 + max(0.0, growth)
            configs = self._configs(s)
            thr = dict(configs)
            cur = list(current.get(s.name, ()))
            cap = sum(thr.get(c, 0.0) for c in cur)
            delta = predicted * self.trend_multiplier - cap
            if delta > 0 or not cur:
                st.low_ticks = 0
                cur = cur + self._fill(configs, delta)
                if not cur and s.min_replicas > 0 and configs:
                    cur = [min(configs, key=lambda c: c[0].area)[0]]
            elif cap > 0 and rps10 / cap < ORIGINAL_SCALE_DOWN_LOAD and len(cur) > 1 and rps10 <= rps30:
                st.low_ticks += 1
                if st.low_ticks >= ORIGINAL_SCALE_DOWN_TICKS:
                    st.low_ticks = 0
                    keep = predicted * self.trend_multiplier
                    cur.sort(key=lambda c: thr.get(c, 0.0) / c.area)  # least efficient go first
                    while len(cur) > max(1, s.min_replicas) and cap - thr.get(cur[0], 0.0) >= keep:
                        cap -= thr.get(cur.pop(0), 0.0)
            else:
                st.low_ticks = 0
            out[s.name] = tuple(cur)
        return out

    def _fits(self, dev: Device, req: ReplicaRequest) -> bool:
        if fits_memory(req, dev):
            return False
        rects = tuple(sorted([rect_of(r) for r in dev.replicas] + [rect_of(req)]))
        if sum(w * h for w, h in rects) > QUOTA_UNITS * SM_UNITS:
            return False
        if rects not in self.fit_cache:
            ok = maxrects_fits(rects)
            self.fit_cache[rects] = ok
            if not ok and sum(w * h for w, h in rects) <= QUOTA_UNITS * SM_UNITS:
                self.dropped_checks += 1
        return self.fit_cache[rects]

    def apply(
        self, snapshot: Snapshot, adds: Sequence[ReplicaRequest]
    ) -> tuple[Snapshot, list[ReplicaRequest]]:
        devices = list(snapshot.devices)
        rejected = []
        for req in adds:
            for i, dev in enumerate(devices):  # first fit over GPUs in order, empty ones included
                if self._fits(dev, req):
                    devices[i] = Device(
                        dev.device_id, dev.node, dev.mem_bytes, dev.replicas + (req,), (), dev.sm_capacity_pct
                    )
                    break
            else:
                rejected.append(req)
        return Snapshot(tuple(devices)), rejected

    def after(self, snapshot: Snapshot) -> tuple[Snapshot, int]:
        return snapshot, 0


def all_policies(
    specs: Sequence[SimFunction], settings: AutoscaleSettings | None = None, control_interval_s: float = 5.0
) -> list:
    """Every baseline and this project's policy, in report order."""
    from fast_scheduler.evaluation.policies import this_policy

    return [
        exclusive(specs, settings),
        time_sharing(specs, settings),
        mps_equal(specs, settings),
        FastGShareOriginal(specs, control_interval_s),
        this_policy(specs, settings),
    ]


def lower_bound_choices(spec: SimFunction, settings: AutoscaleSettings) -> list:
    """Configs for the LP bound: every config any policy here plans with (the grid, the tiling SM
    shares this project's policy and MPS-equal use, and the ``1 - STANDBY_REQUEST`` quotas this
    policy plans with beside a standby), capacity at the SLO without a utilisation cap, under the
    same latency model (``lower_bound`` says why that set suffices)."""
    from fast_scheduler.choices import candidate_points, config_choices, room_points

    loose = AutoscaleSettings(max_utilisation=1.0, device_mem_bytes=settings.device_mem_bytes,
                              latency=settings.latency)
    pts = candidate_points(spec.table)
    room = room_points(spec.table, [p for p in pts if p.quota_frac >= 1.0 - 1e-9])
    return list(config_choices(spec.table, spec.slo_ms, loose, pts + room))
