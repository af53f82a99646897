"""The simulator's re-pack moves are make-before-break (``SimSettings.move_cold_start``): the moved
replica cold-starts on its new device while the copy on the old one serves and keeps it in use."""

from dataclasses import dataclass, field

import pytest

from fast_profiler.table import synthetic_table
from fast_scheduler.choices import ShareConfig
from fast_scheduler.evaluation.simulator import SimFunction, SimSettings, Trace, simulate
from fast_scheduler.placement import Rejection, Snapshot, place

R = synthetic_table("resnet50", saturation_sm_pct=24, full_rps=74.9, weight_bytes=98 * 2**20)
SPEC = SimFunction("f", "resnet50", R, 69.0)
CONF = ShareConfig(24, 1.0, 1.0, 1)


@dataclass
class MoveOnce:
    """Two replicas on two devices (the second from ``second_at_s``); at ``move_at_s`` a re-pack
    moves the one on the second device onto the first (what ``plan_repack`` does to a half-empty
    device)."""

    move_at_s: float
    second_at_s: float = 0.0
    name: str = "move-once"
    now_s: float = 0.0
    moved: list[float] = field(default_factory=list)

    def desired(self, now_s, observed, current):
        self.now_s = now_s
        return {"f": (CONF, CONF) if now_s >= self.second_at_s else (CONF,)}

    def apply(self, snapshot, adds):
        for r in sorted(adds, key=lambda r: r.replica_id):
            # One replica per device: each goes onto the first empty one.
            empty = next(d for d in snapshot.devices if not d.replicas)
            p = place(r, Snapshot((empty,)))
            assert not isinstance(p, Rejection)
            snapshot = snapshot.with_device(p.device)
        return snapshot, []

    def after(self, snapshot):
        if self.moved or self.now_s < self.move_at_s:
            return snapshot, 0
        used = [d for d in snapshot.devices if d.replicas]
        src, dst = used[1], used[0]
        rep = src.replicas[0]
        target = dst.with_replica(rep)
        assert target is not None
        self.moved.append(self.now_s)
        return snapshot.with_device(src.without(rep.replica_id)).with_device(target), 1


@pytest.mark.parametrize("cold", [True, False])
def test_a_moved_replica_holds_its_old_device_until_the_new_copy_is_up(cold):
    steps, rate = 60, 80.0
    tr = Trace("steady", 1.0, {"f": [int(rate)] * steps}, {"f": [rate] * steps})
    settings = SimSettings(gpus=4, cold_start_s=5.0, move_cold_start=cold)
    pol = MoveOnce(move_at_s=20.0)
    res = simulate([SPEC], tr, pol, settings)
    assert pol.moved == [20.0] and res.moves == 1
    assert res.gpus[:20] == [2] * 20
    # Without the cold start the old device is free at once; with it, in use for 5 s more.
    assert res.gpus[20:25] == ([2] * 5 if cold else [1] * 5)
    assert res.gpus[25:] == [1] * (steps - 25)
    # Either way the move drops no capacity: both replicas serve throughout (the old copy, then the new).
    assert res.replicas[21:] == [2] * (steps - 21)


def test_a_replica_moved_while_it_starts_goes_on_starting_on_its_old_device():
    # Cold starts of 8 s over 5 s ticks: the second replica, placed at 5 s, is still starting when
    # the re-pack at 10 s moves it. Its old copy is up at 13 s and serves until the new one is (18 s).
    steps, rate = 30, 80.0
    tr = Trace("steady", 1.0, {"f": [int(rate)] * steps}, {"f": [rate] * steps})
    pol = MoveOnce(move_at_s=10.0, second_at_s=5.0)
    res = simulate([SPEC], tr, pol, SimSettings(gpus=4, cold_start_s=8.0))
    assert pol.moved == [10.0] and res.moves == 1
    assert res.gpus == [1] * 5 + [2] * 13 + [1] * 12
    assert res.replicas == [1] * 13 + [2] * 17
