"""Tests for the controller's reorder buffer that puts imap results back in order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from achilles_like.scheduling import ReorderBuffer


def test_in_order_values_pass_straight_through() -> None:
    """A value at the next expected index is released at once."""
    buffer: ReorderBuffer[str] = ReorderBuffer()
    buffer.add(0, "a")
    assert buffer.pop_ready() == ["a"]
    assert buffer.next_index == 1
    assert len(buffer) == 0


def test_values_after_a_gap_wait_for_it() -> None:
    """Values behind a missing index are held, then released together in order."""
    buffer: ReorderBuffer[str] = ReorderBuffer()
    buffer.add(2, "c")
    buffer.add(1, "b")
    assert buffer.pop_ready() == []
    assert len(buffer) == 2
    buffer.add(0, "a")
    assert buffer.pop_ready() == ["a", "b", "c"]
    assert (buffer.next_index, len(buffer)) == (3, 0)


def test_only_the_contiguous_run_is_released() -> None:
    """pop_ready stops at the first gap and keeps what lies beyond it."""
    buffer: ReorderBuffer[int] = ReorderBuffer()
    for index in (0, 1, 3, 4):
        buffer.add(index, index * 10)
    assert buffer.pop_ready() == [0, 10]
    assert (buffer.next_index, len(buffer)) == (2, 2)


def test_start_offset() -> None:
    """A buffer may start at any index."""
    buffer: ReorderBuffer[str] = ReorderBuffer(start=5)
    buffer.add(6, "g")
    buffer.add(5, "f")
    assert buffer.pop_ready() == ["f", "g"]
    assert buffer.next_index == 7


def test_reorders_a_shuffled_stream() -> None:
    """A shuffled stream fed one value at a time comes out complete and in order."""
    order = list(range(1000))
    random.Random(1234).shuffle(order)
    buffer: ReorderBuffer[int] = ReorderBuffer()
    out: list[int] = []
    for index in order:
        buffer.add(index, index)
        out += buffer.pop_ready()
    assert out == list(range(1000))
    assert len(buffer) == 0


@given(st.permutations(range(60)))
def test_any_permutation_comes_out_in_order(order: list[int]) -> None:
    """Whatever the arrival order, the released values are exactly the indices in order."""
    buffer: ReorderBuffer[int] = ReorderBuffer()
    out: list[int] = []
    for index in order:
        buffer.add(index, -index)
        out += buffer.pop_ready()
        assert len(buffer) + len(out) == order.index(index) + 1
    assert out == [-i for i in range(60)]


def test_duplicate_index_is_refused() -> None:
    """Adding an index that is already held raises ValueError naming it."""
    buffer: ReorderBuffer[str] = ReorderBuffer()
    buffer.add(3, "d")
    with pytest.raises(ValueError, match="index 3 was added twice"):
        buffer.add(3, "again")
    assert len(buffer) == 1


def test_released_index_is_refused() -> None:
    """Adding an index that was already released raises ValueError naming it."""
    buffer: ReorderBuffer[str] = ReorderBuffer()
    buffer.add(0, "a")
    buffer.pop_ready()
    with pytest.raises(ValueError, match="index 0 was already released"):
        buffer.add(0, "again")


def test_index_before_start_is_refused() -> None:
    """An index below the start counts as already released."""
    buffer: ReorderBuffer[str] = ReorderBuffer(start=10)
    with pytest.raises(ValueError, match="index 9"):
        buffer.add(9, "x")
