"""The Lua scripts and the pure model agree: same random events, same decisions, same state."""

from __future__ import annotations

import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast_manager.arbiter import model
from fast_manager.arbiter.lua import ArbiterScripts, device_keys, parse_outcome, replica_prefix

PARAMS = model.ArbiterParams(window_us=1_000_000, bucket_us=100_000, min_token_us=20_000,
                             max_token_us=300_000, lease_grace_us=150_000, capacity_pct=100)
REPLICAS = ("a", "b", "c", "d")

specs = st.builds(
    model.ReplicaSpec,
    sm_pct=st.sampled_from([10, 30, 50, 60, 100]),
    request_us=st.integers(1, 60).map(lambda n: n * 10_000),
    limit_us=st.just(0),  # filled below so that request <= limit
)


CORE_SETS = ((), (0,), (1,), (0, 1), (2, 3), (1, 2), (0, 1, 2, 3))
"""() is a GPU replica (SM-share sum); the others are CPU replicas (disjoint core sets)."""


@st.composite
def replica_spec(draw: st.DrawFn) -> model.ReplicaSpec:
    s = draw(specs)
    return model.ReplicaSpec(s.sm_pct, s.request_us,
                             draw(st.integers(s.request_us // 10_000, 100)) * 10_000,
                             draw(st.sampled_from(CORE_SETS)))


def us_steps(n: int) -> st.SearchStrategy[int]:
    """Multiples of 10 ms (and sometimes odd values), so that boundaries are hit exactly."""
    return st.one_of(st.integers(0, n).map(lambda k: k * 10_000), st.integers(0, n * 10_000))


events = st.lists(st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(REPLICAS), replica_spec()),
    st.tuples(st.just("release"), st.sampled_from(REPLICAS), us_steps(50), st.booleans(),
              st.one_of(st.none(), replica_spec())),
    st.tuples(st.just("advance"), us_steps(70)),
    st.tuples(st.just("cancel"), st.sampled_from(REPLICAS)),
    st.tuples(st.just("renew"), st.sampled_from(REPLICAS), st.booleans()),
    st.tuples(st.just("unregister"), st.sampled_from(REPLICAS)),
    st.tuples(st.just("tick"),),
    st.tuples(st.just("clock_skew"), st.integers(1, 50_000)),
), min_size=1, max_size=40)


def parse_cores(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",")) if text else ()


def snapshot(r: redis.Redis, device: str) -> model.ArbiterState:
    """Read a device's whole arbiter state from Redis into the model's shape."""
    cfg, est, waiters, holders, seq, clock = device_keys(device)
    prefix = replica_prefix(device)
    s = {k.decode(): v.decode() for k, v in r.hgetall(cfg).items()}
    specs_ = {}
    for k, v in s.items():
        sm, req, lim, cores = v.split("|")
        specs_[k] = model.ReplicaSpec(int(sm), int(req), int(lim), parse_cores(cores))
    hold = {}
    for k, v in r.hgetall(holders).items():
        *nums, cores = v.decode().split("|")
        tok, granted, length, exp, sm = map(int, nums)
        hold[k.decode()] = model.Holding(tok, granted, length, exp, sm, parse_cores(cores))
    usage = {}
    wake = {}
    for key in r.scan_iter(match=f"{prefix}*:*"):
        name = key.decode()[len(prefix):]
        kind, rid = name.split(":", 1)
        if kind == "use":
            usage[rid] = {int(b): int(v) for b, v in r.hgetall(key).items()}
        else:
            # The scripts give a wake list a TTL in real time (cleanup of leases nobody pops);
            # the model has no real time: a slow example must not see the list vanish.
            r.persist(key)
            items = r.lrange(key, 0, -1)
            assert len(items) == 1
            tok, length, exp = map(int, items[0].decode().split("|"))
            wake[rid] = model.Grant(rid, tok, length, exp)
    return model.ArbiterState(
        specs=specs_,
        est_us={k.decode(): int(v) for k, v in r.hgetall(est).items()},
        waiters={k.decode(): int(v) for k, v in r.zrange(waiters, 0, -1, withscores=True)},
        holders=hold, usage=usage, wake=wake,
        seq=int(r.get(seq) or 0), clock_us=int(r.get(clock) or 0),
    )


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(evs=events)
def test_lua_and_model_decide_alike(redis_client: redis.Redis, evs: list[tuple]) -> None:
    device = f"prop-{uuid.uuid4().hex[:8]}"
    scripts = ArbiterScripts.register(redis_client, device, PARAMS)
    state = model.ArbiterState()
    now = 1_700_000_000_000_000  # a realistic epoch in microseconds: exactness near 2^53
    for ev in evs:
        kind = ev[0]
        if kind == "advance":
            now += ev[1]
            continue
        if kind == "clock_skew":  # a caller whose clock is behind: the stored clock wins
            state, want = model.tick(state, now - ev[1], PARAMS)
            got = parse_outcome(scripts.tick(now - ev[1]))
        elif kind == "acquire":
            state, want = model.acquire(state, ev[1], ev[2], now, PARAMS)
            got = parse_outcome(scripts.acquire(ev[1], ev[2], now))
        elif kind == "release":
            _, rid, busy, stale, requeue = ev
            h = state.holders.get(rid)
            tok, length = (h.token_id, h.token_us) if h and not stale else (10**6, 50_000)
            state, want = model.release(state, rid, tok, length, busy, now, PARAMS, requeue)
            got = parse_outcome(scripts.release(rid, tok, length, busy, now, requeue))
        elif kind == "renew":
            _, rid, stale = ev
            h = state.holders.get(rid)
            tok = h.token_id if h and not stale else 10**6
            state, want = model.renew(state, rid, tok, now, PARAMS)
            got = parse_outcome(scripts.renew(rid, tok, now))
        elif kind == "cancel":
            state, want = model.cancel(state, ev[1], now, PARAMS)
            got = parse_outcome(scripts.cancel(ev[1], now))
        elif kind == "unregister":
            state, want = model.unregister(state, ev[1], now, PARAMS)
            got = parse_outcome(scripts.unregister(ev[1], now))
        else:
            state, want = model.tick(state, now, PARAMS)
            got = parse_outcome(scripts.tick(now))
        assert got == want, ev
        assert snapshot(redis_client, device) == state, ev
        assert sum(h.sm_pct for h in state.holders.values() if not h.cores) <= PARAMS.capacity_pct
        held_cores = [c for h in state.holders.values() for c in h.cores]
        assert len(held_cores) == len(set(held_cores)), state.holders  # disjoint core sets


def test_server_clock_is_used_when_now_is_empty(redis_client: redis.Redis) -> None:
    scripts = ArbiterScripts.register(redis_client, "clock", PARAMS)
    sec, usec = redis_client.time()
    out = parse_outcome(scripts.acquire("a", model.ReplicaSpec(50, 100_000, 200_000)))
    assert abs(out.now_us - (sec * 1_000_000 + usec)) < 1_000_000
    assert [g.replica for g in out.grants] == ["a"]


@pytest.mark.parametrize(("used_ms", "token_ms"), [
    (100, 100),  # burst 100 -> token 125, cut to the 100 ms left of the 200 ms request
    (150, 50),
    (190, 20),   # what is left (10 ms) floored at min_token
    (250, 300),  # past its request: the whole token (burst 250 -> 312, clamped)
])
def test_lua_cuts_a_token_granted_for_the_request_as_the_model_does(
        redis_client: redis.Redis, used_ms: int, token_ms: int) -> None:
    """Real Redis: a replica under its request is granted only what is left of it."""
    scripts = ArbiterScripts.register(redis_client, f"cut-{uuid.uuid4().hex[:8]}", PARAMS)
    a = model.ReplicaSpec(100, 200_000, 1_000_000)
    now = 1_700_000_000_000_000
    state, want = model.acquire(model.ArbiterState(), "a", a, now, PARAMS)
    got = parse_outcome(scripts.acquire("a", a, now))
    assert got == want
    g = got.grants[0]
    now += used_ms * 1000
    state, want = model.release(state, "a", g.token_id, g.token_us, used_ms * 1000, now, PARAMS,
                                requeue=a)
    got = parse_outcome(scripts.release("a", g.token_id, g.token_us, used_ms * 1000, now, a))
    assert got == want
    assert [(x.replica, x.token_us) for x in got.grants] == [("a", token_ms * 1000)]

