"""When a Pool's or an executor's session sends the work it holds: pure, on a driver in memory."""

from __future__ import annotations

import queue
from typing import Any

from achilles_like.client.driver import Batch, JobDriver
from achilles_like.client.driver import worth_feeding as _worth_feeding
from achilles_like.config import Settings


class _Connection:
    """Takes what the driver sends and forgets it."""

    closed = False
    settings = Settings()

    def send(self, *parts: bytes) -> None:
        pass

    def route(self, ref: int, inbox: Any) -> None:
        pass

    def unroute(self, ref: int, job_id: int | None) -> None:
        pass


def _driver(credit: int, in_flight: int) -> JobDriver:
    driver = JobDriver(_Connection(), queue.SimpleQueue(), label="test")  # type: ignore[arg-type]
    driver.credit = credit
    driver.inflight = {task: Batch(b"f", [task], lambda outcomes: None) for task in range(in_flight)}
    return driver


def test_a_lone_call_or_the_first_of_a_burst_is_sent_at_once() -> None:
    """With little in flight, any credit is used at once: a round trip never waits for more calls."""
    assert _worth_feeding(_driver(credit=1, in_flight=0))
    assert _worth_feeding(_driver(credit=1, in_flight=3))
    assert _worth_feeding(_driver(credit=16, in_flight=0))


def test_a_busy_job_sends_once_a_quarter_of_its_window_is_free() -> None:
    """With most of the window in flight, freed credit gathers until a quarter of it can go in one write."""
    assert not _worth_feeding(_driver(credit=1, in_flight=15))
    assert not _worth_feeding(_driver(credit=3, in_flight=13))
    assert _worth_feeding(_driver(credit=4, in_flight=12))


def test_nothing_is_sent_without_credit() -> None:
    """No credit, nothing to send, however little is in flight."""
    assert not _worth_feeding(_driver(credit=0, in_flight=0))
    assert not _worth_feeding(_driver(credit=0, in_flight=16))
