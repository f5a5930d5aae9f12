"""The results iterator, filled in memory (no cluster): results handed out once, failures in their place."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from achilles_like.client.driver import Outcomes
from achilles_like.client.results import MERGE_ITEMS, ChunkedIMapIterator, IMapIterator


def _filled(chunks: int, size: int) -> IMapIterator:
    results = IMapIterator(ordered=False)
    for index in range(chunks):
        results.sink_for(index)(Outcomes(True, list(range(index * size, (index + 1) * size))))
    results._set_length(chunks)
    return results


def _split_among_threads(results: Iterator[int], count: int = 8) -> Counter[int]:
    """Every value ``count`` threads iterating ``results`` at once took, with how often each was taken."""
    taken: list[list[int]] = [[] for _ in range(count)]
    threads = [threading.Thread(target=lambda mine=mine: mine.extend(results)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Counter(value for mine in taken for value in mine)


def test_eight_consumer_threads_get_every_result_exactly_once() -> None:
    """Threads sharing one iterator split its results between them: none lost, none handed out twice."""
    results = _filled(chunks=200, size=50)
    assert _split_among_threads(results) == Counter(range(200 * 50))
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


def test_small_ready_chunks_go_out_together_up_to_the_merge_limit() -> None:
    """Single-item chunks that all succeeded are started as one (one Python step, not one per item)."""
    results = _filled(chunks=MERGE_ITEMS + 10, size=1)
    assert next(results) == 0
    assert results.unconsumed == 10  # the merged chunks count as consumed, the rest wait
    assert list(results) == list(range(1, MERGE_ITEMS + 10))


def test_a_failed_chunk_is_not_merged_and_is_raised_in_its_place() -> None:
    """Merging stops at a chunk holding a failure: the items before it, the failure, then the rest."""
    results = IMapIterator(ordered=True)
    chunks = [Outcomes(True, [1]), Outcomes(True, [2]), Outcomes(False, [(False, ValueError("three"))])]
    for index, chunk in enumerate([*chunks, Outcomes(True, [4]), Outcomes(True, [5])]):
        results.sink_for(index)(chunk)
    results._set_length(5)
    assert [next(results), next(results)] == [1, 2]
    assert results.unconsumed == 3
    with pytest.raises(ValueError, match="three"):
        next(results)
    assert list(results) == [4, 5]


# -- the module functions: the iteration ends at the first failure --

BOOM = ValueError("boom")


def stopping(ordered: bool) -> IMapIterator:
    """An iterator that ends at its first failure, as ``imap``/``imap_unordered`` use it."""
    results = IMapIterator(ordered)
    results.stop_at_failure = True
    return results


def drain(results: IMapIterator) -> list[Any]:
    """What the iterator hands out, the raised error recorded in its place."""
    seen: list[Any] = []
    while True:
        try:
            seen.append(results.next(timeout=0))
        except StopIteration:
            return seen
        except ValueError as error:
            seen.append(error)


def mixed() -> Outcomes:
    """A chunk of three items whose second one failed."""
    return Outcomes(False, [(True, 10), (False, BOOM), (True, 12)])


def test_in_order_the_failing_chunk_s_items_before_the_failure_come_first() -> None:
    """Chunk 0, then chunk 1 up to its failure, then the failure; nothing after it."""
    results = stopping(ordered=True)
    results.sink_for(2)(Outcomes(True, [20, 21]))  # after the failure: never handed out
    results.sink_for(0)(Outcomes(True, [0, 1]))
    results.sink_for(1)(mixed())
    assert drain(results) == [0, 1, 10, BOOM]


def test_in_order_a_failure_before_a_gap_is_raised_after_what_is_ready() -> None:
    """A mixed chunk 1 arriving before chunk 0: its good items cannot be placed, the failure ends the run."""
    results = stopping(ordered=True)
    results.sink_for(1)(mixed())
    results.sink_for(0)(Outcomes(True, [0, 1]))  # too late: the job has ended
    assert drain(results) == [BOOM]


def test_unordered_keeps_what_arrived_and_the_failing_chunk_s_good_prefix() -> None:
    """imap_unordered hands out every chunk that arrived before the failure, then the good prefix, then it."""
    results = stopping(ordered=False)
    results.sink_for(3)(Outcomes(True, [30]))
    results.sink_for(1)(mixed())
    assert drain(results) == [30, 10, BOOM]


@pytest.mark.parametrize("ordered", [True, False])
def test_the_iteration_ends_after_the_failure(ordered: bool) -> None:
    """After the failure is raised the iterator is exhausted."""
    results = stopping(ordered)
    results.sink_for(0)(Outcomes(False, [(False, BOOM)]))
    assert drain(results) == [BOOM]
    with pytest.raises(StopIteration):
        results.next(timeout=0)


# -- chunks of several items: the chained iterator a Pool returns for chunksize > 1 --


def test_the_chained_iterator_hands_out_every_item_once_across_threads() -> None:
    """Eight threads iterating one chained iterator get every result exactly once."""
    chained = ChunkedIMapIterator.over(_filled(chunks=200, size=50))
    assert _split_among_threads(chained) == Counter(range(200 * 50))


_CONSUMED_WHILE_ARRIVING = """
import threading
from collections import Counter
from achilles_like.client.driver import Outcomes
from achilles_like.client.results import ChunkedIMapIterator, IMapIterator

results = IMapIterator(ordered=False)
chained = ChunkedIMapIterator.over(results)
taken = [[] for _ in range(8)]
threads = [threading.Thread(target=mine.extend, args=(chained,)) for mine in taken]
for thread in threads:
    thread.start()
for index in range(3000):
    results.sink_for(index)(Outcomes(True, list(range(index * 5, index * 5 + 5))))
results._set_length(3000)
for thread in threads:
    thread.join()
assert Counter(v for mine in taken for v in mine) == Counter(range(15000))
"""


def test_threads_waiting_in_the_chained_iterator_as_chunks_arrive_get_each_item_once() -> None:
    """Eight threads wait in one chained iterator while chunks arrive (a shared chain crashed CPython).

    Run in a child process: the failure this guards against is a crash of the interpreter.
    """
    child = subprocess.run([sys.executable, "-c", _CONSUMED_WHILE_ARRIVING], capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode()[-2000:]


def test_the_chained_iterator_mixes_with_next_and_resumes_after_a_break() -> None:
    """for loops, next(timeout) and a break in the middle of a chunk share one position."""
    chained = ChunkedIMapIterator.over(_filled(chunks=3, size=4))
    seen = []
    for item in chained:
        seen.append(item)
        if item == 5:
            break
    seen.append(chained.next(timeout=1))
    seen.append(next(chained))
    seen += list(chained)
    assert seen == list(range(12))


def test_the_chained_iterator_raises_a_failed_item_in_its_place_and_goes_on() -> None:
    """A failed item raises where it stands; the items after it still come."""
    results = IMapIterator(ordered=True)
    results.sink_for(0)(Outcomes(False, [(True, 1), (False, ValueError("two")), (True, 3)]))
    results.sink_for(1)(Outcomes(True, [4]))
    results._set_length(2)
    chained = ChunkedIMapIterator.over(results)
    seen: list[Any] = []
    while True:
        try:
            seen.append(next(chained))
        except StopIteration:
            break
        except ValueError as error:
            seen.append(str(error))
    assert seen == [1, "two", 3, 4]
