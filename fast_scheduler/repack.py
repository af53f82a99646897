"""The live re-pack: moves planned by ``placement.plan_repack``, applied make-before-break. Pure.

Every ``every_ticks`` ticks (never on a fast sub-tick), when no move is in flight, the snapshot
``plan_tick`` leaves is re-packed: a device whose replicas all fit on the other used devices is
evacuated while a whole device is wasted. Only replicas of *settled* functions move: decided this
tick, no action this tick, every group at its desired count with all replicas ready, nothing
draining. A device holding anything else (a base replica, which the provider places itself; a
replica of a function that is changing) is not evacuated, but still takes moves (``plan_repack``'s
``pinned``).

A move of one replica of group ``g`` = (config, device A) to device B:

1. *make*: the (config, device B) group is raised by one (``PUT .../configurations``, created if
   absent). While it starts, ``hide_moves`` shows the function to ``plan_tick`` without it (the
   autoscaler decides from the replicas it had) and keeps it on device B as a held replica, so
   nothing else is placed into its room.
2. *break*, on a later tick, once the provider reports every replica of the (config, B) group
   ready: (config, A) is lowered by one. The provider's groups are per device, so the replica
   that stops is one on device A (the node agent's replica supervisor stops a group's extra
   replicas, starting ones first, after draining them); requests go on to the ready replicas,
   the new one among them.

A move is abandoned (the (config, B) group lowered back, by the autoscaler's own action or by
one made here) when the target is not ready within ``ready_timeout_s``, when ``plan_tick`` changes
the function meanwhile (its action, computed without the held replica, is applied instead), or
forgotten when the groups were changed by someone else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fast_profiler.table import ProfileTable
from fast_scheduler.autoscale import AutoscaleSettings
from fast_scheduler.choices import ShareConfig
from fast_scheduler.control import (
    Action,
    DeviceView,
    FunctionMemory,
    FunctionView,
    GroupSpec,
    TickResult,
    config_id,
    plan_tick,
)
from fast_scheduler.placement import STANDBY_RETRY_S, Rejection, Snapshot, place, plan_repack


@dataclass(frozen=True)
class RepackSettings:
    every_ticks: int = 6
    """Plan a re-pack every this many ticks (the simulated policy's cadence); 0: never."""
    ready_timeout_s: float = 120.0
    """A move whose new replica is not ready after this long is abandoned."""


REPACK_TUNED: tuple[tuple[float, int], ...] = ((1.0, 1), (5.0, 6))
"""(replica start-to-ready s, re-pack every this many ticks) tuned on the cluster bench
(docs/scheduler.md). A move holds its old device until its new copy has started
(make-before-break): with 5 s starts a re-pack every tick costs more device time than it frees;
with 1 s starts it frees 1-10 % of the GPUs (the Azure-like trace most)."""


def every_ticks_for_start(start_s: float) -> int:
    """The re-pack cadence for replicas that start in ``start_s`` (``REPACK_TUNED``, linear
    between its points and rounded, clamped outside them)."""
    (s0, n0), (s1, n1) = REPACK_TUNED[0], REPACK_TUNED[-1]
    w = min(1.0, max(0.0, (start_s - s0) / (s1 - s0)))
    return max(1, round(n0 + (n1 - n0) * w))


@dataclass(frozen=True)
class LiveMove:
    """One replica of ``from_group`` (on ``from_device``) being moved into ``to_group`` (on
    ``to_device``)."""

    function: str
    """``namespace/name``."""
    name: str
    namespace: str
    config: ShareConfig
    from_group: str
    from_device: str
    to_group: str
    to_device: str
    started_s: float
    to_count: int
    """Desired replicas of ``to_group`` once raised (all moves into it counted)."""
    from_count: int
    """Desired replicas of ``from_group`` while the move is in flight."""
    from_label: str = ""
    to_label: str = ""
    """``d<index>`` of the devices, as in config ids."""

    def describe(self) -> str:
        return f"1 replica of {self.name} from {self.from_label} to {self.to_label}"


@dataclass(frozen=True)
class MoveEvent:
    move: LiveMove
    state: str
    """``moving`` (target raised), ``done`` (source lowered), ``abandoned``."""
    message: str


@dataclass
class RepackState:
    """What the loop keeps between ticks for re-packing."""

    ticks: int = 0
    moves: list[LiveMove] = field(default_factory=list)


@dataclass(frozen=True)
class RepackTick:
    result: TickResult
    """``plan_tick``'s result with the moves' actions merged in (one action per function)."""
    events: tuple[MoveEvent, ...]


def hide_moves(
    functions: Sequence[FunctionView], moves: Sequence[LiveMove]
) -> tuple[list[FunctionView], list[FunctionView]]:
    """The functions as they were before the in-flight ``moves`` raised their targets (what the
    autoscaler decides from), and the raised replicas as held views (their place on the devices)."""
    by_fn: dict[str, list[LiveMove]] = {}
    for m in moves:
        by_fn.setdefault(m.function, []).append(m)
    views, held = [], []
    for f in functions:
        mine = by_fn.get(f"{f.namespace}/{f.name}")
        if not mine:
            views.append(f)
            continue
        groups = dict(f.groups)
        running = list(f.running)
        hold: dict[str, tuple[ShareConfig, int, str]] = {}
        for m in mine:
            g = groups.get(m.to_group)
            if g is None or g[1] <= 0:
                continue
            cfg, n, dev = g
            if n > 1:
                groups[m.to_group] = (cfg, n - 1, dev)
            else:
                del groups[m.to_group]
            hc = hold.get(m.to_group)
            hold[m.to_group] = (cfg, (hc[1] if hc else 0) + 1, m.to_device)
            # One replica of the target group leaves the view: a starting one first.
            ids = [i for i, r in enumerate(running) if r.config_id == m.to_group]
            if ids:
                running.pop(min(ids, key=lambda i: running[i].ready))
        views.append(replace(f, groups=groups, running=tuple(running)))
        held.append(FunctionView(
            f"{f.name}~moving", f.namespace, None, 0, 0, 0.0, f.base_config, 0, hold,
            model=f.model or f.name, mem_bytes=f.mem_bytes, weight_bytes=f.weight_bytes))
    return views, held


def group_specs(groups: Mapping[str, tuple[ShareConfig, int, str]],
                devices: Mapping[str, DeviceView]) -> tuple[GroupSpec, ...]:
    out = []
    for gid, (cfg, n, dev_id) in sorted(groups.items()):
        if n <= 0:
            continue
        dv = devices.get(dev_id)
        out.append(GroupSpec(gid, cfg, n, dev_id, dv.node if dv else "", dv.gpu_uuid if dv else ""))
    return tuple(out)


def settled(f: FunctionView) -> bool:
    """Every group (and the base) at its desired count, all ready, nothing starting or draining."""
    have = Counter(r.config_id for r in f.running)
    want = Counter({gid: n for gid, (_c, n, _d) in f.groups.items() if n > 0})
    if f.base_replicas:
        want[""] = f.base_replicas
    return +have == +want and all(r.ready for r in f.running)


def plan_moves(
    now_s: float,
    snapshot: Snapshot,
    functions: Sequence[FunctionView],
    devices: Sequence[DeviceView],
    movable: set[str],
) -> list[LiveMove]:
    """Moves of ``plan_repack(snapshot)`` that free whole devices holding only replicas of the
    ``movable`` functions (``namespace/name``) in their scheduler groups; each evacuation is
    checked again against the devices as they will be while both replicas run."""
    index = {d.device_id: i for i, d in enumerate(devices)}
    by_name = {f.name: f for f in functions if f"{f.namespace}/{f.name}" in movable}
    pinned = {d.device_id for d in snapshot.devices
              if any(not _movable(r.replica_id, by_name) for r in d.replicas)}
    moves = plan_repack(snapshot, pinned=frozenset(pinned)).moves
    evacuations: dict[str, list[tuple[str, str]]] = {}
    for mv in moves:
        evacuations.setdefault(mv.from_device, []).append((mv.replica_id, mv.to_device))
    start = snapshot.by_id()
    check = snapshot
    sources: set[str] = set()
    targets: set[str] = set()
    out: list[LiveMove] = []
    raised: Counter[tuple[str, str]] = Counter()
    for src, mvs in evacuations.items():
        originals = {r.replica_id: r for r in start[src].replicas}
        dsts = {dst for _rid, dst in mvs}
        if (src in targets or dsts & sources or len(mvs) != len(originals)
                or any(rid not in originals for rid, _ in mvs)):
            continue
        if not all(_movable(rid, by_name) for rid, _ in mvs):
            continue
        parts = [rid.split("/") for rid, _ in mvs]
        trial, ok = check, True
        for rid, dst in mvs:
            p = place(replace(originals[rid], replica_id=f"{rid}@{dst}"), Snapshot((trial.by_id()[dst],)))
            if isinstance(p, Rejection):
                ok = False
                break
            trial = trial.with_device(p.device)
        if not ok:
            continue
        check = trial
        sources.add(src)
        targets |= dsts
        for (_rid, dst), (name, gid, _i) in zip(mvs, parts, strict=True):
            f = by_name[name]
            cfg, n, _dev = f.groups[gid]
            to_gid = config_id(cfg, index[dst])
            raised[(f.name, to_gid)] += 1
            out.append(LiveMove(f"{f.namespace}/{f.name}", f.name, f.namespace, cfg, gid, src, to_gid, dst,
                                now_s, 0, n, f"d{index[src]}", f"d{index[dst]}"))
    # The targets' counts once raised (a target group may exist already, or take several moves).
    by_key = {f.name: f for f in functions}
    return [replace(m, to_count=_count(by_key[m.name], m.to_group) + raised[(m.name, m.to_group)])
            for m in out]


def _movable(replica_id: str, by_name: Mapping[str, FunctionView]) -> bool:
    """A replica of a scheduler group (``name/group/i`` in ``control.snapshot_of``) of a movable
    function: not a base replica (``name/base/i``), nor one this tick places (``name/new/...``)."""
    p = replica_id.split("/")
    return len(p) == 3 and p[0] in by_name and p[1] not in ("base", "new") and p[1] in by_name[p[0]].groups


def _count(f: FunctionView, gid: str) -> int:
    g = f.groups.get(gid)
    return g[1] if g else 0


def _target_ready(f: FunctionView, m: LiveMove) -> bool:
    return sum(1 for r in f.running if r.config_id == m.to_group and r.ready) >= m.to_count


def plan_tick_repacking(
    now_s: float,
    functions: Sequence[FunctionView],
    devices: Sequence[DeviceView],
    tables: Mapping[str, ProfileTable | None],
    memory: dict[str, FunctionMemory],
    settings: AutoscaleSettings,
    state: RepackState,
    repack: RepackSettings,
    fast: bool = False,
    standby_retry_s: float = STANDBY_RETRY_S,
) -> RepackTick:
    """``plan_tick`` with the re-pack around it: in-flight moves hidden from the autoscaler and
    advanced (completed once ready, abandoned on timeout or when the function changes), new ones
    planned every ``repack.every_ticks`` ticks when none is in flight. ``state`` is updated in place."""
    events: list[MoveEvent] = []

    def abandon(ms: Sequence[LiveMove], why: str) -> None:
        events.extend(MoveEvent(m, "abandoned", f"re-pack: abandoned moving {m.describe()}: {why}")
                      for m in ms)

    # Moves whose groups someone else changed are forgotten before the autoscaler looks.
    raw = {f"{f.namespace}/{f.name}": f for f in functions}
    outside = {m.function for m in state.moves if m.function in raw and (
        _count(raw[m.function], m.to_group) != m.to_count
        or _count(raw[m.function], m.from_group) != m.from_count)}
    abandon([m for m in state.moves if m.function in outside],
            "its groups were changed outside the scheduler")
    state.moves = [m for m in state.moves if m.function not in outside]
    views, held = hide_moves(functions, state.moves)
    result = plan_tick(now_s, views, devices, tables, memory, settings, fast, standby_retry_s, held)
    devs = {d.device_id: d for d in devices}
    hidden = {f"{f.namespace}/{f.name}": f for f in views}
    actions = {f"{a.namespace}/{a.name}": a for a in result.actions}
    by_fn: dict[str, list[LiveMove]] = {}
    for m in state.moves:
        by_fn.setdefault(m.function, []).append(m)
    remaining: list[LiveMove] = []
    done: list[LiveMove] = []

    for key, ms in by_fn.items():
        f = raw.get(key)
        if f is None:
            abandon(ms, "the function is gone")
            continue
        if key in actions:  # the autoscaler changed it: its groups (without the held replicas) go
            a = actions[key]
            if a.groups is None:
                actions[key] = replace(a, groups=group_specs(hidden[key].groups, devs))
            abandon(ms, "the autoscaler changed the function meanwhile")
            continue
        if fast:
            remaining.extend(ms)
            continue
        groups = dict(f.groups)
        waiting: list[LiveMove] = []
        for m in ms:
            if _target_ready(f, m):
                cfg, n, dev = groups[m.from_group]
                groups[m.from_group] = (cfg, n - 1, dev)
                done.append(m)
            elif now_s - m.started_s > repack.ready_timeout_s:
                cfg, n, dev = groups[m.to_group]
                groups[m.to_group] = (cfg, n - 1, dev)
                abandon([m], f"not ready after {repack.ready_timeout_s:g} s")
            else:
                waiting.append(m)
        if len(waiting) < len(ms):
            actions[key] = Action(f.name, f.namespace, group_specs(groups, devs))
            # The counts the moves still in flight expect from now on.
            waiting = [replace(m, to_count=groups[m.to_group][1], from_count=groups[m.from_group][1])
                       for m in waiting]
        remaining.extend(waiting)
    for k, m in enumerate(done):  # the last move off a device empties it
        empty = not any(mm.from_device == m.from_device for mm in (*remaining, *done[k + 1:]))
        tail = f" ({m.from_label} then empty)" if empty else ""
        events.append(MoveEvent(m, "done", f"re-pack: moved {m.describe()}: ready there, the one on "
                                f"{m.from_label} stopped{tail}"))
    state.moves = remaining
    if not fast:
        state.ticks += 1
        every = repack.every_ticks
        if every > 0 and state.ticks % every == 0 and not state.moves and result.snapshot is not None:
            movable = {key for key, f in raw.items()
                       if key in result.decisions and key not in actions and settled(f)}
            new = plan_moves(now_s, result.snapshot, functions, devices, movable) if movable else []
            for m in new:
                events.append(MoveEvent(m, "moving", f"re-pack: moving {m.describe()} "
                                        f"(device {m.from_label} then empty)"))
            for key in dict.fromkeys(m.function for m in new):
                f = raw[key]
                groups = dict(f.groups)
                for m in new:
                    if m.function == key:
                        groups[m.to_group] = (m.config, m.to_count, m.to_device)
                actions[key] = Action(f.name, f.namespace, group_specs(groups, devs))
            state.moves = new
    return RepackTick(replace(result, actions=tuple(actions.values())), tuple(events))
