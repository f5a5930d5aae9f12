"""FrameWriter on an in-memory transport driven like Twisted drives a pull producer: no sockets, no clock."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from twisted.internet.testing import StringTransport

from achilles_like.frame_writer import FrameWriter
from achilles_like.protocol import Frame, FrameDecoder, encode_frame
from achilles_like.protocol import messages as msg

SLICE = 256 << 10
BIG = 8 << 20


class DrainingTransport(StringTransport):
    """A transport whose buffer a test empties (the socket taking it); it records the most it ever held."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.peak = 0  # the most bytes held between two drains
        self.drains = 0

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)  # what Twisted's FileDescriptor insists on
        super().write(data)
        self.peak = max(self.peak, len(self.value()))

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        for data in seq:
            self.write(data)

    def drain(self) -> None:
        """Send everything held, then ask the producer for more, as ``FileDescriptor.doWrite`` does."""
        self.sent += self.value()
        self.clear()
        self.drains += 1
        if self.producer is not None:
            self.producer.resumeProducing()


def connected(threshold: int = 1 << 20) -> tuple[FrameWriter, DrainingTransport]:
    """A writer attached to a fresh draining transport."""
    transport = DrainingTransport()
    writer = FrameWriter(threshold=threshold, slice_size=SLICE)
    writer.attach(transport)
    return writer, transport


def drain_all(transport: DrainingTransport) -> list[Frame]:
    """Drain until the writer lets go of the transport; the frames that went out."""
    while transport.producer is not None:
        transport.drain()
    transport.drain()
    return FrameDecoder(max_body=1 << 30).feed(bytes(transport.sent))


def test_small_frames_go_straight_through() -> None:
    """With no large body in progress a write reaches the transport at once and no producer is registered."""
    writer, transport = connected()
    writer.write(encode_frame("PING"))
    writer.write_sequence(msg.Results(job=1, entries=[(2, 0, 1, b"x" * 1000)]).encode())
    assert transport.producer is None
    assert [f.verb for f in FrameDecoder().feed(transport.value())] == ["PING", "RESULT"]


def test_frames_queued_behind_a_large_body_arrive_intact_and_in_order() -> None:
    """Small frames written before, during and after an 8 MiB body come out in write order, the body whole."""
    writer, transport = connected()
    body = bytes(range(256)) * (BIG // 256)
    writer.write(encode_frame("PING"))
    writer.write_sequence(msg.Tasks(job=1, entries=[(0, 1, 0, body)]).encode())
    writer.write(encode_frame("PONG"))
    assert transport.producer is writer and writer.queued > BIG - SLICE
    transport.drain()
    transport.drain()
    writer.write_sequence(msg.Results(job=1, entries=[(7, 0, 1, b"r" * 100)]).encode())
    frames = drain_all(transport)
    assert [f.verb for f in frames] == ["PING", "TASK", "PONG", "RESULT"]
    assert frames[1].body == body and frames[3].body == b"r" * 100
    assert writer.queued == 0 and transport.producer is None
    writer.write(encode_frame("PING"))  # straight through again
    assert transport.value() == encode_frame("PING")


def test_the_transport_holds_one_slice_of_a_large_body_at_a_time() -> None:
    """However large the body, the transport's buffer never holds more than a slice and the small frames."""
    writer, transport = connected()
    writer.write_sequence(msg.Tasks(job=1, entries=[(0, 1, 0, b"\x01" * BIG)]).encode())
    writer.write(encode_frame("PING"))
    frames = drain_all(transport)
    assert [len(f.body) for f in frames] == [BIG, 0]
    assert transport.peak <= SLICE + 100
    assert transport.drains >= BIG // SLICE


def test_two_large_bodies_in_a_row_keep_their_order() -> None:
    """Two large frames with a small one between are fed one after the other, then the writer lets go."""
    writer, transport = connected(threshold=SLICE)
    first, second = b"a" * (3 * SLICE + 5), b"b" * (2 * SLICE)
    writer.write_sequence(msg.Func(job=1, fn=0, body=first).encode())
    writer.write(encode_frame("PONG"))
    writer.write_sequence(msg.Func(job=1, fn=1, body=second).encode())
    writer.write(encode_frame("PING"))
    frames = drain_all(transport)
    assert [(f.verb, f.body) for f in frames] == [
        ("FUNC", first),
        ("PONG", b""),
        ("FUNC", second),
        ("PING", b""),
    ]
    assert transport.peak <= SLICE + 100


def test_a_lost_connection_drops_what_was_waiting() -> None:
    """stopProducing (the connection is gone) releases the queued body and the frames behind it."""
    writer, transport = connected()
    writer.write_sequence(msg.Tasks(job=1, entries=[(0, 1, 0, b"\x01" * BIG)]).encode())
    writer.write(encode_frame("PING"))
    assert writer.queued == BIG + len(encode_frame("PING"))  # nothing drained: all of the body waits
    writer.stopProducing()
    assert writer.queued == 0
    assert FrameDecoder().feed(transport.value()) == []  # only the TASK's header went out


def test_nothing_is_written_before_the_connection_is_made() -> None:
    """A writer with no transport yet ignores writes, as a protocol with no transport does."""
    writer = FrameWriter()
    writer.write(encode_frame("PING"))
    assert writer.queued == 0


def test_a_slice_larger_than_the_threshold_is_refused() -> None:
    """slice_size must not exceed threshold (a 'large' body must take more than one slice)."""
    with pytest.raises(ValueError, match="slice_size"):
        FrameWriter(threshold=1000, slice_size=2000)
