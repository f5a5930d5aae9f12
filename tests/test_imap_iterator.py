"""The iterator Pool.imap returns, filled in memory: each result handed out once, whatever the consumers."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from achilles_like.client.driver import Outcomes
from achilles_like.client.results import IMapIterator


def _filled(chunks: int, size: int) -> IMapIterator:
    results = IMapIterator(ordered=False)
    for index in range(chunks):
        results.sink_for(index)(Outcomes(True, list(range(index * size, (index + 1) * size))))
    results._set_length(chunks)
    return results


def test_eight_consumer_threads_get_every_result_exactly_once() -> None:
    """Threads sharing one iterator split its results between them: none lost, none handed out twice."""
    results = _filled(chunks=200, size=50)
    taken: list[list[int]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=lambda mine=mine: mine.extend(results)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(value for mine in taken for value in mine) == Counter(range(200 * 50))
    assert results.finished


def test_a_chunk_with_failures_raises_each_at_its_place() -> None:
    """In a chunk that holds a failure, the items around it still come, and the failure is raised in order."""
    results = IMapIterator(ordered=True)
    results.sink_for(0)(Outcomes(False, [(True, 1), (False, ValueError("two")), (True, 3)]))
    results._set_length(1)
    assert next(results) == 1
    with pytest.raises(ValueError, match="two"):
        next(results)
    assert list(results) == [3]


def test_a_started_chunk_is_counted_consumed_and_finishes_only_when_handed_out() -> None:
    """Once a consumer starts a chunk its items count as consumed; the iterator is finished after the last."""
    results = _filled(chunks=1, size=3)
    assert next(results) == 0
    assert results.unconsumed == 0 and not results.finished
    assert [r.items for r in results.take_ready()] == [[1, 2]]
    assert results.finished
