"""Behavioural conformance: ``achilles_like.Pool`` behaves like ``multiprocessing.Pool``.

Every check runs against both implementations through the ``make_pool``
fixture, parametrized over ``["stdlib", "achilles"]``: the stdlib run proves
the check states what ``multiprocessing.Pool`` really does, the achilles run
holds ``achilles_like.Pool`` (pointed at a module-scoped ``LocalCluster`` of
one node with two processes) to the same behaviour. Until
``achilles_like.Pool`` exists, the achilles runs are skipped.

Tests about the embedded-cluster default (``Pool(2)`` with nothing
configured) and about exiting the interpreter run as scripts in a subprocess
with a clean environment (no ``ACHILLES_*`` variable) in ``tmp_path``.

No test synchronises by sleeping: slow tasks wait for a gate file the test
creates (see ``pool_tasks``); every gate is opened when the test ends.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import multiprocessing.pool
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pool_tasks
import pytest
from conftest import run_python_script, wait_until
from pool_tasks import TaskError

import achilles_like
from achilles_like import LocalCluster

IMPLEMENTATIONS = ["stdlib", "achilles"]
NOT_IMPLEMENTED = "achilles_like.Pool not implemented yet"
RESULT_TIMEOUT = 60.0  # generous bound on any get() that is expected to succeed
SCRIPT_TIMEOUT = 180.0  # a script may start (and stop) an embedded cluster of its own
EXIT_AFTER_OUTPUT = 10.0  # seconds a script may take to exit after its last output line
SHORT = 0.05  # the timeout of a get/next/wait that is expected to time out

# Every method that must refuse new work once the pool is closed or terminated.
SUBMITTERS: dict[str, Callable[[Any], Any]] = {
    "apply": lambda pool: pool.apply(pool_tasks.square, (2,)),
    "apply_async": lambda pool: pool.apply_async(pool_tasks.square, (2,)),
    "map": lambda pool: pool.map(pool_tasks.square, [1, 2]),
    "map_async": lambda pool: pool.map_async(pool_tasks.square, [1, 2]),
    "starmap": lambda pool: pool.starmap(pool_tasks.add, [(1, 2)]),
    "starmap_async": lambda pool: pool.starmap_async(pool_tasks.add, [(1, 2)]),
    "imap": lambda pool: pool.imap(pool_tasks.square, [1, 2]),
    "imap_unordered": lambda pool: pool.imap_unordered(pool_tasks.square, [1, 2]),
}


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


def pool_available() -> bool:
    """Whether ``achilles_like.Pool`` exists yet."""
    return hasattr(achilles_like, "Pool")


@pytest.fixture(scope="module")
def pool_cluster() -> Iterator[LocalCluster]:
    """One node of two processes, shared by this module's achilles runs."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """The implementation under test; the achilles runs skip until ``achilles_like.Pool`` exists."""
    if request.param == "achilles" and not pool_available():
        pytest.skip(NOT_IMPLEMENTED)
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
    """Keyword arguments that point an achilles Pool at ``cluster``."""
    return {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}


@pytest.fixture
def make_pool(impl: str, request: pytest.FixtureRequest, gates: Gates) -> Iterator[Callable[..., Any]]:
    """A factory ``make_pool(processes=2, **kw)`` of pools of the implementation under test.

    Every pool it made is terminated and joined at teardown, after every gate was opened.
    """
    created: list[Any] = []
    if impl == "achilles":
        target = cluster_target(request.getfixturevalue("pool_cluster"))

        def make(processes: int | None = 2, **kwargs: Any) -> Any:
            pool = achilles_like.Pool(processes, **kwargs, **target)
            created.append(pool)
            return pool

    else:

        def make(processes: int | None = 2, **kwargs: Any) -> Any:
            pool = multiprocessing.Pool(processes, **kwargs)
            created.append(pool)
            return pool

    yield make
    gates.open_all()
    for pool in created:
        pool.terminate()
        pool.join()


@pytest.fixture
def pool(make_pool: Callable[..., Any]) -> Any:
    """A pool of two processes of the implementation under test."""
    return make_pool()


def started_marker(tmp_path: Path, name: str = "started") -> str:
    """A path a task creates when it starts running."""
    return str(tmp_path / name)


def wait_started(*markers: str) -> None:
    """Wait until every task that creates one of ``markers`` is running."""
    wait_until(lambda: all(os.path.exists(m) for m in markers), what="the gated tasks to start")


# -- apply, map, starmap ------------------------------------------------------------------------


def test_apply_with_args_and_kwds(pool: Any) -> None:
    """apply(func, args, kwds) calls func(*args, **kwds) in a worker and returns its result."""
    assert pool.apply(pool_tasks.scaled, (3,), {"factor": 2, "offset": 1}) == 7
    assert pool.apply(pool_tasks.square, (4,)) == 16


def test_apply_async_with_args_and_kwds(pool: Any) -> None:
    """apply_async(func, args, kwds).get() returns func(*args, **kwds)."""
    result = pool.apply_async(pool_tasks.scaled, (5,), {"offset": -1, "factor": 3})
    assert result.get(timeout=RESULT_TIMEOUT) == 14


def test_apply_runs_in_a_worker_process(pool: Any) -> None:
    """The function runs in another process, never in the caller's."""
    assert pool.apply(pool_tasks.pid_of) != os.getpid()


def test_map_returns_results_in_order(pool: Any) -> None:
    """map(func, iterable) returns [func(x) for x in iterable], in input order."""
    assert pool.map(pool_tasks.square, range(50)) == [x * x for x in range(50)]


def test_map_with_chunksize(pool: Any) -> None:
    """map with an explicit chunksize returns the same ordered results."""
    assert pool.map(pool_tasks.square, range(23), chunksize=3) == [x * x for x in range(23)]


def test_map_accepts_a_generator(pool: Any) -> None:
    """map accepts an iterable without a length (a generator expression)."""
    assert pool.map(pool_tasks.square, (x for x in range(10))) == [x * x for x in range(10)]


def test_map_of_empty_input_is_empty(pool: Any) -> None:
    """map over an empty iterable returns an empty list."""
    assert pool.map(pool_tasks.square, []) == []


def test_map_async_returns_results_in_order(pool: Any) -> None:
    """map_async(...).get() returns the ordered list of results."""
    assert pool.map_async(pool_tasks.square, range(20), chunksize=4).get(RESULT_TIMEOUT) == [
        x * x for x in range(20)
    ]


def test_starmap_unpacks_argument_tuples(pool: Any) -> None:
    """starmap(func, [(a, b), ...]) returns [func(a, b), ...] in order."""
    pairs = [(i, 10 * i) for i in range(15)]
    assert pool.starmap(pool_tasks.add, pairs) == [11 * i for i in range(15)]
    assert pool.starmap(pool_tasks.add, pairs, chunksize=4) == [11 * i for i in range(15)]


def test_starmap_async_unpacks_argument_tuples(pool: Any) -> None:
    """starmap_async(func, [(a, b), ...]).get() returns [func(a, b), ...] in order."""
    result = pool.starmap_async(pool_tasks.scaled, [(i, 2, 1) for i in range(12)], chunksize=5)
    assert result.get(timeout=RESULT_TIMEOUT) == [2 * i + 1 for i in range(12)]


def test_map_default_chunksize_is_the_stdlib_formula(pool: Any, gates: Gates) -> None:
    """map without chunksize splits 100 items for 2 processes into chunks of ceil(100 / (2 * 4)) = 13."""
    # Item 0 blocks its worker until the last item ran elsewhere, so the items
    # that ran in item 0's process are exactly item 0's chunk.
    gate, last = gates.new(), 99
    results = pool.map(pool_tasks.chunk_probe, [(i, gate, last) for i in range(last + 1)])
    assert all(ok for _, ok in results), "item 0 gave up waiting: the last item never ran"
    first_pid = results[0][0]
    assert [i for i, (pid, _) in enumerate(results) if pid == first_pid] == list(range(13))


def test_processes_run_in_parallel(pool: Any, tmp_path: Path) -> None:
    """A pool of 2 processes runs 2 tasks at the same time (they meet at a rendezvous)."""
    directory = str(tmp_path / "meet")
    results = [pool.apply_async(pool_tasks.rendezvous, (directory, str(i), 2)) for i in range(2)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [True, True]


def test_workers_are_reused(pool: Any) -> None:
    """Without maxtasksperchild, 10 sequential tasks run in at most `processes` (2) distinct processes."""
    pids = {pool.apply(pool_tasks.pid_of) for _ in range(10)}
    assert 1 <= len(pids) <= 2
    assert os.getpid() not in pids


# -- callbacks ----------------------------------------------------------------------------------


def test_apply_async_callback_runs_without_get(pool: Any) -> None:
    """apply_async's callback is called once with the result, in the caller's process, without get()."""
    calls: list[tuple[Any, int, threading.Thread]] = []
    called = threading.Event()

    def callback(value: Any) -> None:
        calls.append((value, os.getpid(), threading.current_thread()))
        called.set()

    pool.apply_async(pool_tasks.square, (7,), callback=callback)
    assert called.wait(RESULT_TIMEOUT)
    [(value, pid, thread)] = calls
    assert value == 49
    assert pid == os.getpid()
    assert thread is not threading.current_thread()  # the caller was blocked in Event.wait


def test_map_async_callback_gets_the_full_list_before_get_returns(pool: Any) -> None:
    """map_async's callback is called exactly once, with the whole result list, before get() returns."""
    calls: list[tuple[Any, int, threading.Thread]] = []

    def callback(value: Any) -> None:
        calls.append((value, os.getpid(), threading.current_thread()))

    result = pool.map_async(pool_tasks.square, range(10), chunksize=3, callback=callback)
    assert result.get(timeout=RESULT_TIMEOUT) == [x * x for x in range(10)]
    [(value, pid, thread)] = calls
    assert value == [x * x for x in range(10)]
    assert pid == os.getpid()
    assert thread is not threading.current_thread()  # the pool's result thread, not the caller's


def test_apply_async_error_callback_gets_the_exception(pool: Any) -> None:
    """error_callback is called once with the very exception get() raises; callback is not called."""
    successes: list[Any] = []
    errors: list[BaseException] = []
    result = pool.apply_async(
        pool_tasks.fail_on_three, (3,), callback=successes.append, error_callback=errors.append
    )
    with pytest.raises(TaskError) as caught:
        result.get(timeout=RESULT_TIMEOUT)
    assert len(errors) == 1
    assert errors[0] is caught.value
    assert successes == []


def test_map_async_error_callback_gets_the_exception(pool: Any) -> None:
    """map_async's error_callback is called once with the task's exception; callback is not called."""
    successes: list[Any] = []
    errors: list[BaseException] = []
    result = pool.map_async(
        pool_tasks.fail_on_three, range(6), callback=successes.append, error_callback=errors.append
    )
    with pytest.raises(TaskError, match=r"^item 3 is unlucky$"):
        result.get(timeout=RESULT_TIMEOUT)
    assert len(errors) == 1
    assert type(errors[0]) is TaskError
    assert str(errors[0]) == "item 3 is unlucky"
    assert successes == []


# -- AsyncResult --------------------------------------------------------------------------------


def test_get_timeout_raises_multiprocessing_timeout_error(pool: Any, gates: Gates) -> None:
    """get(timeout) on an unfinished task raises multiprocessing.TimeoutError; a later get() succeeds."""
    gate = gates.new()
    result = pool.apply_async(pool_tasks.wait_for, (gate, "done"))
    with pytest.raises(multiprocessing.TimeoutError) as caught:
        result.get(timeout=SHORT)
    assert type(caught.value) is multiprocessing.TimeoutError
    gates.open(gate)
    assert result.get(timeout=RESULT_TIMEOUT) == "done"


def test_wait_with_timeout_returns_none_without_result(pool: Any, gates: Gates) -> None:
    """wait(timeout) on an unfinished task returns None after the timeout and the task stays not ready."""
    gate = gates.new()
    result = pool.apply_async(pool_tasks.wait_for, (gate, 1))
    assert result.wait(SHORT) is None
    assert result.ready() is False
    gates.open(gate)
    assert result.wait(RESULT_TIMEOUT) is None
    assert result.ready() is True


def test_ready_and_successful_transitions(pool: Any, gates: Gates) -> None:
    """ready() is False then True; successful() raises ValueError before ready, then returns True."""
    gate = gates.new()
    result = pool.apply_async(pool_tasks.wait_for, (gate, 1))
    assert result.ready() is False
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    gates.open(gate)
    result.wait(RESULT_TIMEOUT)
    assert result.ready() is True
    assert result.successful() is True


def test_successful_is_false_after_an_exception(pool: Any) -> None:
    """successful() returns False for a task that raised."""
    result = pool.apply_async(pool_tasks.fail_on_three, (3,))
    result.wait(RESULT_TIMEOUT)
    assert result.ready() is True
    assert result.successful() is False


# -- imap, imap_unordered -----------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_yields_results_in_order(pool: Any, chunksize: int) -> None:
    """imap yields func(x) for every x, in input order, for chunksize 1 and 3."""
    assert list(pool.imap(pool_tasks.square, range(20), chunksize=chunksize)) == [x * x for x in range(20)]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_unordered_yields_every_result(pool: Any, chunksize: int) -> None:
    """imap_unordered yields func(x) exactly once for every x, for chunksize 1 and 3."""
    results = list(pool.imap_unordered(pool_tasks.square, range(20), chunksize=chunksize))
    assert sorted(results) == [x * x for x in range(20)]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_of_empty_input_is_empty(pool: Any, method: str) -> None:
    """imap and imap_unordered over an empty iterable yield nothing."""
    assert list(getattr(pool, method)(pool_tasks.square, [])) == []


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_iterator_next_timeout_raises_timeout_error(pool: Any, gates: Gates, method: str) -> None:
    """The iterator's next(timeout) raises multiprocessing.TimeoutError while the task runs, then yields."""
    gate = gates.new()
    iterator = getattr(pool, method)(pool_tasks.wait_for_item, [(gate, "late")])
    with pytest.raises(multiprocessing.TimeoutError) as caught:
        iterator.next(timeout=SHORT)
    assert type(caught.value) is multiprocessing.TimeoutError
    gates.open(gate)
    assert iterator.next(timeout=RESULT_TIMEOUT) == "late"
    with pytest.raises(StopIteration):
        next(iterator)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_error_at_item_k_yields_earlier_items_then_raises(pool: Any, chunksize: int) -> None:
    """imap over 0..7 failing at item 3 yields 0, 1, 4 (items 0..2), then raises the TaskError."""
    # With chunksize 3 item 3 starts a chunk, so the stdlib's chunk-granular
    # failure and the per-item view agree. What happens after the exception
    # differs in the stdlib between chunksize 1 (iteration continues) and
    # chunksize > 1 (the generator ends), so it is not checked here.
    iterator = pool.imap(pool_tasks.fail_on_three, range(8), chunksize=chunksize)
    assert [next(iterator) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(TaskError, match=r"^item 3 is unlucky$"):
        next(iterator)


def test_imap_unordered_raises_the_task_error(pool: Any) -> None:
    """imap_unordered raises the task's exception when its failed item comes up."""
    with pytest.raises(TaskError, match=r"^item 3 is unlucky$"):
        list(pool.imap_unordered(pool_tasks.fail_on_three, range(8)))


def test_imap_with_chunksize_one_keeps_every_process_busy(pool: Any, tmp_path: Path) -> None:
    """imap with chunksize=1 runs items 2k and 2k+1 at the same time (4 rendezvous of 2), not one by one."""
    items = [(str(tmp_path / f"pair-{i // 2}"), str(i % 2), 2) for i in range(8)]
    assert list(pool.imap(pool_tasks.rendezvous_item, items, chunksize=1)) == [True] * 8


# -- exceptions ---------------------------------------------------------------------------------


def assert_remote_traceback(error: BaseException, function_name: str) -> None:
    """``error`` has a multiprocessing.pool.RemoteTraceback cause holding the remote traceback text."""
    cause = error.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    assert "Traceback (most recent call last)" in cause.tb
    assert function_name in cause.tb
    assert function_name in str(cause)


def test_apply_raises_the_users_exception_with_remote_traceback(pool: Any) -> None:
    """apply re-raises the task's own exception type and message, caused by a RemoteTraceback."""
    with pytest.raises(TaskError) as caught:
        pool.apply(pool_tasks.fail_on_three, (3,))
    assert type(caught.value) is TaskError
    assert str(caught.value) == "item 3 is unlucky"
    assert_remote_traceback(caught.value, "fail_on_three")


def test_map_raises_the_users_exception_with_remote_traceback(pool: Any) -> None:
    """map re-raises the first failing task's exception, caused by a RemoteTraceback."""
    with pytest.raises(TaskError) as caught:
        pool.map(pool_tasks.fail_on_three, range(8), chunksize=2)
    assert type(caught.value) is TaskError
    assert str(caught.value) == "item 3 is unlucky"
    assert_remote_traceback(caught.value, "fail_on_three")


def test_unpicklable_result_raises_maybe_encoding_error(pool: Any) -> None:
    """A result whose pickling raises gives MaybeEncodingError naming the value and the reason."""
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as caught:
        pool.apply(pool_tasks.make_unpicklable, (0,))
    assert str(caught.value) == (
        "Error sending result: '<Unpicklable>'. Reason: 'TypeError('Unpicklable refuses to be pickled')'"
    )


def test_generator_result_raises_maybe_encoding_error(pool: Any) -> None:
    """A generator object as a result gives MaybeEncodingError whose reason says it cannot be pickled."""
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as caught:
        pool.apply(pool_tasks.make_generator, (0,))
    assert "generator" in str(caught.value)
    assert "pickle" in str(caught.value)


def test_unpicklable_result_in_map_raises_maybe_encoding_error(pool: Any) -> None:
    """map whose results cannot be pickled raises MaybeEncodingError with the pickling reason."""
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as caught:
        pool.map(pool_tasks.make_unpicklable, range(3))
    assert "TypeError('Unpicklable refuses to be pickled')" in str(caught.value)


def test_pool_still_works_after_task_errors(pool: Any) -> None:
    """After a raising task and an unpicklable result, the same pool runs new work normally."""
    with pytest.raises(TaskError):
        pool.apply(pool_tasks.fail_on_three, (3,))
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(pool_tasks.make_unpicklable)
    assert pool.map(pool_tasks.square, range(10)) == [x * x for x in range(10)]


# -- constructor arguments ----------------------------------------------------------------------


def test_zero_processes_is_refused(make_pool: Callable[..., Any]) -> None:
    """Pool(0) raises ValueError("Number of processes must be at least 1")."""
    with pytest.raises(ValueError, match=r"^Number of processes must be at least 1$"):
        make_pool(0)


def test_zero_maxtasksperchild_is_refused(make_pool: Callable[..., Any]) -> None:
    """maxtasksperchild=0 raises ValueError("maxtasksperchild must be a positive int or None")."""
    with pytest.raises(ValueError, match=r"^maxtasksperchild must be a positive int or None$"):
        make_pool(maxtasksperchild=0)


def test_non_callable_initializer_is_refused(make_pool: Callable[..., Any]) -> None:
    """A non-callable initializer raises TypeError("initializer must be a callable")."""
    with pytest.raises(TypeError, match=r"^initializer must be a callable$"):
        make_pool(initializer=3)


def test_initializer_globals_are_visible_to_tasks(make_pool: Callable[..., Any]) -> None:
    """initializer(*initargs) sets a module global in each worker that every task then reads."""
    pool = make_pool(initializer=pool_tasks.init_state, initargs=("ready",))
    assert pool.map(pool_tasks.read_state, range(8)) == ["ready"] * 8
    assert pool.apply(pool_tasks.read_state) == "ready"


def read_init_log(path: Path) -> list[int]:
    """The pids the ``log_init`` initializer wrote to ``path``, one per call."""
    return [int(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_initializer_runs_once_per_worker(make_pool: Callable[..., Any], tmp_path: Path) -> None:
    """Over two jobs, the initializer ran exactly once in every process that ran a task."""
    log = tmp_path / "init.log"
    pool = make_pool(initializer=pool_tasks.log_init, initargs=(str(log), "set"))
    pids = pool.map(pool_tasks.pid_of, range(20))
    pids += [pool.apply(pool_tasks.pid_of) for _ in range(5)]
    assert pool.map(pool_tasks.read_state, range(4)) == ["set"] * 4
    pool.close()
    pool.join()
    logged = read_init_log(log)
    assert len(logged) == len(set(logged)), f"an initializer ran twice in one process: {logged}"
    assert set(pids) <= set(logged)


def test_maxtasksperchild_one_gives_a_new_process_per_task(make_pool: Callable[..., Any]) -> None:
    """With maxtasksperchild=1, six sequential tasks run in six distinct processes."""
    pool = make_pool(maxtasksperchild=1)
    pids = [pool.apply(pool_tasks.pid_of) for _ in range(6)]
    assert len(set(pids)) == 6
    assert os.getpid() not in pids


def test_maxtasksperchild_two_caps_tasks_per_process(make_pool: Callable[..., Any]) -> None:
    """With maxtasksperchild=2, no process runs more than 2 of 8 sequential tasks."""
    pool = make_pool(maxtasksperchild=2)
    pids = [pool.apply(pool_tasks.pid_of) for _ in range(8)]
    assert max(pids.count(pid) for pid in pids) <= 2
    assert len(set(pids)) >= 4


def test_replacement_workers_run_the_initializer(make_pool: Callable[..., Any], tmp_path: Path) -> None:
    """With maxtasksperchild=1 every replacement process runs the initializer before its task."""
    log = tmp_path / "init.log"
    pool = make_pool(maxtasksperchild=1, initializer=pool_tasks.log_init, initargs=(str(log), "fresh"))
    states = [pool.apply(pool_tasks.read_state) for _ in range(4)]
    pids = [pool.apply(pool_tasks.pid_of) for _ in range(4)]
    pool.close()
    pool.join()
    assert states == ["fresh"] * 4
    logged = read_init_log(log)
    assert len(logged) == len(set(logged))
    assert set(pids) <= set(logged)


# -- close, terminate, join, context manager ----------------------------------------------------


@pytest.mark.parametrize("method", list(SUBMITTERS))
@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_no_new_work_after_stop(pool: Any, stop: str, method: str) -> None:
    """After close() or terminate(), every submitting method raises ValueError("Pool not running")."""
    getattr(pool, stop)()
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        SUBMITTERS[method](pool)


def test_join_before_close_is_refused(pool: Any) -> None:
    """join() on a running pool raises ValueError("Pool is still running")."""
    with pytest.raises(ValueError, match=r"^Pool is still running$"):
        pool.join()


def test_close_then_join_waits_for_outstanding_work(pool: Any) -> None:
    """close() lets submitted tasks finish; join() returns only once they have."""
    results = [pool.apply_async(pool_tasks.slow_square, (x, 0.2)) for x in range(3)]
    pool.close()
    pool.join()
    assert [r.ready() for r in results] == [True, True, True]
    assert [r.get(timeout=0) for r in results] == [0, 1, 4]


def test_terminate_does_not_wait_for_running_tasks(pool: Any, gates: Gates, tmp_path: Path) -> None:
    """terminate() and join() return promptly while a task is still blocked."""
    started = started_marker(tmp_path)
    pool.apply_async(pool_tasks.start_and_wait, (started, gates.new(), 1))
    wait_started(started)
    begun = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - begun < 10.0


def test_context_manager_returns_the_pool(make_pool: Callable[..., Any]) -> None:
    """`with pool as p` binds p to the pool itself, which runs work inside the block."""
    pool = make_pool()
    with pool as entered:
        assert entered is pool
        assert entered.map(pool_tasks.square, range(5)) == [0, 1, 4, 9, 16]


def test_context_manager_exit_terminates(make_pool: Callable[..., Any]) -> None:
    """After the with block the pool is terminated: apply_async raises ValueError("Pool not running")."""
    with make_pool() as pool:
        pool.apply(pool_tasks.square, (2,))
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply_async(pool_tasks.square, (2,))


def test_context_manager_exit_does_not_wait(
    make_pool: Callable[..., Any], gates: Gates, tmp_path: Path
) -> None:
    """Leaving the with block while a task is blocked returns promptly (it terminates, not joins)."""
    started = started_marker(tmp_path)
    begun = 0.0
    with make_pool() as pool:
        pool.apply_async(pool_tasks.start_and_wait, (started, gates.new(), 1))
        wait_started(started)
        begun = time.monotonic()
    assert time.monotonic() - begun < 10.0


def test_entering_a_closed_pool_is_refused(pool: Any) -> None:
    """`with` on a closed pool raises ValueError("Pool not running")."""
    pool.close()
    with pytest.raises(ValueError, match=r"^Pool not running$"), pool:
        pass


# -- several pools, several threads -------------------------------------------------------------


def test_sequential_pools_each_run_their_own_jobs(make_pool: Callable[..., Any]) -> None:
    """A pool closed and joined, then a second pool: each returns exactly its own results."""
    first = make_pool()
    assert first.map(pool_tasks.square, range(10)) == [x * x for x in range(10)]
    first.close()
    first.join()
    second = make_pool()
    assert second.map(pool_tasks.negate, range(10)) == [-x for x in range(10)]


def test_two_live_pools_keep_their_jobs_apart(make_pool: Callable[..., Any]) -> None:
    """Two pools alive at once, with interleaved async jobs, each return exactly their own results."""
    first, second = make_pool(), make_pool()
    squares = first.map_async(pool_tasks.square, range(30), chunksize=2)
    negated = second.map_async(pool_tasks.negate, range(30), chunksize=2)
    assert negated.get(timeout=RESULT_TIMEOUT) == [-x for x in range(30)]
    assert squares.get(timeout=RESULT_TIMEOUT) == [x * x for x in range(30)]


def test_terminating_one_pool_leaves_another_working(make_pool: Callable[..., Any]) -> None:
    """terminate() on one pool does not disturb a second pool."""
    first, second = make_pool(), make_pool()
    first.terminate()
    first.join()
    assert second.map(pool_tasks.square, range(10)) == [x * x for x in range(10)]


def test_pools_used_concurrently_from_threads(make_pool: Callable[..., Any]) -> None:
    """Three threads each create, use, close and join their own pool; each gets exactly its own results."""

    def use_own_pool(factor: int) -> list[int]:
        pool = make_pool()
        try:
            return pool.starmap(pool_tasks.scaled, [(x, factor) for x in range(25)], chunksize=2)
        finally:
            pool.close()
            pool.join()

    with ThreadPoolExecutor(3) as threads:
        futures = {factor: threads.submit(use_own_pool, factor) for factor in (1, 2, 3)}
        results = {factor: future.result(timeout=120) for factor, future in futures.items()}
    assert results == {factor: [x * factor for x in range(25)] for factor in (1, 2, 3)}


def test_one_pool_used_from_several_threads(pool: Any) -> None:
    """Eight threads each call apply 20 times on one pool; every call gets exactly its own result."""

    def caller(thread: int) -> list[int]:
        return [pool.apply(pool_tasks.add, (1000 * thread, i)) for i in range(20)]

    with ThreadPoolExecutor(8) as threads:
        futures = [threads.submit(caller, t) for t in range(8)]
        results = [future.result(timeout=120) for future in futures]
    assert results == [[1000 * t + i for i in range(20)] for t in range(8)]


# -- achilles only: signature and cluster target ------------------------------------------------


def test_signature_matches_multiprocessing_pool() -> None:
    """Pool(processes, initializer, initargs, maxtasksperchild, *, host, port, username, secret_key)."""
    if not pool_available():
        pytest.skip(NOT_IMPLEMENTED)
    parameters = inspect.signature(achilles_like.Pool).parameters
    positional = [
        (p.name, p.default) for p in parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    stdlib = inspect.signature(multiprocessing.Pool).parameters
    assert positional == [(name, p.default) for name, p in stdlib.items()]
    assert positional == [
        ("processes", None),
        ("initializer", None),
        ("initargs", ()),
        ("maxtasksperchild", None),
    ]
    for name in ("host", "port", "username", "secret_key"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[name].default is None


def ancestors(pid: int) -> list[int]:
    """The parent pids of ``pid`` up to init, read from /proc."""
    chain: list[int] = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_pool_with_an_address_runs_on_that_cluster(request: pytest.FixtureRequest) -> None:
    """Pool(2, host=..., port=..., secret_key=...) runs its tasks in processes of that cluster's node."""
    if not pool_available():
        pytest.skip(NOT_IMPLEMENTED)
    pool_cluster: LocalCluster = request.getfixturevalue("pool_cluster")
    [node] = pool_cluster.nodes
    with achilles_like.Pool(2, **cluster_target(pool_cluster)) as pool:
        pids = pool.map(pool_tasks.pid_of, range(6))
        assert all(node.pid in ancestors(pid) for pid in set(pids)), (node.pid, pids)


# -- scripts: the embedded default and exiting the interpreter ----------------------------------

POOL_IMPORT = {"stdlib": "from multiprocessing import Pool", "achilles": "from achilles_like import Pool"}


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any ACHILLES_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env.update(extra)
    return env


def run_script(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``source`` as a script in ``tmp_path`` (no .env there); return its last output line as JSON.

    The script must exit 0 within SCRIPT_TIMEOUT and within EXIT_AFTER_OUTPUT
    seconds of printing ``printed_at`` (time.time()) in that line.
    """
    assert not (tmp_path / ".env").exists()
    result = run_python_script(tmp_path, source, *args, env=env, timeout=SCRIPT_TIMEOUT)
    exited_at = time.time()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines, f"the script printed nothing; stderr: {result.stderr}"
    output: dict[str, Any] = json.loads(lines[-1])
    assert exited_at - output["printed_at"] < EXIT_AFTER_OUTPUT, "the script was slow to exit"
    return output


EMBEDDED_SCRIPT = """
import json
import os
import sys
import tempfile
import time

{pool_import}


def square(x):
    return x * x


def meet(item):
    directory, name, parties = item
    open(os.path.join(directory, name), "a").close()
    deadline = time.monotonic() + 15
    while len(os.listdir(directory)) < parties and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(os.listdir(directory)) >= parties, os.getpid()


if __name__ == "__main__":
    processes = json.loads(sys.argv[1])
    parties = processes or os.cpu_count()
    directory = tempfile.mkdtemp(dir=".")
    with Pool(processes) as pool:
        squares = pool.map(square, range(10))
        met = pool.map(meet, [(directory, str(i), parties) for i in range(parties)], chunksize=1)
    print(json.dumps({{
        "squares": squares,
        "met": [ok for ok, _ in met],
        "pids": [pid for _, pid in met],
        "parties": parties,
        "me": os.getpid(),
        "printed_at": time.time(),
    }}), flush=True)
"""


@pytest.mark.parametrize("processes", [2, None], ids=["Pool(2)", "Pool()"])
def test_unconfigured_pool_runs_processes_workers(impl: str, tmp_path: Path, processes: int | None) -> None:
    """With nothing configured, Pool(n) runs n tasks at once (None: cpu_count) off the caller's process."""
    output = run_script(
        tmp_path, EMBEDDED_SCRIPT.format(pool_import=POOL_IMPORT[impl]), json.dumps(processes)
    )
    assert output["squares"] == [x * x for x in range(10)]
    assert output["parties"] == (processes or os.cpu_count())
    assert output["met"] == [True] * output["parties"]
    assert len(set(output["pids"])) == output["parties"]
    assert output["me"] not in output["pids"]


UNCLOSED_SCRIPT = """
import gc
import json
import os
import time

{pool_import}


def square(x):
    return x * x


if __name__ == "__main__":
    pool = Pool(2, **json.loads(os.environ["CONFORMANCE_POOL_KWARGS"]))
    squares = pool.map(square, range(10))
    if "{mode}" == "collected":
        del pool
        gc.collect()
    print(json.dumps({{"squares": squares, "printed_at": time.time()}}), flush=True)
"""


@pytest.mark.parametrize("where", ["configured", "embedded"])
@pytest.mark.parametrize("mode", ["collected", "left-at-exit"])
def test_unclosed_pool_does_not_hang_the_interpreter(
    impl: str, request: pytest.FixtureRequest, tmp_path: Path, mode: str, where: str
) -> None:
    """A pool never closed (garbage-collected, or still referenced at exit) lets the script exit promptly."""
    # "configured" points an achilles Pool at this module's cluster, "embedded"
    # gives it nothing so it starts its own; the stdlib runs the same script both times.
    kwargs: dict[str, Any] = {}
    if impl == "achilles" and where == "configured":
        kwargs = cluster_target(request.getfixturevalue("pool_cluster"))
    output = run_script(
        tmp_path,
        UNCLOSED_SCRIPT.format(pool_import=POOL_IMPORT[impl], mode=mode),
        env=clean_env(CONFORMANCE_POOL_KWARGS=json.dumps(kwargs)),
    )
    assert output["squares"] == [x * x for x in range(10)]


# -- errors keep their own type ----------------------------------------------------------------


def test_an_argument_whose_pickling_raises_raises_that_error(pool: Any) -> None:
    """apply and map with an argument whose __reduce__ raises RuntimeError raise that RuntimeError."""
    with pytest.raises(RuntimeError, match="ReduceRaises will not be pickled"):
        pool.apply(pool_tasks.square, (pool_tasks.ReduceRaises(),))
    with pytest.raises(RuntimeError, match="ReduceRaises will not be pickled"):
        pool.map(pool_tasks.square, [1, pool_tasks.ReduceRaises(), 3])
    assert pool.apply(pool_tasks.square, (3,)) == 9  # the pool goes on


def test_an_argument_whose_unpickling_raises_in_the_worker_raises_that_error(impl: str, pool: Any) -> None:
    """An argument that fails to unpickle in the worker raises the original exception type.

    Ours only: the stdlib's worker dies on this and its ``apply`` never returns (a documented,
    deliberate difference).
    """
    if impl == "stdlib":
        pytest.skip("multiprocessing.Pool hangs on this")
    with pytest.raises(ValueError, match="UnpicklesBadly cannot be rebuilt here"):
        pool.apply(pool_tasks.square, (pool_tasks.UnpicklesBadly(),))
    assert pool.apply(pool_tasks.square, (4,)) == 16


ATEXIT_SCRIPT = """
import atexit
import json
import time
{pool_import}

def at_exit():
    print(json.dumps({{"late": pool.apply(abs, (-3,)), "printed_at": time.time()}}), flush=True)

atexit.register(at_exit)  # before the pool exists
pool = Pool(1)
print(json.dumps({{"early": pool.apply(abs, (-2,))}}), flush=True)
"""


def test_an_atexit_function_registered_before_the_pool_can_still_use_it(impl: str, tmp_path: Path) -> None:
    """A function registered with atexit before the Pool was made still gets results from it at exit.

    Ours only: the stdlib's pool is finalized first and that ``apply`` never
    returns (a documented, deliberate difference). The library's own exit hook
    is registered at import, so it runs after every atexit function registered since.
    """
    if impl == "stdlib":
        pytest.skip("multiprocessing.Pool hangs on this")
    output = run_script(tmp_path, ATEXIT_SCRIPT.format(pool_import=POOL_IMPORT[impl]), env=clean_env())
    assert output["late"] == 3


def test_a_finished_call_keeps_no_reference_to_its_argument(pool: Any) -> None:
    """Once an AsyncResult is ready and dropped, a weak reference to its argument dies."""
    import gc
    import weakref

    argument = pool_tasks.Payload(7)
    ref = weakref.ref(argument)
    result = pool.apply_async(pool_tasks.pid_of, (argument,))
    result.get(RESULT_TIMEOUT)
    del result, argument
    gc.collect()
    assert ref() is None


def test_manager_proxies_work_inside_tasks(pool: Any) -> None:
    """A multiprocessing.Manager() queue and dict passed as arguments work inside tasks."""
    with multiprocessing.Manager() as manager:
        queue, mapping = manager.Queue(), manager.dict()
        assert pool.apply(pool_tasks.put_in, (queue, 42)) == 42
        assert queue.get(timeout=RESULT_TIMEOUT) == 42
        assert pool.starmap(pool_tasks.set_in, [(mapping, k, k * k) for k in range(4)]) == [0, 1, 2, 3]
        assert dict(mapping) == {0: 0, 1: 1, 2: 4, 3: 9}


def test_a_manager_sees_a_proxy_released_once_the_task_and_caller_drop_it(pool: Any) -> None:
    """A proxy passed to a task is released on the manager once the caller drops it: workers keep none."""
    with multiprocessing.Manager() as manager:
        before = manager._number_of_objects()  # type: ignore[attr-defined]
        mapping = manager.dict()
        assert manager._number_of_objects() == before + 1  # type: ignore[attr-defined]
        assert pool.apply(pool_tasks.set_in, (mapping, "k", 1)) == "k"
        del mapping
        wait_until(
            lambda: manager._number_of_objects() == before,  # type: ignore[attr-defined]
            what="the manager to see the proxy released",
        )


def test_the_initializer_runs_when_the_pool_starts(make_pool: Callable[..., Any], tmp_path: Path) -> None:
    """Pool(2, initializer) runs the initializer in two processes with no task ever submitted."""
    log = tmp_path / "init.log"
    pool = make_pool(2, initializer=pool_tasks.log_init, initargs=(str(log), "early"))
    wait_until(lambda: len(read_init_log(log)) >= 2, what="the initializer to run in two workers")
    pool.close()
    pool.join()
    assert len(set(read_init_log(log))) == 2
