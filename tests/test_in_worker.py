"""The worker side of the pipe without a worker process: its task reader, result pieces and output capture."""

from __future__ import annotations

import importlib
import socket
import sys
from collections.abc import Iterator

import pytest

from achilles_like.node import in_worker, pipe_format
from achilles_like.serialization import PieceDumper, dumps, loads
from achilles_like.task_output import Capturing


class Unloadable:
    """Pickles fine here; unpickling it imports a module that does not exist."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return importlib.import_module, ("no_such_module_for_achilles_tests",)


@pytest.fixture
def pipe() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A socket pair: the node's end and the worker's end."""
    node, worker = socket.socketpair()
    yield node, worker
    node.close()
    worker.close()


def task(key: int, items: bytes, function: bytes | None = None) -> bytes:
    """A task's bytes as the node writes them."""
    function_length = None if function is None else len(function)
    header = pipe_format.encode_task(key, 1, None, function_length, len(items), False)
    return header + (function or b"") + items


@pytest.mark.parametrize("read_size", [1, 7, 64, 1 << 18])
def test_reader_gets_every_task_whatever_each_read_returns(
    pipe: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch, read_size: int
) -> None:
    """Tasks queued back to back come out whole, whether a read returns one byte or all of them."""
    monkeypatch.setattr(in_worker, "READ_SIZE", read_size)
    monkeypatch.setattr(in_worker, "STREAM_OVER", 50)  # the third task's items are unpickled from the socket
    node, worker = pipe
    sent = [[1, 2], ["x" * 10], [b"y" * 200, 3]]
    node.sendall(task(4, dumps(sent[0]), b"func") + task(5, dumps(sent[1])) + task(6, dumps(sent[2])))
    reader = in_worker.TaskReader(worker.fileno())
    for key, items in zip((4, 5, 6), sent, strict=True):
        header = reader.header()
        assert header.key == key
        if header.function_length is not None:
            assert reader.take(header.function_length) == b"func"
        assert reader.load(header.items_length) == items
    assert reader.buffered == 0


def test_items_that_fail_to_load_are_consumed_to_their_end(
    pipe: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large items blob that raises half-way through unpickling leaves the next task's header next."""
    monkeypatch.setattr(in_worker, "STREAM_OVER", 50)
    node, worker = pipe
    node.sendall(task(1, dumps([b"z" * 300, Unloadable(), b"tail" * 40])) + task(2, dumps(["next"])))
    reader = in_worker.TaskReader(worker.fileno())
    with pytest.raises(ModuleNotFoundError):
        reader.load(reader.header().items_length)
    header = reader.header()
    assert (header.key, reader.load(header.items_length)) == (2, ["next"])


def test_reader_raises_eof_when_the_node_closes_mid_task(pipe: tuple[socket.socket, socket.socket]) -> None:
    """A socket closed in the middle of a task's items is EOFError, not a short task."""
    node, worker = pipe
    node.sendall(task(1, dumps(list(range(100))))[:-5])
    node.close()
    reader = in_worker.TaskReader(worker.fileno())
    header = reader.header()
    with pytest.raises(EOFError):
        reader.load(header.items_length)


def test_result_pieces_hold_a_large_payload_itself_and_join_to_the_pickle() -> None:
    """A result's pieces are the pickle in order; a large bytes value is one of them, not a copy of it."""
    dump = PieceDumper()
    big = b"\x01" * (1 << 20)
    pieces = dump([big, 1])
    assert any(piece is big for piece in pieces)
    assert loads(b"".join(pieces)) == [big, 1]
    assert b"".join(dump(["same"])) == b"".join(dump(["same"])) == dumps(["same"])  # no memo carried over
    assert loads(b"".join(dump([lambda x: x + 1])))[0](1) == 2  # dill where pickle refuses


def test_capturing_starts_each_task_empty_and_gives_the_streams_back() -> None:
    """Each start() captures afresh; stop() restores stdout and stderr and returns what was printed."""
    capturing = Capturing()
    saved = sys.stdout, sys.stderr
    capturing.start()
    print("first")
    assert b"first" in capturing.stop()
    assert (sys.stdout, sys.stderr) == saved
    capturing.start()
    assert capturing.stop() == b""
