"""A lone heartbeat frame is sent at once on a plain TCP connection, and never overtakes what waits."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from achilles_like.frame_writer import FrameWriter

PING = b"PING\r\n"


@pytest.fixture
def connected() -> Iterator[tuple[tcp.Connection, FrameWriter, socket.socket]]:
    """A Twisted connection on one end of a socket pair (never run by a reactor) and its writer."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    connection = tcp.Connection(ours, Protocol(), MemoryReactor())  # not the library's running reactor
    connection.connected = True
    writer = FrameWriter()
    writer.attach(connection)
    yield connection, writer, theirs
    ours.close()
    theirs.close()


def test_a_lone_heartbeat_leaves_without_a_reactor_turn(
    connected: tuple[tcp.Connection, FrameWriter, socket.socket],
) -> None:
    """write_now puts the frame on the socket itself: Twisted's buffer stays empty."""
    connection, writer, theirs = connected
    writer.write_now(PING)
    assert theirs.recv(100) == PING
    assert connection.dataBuffer == b"" and not connection._tempDataBuffer


def test_a_heartbeat_waits_behind_what_twisted_still_holds(
    connected: tuple[tcp.Connection, FrameWriter, socket.socket],
) -> None:
    """With bytes waiting in Twisted's buffer, write_now queues behind them, keeping the order."""
    connection, writer, theirs = connected
    writer.write(b"RESULT first\r\n")  # buffered until the (absent) reactor calls doWrite
    writer.write_now(PING)
    connection.doWrite()
    assert theirs.recv(100) == b"RESULT first\r\n" + PING


def test_other_transports_get_an_ordinary_write() -> None:
    """A transport that is not a plain TCP connection (TLS, a test's) gets the frame through write()."""
    transport = StringTransport()
    writer = FrameWriter()
    writer.attach(transport)
    writer.write_now(PING)
    assert transport.value() == PING
