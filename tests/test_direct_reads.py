"""Large bodies read straight into the decoder's buffer: intact in any split, small frames untouched."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor

from achilles_like import direct_reads
from achilles_like.protocol.frames import Frame, FrameDecoder, encode_frame


class Collector(Protocol):
    """Feeds what it receives to a decoder and keeps the frames; counts the empty calls."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.chunks: list[int] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(len(data))
        self.frames += self.decoder.feed(data)


Pair = tuple[tcp.Connection, Collector, socket.socket, list[int]]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A Twisted connection on one end of a socket pair (read by hand), the writer end, and a read counter."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    collector = Collector()
    connection = tcp.Connection(ours, collector, MemoryReactor())  # not the library's running reactor
    collector.makeConnection(connection)
    counted: list[int] = []
    direct_reads.install(connection, collector.decoder, counted.append)
    yield connection, collector, theirs, counted
    ours.close()
    theirs.close()


def drain(
    connection: tcp.Connection,
    collector: Collector,
    theirs: socket.socket,
    data: bytes,
    step: int,
    frames: int,
) -> None:
    """Send ``data`` in pieces of ``step`` bytes from a thread; read until ``frames`` frames are out."""
    sender = threading.Thread(
        target=lambda: [theirs.sendall(data[i : i + step]) for i in range(0, len(data), step)]
    )
    sender.start()
    deadline = time.monotonic() + 30
    while len(collector.frames) < frames and time.monotonic() < deadline:
        select.select([connection.socket], [], [], 1.0)
        assert connection.doRead() is None
    sender.join(30)
    assert len(collector.frames) == frames


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False


@pytest.mark.parametrize("step", [1000, 65_536, 300_001])
def test_a_large_body_arrives_whole_read_straight_into_its_buffer(pair: Pair, step: int) -> None:
    """A 1 MiB body sent in any pieces comes out intact, mostly read straight (dataReceived(b"") calls)."""
    connection, collector, theirs, counted = pair
    body = bytes(range(256)) * 4096
    small = encode_frame("PING")
    drain(connection, collector, theirs, small + encode_frame("TASK", body, job=1, task=0) + small, step, 3)
    assert [frame.verb for frame in collector.frames] == ["PING", "TASK", "PING"]
    assert collector.frames[1].body == body
    assert sum(counted) > len(body) // 2  # most of it bypassed Twisted's read
    assert 0 in collector.chunks


def test_small_frames_use_twisted_s_own_read(pair: Pair) -> None:
    """Frames with small bodies never take the direct path."""
    connection, collector, theirs, counted = pair
    drain(connection, collector, theirs, encode_frame("TASK", b"x" * 1000, job=1, task=0) * 5, 4096, 5)
    assert len(collector.frames) == 5 and counted == []


def test_the_peer_closing_mid_body_ends_the_connection(pair: Pair) -> None:
    """End of stream while a large body is read straight reports CONNECTION_DONE."""
    connection, collector, theirs, _ = pair
    frame = encode_frame("TASK", b"y" * 500_000, job=1, task=0)
    theirs.sendall(frame[:200_000])
    while _readable(connection.socket):
        assert connection.doRead() is None
    theirs.close()
    assert connection.doRead() is main.CONNECTION_DONE
    assert collector.frames == []
