"""The per-address warning budget, on a clock passed in."""

from __future__ import annotations

from achilles_like.server.log_limit import WarningLimiter


def test_a_burst_is_written_then_the_rest_of_the_interval_is_held_back() -> None:
    """An address gets ``burst`` warnings per interval; the others are not written."""
    limiter = WarningLimiter(burst=3, interval=60.0)
    assert [limiter.allow("10.0.0.1", 1.0)[0] for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("10.0.0.2", 1.0) == (True, 0)  # another address has its own budget


def test_the_first_warning_of_the_next_interval_counts_the_held_back_ones() -> None:
    """After the interval a warning is written again, with the number suppressed before it."""
    limiter = WarningLimiter(burst=2, interval=60.0)
    for _ in range(10):
        limiter.allow("10.0.0.1", 0.0)
    assert limiter.allow("10.0.0.1", 59.9) == (False, 0)
    assert limiter.allow("10.0.0.1", 60.0) == (True, 9)
    assert limiter.allow("10.0.0.1", 61.0) == (True, 0)


def test_memory_is_bounded() -> None:
    """Warnings from more addresses than max_keys never keep more than max_keys windows."""
    limiter = WarningLimiter(max_keys=100)
    for index in range(1000):
        assert limiter.allow(f"10.0.{index // 256}.{index % 256}", 0.0) == (True, 0)
    assert len(limiter._windows) <= 100
