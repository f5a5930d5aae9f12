"""The bytes on a worker's pipes: a fixed struct header, then the blobs as they came off the wire.

::

    node → worker   TASK    [ 40-byte TaskHeader ][ setup blob? ][ function blob? ][ items blob ]
    worker → node   RESULT  [ 16-byte ResultHeader ][ result blob ]

Nothing is pickled around the blobs: the node writes the bytes it received
from the server behind a header, and forwards the worker's result blob
untouched, so a 64 MiB body is neither copied into an envelope nor unpickled
on the node. The header says which blobs follow and how long each is:

- ``TaskHeader``: ``kind`` (:data:`TASK`), ``flags`` (:data:`HAS_SETUP`:
  the job's setup blob follows, sent with a worker's first task of the job;
  :data:`HAS_FUNCTION`: the function blob follows, sent with the worker's
  first task calling it), the job key (u64), the function id (u32) and the
  three lengths (u64 each; an absent blob has length 0).
- ``ResultHeader``: ``kind`` (:data:`RESULT_OK`: the pickled values;
  :data:`RESULT_FAILED`: a pickled failure or per-item outcomes, see
  ``in_worker.py``) and the blob's length.

Messages follow each other back to back: one read may bring the node a
task's output and its result, or a worker a task's header and its blobs.
:func:`task_at` and :func:`reply_at` decode a header in place, at an offset
of such a buffer.

Pure: bytes in, values out, no I/O. A header that is short, of another kind,
with unknown flags or a length over :data:`MAX_BLOB` raises
:class:`PipeFormatError`: the pipe is a private channel to our own child, so
that means a bug or a dying worker, and the node treats it as the worker's
death.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

TASK = 1
RESULT_OK = 2
RESULT_FAILED = 3
OUTPUT = 4  # what the task printed, before its result (only when the task header asked for it)

HAS_SETUP = 0x01
HAS_FUNCTION = 0x02
CAPTURE_OUTPUT = 0x04  # the worker captures the task's stdout/stderr and sends it as OUTPUT
_TASK_FLAGS = HAS_SETUP | HAS_FUNCTION | CAPTURE_OUTPUT

MAX_BLOB = (1 << 48) - 1  # far over any frame's body limit: catches a garbled length
MAX_KEY = (1 << 64) - 1
MAX_FN = (1 << 32) - 1

# kind, flags, 2 pad bytes, fn, key, setup length, function length, items length
_TASK = struct.Struct("<BBxxIQQQQ")
# kind, 7 pad bytes, blob length
_RESULT = struct.Struct("<B7xQ")
TASK_HEADER_SIZE = _TASK.size
RESULT_HEADER_SIZE = _RESULT.size


class PipeFormatError(ValueError):
    """Bytes on a worker pipe that are not a header this module wrote."""


class TaskHeader(NamedTuple):
    """What precedes a task's blobs on the pipe to a worker (a tuple: the worker decodes one per task)."""

    key: int  # the job key: the worker caches the job's setup and functions by it
    fn: int
    setup_length: int | None  # None: no setup blob follows (the worker has the job)
    function_length: int | None  # None: no function blob follows (the worker has it)
    items_length: int
    capture: bool = False  # send what the task prints (stdout, stderr) before its result

    def encode(self) -> bytes:
        """The 40 header bytes; ValueError if a field is out of its range."""
        return encode_task(
            self.key, self.fn, self.setup_length, self.function_length, self.items_length, self.capture
        )

    @property
    def body_length(self) -> int:
        """How many blob bytes follow the header."""
        return (self.setup_length or 0) + (self.function_length or 0) + self.items_length


def encode_task(
    key: int, fn: int, setup_length: int | None, function_length: int | None, items_length: int, capture: bool
) -> bytes:
    """The 40 header bytes of a task (see :class:`TaskHeader`); ValueError if a field is out of its range."""
    _check("job key", key, MAX_KEY)
    _check("function id", fn, MAX_FN)
    _check("items length", items_length, MAX_BLOB)
    flags = CAPTURE_OUTPUT if capture else 0
    if setup_length is not None:
        _check("setup length", setup_length, MAX_BLOB)
        flags |= HAS_SETUP
    if function_length is not None:
        _check("function length", function_length, MAX_BLOB)
        flags |= HAS_FUNCTION
    return _TASK.pack(TASK, flags, fn, key, setup_length or 0, function_length or 0, items_length)


def decode_task(data: bytes | bytearray | memoryview) -> TaskHeader:
    """Read a task header (exactly ``TASK_HEADER_SIZE`` bytes)."""
    if len(data) != _TASK.size:
        raise PipeFormatError(f"a task header is {_TASK.size} bytes, got {len(data)}")
    return task_at(data, 0)


def task_at(data: bytes | bytearray | memoryview, offset: int) -> TaskHeader:
    """Read the task header at ``offset`` of a buffer holding at least ``TASK_HEADER_SIZE`` bytes there."""
    kind, flags, fn, key, setup, function, items = _TASK.unpack_from(data, offset)
    if kind != TASK:
        raise PipeFormatError(f"expected a task header (kind {TASK}), got kind {kind}")
    if flags & ~_TASK_FLAGS:
        raise PipeFormatError(f"unknown task header flags 0x{flags:02x}")
    if max(setup, function, items) > MAX_BLOB:
        for name, length in (("setup", setup), ("function", function), ("items", items)):
            if length > MAX_BLOB:
                raise PipeFormatError(f"task header announces a {length}-byte {name} blob")
    if not flags & HAS_SETUP and setup:
        raise PipeFormatError("task header has a setup length but no setup flag")
    if not flags & HAS_FUNCTION and function:
        raise PipeFormatError("task header has a function length but no function flag")
    return TaskHeader(
        key,
        fn,
        setup if flags & HAS_SETUP else None,
        function if flags & HAS_FUNCTION else None,
        items,
        bool(flags & CAPTURE_OUTPUT),
    )


def encode_result(ok: bool, length: int) -> bytes:
    """The 16 header bytes before a result blob of ``length`` bytes."""
    _check("result length", length, MAX_BLOB)
    return _RESULT.pack(RESULT_OK if ok else RESULT_FAILED, length)


def encode_output(length: int) -> bytes:
    """The 16 header bytes before a task's captured output of ``length`` bytes."""
    _check("output length", length, MAX_BLOB)
    return _RESULT.pack(OUTPUT, length)


def decode_reply(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Read a worker's header (exactly ``RESULT_HEADER_SIZE`` bytes): its kind and blob length."""
    if len(data) != _RESULT.size:
        raise PipeFormatError(f"a result header is {_RESULT.size} bytes, got {len(data)}")
    return reply_at(data, 0)


def reply_at(data: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """Read the worker's header at ``offset`` of a buffer with ``RESULT_HEADER_SIZE`` bytes or more there."""
    kind, length = _RESULT.unpack_from(data, offset)
    if kind not in (RESULT_OK, RESULT_FAILED, OUTPUT):
        raise PipeFormatError(
            f"expected a result header (kind {RESULT_OK} or {RESULT_FAILED}) or output ({OUTPUT}),"
            f" got kind {kind}"
        )
    if length > MAX_BLOB:
        raise PipeFormatError(f"result header announces a {length}-byte blob")
    return kind, length


def decode_result(data: bytes | bytearray | memoryview) -> tuple[bool, int]:
    """Read a result header (exactly ``RESULT_HEADER_SIZE`` bytes): whether it succeeded, blob length."""
    kind, length = decode_reply(data)
    if kind == OUTPUT:
        raise PipeFormatError(f"expected a result header, got output (kind {kind})")
    return kind == RESULT_OK, length


def _check(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} {value} is outside 0..{maximum}")
