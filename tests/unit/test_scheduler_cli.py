"""``python -m fast_scheduler``'s settings follow ``--start-s`` (the cluster bench's tuning per start
time); a flag given explicitly wins."""

from fast_scheduler.__main__ import loop_settings, parser
from fast_scheduler.repack import every_ticks_for_start
from fast_scheduler.start_tuning import START_TUNED

TUNED = dict(START_TUNED)


def settings(*argv: str):
    return loop_settings(parser().parse_args(["--redis-url", "redis://x", *argv]))


def test_the_default_is_the_cold_start_tuning():
    s = settings()
    assert s.autoscale.start_s == 5.0
    assert s.autoscale.scale_down_delay_s == TUNED[5.0]["scale_down_delay_s"]
    assert s.repack_every_ticks == every_ticks_for_start(5.0)


def test_a_one_second_start_gets_its_own_tuning():
    s = settings("--start-s", "1")
    for k, v in TUNED[1.0].items():
        assert getattr(s.autoscale, k) == v, k
    assert s.repack_every_ticks == every_ticks_for_start(1.0) < every_ticks_for_start(5.0)


def test_explicit_flags_win_over_the_tuning():
    s = settings("--start-s", "1", "--standby-frac", "0", "--scale-down-delay-s", "7",
                 "--repack-every-ticks", "0", "--batch-lever", "off")
    a = s.autoscale
    assert (a.standby_frac, a.scale_down_delay_s, a.batch_lever) == (0.0, 7.0, False)
    assert a.headroom_frac == TUNED[1.0]["headroom_frac"]  # the rest stays tuned
    assert s.repack_every_ticks == 0
