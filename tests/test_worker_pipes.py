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
from pathlib import Path
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


def after_a_while(value: int) -> int:
    """Return ``value`` after 20 ms: longer than a worker holds a finished result (``in_worker.HOLD``)."""
    time.sleep(0.02)
    return value


def wait_for_file(path: str) -> str:
    """Block until ``path`` exists (the test's signal), then return it."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return path


def make_file(path: str) -> str:
    """Create ``path`` (a signal to another task)."""
    with open(path, "w"):
        pass
    return path


Delivered = list[tuple[int, Outcome, bytes, str]]


class Harness:
    """A WorkerPool on a private reactor, and what it delivered (task id, outcome, blob, detail)."""

    def __init__(self, processes: int, batch: int = 1) -> None:
        self.reactor = EPollReactor()
        self.delivered: Delivered = []
        self.reported: list[int] = []  # tasks reported started (on_start), in order
        self.pool = WorkerPool(
            processes, self._deliver, self.reactor, on_start=lambda item: self.reported.append(item.task_id)
        )
        self.pool.batch = batch
        self.functions: dict[Callable[[Any], Any], int] = {}

    def _deliver(self, item: WorkItem, outcome: Outcome, blob: bytes, detail: str) -> None:
        self.delivered.append((item.task_id, outcome, blob, detail))

    def submit(self, task: int, func: Callable[[Any], Any], items: list[Any], **options: Any) -> None:
        self.pool.submit(self.item(task, func, items, **options))

    def submit_many(self, tasks: list[tuple[int, Callable[[Any], Any], list[Any]]]) -> None:
        """Submit several tasks in one step, as a node does with a TASK frame."""
        self.pool.submit_many([self.item(task, func, items) for task, func, items in tasks])

    def item(self, task: int, func: Callable[[Any], Any], items: list[Any], **options: Any) -> WorkItem:
        func_blob = options.pop("func_blob", None) or dumps((func, "map", None))
        setup_blob = options.pop("setup_blob", b"")
        fn = self.functions.setdefault(func, len(self.functions))  # a worker caches each id's function
        return WorkItem(7, 7, task, 1, setup_blob, fn, func_blob, dumps(items), **options)

    def tasks_done(self, *tasks: int) -> bool:
        """Whether every one of ``tasks`` has been delivered."""
        return set(tasks) <= {d[0] for d in self.delivered}

    def run_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Turn the reactor until ``predicate`` holds (fail after 30 s)."""
        deadline = time.monotonic() + 30
        while not predicate():
            if time.monotonic() > deadline:
                workers = [(w.process.pid, w.item, w.link.receiving) for w in self.pool._workers]
                pytest.fail(f"timed out waiting for {what}; delivered {self.delivered}, workers {workers}")
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


def test_a_result_leaves_while_the_next_task_of_its_batch_runs(tmp_path: Path) -> None:
    """A worker holding two tasks sends the first one's result without waiting for the second to end."""
    harness = Harness(1, batch=4)
    gate = str(tmp_path / "gate")
    try:
        harness.submit_many([(1, after_a_while, [1]), (2, wait_for_file, [gate])])
        assert len(harness.pool._workers[0].queue) == 2  # both written to the one worker
        assert loads(harness.outcome(1)[1]) == [1]  # while task 2 still waits for the gate
        make_file(gate)
        assert loads(harness.outcome(2)[1]) == [gate]
    finally:
        harness.pool.close()


def test_a_worker_killed_mid_batch_costs_only_its_unfinished_tasks(tmp_path: Path) -> None:
    """Killed running its second task: the first's sent result stands, the second is LOST, the rest run."""
    harness = Harness(1, batch=4)
    gate = str(tmp_path / "gate")
    try:
        harness.submit_many(
            [(1, after_a_while, [1]), (2, wait_for_file, [gate]), (3, pid_of, [0]), (4, pid_of, [0])]
        )
        assert harness.outcome(1)[0] is Outcome.OK
        (worker,) = harness.pool._workers
        harness.run_until(lambda: worker.board.started == 2, "the worker to start task 2")
        os.kill(worker.process.pid, signal.SIGKILL)
        harness.run_until(lambda: harness.tasks_done(2, 3, 4), "every task")
        assert [d[:2] for d in harness.delivered if d[0] != 2] == [
            (1, Outcome.OK),
            (3, Outcome.OK),
            (4, Outcome.OK),
        ]
        assert harness.outcome(2)[0] is Outcome.LOST
        assert loads(harness.outcome(3)[1]) != [worker.process.pid]  # run by the replacement, once
    finally:
        harness.pool.close()


def test_a_task_queued_on_a_busy_worker_can_be_withdrawn(tmp_path: Path) -> None:
    """A task written to a worker that is still running an earlier one is withdrawn; the worker skips it."""
    harness = Harness(1, batch=4)
    gate = str(tmp_path / "gate")
    try:
        harness.submit_many([(1, wait_for_file, [gate]), (2, pid_of, [0]), (3, pid_of, [0])])
        (worker,) = harness.pool._workers
        harness.run_until(lambda: worker.board.started == 1, "the worker to start task 1")
        dropped = harness.pool.withdraw(lambda item: item.task_id == 2)
        assert [item.task_id for item in dropped] == [2]
        assert harness.pool.withdraw(lambda item: item.task_id == 1) == []  # started: it finishes
        make_file(gate)
        harness.run_until(lambda: harness.tasks_done(1, 3), "tasks 1 and 3")
        assert [d[0] for d in harness.delivered] == [1, 3]
    finally:
        harness.pool.close()


def test_a_task_queued_behind_one_that_waits_for_it_is_taken_by_an_idle_worker(tmp_path: Path) -> None:
    """Task 3 queued behind task 1, which waits for it: once worker B idles it takes task 3, no deadlock."""
    harness = Harness(2, batch=4)
    gate_1, gate_2 = str(tmp_path / "gate1"), str(tmp_path / "gate2")
    try:
        harness.submit_many(
            [
                (1, wait_for_file, [gate_1]),
                (2, wait_for_file, [gate_2]),
                (3, make_file, [gate_1]),
                (4, pid_of, [0]),
            ]
        )
        assert sorted(len(worker.queue) for worker in harness.pool._workers) == [2, 2]
        make_file(gate_2)  # worker B finishes tasks 2 and 4 and idles; task 3 waits behind task 1
        harness.run_until(lambda: harness.tasks_done(1, 2, 3, 4), "every task")
        assert {d[1] for d in harness.delivered} == {Outcome.OK}
    finally:
        harness.pool.close()


def test_calls_that_report_running_wait_two_deep_on_a_worker_and_are_reported_once(tmp_path: Path) -> None:
    """An executor's calls: a worker holds its running call and the next, each reported once, when written."""
    harness = Harness(1, batch=8)
    gate = str(tmp_path / "gate")
    try:
        first = harness.item(1, wait_for_file, [gate], report_start=True)
        rest = [harness.item(task, pid_of, [0], report_start=True) for task in (2, 3, 4)]
        harness.pool.submit_many([first, *rest])
        (worker,) = harness.pool._workers
        assert [item.task_id for item in worker.queue] == [1, 2]  # the next call waits in its socket
        assert harness.reported == [1, 2]
        make_file(gate)
        harness.run_until(lambda: harness.tasks_done(1, 2, 3, 4), "every call")
        assert harness.reported == [1, 2, 3, 4]
        assert {d[1] for d in harness.delivered} == {Outcome.OK}
    finally:
        harness.pool.close()


def test_a_reported_call_queued_behind_a_long_one_is_taken_by_an_idle_worker(tmp_path: Path) -> None:
    """A reported call not yet begun does not wait behind a long one: an idle worker takes it, once."""
    harness = Harness(2, batch=8)
    gate = str(tmp_path / "gate")
    try:
        items = [
            harness.item(1, wait_for_file, [gate], report_start=True),
            harness.item(2, pid_of, [0], report_start=True),
            harness.item(3, pid_of, [0], report_start=True),
            harness.item(4, pid_of, [0], report_start=True),
        ]
        harness.pool.submit_many(items)
        queues = [[item.task_id for item in worker.queue] for worker in harness.pool._workers]
        assert queues == [[1, 3], [2, 4]]  # call 3 waits behind the gated call 1
        harness.run_until(lambda: harness.tasks_done(2, 3, 4), "the calls not behind the gate")
        assert not harness.tasks_done(1)
        ran_on = {task: loads(blob) for task, _, blob, _ in harness.delivered}
        assert ran_on[3] == ran_on[2]  # taken back from the busy worker, run by the free one
        make_file(gate)
        harness.run_until(lambda: harness.tasks_done(1), "the gated call")
        assert sorted(d[0] for d in harness.delivered) == [1, 2, 3, 4]  # each exactly once
        assert sorted(harness.reported) == [1, 2, 3, 4]  # reported once, though written twice
    finally:
        harness.pool.close()
