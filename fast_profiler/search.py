"""Finding one configuration's highest request rate with p99 under the SLO. Pure.

Two decisions, both pure functions over numbers the runner collects (no clock, no I/O):

- ``step_verdict``: the early-stopping rule of one rate step (an open-loop Poisson load held at one
  rate). A step fails as soon as clearly more requests have broken the SLO (finished late, still
  waiting past it, or errored) than the step's whole 1 % budget allows (budget + 3 binomial
  deviations): an overloaded rate is recognised in a fraction of a second, because its queue makes
  every new request late. It passes once it has run
  ``min_duration_s`` and seen ``min_requests`` with at most 1 % late, or at ``max_duration_s``
  (light rates on slow functions) if what it saw is within the budget. A step whose rate needs more
  device time than the quota allows (rate x charged time per request > quota; the arbiter charges
  the time the token was held, which at light load is well above the busy time: MobileNet 25 ms
  held for 15 ms busy) fails whatever its latency: a sliding-window cap lets a replica burst on its
  unused window for a while, so a short step would otherwise pass a rate it cannot sustain, and
  a step that exhausts the window leaves it exhausted for the steps after it.
- ``next_rate``: a bisection on the rate (geometric, because rates span orders of magnitude) between
  the highest passing and the lowest failing rate, started just under the capacity estimate, stopped
  when the bracket is within ``rel_tol`` (the point's estimate is tight enough) or after
  ``max_steps``. The answer is the highest passing rate: it errs on the safe side by at most the
  tolerance. Two guards against a noisy machine (held-out error 22-30 % under load before them):

  * the bracket is not capped by the capacity estimate: a rate that passes at the estimate's
    ceiling (``ceiling_frac`` x capacity) is followed by ``expand_frac`` x larger ones (up to
    ``max_expand_frac`` x capacity) until one fails, so a probe taken in a busy moment no longer
    caps the answer at 1.05 x its own low estimate;
  * a rate is decided by the majority of its steps (the median verdict); with ``confirm_passes``
    = 2 the answer must pass twice and a split vote is broken by one more step at that rate. Off by
    default (1): on this shared machine the load drifted within a profile, the repeated steps
    followed the drift, and with a fixed step budget a search could end with no confirmed rate
    (``result_rate`` then falls back to the highest rate that passed below every unanimous failure).

- ``disturbed`` / ``counted_history``: interference from other load. On a shared node a burst of
  someone else's work stretches every execution (the sidecar's busy time per request rises) and
  fails a step that the function alone would pass; such a failure does not count (at most
  ``max_reruns`` per configuration), judged against the quietest step of the configuration, the
  later ones included: a failure in a busy minute before the quiet steps is found out at the end.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from fastgshare.stats import percentile


class Verdict(StrEnum):
    CONTINUE = "continue"
    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class SearchSettings:
    """How hard to look for one configuration's rate."""

    slo_quantile: float = 0.99
    """The latency quantile the SLO bounds (p99)."""
    min_duration_s: float = 1.5
    """A step passes no earlier than this (covers the platform's queueing transients)."""
    min_requests: int = 150
    """A step passes no earlier than this many completed requests (p99 needs a tail to look at)."""
    max_duration_s: float = 6.0
    """A step ends here whatever its count: slow rates decide on what they saw."""
    rel_tol: float = 0.05
    """Stop when the lowest failing rate is within this fraction of the highest passing rate."""
    max_steps: int = 9
    """Rate steps per configuration at most (counted ones: left-out disturbed failures are extra)."""
    start_frac: float = 0.85
    """The first rate tried, as a fraction of the capacity estimate."""
    ceiling_frac: float = 1.05
    """Rates above capacity x this are not tried (treated as failing)."""
    min_rate_frac: float = 0.05
    """Below capacity x this the configuration is declared unable to meet the SLO (throughput 0)."""
    quota_tol: float = 0.0
    """A step fails when rate x charged time per request exceeds the quota by more than this fraction."""
    expand_frac: float = 1.25
    """Past the ceiling with nothing failed yet, each next rate is the highest pass x this."""
    max_expand_frac: float = 3.0
    """... but never above capacity x this (a function whose SLO no load breaks)."""
    confirm_passes: int = 2
    """Passing steps the answer needs (1: the first pass decides, as a plain bisection). 2: the
    answer is run again, a split vote gets a third step (near the knee of a p99 a lone pass is as
    weak as a lone failure: MobileNet at one core passed 48 rps once and failed 42.6 twice in the
    same minute). The runner uses 1 at partial quotas, whose answers the quota check bounds."""
    disturbed_frac: float = 1.2
    """A failing step whose device time per request is above the configuration's quietest step's
    at a similar or higher rate x this was disturbed (something else took the cores): its vote does
    not count, also when the quieter step comes later (``counted_history``). MobileNet on one core
    of this machine: 13-16 ms per request when quiet (more at higher rates), 16-17 ms at 38 rps while
    another job took 80 % of a core, 25-31 in its bursts."""
    disturbed_rate_frac: float = 0.9
    """... the quiet reference of a step at rate r: the steps at rates >= r x this."""
    max_reruns: int = 3
    """Disturbed failures discounted per configuration at most (a node that stays busy is measured
    busy)."""
    confirm_fails: int = 2
    """2: a lone failure of the first step, or of the rate just above the highest pass, is run again
    (a split vote then gets a third step). Other load only ever makes a step fail, so one failure
    is weak evidence on a shared node, and these two decide the most. 1: every failure counts."""
    down_frac: float = 0.7
    """Before any pass, the next rate is the lowest failure x this (the capacity estimate is a
    saturation throughput: the SLO-bound rate is usually not far below it)."""
    partial_rel_tol: float = 0.08
    """``rel_tol`` at a partial quota (``for_quota``): its rates are low (MobileNet at quota 0.2:
    5-7 rps), each step runs up to ``partial_max_duration_s`` for want of requests, and a 5 % bracket
    there is finer than the rate's own spread from run to run."""
    partial_max_duration_s: float = 5.0
    """``max_duration_s`` at a partial quota: one arbiter window (5 s) of a light rate."""
    interpolate: bool = True
    """The answer is read between the highest passing and the lowest failing rate where the steps'
    severity (``step_severity``: p99 over the SLO, or charged time over the quota) crosses 1,
    instead of the highest pass, which sits anywhere in the bracket (up to ``rel_tol`` under)."""

    def for_quota(self, quota_frac: float, modelled: bool = False) -> SearchSettings:
        """The settings one configuration is searched with: at a partial quota the answer is bounded
        by the cap, which the quota check decides on charged time rather than a latency tail, so one
        pass is as good as two there, and the bracket and the light steps are coarser. At full quota
        with the queue model (``modelled``: batch 1) the model answers from the steps' requests, and
        the steps only need to be near the knee: one vote decides each rate (the simulated search
        answers as well with half the load, ``bench.profiler_estimator``)."""
        if quota_frac >= 1.0:
            return replace(self, confirm_passes=1, confirm_fails=1) if modelled else self
        return replace(self, confirm_passes=1, rel_tol=max(self.rel_tol, self.partial_rel_tol),
                       max_duration_s=min(self.max_duration_s, self.partial_max_duration_s))


@dataclass(frozen=True)
class StepObservation:
    """What the runner saw of one step so far."""

    rate_rps: float
    elapsed_s: float
    latencies_ms: Sequence[float]
    """Completed requests of this step (sent at its intended Poisson time, latency from then)."""
    waiting_ages_ms: Sequence[float] = ()
    """Requests of this step still outstanding, each by how long it has waited."""
    errors: int = 0
    """Requests of this step answered with an error status or a transport error."""
    busy_ms_per_request: float | None = None
    """Device time per request measured by the sidecar during this step (None: not yet known)."""
    quota_frac: float = 1.0
    held_ms_per_request: float | None = None
    """Token time per request during this step (what the arbiter charges against the quota: the
    time the token was held, executions and the gaps it was kept for the next one; None: unknown)."""

    @property
    def charged_ms_per_request(self) -> float | None:
        """What the arbiter charges per request: the held time, or the busy time if larger."""
        known = [x for x in (self.busy_ms_per_request, self.held_ms_per_request) if x is not None]
        return max(known) if known else None


QUICK_SEARCH = SearchSettings(min_duration_s=1.0, min_requests=80, max_duration_s=3.0, rel_tol=0.08,
                              max_steps=5, confirm_fails=1)
"""``--quick``: shorter steps and a looser bracket (a coarse table in about half the time); every
failure counts (5 steps leave no room to rerun one)."""


def step_verdict(obs: StepObservation, slo_ms: float, settings: SearchSettings) -> Verdict:
    """Early-stopping decision for one rate step (see the module docstring)."""
    budget_frac = 1.0 - settings.slo_quantile
    late = sum(1 for x in obs.latencies_ms if x > slo_ms)
    late += sum(1 for x in obs.waiting_ages_ms if x > slo_ms)
    late += obs.errors
    planned = max(settings.min_requests, obs.rate_rps * settings.min_duration_s)
    # Stop early only on strong evidence: more late requests than the step's whole budget plus three
    # binomial deviations (a shared machine's scheduling hiccups make the odd late request anyway).
    expected = budget_frac * planned
    if late > expected + 3 * math.sqrt(expected) + 1:
        return Verdict.FAIL
    charged = obs.charged_ms_per_request
    if (charged is not None and obs.quota_frac < 1.0
            and obs.rate_rps * charged / 1000.0 > obs.quota_frac * (1 + settings.quota_tol)):
        return Verdict.FAIL
    done = len(obs.latencies_ms) + obs.errors
    enough = obs.elapsed_s >= settings.min_duration_s and done >= settings.min_requests
    if enough or obs.elapsed_s >= settings.max_duration_s:
        total = done + len(obs.waiting_ages_ms)
        return Verdict.PASS if late <= budget_frac * total + 1e-9 else Verdict.FAIL
    return Verdict.CONTINUE


def step_severity(obs: StepObservation, slo_ms: float, settings: SearchSettings) -> float:
    """How close a step came to failing: the larger of its p99 (completed requests, and those still
    waiting at their age so far) over the SLO and, at a partial quota, its charged device time over
    the quota; a step that ran its course passes at or below 1."""
    sev = percentile(list(obs.latencies_ms) + list(obs.waiting_ages_ms), 100 * settings.slo_quantile,
                     empty=0.0) / slo_ms
    charged = obs.charged_ms_per_request
    if charged is not None and obs.quota_frac < 1.0:
        sev = max(sev, obs.rate_rps * charged / 1000.0 / obs.quota_frac)
    return sev


def answer_rate(state: SearchState, severity: Mapping[float, Sequence[float]],
                settings: SearchSettings) -> float:
    """The configuration's answer: ``result_rate``, or with ``interpolate`` the rate in the final
    bracket where the severity (median of each rate's steps) crosses 1, linear in the rate (on a
    5-8 % bracket the curve's bend is well under the step's own noise). Kept at the highest pass
    when the two ends do not straddle 1 (a majority vote against its own severity)."""
    lo = result_rate(state)
    hi = state.fail_rps
    if not settings.interpolate or lo <= 0 or hi is None or hi <= lo:
        return lo
    s_lo, s_hi = severity.get(lo), severity.get(hi)
    if not s_lo or not s_hi:
        return lo
    a, b = statistics.median(s_lo), statistics.median(s_hi)
    if not a < 1.0 < b:
        return lo
    return lo + (hi - lo) * (1.0 - a) / (b - a)


@dataclass(frozen=True)
class SearchState:
    """The bracket so far: the highest passing and the lowest failing rate."""

    capacity_rps: float
    pass_rps: float = 0.0
    fail_rps: float | None = None
    steps: int = 0
    history: tuple[tuple[float, bool], ...] = field(default_factory=tuple)


def start_search(capacity_rps: float) -> SearchState:
    if not capacity_rps > 0:
        raise ValueError(f"capacity_rps must be > 0, got {capacity_rps}")
    return SearchState(capacity_rps)


def votes(history: Sequence[tuple[float, bool]], rate_rps: float) -> tuple[int, int]:
    """(passes, fails) of the steps run at ``rate_rps``."""
    passes = sum(1 for r, ok in history if r == rate_rps and ok)
    return passes, sum(1 for r, ok in history if r == rate_rps and not ok)


def _bracket(history: Sequence[tuple[float, bool]]) -> tuple[float, float | None, float | None]:
    """(highest passing rate, lowest failing rate, a rate with a split vote) by majority per rate."""
    pass_rps, fail_rps, tie = 0.0, None, None
    for r in sorted({r for r, _ in history}):
        p, f = votes(history, r)
        if p > f:
            pass_rps = max(pass_rps, r)
        elif f > p:
            fail_rps = r if fail_rps is None else min(fail_rps, r)
        else:
            tie = r
    return pass_rps, fail_rps, tie


def record_step(state: SearchState, rate_rps: float, passed: bool) -> SearchState:
    history = state.history + ((rate_rps, passed),)
    pass_rps, fail_rps, _ = _bracket(history)
    return replace(state, pass_rps=pass_rps, fail_rps=fail_rps, steps=state.steps + 1, history=history)


def next_rate(state: SearchState, settings: SearchSettings) -> float | None:
    """The next rate to try, or None when the estimate is tight enough (or the budget is spent)."""
    if state.steps >= settings.max_steps:
        return None
    if state.steps == 0:
        return state.capacity_rps * settings.start_frac
    _, _, tie = _bracket(state.history)
    if tie is not None:
        return tie  # one more step breaks the split vote
    if settings.confirm_fails >= 2:
        # A lone failure where it decides most is run again: the first step's (it sets how far the
        # search descends) and the bracket's top just above a pass (it sets the answer).
        lone = [r for r in {r for r, _ in state.history} if votes(state.history, r) == (0, 1)]
        first = state.history[0][0]
        again = [r for r in lone if r == first or (state.pass_rps > 0 and r == state.fail_rps)]
        if again:
            return min(again)
    lo = state.pass_rps
    if state.fail_rps is None:
        hi = state.capacity_rps * settings.ceiling_frac
        if lo > 0 and hi / lo <= 1 + settings.rel_tol:  # passes at the estimate's ceiling: look above
            top = state.capacity_rps * settings.max_expand_frac
            if lo < top * (1 - 1e-9):
                return min(top, lo * settings.expand_frac)
            return None if votes(state.history, lo)[0] >= settings.confirm_passes else lo
    else:
        hi = state.fail_rps
    if lo <= 0:
        nxt = hi * settings.down_frac
        return nxt if nxt >= state.capacity_rps * settings.min_rate_frac else None
    if hi / lo <= 1 + settings.rel_tol:
        if votes(state.history, lo)[0] >= settings.confirm_passes:
            return None
        return lo  # confirm the answer
    return math.sqrt(lo * hi)


def counted_history(steps: Sequence[tuple[float, bool, float | None]],
                    settings: SearchSettings) -> tuple[tuple[tuple[float, bool], ...], tuple[int, ...]]:
    """(the votes that count, the indexes of the steps left out), from every step as (rate, passed,
    busy ms per request). A failure was disturbed when its busy time is above ``disturbed_frac`` x
    the quietest step of the configuration at a rate as high or higher (within
    ``disturbed_rate_frac``: the function's own load stretches executions a little as the rate
    rises, on a CPU whose cores the platform shares), the later steps included, so a failure in a
    busy minute is found out even when the quiet steps come after it. At most ``max_reruns``
    failures are left out, the most stretched first."""
    def ratio(i: int) -> float:
        r, _, b = steps[i]
        ref = [bj for rj, _, bj in steps if bj and rj >= r * settings.disturbed_rate_frac]
        return b / min(ref) if b and ref else 1.0

    bad = [i for i, (_, ok, _) in enumerate(steps) if not ok and ratio(i) > settings.disturbed_frac]
    bad = sorted(sorted(bad, key=lambda i: -ratio(i))[:max(0, settings.max_reruns)])
    return tuple((r, ok) for i, (r, ok, _) in enumerate(steps) if i not in bad), tuple(bad)


def replay(capacity_rps: float, history: Sequence[tuple[float, bool]], steps_run: int) -> SearchState:
    """The search state after ``history`` (the counted votes), with ``steps_run`` steps spent."""
    state = start_search(capacity_rps)
    for r, ok in history:
        state = record_step(state, r, ok)
    return replace(state, steps=steps_run)


def disturbed(step_busy_ms: float | None, quiet_busy_ms: float | None, settings: SearchSettings) -> bool:
    """Whether a failing step ran while something else took the cores: its device time per request
    is more than ``disturbed_frac`` x the quietest seen for this configuration."""
    if not step_busy_ms or not quiet_busy_ms or quiet_busy_ms <= 0:
        return False
    return step_busy_ms > quiet_busy_ms * settings.disturbed_frac


def result_rate(state: SearchState) -> float:
    """The configuration's answer: the highest rate the majority of its steps passed; when none did
    (repeated steps split), the highest rate that passed at all below every rate that only failed;
    0 when nothing passed."""
    if state.pass_rps > 0:
        return state.pass_rps
    only_failed = [r for r, _ in state.history if votes(state.history, r)[0] == 0]
    below = min(only_failed, default=float("inf"))
    return max((r for r, ok in state.history if ok and r < below), default=0.0)
