"""A chunk where some items fail, through every API: results and failures land in their places.

Workers return one outcome per item, so a chunk with a failing item still
carries its other items' results. Each API then does what its contract
says: module ``map``/``imap`` stop at the first failure (achilles), a
``Pool`` fails only the failing item (its ``imap`` goes on past it, see the
README's deliberate differences), and an ``Executor.map`` follows
``concurrent.futures``, where a chunk is one call.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from multiprocessing.pool import RemoteTraceback
from typing import Any

import pytest
import tasks
from conftest import target

import achilles_like as al
from achilles_like import LocalCluster

ITEMS = range(10)  # item 3 raises: it sits inside the first chunk of 7, between good items
FAILED = "item 3 is unlucky"


def outcomes(iterator: Iterator[Any]) -> list[Any]:
    """Every value an iterator yields, with a raised exception recorded in its place."""
    seen: list[Any] = []
    while True:
        try:
            seen.append(next(iterator))
        except StopIteration:
            return seen
        except tasks.CustomError as error:
            seen.append(str(error))


def assert_names_item_three(error: BaseException) -> None:
    """The error is the user's, and its remote traceback names input item 3."""
    assert type(error) is tasks.CustomError and str(error) == FAILED
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "(input item 3)" in str(error.__cause__)


def test_module_map_raises_the_failing_item_s_error(cluster: LocalCluster) -> None:
    """Module map raises item 3's own error, naming that input item."""
    with pytest.raises(tasks.CustomError) as caught:
        al.map(tasks.fail_on_three, ITEMS, chunksize=7, **target(cluster))
    assert_names_item_three(caught.value)


def test_module_imap_yields_the_items_before_the_failure_then_stops(cluster: LocalCluster) -> None:
    """Module imap yields items 0-2 of the mixed chunk, then raises item 3's error and ends."""
    seen = outcomes(iter(al.imap(tasks.fail_on_three, ITEMS, chunksize=7, **target(cluster))))
    assert seen == [0, 1, 4, FAILED]


def test_pool_map_raises_the_failing_item_s_error(cluster: LocalCluster) -> None:
    """Pool.map raises item 3's error, naming that input item."""
    with al.Pool(2, **target(cluster)) as pool, pytest.raises(tasks.CustomError) as caught:
        pool.map(tasks.fail_on_three, ITEMS, chunksize=7)
    assert_names_item_three(caught.value)


def test_pool_imap_keeps_every_other_item_of_the_mixed_chunk(cluster: LocalCluster) -> None:
    """Pool.imap yields every good item in order with item 3's error in its place."""
    with al.Pool(2, **target(cluster)) as pool:
        seen = outcomes(pool.imap(tasks.fail_on_three, ITEMS, chunksize=7))
    assert seen == [0, 1, 4, FAILED, 16, 25, 36, 49, 64, 81]


@pytest.mark.parametrize(("chunksize", "before"), [(1, [0, 1, 4]), (2, [0, 1]), (7, [])])
def test_executor_map_fails_at_the_failing_call_as_the_stdlib_does(
    cluster: LocalCluster, chunksize: int, before: list[int]
) -> None:
    """Executor.map yields the calls before the failing one, whose chunk is one call in the stdlib."""
    with cf.ProcessPoolExecutor(2) as stdlib:
        expected = outcomes(stdlib.map(tasks.fail_on_three, ITEMS, chunksize=chunksize))
    with al.ProcessPoolExecutor(2, **target(cluster)) as executor:
        seen = outcomes(executor.map(tasks.fail_on_three, ITEMS, chunksize=chunksize))
    assert seen == expected == [*before, FAILED]
