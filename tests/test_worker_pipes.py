"""The node's worker pool with real worker processes, served by a private reactor (no cluster).

Each test drives its own ``EPollReactor`` with ``iterate`` until the outcome
it waits for has been delivered, so it can stop reading a worker's socket at
a chosen moment: in the middle of a large result.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor

from achilles_like.node.worker_pool import Outcome, WorkerPool, WorkItem
from achilles_like.serialization import dumps, loads

BIG = 32 << 20  # several reactor turns of reading (READ_BUDGET is 4 MiB)


def ones(size: int) -> bytes:
    """A result of ``size`` bytes."""
    return b"\x01" * size


def pid_of(_: object) -> int:
    """The worker's pid."""
    return os.getpid()


Delivered = list[tuple[int, Outcome, bytes, str]]


class Harness:
    """A WorkerPool on a private reactor, and what it delivered (task id, outcome, blob, detail)."""

    def __init__(self, processes: int) -> None:
        self.reactor = EPollReactor()
        self.delivered: Delivered = []
        self.pool = WorkerPool(processes, self._deliver, self.reactor)

    def _deliver(self, item: WorkItem, outcome: Outcome, blob: bytes, detail: str) -> None:
        self.delivered.append((item.task_id, outcome, blob, detail))

    def submit(self, task: int, func: Callable[[Any], Any], items: list[Any], **options: Any) -> None:
        func_blob = options.pop("func_blob", None) or dumps((func, "map", None))
        setup_blob = options.pop("setup_blob", b"")
        self.pool.submit(WorkItem(7, 7, task, 1, setup_blob, 0, func_blob, dumps(items), **options))

    def run_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Turn the reactor until ``predicate`` holds (fail after 30 s)."""
        deadline = time.monotonic() + 30
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            self.reactor.iterate(0.05)

    def outcome(self, task: int) -> tuple[Outcome, bytes, str]:
        self.run_until(lambda: any(d[0] == task for d in self.delivered), f"task {task}")
        (found,) = [d[1:] for d in self.delivered if d[0] == task]
        return found


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A two-worker pool, closed after the test."""
    made = Harness(2)
    yield made
    made.pool.close()


def test_worker_killed_mid_write_of_a_large_result_costs_that_task_only(harness: Harness) -> None:
    """SIGKILL while a worker is writing a 32 MiB result: that task is LOST, the other worker's is not."""
    harness.submit(1, ones, [BIG])
    harness.run_until(lambda: harness.pool.result_bytes_in_flight > 0, "the large result to start arriving")
    # The reactor is not turning: the worker is blocked writing the rest of its result.
    assert 0 < harness.pool.result_bytes_in_flight < BIG
    (writer,) = [w for w in harness.pool._workers if w.item is not None]
    harness.submit(2, ones, [10])
    os.kill(writer.process.pid, signal.SIGKILL)
    outcome, blob, detail = harness.outcome(1)
    assert (outcome, blob) == (Outcome.LOST, b"")
    assert "worker process died" in detail and str(-signal.SIGKILL) in detail
    assert harness.outcome(2)[:2] == (Outcome.OK, dumps([b"\x01" * 10]))
    harness.submit(3, ones, [BIG])  # the replacement worker and the survivor both still work
    harness.submit(4, ones, [5])
    assert loads(harness.outcome(3)[1]) == [b"\x01" * BIG]
    assert harness.outcome(4)[0] is Outcome.OK


def test_setup_and_function_travel_once_per_worker() -> None:
    """A worker's second task of a job carries neither setup nor function: garbage in them is never read."""
    harness = Harness(1)
    try:
        harness.submit(1, pid_of, [0])
        first = loads(harness.outcome(1)[1])
        harness.submit(2, pid_of, [0], func_blob=b"not a pickle", setup_blob=b"not one either")
        assert loads(harness.outcome(2)[1]) == first
    finally:
        harness.pool.close()


def test_max_tasks_replaces_the_worker_and_time_limit_kills_only_its_task() -> None:
    """max_tasks=1 gives every task a fresh process; a task over its limit is reported TIMEOUT."""
    harness = Harness(1)
    try:
        harness.submit(1, pid_of, [0], max_tasks=1)
        harness.submit(2, pid_of, [0], max_tasks=1)
        assert loads(harness.outcome(1)[1]) != loads(harness.outcome(2)[1])
        harness.submit(3, time.sleep, [60], timeout=0.2)
        harness.submit(4, pid_of, [0])
        assert harness.outcome(3)[0] is Outcome.TIMEOUT
        assert harness.outcome(4)[0] is Outcome.OK
    finally:
        harness.pool.close()
