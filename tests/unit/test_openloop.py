"""The open-loop generator's pure parts: answer framing, Poisson arrivals, and the dataplane
bench's verdict arithmetic."""

from __future__ import annotations

import pytest

from bench.dataplane import Step, sustained_rps
from bench.openloop import _complete, poisson_times


@pytest.mark.parametrize(("raw", "want"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", (200, False)),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{", None),  # body not all there
    (b"HTTP/1.1 200 OK\r\nContent-Len", None),  # head not all there
    (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
     (503, True)),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", (200, False)),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", None),
    (b"HTTP/1.1 204 No Content\r\n\r\n", (204, False)),
])
def test_complete_frames_one_answer(raw: bytes, want: tuple[int, bool] | None) -> None:
    """(status, closes) and the whole answer used once it is all there; None before."""
    expected = None if want is None else (want[0], len(raw), want[1])
    assert _complete(bytearray(raw)) == expected


def test_complete_leaves_the_next_answer_in_the_buffer() -> None:
    one = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    code, used, _ = _complete(bytearray(one + one[:10]))  # type: ignore[misc]
    assert (code, used) == (200, len(one))


def test_poisson_times_have_the_rate_and_are_reproducible() -> None:
    times = poisson_times(1000.0, 20.0, seed=3)
    assert times == poisson_times(1000.0, 20.0, seed=3)
    assert times == sorted(times) and 0 < times[0] and times[-1] < 20.0
    assert len(times) == pytest.approx(20_000, rel=0.03)


def _step(rate: float, passed: bool) -> Step:
    return Step("p", rate, 1.0, 10, 10, 0, 1.0, 1.0, 0.0, passed=passed)


def test_sustained_is_the_highest_passing_rate_even_past_a_failure() -> None:
    steps = [_step(20, True), _step(26, False), _step(34, True), _step(44, False)]
    assert sustained_rps(steps) == 34
    assert sustained_rps([_step(20, False)]) == 0.0
