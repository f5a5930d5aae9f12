"""Behavioural conformance: ``achilles_like.ProcessPoolExecutor`` behaves like the stdlib one.

Every check runs against both implementations through the ``make_executor``
fixture, parametrized over ``["stdlib", "achilles"]``: the stdlib run proves
the check states what ``concurrent.futures.ProcessPoolExecutor`` really does,
the achilles run holds ``achilles_like.ProcessPoolExecutor`` (pointed at a
module-scoped ``LocalCluster`` of one node with two processes) to the same
behaviour. Until it exists, the achilles runs are skipped.

``map(..., buffersize=)`` only exists from Python 3.14 on; on 3.11 it is
checked against ours alone, by counting how far the input was advanced.

No test synchronises by sleeping: slow tasks wait for a gate file the test
creates (see ``pool_tasks``); every gate is opened when the test ends.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures.process
import inspect
import itertools
import json
import multiprocessing.pool
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pool_tasks
import pytest
from conftest import run_python_script, wait_until
from pool_tasks import TaskError

import achilles_like
from achilles_like import LocalCluster

IMPLEMENTATIONS = ["stdlib", "achilles"]
NOT_IMPLEMENTED = "achilles_like.ProcessPoolExecutor not implemented yet"
RESULT_TIMEOUT = 60.0  # generous bound on any result() that is expected to succeed
SCRIPT_TIMEOUT = 180.0  # a script may start (and stop) an embedded cluster of its own
EXIT_AFTER_OUTPUT = 10.0  # seconds a script may take to exit after its last output line
SHORT = 0.05  # the timeout of a result/map that is expected to time out
# Tasks submitted behind two blocked workers; the last is far behind any prefetch
# (the stdlib moves at most max_workers + 1 = 3 items into its call queue).
QUEUED = 20
# Where a remote traceback may live: the stdlib executor's private class, or the Pool's public one.
REMOTE_TRACEBACK_TYPES = (concurrent.futures.process._RemoteTraceback, multiprocessing.pool.RemoteTraceback)


# -- fixtures -----------------------------------------------------------------------------------


class Gates:
    """Gate files for gated tasks: each ``new()`` path is created by ``open()`` or at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.issued: list[str] = []

    def new(self) -> str:
        """A fresh, still closed gate path."""
        path = str(self.root / f"gate-{len(self.issued)}")
        self.issued.append(path)
        return path

    @staticmethod
    def open(path: str) -> None:
        """Open one gate: the tasks waiting for it finish."""
        Path(path).touch()

    def open_all(self) -> None:
        """Open every gate handed out, so no gated task outlives its test."""
        for path in self.issued:
            self.open(path)


def executor_available() -> bool:
    """Whether ``achilles_like.ProcessPoolExecutor`` exists yet."""
    return hasattr(achilles_like, "ProcessPoolExecutor")


def require_ours() -> None:
    """Skip the calling test until ``achilles_like.ProcessPoolExecutor`` exists."""
    if not executor_available():
        pytest.skip(NOT_IMPLEMENTED)


@pytest.fixture(scope="module")
def executor_cluster() -> Iterator[LocalCluster]:
    """One node of two processes, shared by this module's achilles runs."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """The implementation under test; the achilles runs skip until ours exists."""
    if request.param == "achilles":
        require_ours()
    return str(request.param)


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Gates]:
    """Gate files in ``tmp_path``; all of them are opened when the test ends."""
    root = tmp_path / "gates"
    root.mkdir()
    created = Gates(root)
    yield created
    created.open_all()


def cluster_target(cluster: LocalCluster) -> dict[str, Any]:
    """Keyword arguments that point our executor at ``cluster``."""
    return {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}


def ours_factory(request: pytest.FixtureRequest, created: list[cf.Executor]) -> Callable[..., cf.Executor]:
    """A factory of our executors aimed at the module's cluster, recording each in ``created``."""
    target = cluster_target(request.getfixturevalue("executor_cluster"))

    def make(max_workers: int | None = 2, **kwargs: Any) -> cf.Executor:
        executor: cf.Executor = achilles_like.ProcessPoolExecutor(max_workers, **kwargs, **target)
        created.append(executor)
        return executor

    return make


@pytest.fixture
def make_executor(
    impl: str, request: pytest.FixtureRequest, gates: Gates
) -> Iterator[Callable[..., cf.Executor]]:
    """A factory ``make_executor(max_workers=2, **kw)`` of executors of the implementation under test.

    Every executor it made is shut down at teardown (cancelling what is still
    queued), after every gate was opened so nothing running can block that.
    """
    created: list[cf.Executor] = []
    if impl == "achilles":
        make = ours_factory(request, created)
    else:

        def make(max_workers: int | None = 2, **kwargs: Any) -> cf.Executor:
            executor = cf.ProcessPoolExecutor(max_workers, **kwargs)
            created.append(executor)
            return executor

    yield make
    gates.open_all()
    for executor in created:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def executor(make_executor: Callable[..., cf.Executor]) -> cf.Executor:
    """An executor of two workers of the implementation under test."""
    return make_executor()


@pytest.fixture
def ours(request: pytest.FixtureRequest, gates: Gates) -> Iterator[cf.Executor]:
    """Our executor of two workers alone (for what the 3.11 stdlib lacks); skips until it exists."""
    require_ours()
    created: list[cf.Executor] = []
    yield ours_factory(request, created)()
    gates.open_all()
    for executor in created:
        executor.shutdown(wait=True, cancel_futures=True)


def fill_workers(executor: cf.Executor, gates: Gates, tmp_path: Path) -> tuple[str, list[cf.Future[Any]]]:
    """Occupy both workers with tasks blocked on one gate; return once both are running.

    Returns the gate and the two blocked futures (whose results are 0 and 1).
    """
    gate = gates.new()
    started = [str(tmp_path / f"started-{i}") for i in range(2)]
    blockers = [executor.submit(pool_tasks.start_and_wait, path, gate, i) for i, path in enumerate(started)]
    wait_until(lambda: all(os.path.exists(path) for path in started), what="both workers to be busy")
    return gate, blockers


def wait_done(futures: list[cf.Future[Any]], timeout: float = RESULT_TIMEOUT) -> bool:
    """Wait until every future is done (finished or cancelled); return whether that happened in time.

    Done callbacks, not ``concurrent.futures.wait``: the stdlib's wait() never
    counts a future cancelled by ``shutdown(cancel_futures=True)`` as done
    (it stays CANCELLED, never CANCELLED_AND_NOTIFIED), but cancel() does run
    the future's done callbacks.
    """
    remaining = len(futures)
    lock = threading.Lock()
    all_done = threading.Event()

    def one_done(_: cf.Future[Any]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if remaining == 0:
                all_done.set()

    if not futures:
        return True
    for future in futures:
        future.add_done_callback(one_done)
    return all_done.wait(timeout)


class CountingInput:
    """An iterator over ``source`` that counts how many items were pulled from it.

    Pulling more than ``limit`` items fails loudly, so an eager map over a huge
    input fails the test instead of exhausting memory.
    """

    def __init__(self, source: Iterable[Any], limit: int = 10_000) -> None:
        self.source = iter(source)
        self.limit = limit
        self.pulled = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        value = next(self.source)
        self.pulled += 1
        if self.pulled > self.limit:
            raise AssertionError(f"map pulled more than {self.limit} input items: it is not lazy")
        return value


# -- the Executor interface ---------------------------------------------------------------------


def test_is_a_concurrent_futures_executor(executor: cf.Executor) -> None:
    """The executor is an instance of concurrent.futures.Executor."""
    assert isinstance(executor, cf.Executor)


def test_submit_returns_a_future_with_the_result(executor: cf.Executor) -> None:
    """submit(fn, *args, **kwargs) returns a concurrent.futures.Future; result() is fn(*args, **kwargs)."""
    future = executor.submit(pool_tasks.scaled, 3, factor=2, offset=1)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=RESULT_TIMEOUT) == 7
    assert future.done() is True
    assert future.exception() is None


def test_tasks_run_in_another_process(executor: cf.Executor) -> None:
    """A submitted function runs in another process, never in the caller's."""
    assert executor.submit(pool_tasks.pid_of).result(timeout=RESULT_TIMEOUT) != os.getpid()


def test_workers_run_in_parallel(executor: cf.Executor, tmp_path: Path) -> None:
    """An executor of 2 workers runs 2 tasks at the same time (they meet at a rendezvous)."""
    directory = str(tmp_path / "meet")
    futures = [executor.submit(pool_tasks.rendezvous, directory, str(i), 2) for i in range(2)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [True, True]


def test_result_timeout_raises_timeout_error(executor: cf.Executor, gates: Gates) -> None:
    """result(timeout) on an unfinished task raises concurrent.futures.TimeoutError; later it succeeds."""
    assert cf.TimeoutError is TimeoutError  # the builtin, from Python 3.11 on
    gate = gates.new()
    future = executor.submit(pool_tasks.wait_for, gate, "done")
    with pytest.raises(cf.TimeoutError) as caught:
        future.result(timeout=SHORT)
    assert type(caught.value) is cf.TimeoutError
    gates.open(gate)
    assert future.result(timeout=RESULT_TIMEOUT) == "done"


def test_as_completed_yields_in_completion_order(executor: cf.Executor, gates: Gates) -> None:
    """as_completed yields a quick future before a blocked one submitted earlier."""
    gate = gates.new()
    blocked = executor.submit(pool_tasks.wait_for, gate, "slow")
    quick = executor.submit(pool_tasks.square, 3)
    completed = cf.as_completed([blocked, quick], timeout=RESULT_TIMEOUT)
    first = next(completed)
    assert first is quick
    gates.open(gate)
    second = next(completed)
    assert second is blocked
    assert (first.result(), second.result()) == (9, "slow")
    with pytest.raises(StopIteration):
        next(completed)


def test_wait_first_completed(executor: cf.Executor, gates: Gates) -> None:
    """wait(FIRST_COMPLETED) returns the quick future done and the blocked one not done."""
    blocked = executor.submit(pool_tasks.wait_for, gates.new(), "slow")
    quick = executor.submit(pool_tasks.square, 4)
    done, not_done = cf.wait([blocked, quick], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_COMPLETED)
    assert done == {quick}
    assert not_done == {blocked}
    assert quick.result() == 16


def test_wait_first_exception(executor: cf.Executor, gates: Gates) -> None:
    """wait(FIRST_EXCEPTION) returns as soon as one future raised, with the blocked one not done."""
    blocked = executor.submit(pool_tasks.wait_for, gates.new(), "slow")
    failing = executor.submit(pool_tasks.fail_on_three, 3)
    done, not_done = cf.wait([blocked, failing], timeout=RESULT_TIMEOUT, return_when=cf.FIRST_EXCEPTION)
    assert done == {failing}
    assert not_done == {blocked}
    assert type(failing.exception()) is TaskError


def test_wait_all_completed_times_out_with_pending(executor: cf.Executor, gates: Gates) -> None:
    """wait(ALL_COMPLETED, timeout) returns after the timeout with the blocked future in not_done."""
    blocked = executor.submit(pool_tasks.wait_for, gates.new(), "slow")
    quick = executor.submit(pool_tasks.square, 5)
    assert quick.result(timeout=RESULT_TIMEOUT) == 25
    done, not_done = cf.wait([blocked, quick], timeout=SHORT, return_when=cf.ALL_COMPLETED)
    assert done == {quick}
    assert not_done == {blocked}


def test_wait_all_completed(executor: cf.Executor, gates: Gates) -> None:
    """wait(ALL_COMPLETED) returns once every future is done, the blocked one included."""
    gate = gates.new()
    blocked = executor.submit(pool_tasks.wait_for, gate, "slow")
    quick = executor.submit(pool_tasks.square, 6)
    gates.open(gate)
    done, not_done = cf.wait([blocked, quick], timeout=RESULT_TIMEOUT, return_when=cf.ALL_COMPLETED)
    assert done == {blocked, quick}
    assert not_done == set()
    assert [blocked.result(), quick.result()] == ["slow", 36]


def test_done_callback_called_once_in_callers_process(executor: cf.Executor, gates: Gates) -> None:
    """A done callback added before completion is called once, with the future, in the caller's process."""
    calls: list[tuple[cf.Future[Any], int, threading.Thread]] = []
    called = threading.Event()

    def callback(future: cf.Future[Any]) -> None:
        calls.append((future, os.getpid(), threading.current_thread()))
        called.set()

    gate = gates.new()
    future = executor.submit(pool_tasks.wait_for, gate, 4)
    future.add_done_callback(callback)
    assert calls == []
    gates.open(gate)
    assert called.wait(RESULT_TIMEOUT)
    [(seen, pid, thread)] = calls
    assert seen is future
    assert seen.result() == 4
    assert pid == os.getpid()
    assert thread is not threading.current_thread()  # the caller was blocked in Event.wait


def test_done_callback_on_a_done_future_runs_at_once(executor: cf.Executor) -> None:
    """A done callback added to a finished future runs immediately, before add_done_callback returns."""
    future = executor.submit(pool_tasks.square, 2)
    assert future.result(timeout=RESULT_TIMEOUT) == 4
    calls: list[cf.Future[Any]] = []
    future.add_done_callback(calls.append)
    assert calls == [future]


# -- map ----------------------------------------------------------------------------------------


def test_map_returns_results_in_order(executor: cf.Executor) -> None:
    """map(fn, iterable) yields fn(x) for every x, in input order."""
    assert list(executor.map(pool_tasks.square, range(30))) == [x * x for x in range(30)]


def test_map_with_several_iterables_stops_at_the_shortest(executor: cf.Executor) -> None:
    """map(fn, a, b) yields fn(a[i], b[i]) and stops with the shortest iterable, like zip."""
    assert list(executor.map(pool_tasks.add, [1, 2, 3], [10, 20])) == [11, 22]
    assert list(executor.map(pool_tasks.scaled, range(5), range(5), range(5))) == [
        x * x + x for x in range(5)
    ]


def test_map_with_chunksize(executor: cf.Executor) -> None:
    """map with chunksize=3 yields the same ordered results."""
    assert list(executor.map(pool_tasks.square, range(23), chunksize=3)) == [x * x for x in range(23)]


def test_map_of_empty_input_is_empty(executor: cf.Executor) -> None:
    """map over an empty iterable yields nothing."""
    assert list(executor.map(pool_tasks.square, [])) == []


def test_map_chunksize_below_one_is_refused(executor: cf.Executor) -> None:
    """map(..., chunksize=0) raises ValueError("chunksize must be >= 1.")."""
    with pytest.raises(ValueError, match=r"^chunksize must be >= 1\.$"):
        executor.map(pool_tasks.square, range(3), chunksize=0)


def test_map_timeout_raises_timeout_error(executor: cf.Executor, gates: Gates) -> None:
    """map(..., timeout) raises concurrent.futures.TimeoutError when a result is not ready in time."""
    results = executor.map(pool_tasks.wait_for, [gates.new()], ["never"], timeout=SHORT)
    with pytest.raises(cf.TimeoutError) as caught:
        next(results)
    assert type(caught.value) is cf.TimeoutError


def test_map_error_yields_earlier_results_then_raises(executor: cf.Executor) -> None:
    """map over 0..5 failing at item 3 yields 0, 1, 4 and then raises the TaskError."""
    results = executor.map(pool_tasks.fail_on_three, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(TaskError, match=r"^item 3 is unlucky$"):
        next(results)


# -- exceptions ---------------------------------------------------------------------------------


def test_exception_keeps_its_type_and_remote_traceback(executor: cf.Executor) -> None:
    """A raising task gives its own exception type and message, caused by the remote traceback text."""
    future = executor.submit(pool_tasks.fail_on_three, 3)
    error = future.exception(timeout=RESULT_TIMEOUT)
    assert type(error) is TaskError
    assert str(error) == "item 3 is unlucky"
    with pytest.raises(TaskError) as caught:
        future.result()
    assert caught.value is error
    cause = error.__cause__
    assert isinstance(cause, REMOTE_TRACEBACK_TYPES)
    assert "Traceback (most recent call last)" in cause.tb
    assert "fail_on_three" in cause.tb
    assert "fail_on_three" in str(cause)


def test_executor_still_works_after_a_task_error(executor: cf.Executor) -> None:
    """After a raising task the same executor runs new work normally."""
    assert type(executor.submit(pool_tasks.fail_on_three, 3).exception(timeout=RESULT_TIMEOUT)) is TaskError
    assert list(executor.map(pool_tasks.square, range(10))) == [x * x for x in range(10)]


def test_failing_initializer_breaks_the_pool(make_executor: Callable[..., cf.Executor]) -> None:
    """When the initializer raises, futures fail with BrokenProcessPool and so does a later submit."""
    executor = make_executor(initializer=pool_tasks.failing_init)
    future = executor.submit(pool_tasks.square, 2)
    with pytest.raises(cf.process.BrokenProcessPool):
        future.result(timeout=RESULT_TIMEOUT)
    with pytest.raises(cf.process.BrokenProcessPool):
        executor.submit(pool_tasks.square, 3)


# -- constructor arguments ----------------------------------------------------------------------


def test_zero_workers_is_refused(make_executor: Callable[..., cf.Executor]) -> None:
    """max_workers=0 raises ValueError("max_workers must be greater than 0")."""
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        make_executor(0)


def test_initializer_globals_are_visible_to_tasks(make_executor: Callable[..., cf.Executor]) -> None:
    """initializer(*initargs) sets a module global in each worker that every task then reads."""
    executor = make_executor(initializer=pool_tasks.init_state, initargs=("ready",))
    assert list(executor.map(pool_tasks.read_state, range(8))) == ["ready"] * 8
    assert executor.submit(pool_tasks.read_state).result(timeout=RESULT_TIMEOUT) == "ready"


def test_initializer_runs_once_per_worker(make_executor: Callable[..., cf.Executor], tmp_path: Path) -> None:
    """Over many tasks, the initializer ran exactly once in every process that ran a task."""
    log = tmp_path / "init.log"
    executor = make_executor(initializer=pool_tasks.log_init, initargs=(str(log), "set"))
    pids = list(executor.map(pool_tasks.pid_of, range(20)))
    pids += [executor.submit(pool_tasks.pid_of).result(timeout=RESULT_TIMEOUT) for _ in range(5)]
    executor.shutdown(wait=True)
    logged = [int(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(logged) == len(set(logged)), f"an initializer ran twice in one process: {logged}"
    assert set(pids) <= set(logged)


# -- cancel and shutdown ------------------------------------------------------------------------


def test_cancel_a_task_not_yet_started(executor: cf.Executor, gates: Gates, tmp_path: Path) -> None:
    """cancel() on a queued task returns True, the future is cancelled and the task never runs."""
    gate, blockers = fill_workers(executor, gates, tmp_path)
    markers = [str(tmp_path / f"ran-{i}") for i in range(QUEUED)]
    queued = [executor.submit(pool_tasks.touch_and_return, marker, i) for i, marker in enumerate(markers)]
    victim = queued[-1]
    assert victim.cancel() is True
    assert victim.cancelled() is True
    assert victim.done() is True
    with pytest.raises(cf.CancelledError):
        victim.result(timeout=0)
    gates.open(gate)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in blockers] == [0, 1]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in queued[:-1]] == list(range(QUEUED - 1))
    executor.shutdown(wait=True)
    assert not os.path.exists(markers[-1]), "the cancelled task ran"
    assert all(os.path.exists(marker) for marker in markers[:-1])


def test_cancel_a_running_task_fails(executor: cf.Executor, gates: Gates, tmp_path: Path) -> None:
    """cancel() on a task that is running returns False and the task completes normally."""
    gate, blockers = fill_workers(executor, gates, tmp_path)
    assert blockers[0].cancel() is False
    assert blockers[0].cancelled() is False
    gates.open(gate)
    assert blockers[0].result(timeout=RESULT_TIMEOUT) == 0


def test_shutdown_wait_waits_for_running_tasks(executor: cf.Executor) -> None:
    """shutdown(wait=True) returns only after every submitted task has finished."""
    futures = [executor.submit(pool_tasks.slow_square, x, 0.2) for x in range(3)]
    executor.shutdown(wait=True)
    assert [f.done() for f in futures] == [True, True, True]
    assert [f.result(timeout=0) for f in futures] == [0, 1, 4]


def test_shutdown_without_wait_lets_running_tasks_finish(executor: cf.Executor, gates: Gates) -> None:
    """shutdown(wait=False) returns while a task is blocked; that task still completes afterwards."""
    gate = gates.new()
    future = executor.submit(pool_tasks.wait_for, gate, "finished")
    begun = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - begun < 10.0
    assert future.done() is False
    gates.open(gate)
    assert future.result(timeout=RESULT_TIMEOUT) == "finished"


def test_shutdown_cancel_futures_cancels_pending_tasks(
    executor: cf.Executor, gates: Gates, tmp_path: Path
) -> None:
    """shutdown(cancel_futures=True) cancels queued futures; they never run, the others complete."""
    gate, blockers = fill_workers(executor, gates, tmp_path)
    markers = [str(tmp_path / f"ran-{i}") for i in range(QUEUED)]
    queued = [executor.submit(pool_tasks.touch_and_return, marker, i) for i, marker in enumerate(markers)]
    executor.shutdown(wait=False, cancel_futures=True)
    # The stdlib cancels from its manager thread, after shutdown(wait=False) returned.
    assert wait_done([queued[-1]]), "the last queued future was neither cancelled nor run"
    assert queued[-1].cancelled() is True
    assert [f.cancelled() for f in blockers] == [False, False]
    gates.open(gate)
    assert wait_done(blockers + queued), "some futures never finished nor were cancelled"
    assert [f.result(timeout=0) for f in blockers] == [0, 1]
    for i, future in enumerate(queued):
        if future.cancelled():
            assert not os.path.exists(markers[i]), f"cancelled task {i} ran"
        else:
            assert future.result(timeout=0) == i
            assert os.path.exists(markers[i])


def node_holds(cluster: LocalCluster, count: int) -> Callable[[], bool]:
    """A condition: the cluster's one node holds ``count`` tasks (running, or queued on it)."""

    def holds() -> bool:
        nodes = achilles_like.getClusterStatus(**cluster_target(cluster))["nodes"]
        return [node["busy"] for node in nodes] == [count]

    return holds


def test_a_call_queued_on_a_node_is_not_running_and_can_be_withdrawn(
    ours: cf.Executor, executor_cluster: LocalCluster, gates: Gates, tmp_path: Path
) -> None:
    """A call queued on a node is not running(); cancel() withdraws it from there and it never runs."""
    gate, blockers = fill_workers(ours, gates, tmp_path)
    later_gate = gates.new()
    started = [str(tmp_path / f"later-{i}") for i in range(2)]
    later = [ours.submit(pool_tasks.start_and_wait, path, later_gate, i) for i, path in enumerate(started)]
    wait_until(node_holds(executor_cluster, 4), what="the node to hold two calls behind its two busy workers")
    assert [f.running() for f in later] == [False, False]
    assert later[1].cancel() is True
    assert later[1].cancelled() is True
    wait_until(node_holds(executor_cluster, 3), what="the cancelled call to leave the node")
    gates.open(gate)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in blockers] == [0, 1]
    wait_until(later[0].running, what="the remaining call to be taken by a worker")
    assert later[0].cancel() is False
    gates.open(later_gate)
    assert later[0].result(timeout=RESULT_TIMEOUT) == 0
    ours.shutdown(wait=True)
    assert os.path.exists(started[0])
    assert not os.path.exists(started[1]), "the withdrawn call ran"


def test_shutdown_cancel_futures_withdraws_calls_already_on_the_node(
    ours: cf.Executor, executor_cluster: LocalCluster, gates: Gates, tmp_path: Path
) -> None:
    """shutdown(cancel_futures=True) cancels every call no worker has taken, even those on the node."""
    gate, blockers = fill_workers(ours, gates, tmp_path)
    markers = [str(tmp_path / f"ran-{i}") for i in range(QUEUED)]
    queued = [ours.submit(pool_tasks.touch_and_return, marker, i) for i, marker in enumerate(markers)]
    wait_until(node_holds(executor_cluster, 4), what="the node to hold two calls behind its two busy workers")
    ours.shutdown(wait=False, cancel_futures=True)
    assert wait_done(queued), "a call no worker had taken was neither cancelled nor run"
    assert [f.cancelled() for f in queued] == [True] * QUEUED
    gates.open(gate)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in blockers] == [0, 1]
    ours.shutdown(wait=True)
    assert [m for m in markers if os.path.exists(m)] == [], "a cancelled call ran"
    wait_until(node_holds(executor_cluster, 0), what="the node to hold nothing")


def test_submit_after_shutdown_is_refused(executor: cf.Executor) -> None:
    """submit after shutdown raises RuntimeError("cannot schedule new futures after shutdown")."""
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        executor.submit(pool_tasks.square, 2)


def test_context_manager_returns_the_executor(executor: cf.Executor) -> None:
    """`with executor as e` binds e to the executor itself, which runs work inside the block."""
    with executor as entered:
        assert entered is executor
        assert entered.submit(pool_tasks.square, 5).result(timeout=RESULT_TIMEOUT) == 25


def test_context_manager_exit_waits_and_shuts_down(executor: cf.Executor) -> None:
    """Leaving the with block waits for submitted tasks, and the executor then refuses new work."""
    with executor:
        futures = [executor.submit(pool_tasks.slow_square, x, 0.2) for x in range(3)]
    assert [f.done() for f in futures] == [True, True, True]
    assert [f.result(timeout=0) for f in futures] == [0, 1, 4]
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        executor.submit(pool_tasks.square, 2)


def test_one_executor_used_from_several_threads(executor: cf.Executor) -> None:
    """Eight threads each submit 20 tasks to one executor; every future has exactly its own result."""

    def caller(thread: int) -> list[int]:
        futures = [executor.submit(pool_tasks.add, 1000 * thread, i) for i in range(20)]
        return [f.result(timeout=RESULT_TIMEOUT) for f in futures]

    with cf.ThreadPoolExecutor(8) as threads:
        futures = [threads.submit(caller, t) for t in range(8)]
        results = [future.result(timeout=120) for future in futures]
    assert results == [[1000 * t + i for i in range(20)] for t in range(8)]


# -- ours only: names, signatures, buffersize ---------------------------------------------------


def test_executor_is_exported_under_both_names() -> None:
    """achilles_like.Executor is achilles_like.ProcessPoolExecutor, a concurrent.futures.Executor subclass."""
    require_ours()
    assert achilles_like.Executor is achilles_like.ProcessPoolExecutor
    assert issubclass(achilles_like.ProcessPoolExecutor, cf.Executor)


def test_signature_matches_the_stdlib_executor() -> None:
    """(max_workers, mp_context, initializer, initargs, *, host, port, username, secret_key), as specified."""
    require_ours()
    parameters = inspect.signature(achilles_like.ProcessPoolExecutor).parameters
    positional = [
        (p.name, p.default) for p in parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert positional == [
        ("max_workers", None),
        ("mp_context", None),
        ("initializer", None),
        ("initargs", ()),
    ]
    for name in ("host", "port", "username", "secret_key"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[name].default is None


def test_map_signature_has_buffersize() -> None:
    """map(fn, *iterables, timeout=None, chunksize=1, buffersize=None), as in Python 3.14, then progress."""
    require_ours()
    parameters = inspect.signature(achilles_like.ProcessPoolExecutor.map).parameters
    assert [
        (name, p.default) for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ] == [
        ("timeout", None),
        ("chunksize", 1),
        ("buffersize", None),
        ("progress", None),  # beyond the stdlib, keyword-only and off by default
    ]
    assert parameters["iterables"].kind is inspect.Parameter.VAR_POSITIONAL


def test_map_buffersize_bounds_how_far_input_is_read(ours: cf.Executor) -> None:
    """With buffersize=3, map has read at most 3 items before the first result and 3 + k after k results."""
    source = CountingInput(range(40))
    results = ours.map(pool_tasks.square, source, buffersize=3)  # type: ignore[call-arg]
    assert source.pulled <= 3
    for k in range(1, 11):
        assert next(results) == (k - 1) ** 2
        assert source.pulled <= 3 + k
    assert list(results) == [x * x for x in range(10, 40)]


def test_map_buffersize_bounds_every_iterable(ours: cf.Executor) -> None:
    """With several iterables and buffersize=2, each input is read at most 2 + k items after k results."""
    first, second = CountingInput(range(30)), CountingInput(range(100, 130))
    results = ours.map(pool_tasks.add, first, second, buffersize=2)  # type: ignore[call-arg]
    assert first.pulled <= 2
    assert second.pulled <= 2
    for k in range(1, 6):
        assert next(results) == 2 * (k - 1) + 100
        assert first.pulled <= 2 + k
        assert second.pulled <= 2 + k
    assert list(results) == [2 * x + 100 for x in range(5, 30)]


def test_map_buffersize_makes_an_endless_input_usable(ours: cf.Executor) -> None:
    """map over an endless iterator with buffersize yields its first results without reading it all."""
    source = CountingInput(itertools.count(), limit=1000)
    results = ours.map(pool_tasks.square, source, buffersize=4, chunksize=2)  # type: ignore[call-arg]
    assert list(itertools.islice(results, 12)) == [x * x for x in range(12)]
    assert source.pulled <= 12 + 4 * 2


def test_map_without_buffersize_still_returns_everything(ours: cf.Executor) -> None:
    """buffersize=None keeps the classic behaviour: every result, in order."""
    results = ours.map(pool_tasks.square, CountingInput(range(25)), buffersize=None)  # type: ignore[call-arg]
    assert list(results) == [x * x for x in range(25)]


@pytest.mark.parametrize(
    ("buffersize", "error", "message"),
    [
        (0, ValueError, r"^buffersize must be None or > 0$"),
        (-1, ValueError, r"^buffersize must be None or > 0$"),
        (2.5, TypeError, r"^buffersize must be an integer or None$"),
    ],
)
def test_map_buffersize_is_checked(
    ours: cf.Executor, buffersize: object, error: type[Exception], message: str
) -> None:
    """A buffersize that is not None or an int >= 1 is refused at once, with Python 3.14's error."""
    with pytest.raises(error, match=message):
        ours.map(pool_tasks.square, range(3), buffersize=buffersize)  # type: ignore[call-arg]


# -- scripts: the embedded default --------------------------------------------------------------

EXECUTOR_IMPORT = {
    "stdlib": "from concurrent.futures import ProcessPoolExecutor",
    "achilles": "from achilles_like import ProcessPoolExecutor",
}


def run_script(directory: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script in ``directory`` with no ACHILLES_* setting; fail if it hangs."""
    return run_python_script(directory, source, timeout=SCRIPT_TIMEOUT)


EMBEDDED_SCRIPT = """
import json
import os
import tempfile
import time

{executor_import}


def square(x):
    return x * x


def meet(directory, name, parties):
    open(os.path.join(directory, name), "a").close()
    deadline = time.monotonic() + 15
    while len(os.listdir(directory)) < parties and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(os.listdir(directory)) >= parties, os.getpid()


if __name__ == "__main__":
    directory = tempfile.mkdtemp(dir=".")
    executor = ProcessPoolExecutor(2)
    squares = list(executor.map(square, range(10)))
    met = [executor.submit(meet, directory, str(i), 2) for i in range(2)]
    met = [future.result(timeout=60) for future in met]
    executor.shutdown()
    print(json.dumps({{
        "squares": squares,
        "met": [ok for ok, _ in met],
        "pids": [pid for _, pid in met],
        "me": os.getpid(),
        "printed_at": time.time(),
    }}), flush=True)
"""


def test_unconfigured_executor_runs_two_workers(impl: str, tmp_path: Path) -> None:
    """With nothing configured, ProcessPoolExecutor(2) runs 2 tasks at once off the caller, exits promptly."""
    result = run_script(tmp_path, EMBEDDED_SCRIPT.format(executor_import=EXECUTOR_IMPORT[impl]))
    exited_at = time.time()
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.splitlines()[-1])
    assert exited_at - output["printed_at"] < EXIT_AFTER_OUTPUT
    assert output["squares"] == [x * x for x in range(10)]
    assert output["met"] == [True, True]
    assert len(set(output["pids"])) == 2
    assert output["me"] not in output["pids"]


# -- errors keep their own type ----------------------------------------------------------------


def test_an_argument_whose_pickling_raises_raises_that_error(executor: cf.Executor) -> None:
    """submit with an argument whose __reduce__ raises RuntimeError: result() raises that RuntimeError."""
    future = executor.submit(pool_tasks.square, pool_tasks.ReduceRaises())
    with pytest.raises(RuntimeError, match="ReduceRaises will not be pickled"):
        future.result(RESULT_TIMEOUT)
    assert executor.submit(pool_tasks.square, 5).result(RESULT_TIMEOUT) == 25


def test_a_remote_error_carries_the_executor_s_remote_traceback_type(executor: cf.Executor) -> None:
    """An exception from the function has a concurrent.futures.process._RemoteTraceback as its cause."""
    future = executor.submit(pool_tasks.fail_on_three, 3)
    with pytest.raises(pool_tasks.TaskError) as caught:
        future.result(RESULT_TIMEOUT)
    assert isinstance(caught.value.__cause__, concurrent.futures.process._RemoteTraceback)
    assert "fail_on_three" in str(caught.value.__cause__)


def test_a_call_whose_worker_dies_raises_broken_process_pool(executor: cf.Executor) -> None:
    """A call that kills its worker process fails with a BrokenProcessPool that says what happened."""
    future = executor.submit(pool_tasks.exit_abruptly)
    with pytest.raises(cf.process.BrokenProcessPool) as caught:
        future.result(RESULT_TIMEOUT)
    assert "terminated abruptly" in str(caught.value) or "died" in str(caught.value)
    executor.shutdown(wait=True)  # returns promptly after the failure


def test_submit_after_interpreter_shutdown_began_is_refused(tmp_path: Path) -> None:
    """An atexit function that submits after interpreter shutdown began gets the stdlib's RuntimeError."""
    require_ours()
    script = tmp_path / "late_submit.py"
    script.write_text(
        textwrap.dedent(
            """
            import atexit, threading
            import achilles_like

            executor = achilles_like.ProcessPoolExecutor(1)

            def late():
                try:
                    executor.submit(print, "never")
                except RuntimeError as error:
                    print("refused:", error, flush=True)

            atexit.register(late)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, env=env
    )
    assert "refused: cannot schedule new futures after interpreter shutdown" in done.stdout, done.stderr


def test_a_finished_call_keeps_no_reference_to_its_argument(executor: cf.Executor) -> None:
    """Once a future is done and dropped, a weak reference to its argument dies."""
    import gc
    import weakref

    argument = pool_tasks.Payload(7)
    ref = weakref.ref(argument)
    future = executor.submit(pool_tasks.pid_of, argument)
    future.result(RESULT_TIMEOUT)
    del future, argument
    gc.collect()
    assert ref() is None


EXIT_SCRIPT = """
import os
import sys
import threading

{executor_import}


def mark(path):
    with open(path, "w") as out:
        out.write("done")
    return path


if __name__ == "__main__":
    executor = ProcessPoolExecutor(2)
    executor.submit(mark, os.path.abspath("from-main"))
    thread = threading.Thread(target=lambda: executor.submit(mark, os.path.abspath("from-thread")))
    thread.start()
    thread.join()
    # No result() and no shutdown(): the interpreter exits with the work submitted.
"""


def test_work_submitted_before_exit_finishes(impl: str, tmp_path: Path) -> None:
    """Calls submitted from the main script and from a thread run to the end when the interpreter exits."""
    result = run_script(tmp_path, EXIT_SCRIPT.format(executor_import=EXECUTOR_IMPORT[impl]))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-main").read_text() == "done"
    assert (tmp_path / "from-thread").read_text() == "done"


def test_manager_proxies_work_inside_calls(executor: cf.Executor) -> None:
    """A multiprocessing.Manager() queue passed to submit works inside the call."""
    import multiprocessing

    with multiprocessing.Manager() as manager:
        queue = manager.Queue()
        assert executor.submit(pool_tasks.put_in, queue, 7).result(RESULT_TIMEOUT) == 7
        assert queue.get(timeout=RESULT_TIMEOUT) == 7


def test_a_result_that_cannot_be_pickled_raises_the_pickling_error(executor: cf.Executor) -> None:
    """A result whose pickling raises TypeError: result() raises that TypeError with a remote traceback."""
    future = executor.submit(pool_tasks.make_unpicklable)
    with pytest.raises(TypeError, match="Unpicklable refuses to be pickled") as caught:
        future.result(RESULT_TIMEOUT)
    assert isinstance(caught.value.__cause__, concurrent.futures.process._RemoteTraceback)
    assert executor.submit(pool_tasks.square, 6).result(RESULT_TIMEOUT) == 36
