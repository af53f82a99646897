"""The replica supervisor's pure plan, and the provider's weighted pick."""

import pytest

from fast_manager.replica_plan import ReplicaView, plan, restart_backoff_s
from gateway_plugin.local_routing import Route, pick_weighted


def rv(rid, gen=1, cfg="", ready=True, at=0.0, draining=False):
    return ReplicaView(rid, gen, cfg, ready, at, draining)


@pytest.mark.parametrize("groups,replicas,drain,start", [
    ({"": 2}, [], (), ("", "")),  # cold: start both
    ({"": 1}, [rv("a"), rv("b", at=1.0)], ("a",), ()),  # surplus: the older ready one goes
    ({"": 1}, [rv("a"), rv("b", ready=False)], ("b",), ()),  # a starting one goes before a ready one
    ({"": 0}, [rv("a")], ("a",), ()),  # scale to zero drains
    ({"": 1}, [rv("a", draining=True)], (), ("",)),  # a draining replica counts for nothing
    ({"": 1}, [rv("old", gen=1), rv("new", gen=2, ready=False)], (), ()),  # roll: old serves on
    ({"": 1}, [rv("old", gen=1), rv("new", gen=2)], ("old",), ()),  # new ready: old goes
    ({"": 1, "half": 1}, [rv("a"), rv("h", cfg="gone")], (), ("half",)),  # dropped group serves on
])
def test_plan(groups, replicas, drain, start):
    gen = 2 if any(r.generation == 2 for r in replicas) else 1
    p = plan(groups, gen, replicas)
    assert (p.drain, p.start) == (drain, start)


def test_backoff_doubles_to_a_ceiling():
    assert [restart_backoff_s(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert restart_backoff_s(50) == 30.0


def test_weighted_pick_interleaves_in_proportion():
    routes = [Route("a", "http://a", 50), Route("b", "http://b", 25), Route("c", "http://c", 25)]
    credit: dict[str, int] = {}
    picks = [pick_weighted(routes, credit).replica_id for _ in range(8)]
    assert picks.count("a") == 4 and picks.count("b") == 2 and picks.count("c") == 2
    # smooth: every cycle of 4 already holds the proportions (2 a, 1 b, 1 c)
    assert sorted(picks[:4]) == sorted(picks[4:]) == ["a", "a", "b", "c"]
