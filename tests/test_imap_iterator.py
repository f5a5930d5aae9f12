"""The results iterator of the module functions at their first failure: pure, no cluster."""

from __future__ import annotations

from typing import Any

import pytest

from achilles_like.client.driver import Outcomes
from achilles_like.client.results import IMapIterator

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
