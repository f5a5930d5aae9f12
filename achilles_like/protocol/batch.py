"""Several tasks or results in one frame: a table of fixed-size entries, then the blobs.

::

    TASK job=3 n=3 len=90\\r\\n <entry 0><entry 1><entry 2><blob 0><blob 1><blob 2>

A per-task frame made every hop pay a header to encode, a header to parse and
a dispatch in Python for every task; a batch pays them once per frame and a
few µs per entry. Each entry is ``struct`` ``<QIII``: the task id, the
attempt, a small number (the function id in a ``TASK``, ``ok`` in a
``RESULT``) and the blob's size. The blobs follow the table, in entry order,
back to back. Everything is framed by lengths, never by a pickle, so the
server routes batches without unpickling anything, and a table whose sizes
do not add up to the body is refused before any blob is sliced out.

A blob of :data:`ALONE_BYTES` or more travels in a frame of its own, in the
single form (the entry's fields in the header, the body the blob itself):
slicing it out of a batch body would copy it, and a large body must cross
each hop with one copy (``docs/protocol.md``). :func:`runs` splits entries
into those frames, keeping their order.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

from achilles_like.errors import ProtocolViolationError

ENTRY = struct.Struct("<QIII")
# A frame's entries at most (a table of 1.3 MB): bounds what one frame makes the receiver loop over.
MAX_ENTRIES = 65_536
# A blob this large goes alone (no copy out of a batch); smaller ones share frames up to this size.
ALONE_BYTES = 64 * 1024

Entry = tuple[int, int, int, bytes]
"""``(task id, attempt, fn or ok, blob)``: one task or one result in a batch."""


def pack(entries: Sequence[Entry]) -> list[bytes]:
    """The body of a batch frame as parts: the table, then each blob (not copied)."""
    table = b"".join([ENTRY.pack(task, attempt, small, len(blob)) for task, attempt, small, blob in entries])
    return [table, *[entry[3] for entry in entries]]


def unpack(body: bytes, count: int, verb: str) -> list[Entry]:
    """The entries of a batch body of ``count`` entries; ProtocolViolationError if it does not add up."""
    if not 1 <= count <= MAX_ENTRIES:
        raise ProtocolViolationError(f"{verb} frame has n={count} entries; 1..{MAX_ENTRIES} are allowed")
    table_size = ENTRY.size * count
    if len(body) < table_size:
        raise ProtocolViolationError(
            f"{verb} frame of {count} entries has a {len(body)}-byte body, too short for its table"
        )
    table = list(ENTRY.iter_unpack(memoryview(body)[:table_size]))
    if table_size + sum(entry[3] for entry in table) != len(body):
        raise ProtocolViolationError(f"{verb} frame's entry sizes do not add up to its body length")
    entries: list[Entry] = []
    offset = table_size
    for task, attempt, small, size in table:
        end = offset + size
        entries.append((task, attempt, small, body[offset:end]))
        offset = end
    return entries


def runs(entries: Sequence[Entry], limit: int = ALONE_BYTES) -> Iterator[Sequence[Entry]]:
    """Split entries, in order, into frames: large blobs alone, small ones together.

    A batch frame's body (table and blobs) stays within ``min(ALONE_BYTES, limit)``,
    where ``limit`` is the receiver's body limit (``max_body``), so batching never
    makes a frame the receiver refuses; a blob alone is the body it always was.
    """
    cap = min(ALONE_BYTES, limit)
    start, size = 0, 0
    for index, entry in enumerate(entries):
        cost = ENTRY.size + len(entry[3])
        if size + cost > cap or index - start >= MAX_ENTRIES:
            if index > start:
                yield entries[start:index]
            start, size = index, 0
        size += cost if len(entry[3]) < ALONE_BYTES else cap + 1  # a large blob closes its run
    if start < len(entries):
        yield entries[start:]
