"""Edge cases a review found, checked against multiprocessing.Pool and achilles_like.Pool alike.

Each once left a caller waiting forever or broke the whole pool; the stdlib
handles each by failing only the call concerned.
"""

from __future__ import annotations

import gc
import multiprocessing
import queue
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pool_tasks
import pytest
from conftest import target, wait_until

import achilles_like
from achilles_like import LocalCluster

RESULT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[LocalCluster]:
    """One node of two processes for the achilles half."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


@pytest.fixture(params=["stdlib", "achilles"])
def make_pool(request: pytest.FixtureRequest, shared_cluster: LocalCluster) -> Callable[..., Any]:
    """A factory of pools of the parametrized implementation."""
    if request.param == "stdlib":
        return lambda: multiprocessing.Pool(2)
    target = {
        "host": shared_cluster.host,
        "port": shared_cluster.port,
        "secret_key": shared_cluster.secret_key,
    }
    return lambda: achilles_like.Pool(2, **target)


def test_an_unpicklable_argument_fails_only_its_call(make_pool: Callable[..., Any]) -> None:
    """apply_async with an argument that cannot be pickled: that call raises TypeError, the pool goes on."""
    with make_pool() as pool:
        good = pool.apply_async(pool_tasks.square, (3,))
        bad = pool.apply_async(pool_tasks.square, ((i for i in range(3)),))
        with pytest.raises(TypeError, match="pickle"):
            bad.get(RESULT_TIMEOUT)
        assert good.get(RESULT_TIMEOUT) == 9
        assert pool.apply(pool_tasks.square, (4,)) == 16


def test_a_result_the_caller_cannot_unpickle_fails_only_its_call(
    shared_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result whose unpickling raises in the caller fails that call; other calls still finish.

    Ours only: the stdlib's result-handler thread dies on this, and its pool hangs.
    """
    target = {
        "host": shared_cluster.host,
        "port": shared_cluster.port,
        "secret_key": shared_cluster.secret_key,
    }
    with achilles_like.Pool(2, **target) as pool:
        pool.apply(pool_tasks.square, (1,))  # workers exist before the flag is set here
        monkeypatch.setenv("ACHILLES_TEST_REFUSE_RESULTS", "1")
        bad = pool.apply_async(pool_tasks.make_refused)
        good = pool.apply_async(pool_tasks.square, (5,))
        with pytest.raises(ValueError, match="cannot rebuild"):
            bad.get(RESULT_TIMEOUT)
        assert good.get(RESULT_TIMEOUT) == 25


def _raising_input() -> Iterator[int]:
    yield from (1, 2, 3)
    raise RuntimeError("input broke")


def test_imap_input_that_raises_yields_earlier_results_then_the_error(make_pool: Callable[..., Any]) -> None:
    """An imap input that raises: the results before it, then its exception, then the end."""
    with make_pool() as pool:
        iterator = pool.imap(pool_tasks.square, _raising_input())
        assert [iterator.next(RESULT_TIMEOUT) for _ in range(3)] == [1, 4, 9]
        with pytest.raises(RuntimeError, match="input broke"):
            iterator.next(RESULT_TIMEOUT)
        with pytest.raises(StopIteration):
            iterator.next(RESULT_TIMEOUT)


def test_close_and_join_finish_an_unread_imap(make_pool: Callable[..., Any]) -> None:
    """close() then join() returns even when an imap's 3000 results were never read."""
    pool = make_pool()
    iterator = pool.imap(pool_tasks.square, range(3000))
    pool.close()
    pool.join()
    assert list(iterator) == [x * x for x in range(3000)]


def test_an_input_waiting_for_another_calls_callback_does_not_deadlock(make_pool: Callable[..., Any]) -> None:
    """An imap input that waits for an earlier apply_async's callback still gets it."""
    delivered: queue.Queue[int] = queue.Queue()

    def input_after_callback() -> Iterator[int]:
        yield delivered.get(timeout=RESULT_TIMEOUT)

    with make_pool() as pool:
        pool.apply_async(pool_tasks.square, (10,), callback=delivered.put)
        assert list(pool.imap(pool_tasks.square, input_after_callback())) == [10000]


def test_a_result_keeps_its_pool_alive(make_pool: Callable[..., Any]) -> None:
    """map_async on a pool nobody else references still completes (the result holds the pool)."""
    result = make_pool().map_async(pool_tasks.square, [1, 2, 3])
    gc.collect()
    assert result.get(RESULT_TIMEOUT) == [1, 4, 9]


def test_an_unreferenced_pool_s_imap_ends_cleanly_when_its_input_ends_after_the_last_result(
    shared_cluster: LocalCluster,
) -> None:
    """``for x in Pool(2).imap(f, gen)`` where gen ends after the last result came back.

    Once every result is in, the iterator lets go of the pool; the pool is
    collected and its finalizer terminates the session, which fails the
    sources it still holds. The finished iteration still ends with
    StopIteration, not with "the pool was terminated".
    """
    inputs: queue.Queue[int | None] = queue.Queue()

    def source() -> Iterator[int]:
        while (item := inputs.get(timeout=RESULT_TIMEOUT)) is not None:
            yield item

    pool = achilles_like.Pool(2, **target(shared_cluster))
    session = pool._session
    results = pool.imap(pool_tasks.square, source())
    collected = weakref.ref(pool)
    del pool  # as in `for x in Pool(2).imap(...)`: only the iterator holds the pool
    inputs.put(1)
    inputs.put(2)
    assert [results.next(timeout=RESULT_TIMEOUT) for _ in range(2)] == [1, 4]
    inputs.put(None)  # the input ends after its last result came back
    wait_until(lambda: collected() is None, what="the pool to be collected")
    session.join(RESULT_TIMEOUT)  # its finalizer stopped the session
    with pytest.raises(StopIteration):
        results.next(timeout=RESULT_TIMEOUT)
