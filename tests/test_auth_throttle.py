"""The failed-handshake budgets: times passed in, so every wait is an exact number."""

from __future__ import annotations

import pytest

from achilles_like.server.auth_throttle import FailedHandshakes, HandshakeBudget

BUDGET = HandshakeBudget(
    per_address_burst=5, per_address_rate=0.5, total_burst=20, total_rate=5, max_delay=4, trust_window=60
)


def failing(host: str, times: int, now: float = 0.0) -> FailedHandshakes:
    """A record where ``host`` failed ``times`` handshakes at ``now``."""
    throttle = FailedHandshakes(BUDGET)
    for _ in range(times):
        throttle.failed(host, now)
    return throttle


def test_failures_within_the_address_budget_cost_nothing() -> None:
    """An address's first failures (a typo, a stale secret) do not delay its next attempt."""
    assert failing("10.0.0.1", 4).delay("10.0.0.1", 0.0) == 0.0


def test_past_the_address_budget_a_new_connection_waits_until_a_failure_fits() -> None:
    """Past its burst an address waits 1/rate seconds per extra failure, less as the bucket drains."""
    throttle = failing("10.0.0.1", 6)
    assert throttle.delay("10.0.0.1", 0.0) == pytest.approx(4.0)  # two over the burst at 0.5/s
    assert throttle.delay("10.0.0.1", 3.0) == pytest.approx(1.0)
    assert throttle.delay("10.0.0.1", 4.0) == 0.0
    assert throttle.delay("10.0.0.2", 0.0) == 0.0  # another address is not slowed


def test_the_wait_is_capped() -> None:
    """However many failures, no connection waits longer than max_delay."""
    assert failing("10.0.0.1", 1000).delay("10.0.0.1", 0.0) == 4.0


def test_the_global_budget_slows_guessing_spread_over_many_addresses() -> None:
    """Past the server's burst even a fresh address waits, so more addresses do not mean more guesses."""
    throttle = FailedHandshakes(BUDGET)
    for index in range(21):
        throttle.failed(f"10.0.1.{index}", 0.0)
    assert throttle.delay("10.0.9.9", 0.0) == pytest.approx(0.4)  # two over the burst at 5/s
    assert throttle.delay("10.0.9.9", 0.4) == 0.0


def test_an_address_that_just_authenticated_never_waits() -> None:
    """After a good handshake an address is not delayed, however many failures follow from it."""
    throttle = FailedHandshakes(BUDGET)
    throttle.succeeded("127.0.0.1", 0.0)
    for _ in range(100):
        throttle.failed("127.0.0.1", 1.0)
        throttle.failed("10.0.0.1", 1.0)
    assert throttle.delay("127.0.0.1", 1.0) == 0.0
    assert throttle.delay("10.0.0.1", 1.0) == 4.0
    assert throttle.slowed(1.0) == {"10.0.0.1": 4.0}


def test_trust_lasts_the_trust_window() -> None:
    """Sixty seconds after its last good handshake an address that keeps failing waits again."""
    throttle = FailedHandshakes(BUDGET)
    throttle.succeeded("127.0.0.1", 0.0)
    for _ in range(10):
        throttle.failed("127.0.0.1", 60.5)
    assert throttle.delay("127.0.0.1", 60.0) == 0.0
    assert throttle.delay("127.0.0.1", 60.5) == 4.0


def test_delayed_connections_are_counted() -> None:
    """on_connect returns the wait and counts the connections that had one."""
    throttle = failing("10.0.0.1", 6)
    assert throttle.on_connect("10.0.0.2", 0.0) == 0.0
    assert throttle.on_connect("10.0.0.1", 0.0) == pytest.approx(4.0)
    assert throttle.delayed == 1


def test_memory_stays_bounded_under_a_spoofed_flood() -> None:
    """Failures from more addresses than max_addresses never grow the record past it."""
    throttle = FailedHandshakes(HandshakeBudget(max_addresses=100))
    for index in range(1000):
        throttle.failed(f"10.{index // 256}.{index % 256}.1", float(index))
    assert len(throttle._by_address) <= 100
