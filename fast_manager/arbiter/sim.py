"""A discrete-event simulation of saturated replicas against the pure model (no Redis, no clock).

It isolates the arbiter's own arithmetic from the machine: each replica executes back to back
for ``exec_us`` per request (times ``1 +- jitter``, drawn from a seeded generator) plus
``overhead_us`` of its own turnaround under the token (sidecar -> worker HTTP, the next request's
arrival: held, not executing), keeps its token until the time it has held it reaches the token
(as ``RedisTokenClient`` does, the last execution overrunning), then releases and re-enqueues in
one step; a grant to a waiter starts after ``handover_us`` (its wake-up latency), a capped waiter
looks again at the script's hint (plus ``tick_latency_us``). Shares are measured as the bench
measures them: held (from the pick-up) and charged (from the grant) over the measurement, a
token still held at the end counted up to the end.

With ``handover_us = 0`` the error left is the arithmetic's (window, buckets, token sizes, cap);
docs/arbiter.md has what it showed (the lumped charge that idled capped replicas).

    python -m fast_manager.arbiter.sim [--window-s 5] [--handover-ms 0] [--max-token-ms 100]
        [--windows 10] [--overhead-ms 0] [--jitter 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import random
from dataclasses import dataclass

from . import model


@dataclass(frozen=True)
class SimReplica:
    name: str
    sm_pct: int
    request: float
    limit: float
    exec_us: int


@dataclass(frozen=True)
class SimShare:
    held: float
    """Share of the measurement from pick-up to release."""
    charged: float
    """Share from grant to release (what the arbiter charges)."""
    handovers_in: int


def simulate(replicas: list[SimReplica], params: model.ArbiterParams, horizon_us: int,
             warm_us: int, handover_us: int = 0, tick_latency_us: int = 0, *,
             overhead_us: int = 0, jitter: float = 0.0, seed: int = 0) -> dict[str, SimShare]:
    """Run every replica saturated from 0 to ``horizon_us``; shares over ``[warm, horizon]``."""
    state = model.ArbiterState()
    specs = {r.name: model.make_spec(r.sm_pct, r.request, r.limit, params) for r in replicas}
    rng = random.Random(seed)
    mean_us = {r.name: r.exec_us for r in replicas}

    def exec_us(rid: str) -> int:
        """One execution under the token: its run time (jittered) and the replica's turnaround."""
        return round(mean_us[rid] * (1 + rng.uniform(-jitter, jitter))) + overhead_us
    events: list[tuple[int, int, str, str, model.Grant | None]] = []
    seq = 0

    def push(t: int, kind: str, rid: str, grant: model.Grant | None = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, rid, grant))

    held: dict[str, list[tuple[int, int]]] = {n: [] for n in specs}
    charged: dict[str, list[tuple[int, int]]] = {n: [] for n in specs}
    handovers = dict.fromkeys(specs, 0)
    cur: dict[str, dict[str, int]] = {}

    def outcome(t: int, out: model.Outcome, caller: str | None) -> None:
        for g in out.grants:
            if g.replica == caller:  # re-granted in its own call: no hand-over
                cur[g.replica] = {"tid": g.token_id, "tok": g.token_us, "grant": t, "start": t,
                                  "busy": 0}
                push(t + exec_us(g.replica), "done", g.replica)
            else:
                push(t + handover_us, "woken", g.replica, g)
        if caller is not None and caller not in cur and out.hint_us >= 0:
            push(t + out.hint_us + tick_latency_us, "tick", caller)

    for n, spec in specs.items():
        state, out = model.acquire(state, n, spec, 0, params)
        outcome(0, out, n)
    while events:
        t, _, kind, rid, grant = heapq.heappop(events)
        if t > horizon_us:
            break
        if kind == "woken":
            assert grant is not None
            handovers[rid] += 1
            cur[rid] = {"tid": grant.token_id, "tok": grant.token_us, "grant": t - handover_us,
                        "start": t, "busy": 0}
            push(t + exec_us(rid), "done", rid)
        elif kind == "done":
            c = cur[rid]
            c["busy"] += mean_us[rid]
            if t - c["start"] < c["tok"]:  # the slice has time left: next execution
                push(t + exec_us(rid), "done", rid)
                continue
            held[rid].append((c["start"], t))
            charged[rid].append((c["grant"], t))
            del cur[rid]
            state, out = model.release(state, rid, c["tid"], c["tok"], c["busy"], t, params,
                                       requeue=specs[rid])
            outcome(t, out, rid)
        elif rid not in cur and rid in state.waiters:  # a capped waiter's timer
            state, out = model.tick(state, t, params)
            outcome(t, out, None)
            if rid not in cur and all(g.replica != rid for g in out.grants) and out.hint_us >= 0:
                push(t + out.hint_us + tick_latency_us, "tick", rid)
    for rid, c in cur.items():  # tokens still held at the end count up to the end
        held[rid].append((c["start"], horizon_us))
        charged[rid].append((c["grant"], horizon_us))
    span = horizon_us - warm_us

    def share(ivs: list[tuple[int, int]]) -> float:
        return sum(max(0, min(b, horizon_us) - max(a, warm_us)) for a, b in ivs) / span

    return {n: SimShare(share(held[n]), share(charged[n]), handovers[n]) for n in specs}


CASES: tuple[tuple[str, tuple[SimReplica, ...], tuple[float, ...]], ...] = (
    ("2 time-shared, limit=request",
     (SimReplica("a", 100, 0.3, 0.3, 8000), SimReplica("b", 100, 0.7, 0.7, 15000)), (0.3, 0.7)),
    ("3 time-shared, one capped",
     (SimReplica("a", 100, 0.5, 1.0, 10000), SimReplica("b", 100, 0.2, 1.0, 5000),
      SimReplica("c", 100, 0.1, 0.15, 20000)), (0.5, 0.35, 0.15)),
    ("4 at 50% SM (2 run at once)",
     (SimReplica("a", 50, 0.2, 1.0, 5000), SimReplica("b", 50, 0.3, 1.0, 10000),
      SimReplica("c", 50, 0.4, 0.45, 15000), SimReplica("d", 50, 0.5, 1.0, 20000)),
     (31 / 60, 31 / 60, 0.45, 31 / 60)),
    ("guarantee vs greedy neighbour",
     (SimReplica("guaranteed", 100, 0.7, 1.0, 5000), SimReplica("greedy", 100, 0.1, 1.0, 40000)),
     (0.7, 0.3)),
)
"""The GPU form of bench.isolation's cases (SM shares, no core sets), with expected shares."""


def max_errors_pp(params: model.ArbiterParams, windows: int = 10, handover_us: int = 0,
                  **kw: float) -> tuple[float, float]:
    """Largest |held - expected| and |charged - expected| over the cases, in pp (``kw``: the
    keyword arguments of ``simulate``)."""
    held = charged = 0.0
    for _name, reps, want in CASES:
        got = simulate(list(reps), params, windows * params.window_us, params.window_us,
                       handover_us, **kw)  # type: ignore[arg-type]
        for r, w in zip(reps, want, strict=True):
            held = max(held, abs(got[r.name].held - w) * 100)
            charged = max(charged, abs(got[r.name].charged - w) * 100)
    return held, charged


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window-s", type=float, default=5.0)
    ap.add_argument("--handover-ms", type=float, default=0.0)
    ap.add_argument("--max-token-ms", type=float, default=100.0)
    ap.add_argument("--windows", type=int, default=10, help="simulated windows (1 is warm-up)")
    ap.add_argument("--overhead-ms", type=float, default=0.0,
                    help="each execution's turnaround under the token (held, not executing)")
    ap.add_argument("--jitter", type=float, default=0.0, help="execution times vary by +- this")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kw = {"overhead_us": round(args.overhead_ms * 1000), "jitter": args.jitter, "seed": args.seed}
    params = model.ArbiterParams(window_us=round(args.window_s * 1e6),
                                 max_token_us=round(args.max_token_ms * 1000))
    h_us = round(args.handover_ms * 1000)
    print(f"window {args.window_s:g} s, hand-over {args.handover_ms:g} ms, tokens "
          f"{params.min_token_us / 1000:g}-{params.max_token_us / 1000:g} ms, overhead "
          f"{args.overhead_ms:g} ms, jitter {args.jitter:g}, seed {args.seed}")
    for name, reps, want in CASES:
        got = simulate(list(reps), params, args.windows * params.window_us, params.window_us,
                       h_us, **kw)  # type: ignore[arg-type]
        for r, w in zip(reps, want, strict=True):
            g = got[r.name]
            print(f"  {name:30} {r.name:10} expected {w:.3f} held {g.held:.3f} charged "
                  f"{g.charged:.3f} hand-overs {g.handovers_in}")
    held, charged = max_errors_pp(params, args.windows, h_us, **kw)
    print(f"max |error| held {held:.2f} pp, charged {charged:.2f} pp")


if __name__ == "__main__":
    main()
