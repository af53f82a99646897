"""The GPU variant's bare-loop figure: the rate at the bound. Pure."""

from bench.gpu.bare_loop import rate_at_bound


def test_rate_at_bound_takes_the_largest_batch_whose_p99_fits_half_the_bound() -> None:
    per_batch = {1: {"p99_ms": 4.0, "items_per_s": 250.0}, 8: {"p99_ms": 7.0, "items_per_s": 1400.0},
                 32: {"p99_ms": 9.0, "items_per_s": 4000.0}}
    assert rate_at_bound(per_batch, 15.0) == (8, 1400.0)
    assert rate_at_bound(per_batch, 20.0) == (32, 4000.0)
    assert rate_at_bound(per_batch, 5.0) == (0, 0.0)
