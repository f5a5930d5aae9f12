"""Tests for ``achilles_like.protocol.body_buffer``: one buffer per body, handed on without a copy."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from achilles_like.protocol.body_buffer import BodyBuffer


def test_pieces_fill_the_body_in_order() -> None:
    """Pieces written one after another make up the body; extra bytes are left to the caller."""
    buffer = BodyBuffer(10)
    assert buffer.write(b"abcd") == 4
    assert buffer.missing == 6
    assert buffer.write(b"efghijKLM") == 6
    assert buffer.value() == b"abcdefghij"


def test_value_before_the_body_is_complete_is_refused() -> None:
    """Asking for the body while bytes are missing names how many."""
    buffer = BodyBuffer(5)
    buffer.write(b"ab")
    with pytest.raises(ValueError, match="3 bytes short"):
        buffer.value()


def test_view_takes_reads_from_a_descriptor() -> None:
    """``os.readv`` into ``view()`` then ``advance()`` fills the body straight from a pipe."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"hello world")
        buffer = BodyBuffer(11)
        view = buffer.view()
        count = os.readv(read_end, [view[:5]])
        view.release()
        buffer.advance(count)
        assert buffer.write(b" world") == 6
        assert buffer.value() == b"hello world"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_advance_past_the_end_is_refused() -> None:
    """``advance`` cannot claim more bytes than the body misses."""
    with pytest.raises(ValueError, match="advance"):
        BodyBuffer(3).advance(4)


def test_a_large_body_is_held_once() -> None:
    """Filling 8 MiB in 64 KiB pieces and taking the value allocates about one body, not two."""
    size = 8 << 20
    piece = b"\x05" * 65_536
    tracemalloc.start()
    try:
        buffer = BodyBuffer(size)
        for _ in range(size // len(piece)):
            buffer.write(piece)
        body = buffer.value()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(body) == size and body[-1] == 5
    assert peak <= 1.05 * size
    assert buffer.value() is body  # the same object each time: never copied out
