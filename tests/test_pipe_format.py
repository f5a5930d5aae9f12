"""Tests for ``achilles_like.node.pipe_format``: the header before the blobs on a worker's pipe (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from achilles_like.node import pipe_format as pf

lengths = st.integers(min_value=0, max_value=pf.MAX_BLOB)
optional_lengths = st.none() | lengths


@given(
    key=st.integers(min_value=0, max_value=pf.MAX_KEY),
    fn=st.integers(min_value=0, max_value=pf.MAX_FN),
    setup=optional_lengths,
    function=optional_lengths,
    items=lengths,
)
def test_task_header_round_trips_every_field(
    key: int, fn: int, setup: int | None, function: int | None, items: int
) -> None:
    """Every field of a task header, at any value in its range, decodes to what was encoded."""
    header = pf.TaskHeader(key, fn, setup, function, items)
    data = header.encode()
    assert len(data) == pf.TASK_HEADER_SIZE
    assert pf.decode_task(data) == header
    assert header.body_length == (setup or 0) + (function or 0) + items


def test_absent_and_empty_blobs_differ() -> None:
    """An empty setup blob that is sent (a job without setup) is not the same as no setup blob."""
    sent_empty = pf.decode_task(pf.TaskHeader(1, 0, 0, None, 5).encode())
    absent = pf.decode_task(pf.TaskHeader(1, 0, None, None, 5).encode())
    assert sent_empty.setup_length == 0
    assert absent.setup_length is None


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"key": -1}, "job key"),
        ({"key": pf.MAX_KEY + 1}, "job key"),
        ({"fn": pf.MAX_FN + 1}, "function id"),
        ({"fn": -1}, "function id"),
        ({"setup_length": pf.MAX_BLOB + 1}, "setup length"),
        ({"function_length": -1}, "function length"),
        ({"items_length": pf.MAX_BLOB + 1}, "items length"),
    ],
)
def test_task_header_fields_out_of_range_are_refused(fields: dict[str, int], name: str) -> None:
    """Encoding a task header with a field outside its range names that field."""
    values = {"key": 1, "fn": 2, "setup_length": 3, "function_length": 4, "items_length": 5} | fields
    with pytest.raises(ValueError, match=name):
        pf.TaskHeader(**values).encode()


@given(ok=st.booleans(), length=lengths)
def test_result_header_round_trips(ok: bool, length: int) -> None:
    """A result header keeps whether the task succeeded and its blob's length."""
    data = pf.encode_result(ok, length)
    assert len(data) == pf.RESULT_HEADER_SIZE
    assert pf.decode_result(data) == (ok, length)


def test_result_length_out_of_range_is_refused() -> None:
    """A result blob over the limit cannot be announced."""
    with pytest.raises(ValueError, match="result length"):
        pf.encode_result(True, pf.MAX_BLOB + 1)


@pytest.mark.parametrize("cut", [0, 1, pf.TASK_HEADER_SIZE - 1])
def test_truncated_task_header_is_refused(cut: int) -> None:
    """A task header cut short raises PipeFormatError naming the expected size."""
    data = pf.TaskHeader(1, 2, 3, 4, 5).encode()
    with pytest.raises(pf.PipeFormatError, match=f"{pf.TASK_HEADER_SIZE} bytes, got {cut}"):
        pf.decode_task(data[:cut])


@pytest.mark.parametrize("cut", [0, pf.RESULT_HEADER_SIZE - 1])
def test_truncated_result_header_is_refused(cut: int) -> None:
    """A result header cut short raises PipeFormatError."""
    with pytest.raises(pf.PipeFormatError, match="result header"):
        pf.decode_result(pf.encode_result(True, 9)[:cut])


def test_headers_of_the_wrong_kind_are_refused() -> None:
    """A result header is not read as a task header, nor noise as a result."""
    task = pf.TaskHeader(1, 2, None, None, 3).encode()
    with pytest.raises(pf.PipeFormatError, match="kind"):
        pf.decode_result(task[: pf.RESULT_HEADER_SIZE])
    with pytest.raises(pf.PipeFormatError, match="kind"):
        pf.decode_task(b"\x02" + task[1:])


def test_unknown_flags_and_lengths_without_their_flag_are_refused() -> None:
    """Flags this version does not know, or a length whose blob is flagged absent, are errors."""
    task = bytearray(pf.TaskHeader(1, 2, None, None, 3).encode())
    task[1] = 0x80
    with pytest.raises(pf.PipeFormatError, match="flags"):
        pf.decode_task(bytes(task))
    with_setup = bytearray(pf.TaskHeader(1, 2, 7, None, 3).encode())
    with_setup[1] = 0  # the setup flag cleared, its length left
    with pytest.raises(pf.PipeFormatError, match="setup length but no setup flag"):
        pf.decode_task(bytes(with_setup))


@given(
    headers=st.lists(
        st.tuples(st.integers(0, pf.MAX_KEY), st.integers(0, pf.MAX_FN), optional_lengths, lengths),
        min_size=1,
        max_size=4,
    ),
    lead=st.binary(max_size=8),
)
def test_task_headers_back_to_back_decode_at_their_offsets(
    headers: list[tuple[int, int, int | None, int]], lead: bytes
) -> None:
    """Several task headers in one buffer (what one read brings a worker) decode at their offsets."""
    data = lead + b"".join(pf.encode_task(k, f, s, None, i, True) for k, f, s, i in headers)
    for n, (key, fn, setup, items) in enumerate(headers):
        header = pf.task_at(data, len(lead) + n * pf.TASK_HEADER_SIZE)
        assert header == pf.TaskHeader(key, fn, setup, None, items, True)


def test_encode_task_is_the_header_encoding() -> None:
    """The node's direct encoder writes the same bytes as a TaskHeader, and refuses the same fields."""
    assert pf.encode_task(5, 6, None, 7, 8, False) == pf.TaskHeader(5, 6, None, 7, 8).encode()
    with pytest.raises(ValueError, match="items length"):
        pf.encode_task(5, 6, None, None, pf.MAX_BLOB + 1, False)


def test_replies_back_to_back_decode_at_their_offsets() -> None:
    """An output header and a result header in one buffer (what one read brings the node) both decode."""
    data = b"xx" + pf.encode_output(3) + b"abc" + pf.encode_result(False, 0)
    assert pf.reply_at(data, 2) == (pf.OUTPUT, 3)
    assert pf.reply_at(data, 2 + pf.RESULT_HEADER_SIZE + 3) == (pf.RESULT_FAILED, 0)
    with pytest.raises(pf.PipeFormatError, match="kind"):
        pf.reply_at(data, 0)
