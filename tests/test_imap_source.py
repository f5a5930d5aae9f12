"""Where a Pool's lazy imap reads its input (no cluster): sequences inline, anything else in a feeder."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_until

from achilles_like.client.results import IMapIterator
from achilles_like.client.sources import IMapSource


def feeders() -> int:
    """Feeder threads alive now."""
    return sum(thread.name == "achilles-imap-feeder" for thread in threading.enumerate())


def chunks_of(source: IMapSource) -> list[list[Any]]:
    """Every chunk the source hands out, until it says it has no more."""
    out: list[list[Any]] = []
    while source.has_batch:
        batch = source.next_batch()
        if batch is None:
            break
        out.append(list(batch.items))
    return out


@pytest.mark.parametrize("sequence", [list(range(7)), tuple(range(7)), range(7)])
def test_a_list_tuple_or_range_is_chunked_inline(sequence: Any) -> None:
    """No feeder thread: the session thread takes chunks itself, in order, then the end."""
    before = feeders()
    results = IMapIterator(ordered=True)
    source = IMapSource(b"func", sequence, 3, results)
    assert feeders() == before
    assert chunks_of(source) == [[0, 1, 2], [3, 4, 5], [6]]
    assert source.exhausted


def test_a_generator_is_read_by_a_feeder_thread() -> None:
    """A generator may block or run user code: it is pulled in a feeder thread, never by the session."""
    release = threading.Event()
    readers: list[str] = []

    def items() -> Iterator[int]:
        readers.append(threading.current_thread().name)
        release.wait(10)
        yield from range(3)

    source = IMapSource(b"func", items(), 2, IMapIterator(ordered=True))
    assert source.next_batch() is None  # nothing read yet, and the caller's thread did not block
    release.set()
    got: list[list[Any]] = []

    def take() -> bool:
        batch = source.next_batch()
        if batch is not None:
            got.append(list(batch.items))
        return len(got) == 2

    wait_until(take, what="the feeder's two chunks")
    assert got == [[0, 1], [2]]
    assert readers == ["achilles-imap-feeder"]
