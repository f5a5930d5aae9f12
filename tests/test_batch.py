"""Batch frames (``protocol/batch.py``): many tasks or results in one frame, framed by lengths."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from achilles_like.errors import ProtocolViolationError
from achilles_like.protocol import FrameDecoder, batch, encode_frame
from achilles_like.protocol import messages as msg

entries_strategy = st.lists(
    st.tuples(
        st.integers(0, 2**63 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 1),
        st.binary(max_size=64).map(bytes),
    ),
    min_size=1,
    max_size=40,
)


@given(entries_strategy, st.data())
def test_batches_survive_any_split_of_the_stream(entries: list[batch.Entry], data: st.DataObject) -> None:
    """Tasks and results come out of the decoder intact and in order, however the bytes are cut."""
    wire = b"".join(msg.Tasks(job=7, entries=entries).encode() + msg.Results(job=7, entries=entries).encode())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = FrameDecoder()
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        frames += decoder.feed(wire[start:end])
    decoded = [msg.decode(frame) for frame in frames]
    assert [m for m in decoded if isinstance(m, msg.Tasks)] == [msg.Tasks(job=7, entries=entries)]
    assert [m for m in decoded if isinstance(m, msg.Results)] == [msg.Results(job=7, entries=entries)]


def test_several_small_tasks_share_one_frame() -> None:
    """Small tasks travel as one frame whose body is the entry table and then the blobs."""
    entries = [(task, 1, 0, b"x" * task) for task in range(1, 6)]
    [frame] = FrameDecoder().feed(b"".join(msg.Tasks(job=2, entries=entries).encode()))
    assert frame.fields["n"] == "5"
    assert len(frame.body) == 5 * batch.ENTRY.size + sum(range(1, 6))


def test_a_large_blob_travels_alone_and_is_not_copied() -> None:
    """A blob of ALONE_BYTES or more gets a frame of its own whose body is that very object."""
    large = b"L" * batch.ALONE_BYTES
    parts = msg.Results(job=1, entries=[(0, 1, 1, b"a"), (1, 1, 1, large), (2, 1, 1, b"b")]).encode()
    assert any(part is large for part in parts)
    frames = FrameDecoder().feed(b"".join(parts))
    assert [msg.decode(frame).entries for frame in frames] == [  # type: ignore[attr-defined]
        [(0, 1, 1, b"a")],
        [(1, 1, 1, large)],
        [(2, 1, 1, b"b")],
    ]


def test_entries_are_grouped_in_order_up_to_the_frame_size() -> None:
    """``runs`` keeps the order and never puts more than ALONE_BYTES of table and blobs in one frame."""
    blob = b"s" * (batch.ALONE_BYTES // 3 - batch.ENTRY.size)  # exactly three fit
    entries = [(n, 0, 0, blob) for n in range(7)]
    runs = list(batch.runs(entries))
    assert [entry for run in runs for entry in run] == entries
    assert all(sum(batch.ENTRY.size + len(e[3]) for e in run) <= batch.ALONE_BYTES for run in runs)
    assert [len(run) for run in runs] == [3, 3, 1]


def test_a_batch_stays_within_the_receivers_body_limit() -> None:
    """With a small max_body, small tasks still share frames, but no frame's body passes the limit."""
    entries = [(n, 0, 0, b"t" * 300) for n in range(20)]
    frames = FrameDecoder().feed(b"".join(msg.Tasks(job=1, entries=entries, limit=1000).encode()))
    assert all(len(frame.body) <= 1000 for frame in frames) and len(frames) < 20
    assert [e for frame in frames for e in msg.decode(frame).entries] == entries  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "count", "error"),
    [
        (batch.ENTRY.pack(0, 0, 0, 5) + b"abc", 1, "do not add up"),
        (batch.ENTRY.pack(0, 0, 0, 1) + b"ab", 1, "do not add up"),
        (b"short", 1, "too short for its table"),
        (b"", 0, "n=0 entries"),
        (b"x" * 40, batch.MAX_ENTRIES + 1, "entries; 1..65536"),
        (struct.pack("<QIII", 0, 0, 0, 2**32 - 1), 1, "do not add up"),
    ],
)
def test_a_table_that_does_not_fit_its_body_is_refused(body: bytes, count: int, error: str) -> None:
    """Sizes that do not add up to the body, or an entry count out of range, are a violation naming it."""
    [frame] = FrameDecoder().feed(encode_frame("TASK", body, job=1, n=count))
    with pytest.raises(ProtocolViolationError, match=error):
        msg.decode(frame)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (encode_frame("TASK", b"x", job=1, task=0), "missing the field 'fn'"),
        (encode_frame("RESULT", b"x", job=1, task=0), "missing the field 'ok'"),
        (encode_frame("TASK", b"x", job=1, task=0, n=1, fn=0), "both n="),
        (
            encode_frame("RESULT", batch.ENTRY.pack(3, 1, 2, 0), job=1, n=1),
            "RESULT of task 3 has ok=2",
        ),
    ],
)
def test_single_and_batch_forms_are_checked(raw: bytes, error: str) -> None:
    """A single task names its function, a single result its ok flag; a batch's ok is 0 or 1."""
    [frame] = FrameDecoder().feed(raw)
    with pytest.raises(ProtocolViolationError, match=error):
        msg.decode(frame)
