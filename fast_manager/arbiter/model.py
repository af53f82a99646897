"""The token arbiter's whole decision arithmetic, as pure functions over frozen state.

This is the reference the Lua scripts in ``lua.py`` implement line for line; the property test
drives both with the same events and requires identical decisions and identical state. Nothing
here talks to Redis or reads a clock: ``now_us`` is always passed in. All quantities are integer
microseconds (``_us``) or integer percent, so Lua (doubles) and Python agree exactly.

Semantics (see docs/arbiter.md):

- A replica executes only while it holds a token (a lease until ``expires_us``); at most one token
  per replica. Spatial admission, checked per grant: on a GPU (a replica without a core set) the
  SM shares of all holders sum to <= ``capacity_pct``; on a CPU (a replica registered with its
  core set) the core sets of all holders are pairwise disjoint, so two replicas pinned to one
  core never execute at once whatever their nominal shares.
- Usage is a sliding window of ``window_us`` kept in buckets of ``bucket_us``; a release charges
  the time the token was HELD (grant to release, on the arbiter's clock: what kept the others off
  the device), or the measured busy time if that is larger, to the current bucket, so an overrun
  counts against the next window; an expired lease charges its whole token.
- The cap: a waiter is granted only if at least ``min(min_token, limit)`` of its limit is left in
  the window, and its token is cut to what is left, so the cap is passed by at most the last
  execution's overrun (a limit of the whole window is no cap at all). Eligible waiters are
  ordered: those under their request first, most behind (usage / request) first; then those past
  their request, least-used first; FIFO breaks ties. Grants go in that order; a waiter that does
  not fit blocks those behind it from what it waits for (a GPU waiter: the round stops; a CPU
  waiter: its cores are reserved for the rest of the round, so waiters on other cores still go),
  so a wide replica is never starved by narrow ones slipping past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from fastgshare.errors import ValidationError

US_PER_S = 1_000_000


@dataclass(frozen=True)
class ArbiterParams:
    """Constants of one device's arbiter (passed to every script, so tests may shrink them)."""

    window_us: int = 5_000_000
    """Sliding window over which request and limit are fractions (docs/arbiter.md: why 5 s)."""
    bucket_us: int = 50_000
    """Granularity of the sliding window; a charge leaves the window up to one bucket late."""
    min_token_us: int = 20_000
    """Shortest token (the original's lower bound)."""
    max_token_us: int = 100_000
    """Longest token (a waiting neighbour's worst wait), and the token of a replica whose burst
    length is not yet known."""
    lease_grace_us: int = 1_000_000
    """How long past its token a holder may run before its lease is presumed dead."""
    capacity_pct: int = 100
    """Sum of SM shares that may hold tokens at once."""

    def __post_init__(self) -> None:
        if self.bucket_us <= 0 or self.window_us % self.bucket_us:
            raise ValidationError("bucket_us", "> 0 and dividing window_us", self.bucket_us)
        if not 0 < self.min_token_us <= self.max_token_us:
            raise ValidationError("min_token_us", "0 < min <= max_token_us", self.min_token_us)

    @property
    def buckets(self) -> int:
        return self.window_us // self.bucket_us

    def as_args(self) -> list[int]:
        """The order in which the Lua scripts read these (ARGV[3..8])."""
        return [self.window_us, self.bucket_us, self.min_token_us, self.max_token_us,
                self.lease_grace_us, self.capacity_pct]


@dataclass(frozen=True)
class ReplicaSpec:
    """A replica's share in the arbiter's units."""

    sm_pct: int
    request_us: int
    """Guaranteed device time per window."""
    limit_us: int
    """Cap on device time per window."""
    cores: tuple[int, ...] = ()
    """CPU device: the cores the replica's worker is pinned to (sorted, unique); holders' core
    sets must be disjoint. Empty: a GPU replica, admitted by its SM share."""


def make_spec(sm_pct: int, quota_request_frac: float, quota_limit_frac: float,
              params: ArbiterParams, cores: tuple[int, ...] | list[int] = ()) -> ReplicaSpec:
    """Turn annotation-style fractions into budgets per window, refusing what is out of range."""
    if not 1 <= sm_pct <= params.capacity_pct:
        raise ValidationError("sm_pct", f"1..{params.capacity_pct}", sm_pct)
    if not 0 < quota_request_frac <= quota_limit_frac:
        raise ValidationError("quota_request_frac", "0 < request <= limit", quota_request_frac)
    if not quota_limit_frac <= 1:
        raise ValidationError("quota_limit_frac", "request <= limit <= 1", quota_limit_frac)
    request_us = max(1, round(quota_request_frac * params.window_us))
    limit_us = max(request_us, round(quota_limit_frac * params.window_us))
    if any(c < 0 for c in cores):
        raise ValidationError("cores", "core numbers >= 0", list(cores))
    return ReplicaSpec(int(sm_pct), request_us, limit_us, tuple(sorted(set(int(c) for c in cores))))


@dataclass(frozen=True)
class Holding:
    token_id: int
    granted_us: int
    token_us: int
    expires_us: int
    sm_pct: int
    cores: tuple[int, ...] = ()


@dataclass(frozen=True)
class Grant:
    """A decision: ``replica`` may execute for ``token_us``; its lease ends at ``expires_us``."""

    replica: str
    token_id: int
    token_us: int
    expires_us: int


@dataclass(frozen=True)
class Outcome:
    """What one script call decided."""

    now_us: int
    """The arbiter clock the call used (never behind an earlier call's)."""
    hint_us: int
    """When waiters should look again without a wake-up (a lease expiry or a cap easing), as a
    delay from ``now_us``; -1 when only a push can change anything."""
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True)
class ArbiterState:
    """One device's arbiter. Mappings are never mutated: every step returns a new state."""

    specs: dict[str, ReplicaSpec] = field(default_factory=dict)
    est_us: dict[str, int] = field(default_factory=dict)
    """Smoothed length of a burst (what a token's release is charged: held or busy time; EWMA,
    1/8 weight), from releases: the next token is this plus a quarter."""
    waiters: dict[str, int] = field(default_factory=dict)
    """Replica -> enqueue sequence number (FIFO tie-break)."""
    holders: dict[str, Holding] = field(default_factory=dict)
    usage: dict[str, dict[int, int]] = field(default_factory=dict)
    """Replica -> bucket index -> charged microseconds."""
    wake: dict[str, Grant] = field(default_factory=dict)
    """The grant last pushed to a replica's wake list (what a blocked waiter will pop)."""
    seq: int = 0
    clock_us: int = 0


# ---- the arithmetic shared by every event ----------------------------------------------------

def token_us(est_us: int, params: ArbiterParams) -> int:
    """Token length: the replica's burst estimate plus a quarter, clamped; unknown -> longest."""
    if est_us <= 0:
        return params.max_token_us
    return min(params.max_token_us, max(params.min_token_us, est_us + est_us // 4))


def lease_us(tok_us: int, est_us: int, params: ArbiterParams) -> int:
    """How long a holder is trusted: its token plus a grace that covers slow bursts."""
    return tok_us + max(params.lease_grace_us, 2 * est_us)


def ewma_us(est_us: int, busy_us: int) -> int:
    return busy_us if est_us <= 0 else (7 * est_us + busy_us) // 8


def window_usage(buckets: dict[int, int], now_us: int, params: ArbiterParams) -> int:
    low = now_us // params.bucket_us - params.buckets
    return sum(v for b, v in buckets.items() if b > low)


def cap_eases_at(buckets: dict[int, int], used_us: int, tok_us: int, limit_us: int,
                 now_us: int, params: ArbiterParams) -> int:
    """The first time at which ``usage + token <= limit`` as old buckets leave the window."""
    low = now_us // params.bucket_us - params.buckets
    for b in sorted(b for b in buckets if b > low):
        used_us -= buckets[b]
        if used_us + tok_us <= limit_us:
            return (b + params.buckets) * params.bucket_us
    return now_us  # unreachable while tok_us <= limit_us; harmless otherwise


def charged(buckets: dict[int, int], amount_us: int, now_us: int,
            params: ArbiterParams) -> dict[int, int]:
    """Buckets after charging ``amount_us`` that ended at ``now_us`` (nothing for <= 0), spread
    over the buckets of ``[now - amount, now]``, the time it was used; the part older than the
    window, and old buckets, dropped.

    Spread, not lumped into the release's bucket: a 100 ms token charged whole at its release
    leaves the window up to a token plus a bucket later than the device time it paid for, so a
    capped replica waited that much longer for its cap to ease (with every replica capped, the
    device idled: a simulation of the isolation cases with zero hand-over latency lost 5 % of a
    2 s window and up to 3.3 pp of a share that way; spread: 0.8 % and 1.1 pp)."""
    if amount_us <= 0:
        return buckets
    out = dict(buckets)
    cur = now_us // params.bucket_us
    low = cur - params.buckets
    end, start, b = now_us, now_us - amount_us, cur
    while end > start and b > low:
        lo = max(start, b * params.bucket_us)
        if end > lo:
            out[b] = out.get(b, 0) + end - lo
        end, b = lo, b - 1
    return {k: v for k, v in out.items() if k > low}


def _charge(usage: dict[str, dict[int, int]], replica: str, amount_us: int, now_us: int,
            params: ArbiterParams) -> None:
    if amount_us > 0:
        usage[replica] = charged(usage.get(replica, {}), amount_us, now_us, params)


def _advance(state: ArbiterState, now_us: int) -> int:
    return max(now_us, state.clock_us)


@dataclass
class _Work:
    """Mutable copies for one step; frozen again into an ArbiterState at the end."""

    specs: dict[str, ReplicaSpec]
    est_us: dict[str, int]
    waiters: dict[str, int]
    holders: dict[str, Holding]
    usage: dict[str, dict[int, int]]
    wake: dict[str, Grant]
    seq: int
    clock_us: int

    @classmethod
    def of(cls, s: ArbiterState, now_us: int) -> _Work:
        return cls(dict(s.specs), dict(s.est_us), dict(s.waiters), dict(s.holders),
                   dict(s.usage), dict(s.wake), s.seq, _advance(s, now_us))

    def freeze(self) -> ArbiterState:
        return ArbiterState(self.specs, self.est_us, self.waiters, self.holders, self.usage,
                            self.wake, self.seq, self.clock_us)


def _grant_round(w: _Work, caller: str | None, params: ArbiterParams) -> Outcome:
    now = w.clock_us
    used_pct = 0
    busy_cores: set[int] = set()
    for rid in sorted(w.holders):
        h = w.holders[rid]
        if h.expires_us <= now:
            del w.holders[rid]
            _charge(w.usage, rid, h.token_us, now, params)
        elif h.cores:
            busy_cores.update(h.cores)
        else:
            used_pct += h.sm_pct
    hint = -1
    candidates: list[tuple[tuple[object, ...], str, int, int]] = []
    for rid, seq in w.waiters.items():
        if rid in w.holders:
            continue
        spec = w.specs[rid]
        est = w.est_us.get(rid, 0)
        tok = token_us(est, params)
        buckets = w.usage.get(rid, {})
        used = window_usage(buckets, now, params)
        need = min(params.min_token_us, spec.limit_us)
        if used < spec.request_us:  # granted for its guarantee: only up to the guarantee
            tok = min(tok, max(params.min_token_us, spec.request_us - used))
        if spec.limit_us < params.window_us:
            tok = min(tok, spec.limit_us - used)  # the cap is never passed by a whole token
        if spec.limit_us >= params.window_us or used + need <= spec.limit_us:
            key: tuple[object, ...] = ((0, Fraction(used, spec.request_us), seq)
                                       if used < spec.request_us else (1, used, seq))
            candidates.append((key, rid, tok, est))
        else:
            delay = cap_eases_at(buckets, used, need, spec.limit_us, now, params) - now
            hint = delay if hint < 0 else min(hint, delay)
    grants: list[Grant] = []
    for _key, rid, tok, est in sorted(candidates):
        spec = w.specs[rid]
        if spec.cores:
            if not busy_cores.isdisjoint(spec.cores):
                busy_cores.update(spec.cores)  # reserved: nobody behind it takes these cores
                continue
            busy_cores.update(spec.cores)
        elif used_pct + spec.sm_pct > params.capacity_pct:
            break
        else:
            used_pct += spec.sm_pct
        w.seq += 1
        g = Grant(rid, w.seq, tok, now + lease_us(tok, est, params))
        w.holders[rid] = Holding(g.token_id, now, tok, g.expires_us, spec.sm_pct, spec.cores)
        del w.waiters[rid]
        if rid != caller:
            w.wake[rid] = g
        grants.append(g)
    if w.waiters:
        for h in w.holders.values():
            delay = h.expires_us - now
            hint = delay if hint < 0 else min(hint, delay)
    return Outcome(now, hint, tuple(grants))


# ---- the events (one Lua script each) ------------------------------------------------------

def acquire(state: ArbiterState, replica: str, spec: ReplicaSpec, now_us: int,
            params: ArbiterParams) -> tuple[ArbiterState, Outcome]:
    """(Re)register ``replica`` with ``spec``, enqueue it if not waiting, run a grant round."""
    w = _Work.of(state, now_us)
    w.specs[replica] = spec
    if replica not in w.waiters:
        w.seq += 1
        w.waiters[replica] = w.seq
    out = _grant_round(w, replica, params)
    return w.freeze(), out


def release(state: ArbiterState, replica: str, token_id: int, tok_us: int, busy_us: int,
            now_us: int, params: ArbiterParams,
            requeue: ReplicaSpec | None = None) -> tuple[ArbiterState, Outcome]:
    """Return a token, charging the time it was held (``now - granted``) or ``busy_us`` if that
    is larger; a token that already expired (and was charged its length) is charged only the
    busy time that ran past it. With ``requeue`` the replica, which has more work,
    is enqueued again before the grant round, so that it competes for the very token it returns
    (a saturated replica is never "between requests" when the arbiter decides)."""
    w = _Work.of(state, now_us)
    h = w.holders.get(replica)
    burst_us = busy_us
    if h is not None and h.token_id == token_id:
        del w.holders[replica]
        burst_us = max(busy_us, w.clock_us - h.granted_us)
        _charge(w.usage, replica, burst_us, w.clock_us, params)
    else:
        _charge(w.usage, replica, busy_us - tok_us, w.clock_us, params)
    if burst_us > 0:  # the burst estimate follows what is charged, so the token covers it
        w.est_us[replica] = ewma_us(w.est_us.get(replica, 0), burst_us)
    if requeue is not None:
        w.specs[replica] = requeue
        if replica not in w.waiters:
            w.seq += 1
            w.waiters[replica] = w.seq
    out = _grant_round(w, replica if requeue is not None else None, params)
    return w.freeze(), out


def renew(state: ArbiterState, replica: str, token_id: int, now_us: int,
          params: ArbiterParams) -> tuple[ArbiterState, Outcome]:
    """A live holder's heartbeat: its execution runs on, so its lease is extended to at least
    ``now`` plus the grace (``max(lease_grace, 2 x burst estimate)``, as at a grant). Only a lease
    still in force is renewed: one that has expired is dead even if nobody has reaped it yet (a
    renewal cannot resurrect it, so a holder is never trusted past a lease it let lapse). The
    outcome's only grant is the renewed lease (none: it was lost); no grant round runs, since a
    renewal frees nothing."""
    w = _Work.of(state, now_us)
    now = w.clock_us
    h = w.holders.get(replica)
    if h is None or h.token_id != token_id or h.expires_us <= now:
        return w.freeze(), Outcome(now, -1)
    exp = max(h.expires_us, now + lease_us(0, w.est_us.get(replica, 0), params))
    w.holders[replica] = Holding(h.token_id, h.granted_us, h.token_us, exp, h.sm_pct, h.cores)
    return w.freeze(), Outcome(now, -1, (Grant(replica, h.token_id, h.token_us, exp),))


def cancel(state: ArbiterState, replica: str, now_us: int,
           params: ArbiterParams) -> tuple[ArbiterState, Outcome]:
    """A waiter gave up: leave the queue, and hand back (uncharged) a grant it never picked up."""
    w = _Work.of(state, now_us)
    w.waiters.pop(replica, None)
    w.holders.pop(replica, None)
    w.wake.pop(replica, None)
    out = _grant_round(w, None, params)
    return w.freeze(), out


def unregister(state: ArbiterState, replica: str, now_us: int,
               params: ArbiterParams) -> tuple[ArbiterState, Outcome]:
    """Forget a replica entirely (it stopped); what it held is freed at once."""
    w = _Work.of(state, now_us)
    for d in (w.specs, w.est_us, w.waiters, w.holders, w.usage, w.wake):
        d.pop(replica, None)  # type: ignore[attr-defined]
    out = _grant_round(w, None, params)
    return w.freeze(), out


def tick(state: ArbiterState, now_us: int, params: ArbiterParams) -> tuple[ArbiterState, Outcome]:
    """Expire leases and grant what became possible, with no other event."""
    w = _Work.of(state, now_us)
    out = _grant_round(w, None, params)
    return w.freeze(), out

