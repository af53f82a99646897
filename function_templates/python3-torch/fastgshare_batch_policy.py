"""SLO-aware batching: when the worker runs its next batch, and how many queued requests it takes.

Pure: time is an input (seconds on any monotonic clock), state is a frozen value returned anew by
each step, no threads, no torch, no environment. Stdlib only: it ships inside function images
beside the worker runtime (``index.py``), which owns the queue and the clock.

The policy, in the spirit of Clipper's adaptive batching and Triton's dynamic batcher:

- **Take what is queued.** A batch is formed from the requests waiting when the device frees up;
  while it runs, the next one queues (the sidecar keeps up to 2 x B_max requests in the worker), so
  under load batches grow by themselves and no one waits on purpose.
- **Size it to the oldest request's deadline.** Its deadline is its arrival plus the worker's
  budget (the SLO minus an allowance for the path outside the worker). The batch is the largest
  one, up to the cap, whose estimated execution still ends before that deadline; when none does
  (the oldest is already late) the cap's worth is taken, the most efficient way to catch up.
- **Wait for more only while the slack allows and more is coming.** With fewer than the cap queued,
  the worker waits for the next arrival only if: the oldest request could still afford the larger
  batch (deadline minus ``wait_margin`` x its estimated execution; at most ``max_wait_frac`` of the
  budget in all); the device would not keep up at the queued size (its per-request cost exec(n)/n
  is at least ``min_load_frac`` of the time between arrivals; otherwise waiting buys no
  throughput, only latency); the next arrival is expected within the slack (observed arrival
  rate); and the worker's observed p99 is within the budget. A wait ends ``wait_gaps`` expected
  gaps after the last arrival: when nothing came by then, the burst is over. A lone request at low
  load therefore never waits: no one waits for a batch that will not come.
- **Estimates correct themselves.** Execution time per batch size starts from the profile table
  (when the platform has one) and is replaced by what the worker observes (an EWMA per size);
  sizes never seen are bounded from the nearest seen ones (sub-linear batching: exec(b) <=
  exec(k) * b / k for k < b, and exec(b) <= exec(k) for k > b).
- **The cap follows Clipper's AIMD.** Worst case, a request waits one running batch and then its
  own, so a batch's execution should take at most half the budget: when a size's smoothed
  execution time is over it and a smaller batch's is not, the cap is cut multiplicatively (to
  ``backoff`` x that size; when the smaller one is slow too, the device is contended and smaller
  batches would only lower its throughput, so the cap stays); a batch
  at the cap whose size fits raises it by ``step``, up to B_max. The observed p99 of the worker's
  latency (queue + execution) over the last ``p99_window`` requests switches voluntary waits off
  while it is over the budget.

Without an SLO (``slo_ms`` None) the policy is the fixed-size batcher the runtime always had: up to
``max_batch`` requests, the first waiting at most ``fixed_delay_ms`` for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

DEFAULT_MAX_BATCH = 16
"""B_max when the function declares an SLO but neither a batch size nor a profile gives one."""
DEFAULT_FIXED_DELAY_MS = 2.0
"""Fixed-size mode: how long the first request of a batch waits for more."""
DEFAULT_PATH_FRAC = 0.1
"""Share of the SLO left for the path outside the worker (client, provider, sidecar)."""
DEFAULT_MIN_PATH_MS = 2.0
"""The allowance for that path is at least this (a fast SLO still crosses two HTTP hops)."""


@dataclass(frozen=True)
class BatchSettings:
    """How one worker batches; read from its environment by the runtime, in one function."""

    max_batch: int = 1
    """B_max: the most requests one execution may take (1: no batching)."""
    slo_ms: float | None = None
    """The function's p99 latency objective (``fastgshare/slo_ms``); None: fixed-size batching."""
    path_ms: float | None = None
    """Allowance for the time outside the worker; None: ``DEFAULT_PATH_FRAC`` of the SLO, at least
    ``DEFAULT_MIN_PATH_MS``."""
    fixed_delay_ms: float = DEFAULT_FIXED_DELAY_MS
    """Fixed-size mode only: the first request's longest wait for the rest of its batch."""
    profile_ms: tuple[tuple[int, float], ...] = ()
    """Profiled execution time per batch size, ((size, ms), ...), from the profile table."""
    min_load_frac: float = 1.0
    """Load at the queued size (arrival rate x exec(n) / n) below which nobody waits."""
    wait_gaps: float = 1.0
    """A voluntary wait lasts at most this many expected inter-arrival gaps without an arrival."""
    max_wait_frac: float = 0.1
    """A voluntary wait lasts at most this share of the budget (estimates are means; tails are not)."""
    wait_margin: float = 1.5
    """A voluntary wait keeps this multiple of the larger batch's estimated execution in hand."""
    exec_alpha: float = 0.2
    """Weight of a new observation in the per-size execution-time EWMA."""
    gap_alpha: float = 0.1
    """Weight of a new inter-arrival gap in the arrival-gap EWMA."""
    backoff: float = 0.75
    """AIMD multiplicative decrease of the cap after a batch that overran half the budget."""
    step: int = 1
    """AIMD additive increase of the cap after a batch at the cap that fit."""
    p99_window: int = 256
    """Requests whose worker latency the observed p99 is taken over."""

    @property
    def adaptive(self) -> bool:
        return self.slo_ms is not None and self.max_batch > 1

    @property
    def budget_ms(self) -> float:
        """The worker's share of the SLO: queue plus execution."""
        if self.slo_ms is None:
            return math.inf
        path = self.path_ms if self.path_ms is not None else max(
            DEFAULT_MIN_PATH_MS, DEFAULT_PATH_FRAC * self.slo_ms)
        return max(self.slo_ms - path, 0.5 * self.slo_ms)


@dataclass(frozen=True)
class BatchState:
    """What the policy has learnt so far; each step returns a new one."""

    cap: int = 1
    """The AIMD cap on the batch size (<= B_max)."""
    exec_ms: tuple[tuple[int, float], ...] = ()
    """Observed execution time per batch size (EWMA), sorted by size."""
    gap_s: float | None = None
    """EWMA of the time between arrivals; None before two arrivals."""
    last_arrival_s: float | None = None
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)
    """The worker latencies (arrival to answer) of the last ``p99_window`` requests."""


@dataclass(frozen=True)
class Decision:
    """Take ``take`` requests now (> 0), or decide again at ``wait_until_s`` or on an arrival."""

    take: int
    wait_until_s: float | None = None
    why: str = ""


def initial_state(settings: BatchSettings) -> BatchState:
    return BatchState(cap=max(1, settings.max_batch))


def parse_profile(text: str) -> tuple[tuple[int, float], ...]:
    """``"1:8.5,4:14,8:25"`` -> ((1, 8.5), (4, 14.0), (8, 25.0)); bad entries are skipped."""
    out: dict[int, float] = {}
    for part in (text or "").split(","):
        size, sep, ms = part.partition(":")
        try:
            b, v = int(size), float(ms)
        except ValueError:
            continue
        if sep and b >= 1 and v > 0 and math.isfinite(v):
            out[b] = v
    return tuple(sorted(out.items()))


def max_batch_from_profile(profile_ms: Sequence[tuple[int, float]], budget_ms: float,
                           ceiling: int) -> int:
    """The largest profiled size (<= ``ceiling``) whose execution fits half the budget (a request
    may wait one running batch, then run in its own); 1 when none does."""
    fits = [b for b, ms in profile_ms if b <= ceiling and ms <= budget_ms / 2]
    return max(fits, default=1)


def estimate_exec_ms(size: int, observed: Sequence[tuple[int, float]],
                     profile: Sequence[tuple[int, float]]) -> float | None:
    """Execution time of a batch of ``size``: observed if seen, else bounded from the nearest
    observed sizes, else the profile (interpolated, extrapolated linearly), else None."""
    seen = dict(observed)
    if size in seen:
        return seen[size]
    below = [(b, ms) for b, ms in observed if b < size]
    above = [(b, ms) for b, ms in observed if b > size]
    bounds = []
    if below:
        b, ms = below[-1]
        bounds.append(ms * size / b)
    if above:
        bounds.append(above[0][1])
    if bounds:
        return min(bounds)
    return _interpolate(size, profile)


def _interpolate(size: int, table: Sequence[tuple[int, float]]) -> float | None:
    if not table:
        return None
    if size <= table[0][0]:
        b, ms = table[0]
        return ms * size / b if size < b else ms
    for (b0, m0), (b1, m1) in zip(table, table[1:], strict=False):
        if b0 <= size <= b1:
            return m0 + (m1 - m0) * (size - b0) / (b1 - b0)
    if len(table) == 1:
        b, ms = table[0]
        return ms * size / b
    (b0, m0), (b1, m1) = table[-2], table[-1]
    return m1 + max(0.0, (m1 - m0) / (b1 - b0)) * (size - b1)


def observed_p99_ms(state: BatchState) -> float | None:
    lat = sorted(state.latencies_ms)
    if len(lat) < 20:  # too few to say anything about a tail
        return None
    return lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]


def on_arrival(state: BatchState, now_s: float, settings: BatchSettings) -> BatchState:
    """A request arrived at ``now_s``: update the arrival-gap estimate."""
    gap = state.gap_s
    if state.last_arrival_s is not None:
        new = max(0.0, now_s - state.last_arrival_s)
        gap = new if gap is None else (1 - settings.gap_alpha) * gap + settings.gap_alpha * new
    return replace(state, gap_s=gap, last_arrival_s=now_s)


def decide(now_s: float, queued: int, oldest_arrival_s: float, state: BatchState,
           settings: BatchSettings) -> Decision:
    """What to do with ``queued`` (> 0) waiting requests, the oldest having arrived at
    ``oldest_arrival_s``."""
    cap = max(1, min(settings.max_batch, state.cap))
    n = min(queued, cap)
    if not settings.adaptive:
        due = oldest_arrival_s + settings.fixed_delay_ms / 1000.0
        if n >= cap or now_s >= due:
            return Decision(n, why="fixed")
        return Decision(0, due, "fixed: filling")
    deadline_s = oldest_arrival_s + settings.budget_ms / 1000.0

    def ends_s(size: int) -> float | None:
        ms = estimate_exec_ms(size, state.exec_ms, settings.profile_ms)
        return None if ms is None else now_s + ms / 1000.0

    if n < cap:
        bigger_ms = estimate_exec_ms(n + 1, state.exec_ms, settings.profile_ms)
        bigger_ends_s = (None if bigger_ms is None
                         else now_s + settings.wait_margin * bigger_ms / 1000.0)
        wait_until = _wait_until(now_s, n, oldest_arrival_s, deadline_s, bigger_ends_s, state,
                                 settings)
        if wait_until is not None:
            return Decision(0, wait_until, "waiting for more within the slack")
    for size in range(n, 0, -1):  # the largest batch that still meets the oldest's deadline
        end = ends_s(size)
        if end is not None and end <= deadline_s:
            return Decision(size, why="fits the oldest's deadline")
    return Decision(n, why="late or unknown: the largest allowed")


def _wait_until(now_s: float, n: int, oldest_s: float, deadline_s: float,
                bigger_ends_s: float | None, state: BatchState,
                settings: BatchSettings) -> float | None:
    """When to stop waiting for one more request, or None to go now."""
    if settings.max_wait_frac * settings.budget_ms / 1000.0 <= now_s - oldest_s:
        return None
    if bigger_ends_s is None or state.gap_s is None or state.last_arrival_s is None:
        return None  # nothing known yet: run, and learn from it
    slack_s = deadline_s - bigger_ends_s  # how long the oldest can still wait for a batch of n+1
    if slack_s <= 0:
        return None
    gap_s = state.gap_s
    window_ends_s = state.last_arrival_s + settings.wait_gaps * gap_s
    if window_ends_s <= now_s:
        return None  # nothing came when the next was due: the burst is over
    now_ms = estimate_exec_ms(n, state.exec_ms, settings.profile_ms)
    if now_ms is None or gap_s <= 0:
        return None
    if now_ms / n / 1000.0 / gap_s < settings.min_load_frac:
        return None  # the device keeps up at this size: waiting buys nothing
    if gap_s > slack_s:
        return None  # the next request is not expected in time
    p99 = observed_p99_ms(state)
    if p99 is not None and p99 > settings.budget_ms:
        return None  # over budget already: waiting on purpose would only add to it
    return min(now_s + slack_s, window_ends_s,
               oldest_s + settings.max_wait_frac * settings.budget_ms / 1000.0)


def on_batch_done(state: BatchState, size: int, exec_ms: float,
                  latencies_ms: Sequence[float], settings: BatchSettings) -> BatchState:
    """A batch of ``size`` ran in ``exec_ms``; its requests' worker latencies were
    ``latencies_ms``. Updates the execution estimate, the p99 window and the AIMD cap."""
    seen = dict(state.exec_ms)
    # A size seen for the first time starts from what was estimated for it (the profile, or a
    # bound from the sizes seen), so one slow first batch is smoothed like any other.
    old = seen.get(size, estimate_exec_ms(size, state.exec_ms, settings.profile_ms))
    seen[size] = exec_ms if old is None else (1 - settings.exec_alpha) * old + settings.exec_alpha * exec_ms
    window = (state.latencies_ms + tuple(latencies_ms))[-settings.p99_window:]
    cap = state.cap
    smoothed_ms = seen[size]  # one slow batch on a shared machine must not cut the cap
    if settings.adaptive:
        half_ms = settings.budget_ms / 2
        smaller = max(1, math.floor(size * settings.backoff))
        smaller_ms = estimate_exec_ms(smaller, tuple(sorted(seen.items())), settings.profile_ms)
        # Cut only when a smaller batch would fit: when even it is too slow, the device is slow
        # (contention), and smaller batches would only lower its throughput further.
        if smoothed_ms > half_ms and size > 1 and (smaller_ms is None or smaller_ms <= half_ms):
            cap = max(1, min(cap, smaller))
        elif size >= cap and smoothed_ms <= settings.budget_ms / 2:
            cap = min(settings.max_batch, cap + settings.step)
    return replace(state, exec_ms=tuple(sorted(seen.items())), latencies_ms=window, cap=cap)


def summary(state: BatchState, settings: BatchSettings) -> Mapping[str, object]:
    """The policy's view, for logs and stats."""
    return {"mode": "slo" if settings.adaptive else ("fixed" if settings.max_batch > 1 else "off"),
            "max_batch": settings.max_batch, "cap": state.cap,
            "slo_ms": settings.slo_ms, "budget_ms": round(settings.budget_ms, 3)
            if settings.slo_ms is not None else None,
            "exec_ms": {b: round(ms, 3) for b, ms in state.exec_ms},
            "arrival_gap_ms": round(state.gap_s * 1000, 3) if state.gap_s is not None else None,
            "worker_p99_ms": observed_p99_ms(state)}
