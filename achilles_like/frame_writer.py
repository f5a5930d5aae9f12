"""Writing a connection's frames in order: gathered into one ``send`` a turn, large bodies fed in slices.

Twisted's ``FileDescriptor.write`` buffers, arms the socket for writing
(``epoll_ctl``), and sends on the next reactor turn (``doWrite``), then
disarms it (``epoll_ctl`` again): two system calls and a turn per write, most
of what a tiny task cost the server. On a plain TCP connection whose Twisted
buffer is empty, a :class:`FrameWriter` sends itself, with one ``send``:

- while a :class:`SendTurn` it shares is open (the server holds one open
  around each ``dataReceived``, so every frame that one read produces, to
  every connection, waits for its end), each connection's frames are
  gathered and leave in one ``send`` when the turn closes;
- with no turn open, a write is sent at once.

Whatever the socket does not take goes to Twisted's buffer, and from then on
writes go there behind it until it has drained, so bytes never change order.
Under TLS (bytes must be encrypted first) and on a test's transport every
write takes Twisted's path. What a writer gathers is bounded by a turn and
by :data:`GATHER_LIMIT`; backpressure is the protocol's (credit, slots), as
it was with Twisted's buffer alone.

Large bodies: Twisted's ``doWrite`` joins everything written since its last
send into one new ``bytes`` (its ``_tempDataBuffer``), so a 64 MiB body
handed to ``write`` or ``writeSequence`` behind its header line is held
twice until it has gone out: the caller's copy and the join. A writer hands
the transport a body of ``threshold`` bytes or more one ``slice_size`` piece
at a time instead, as a pull producer (``registerProducer(writer,
streaming=False)``): the transport asks for the next piece only once it has
sent everything before it, so the extra memory is one slice, whatever the
size of the body. Whatever is written on the connection while a large body
is being fed waits in the writer's queue behind it; what was gathered before
it is sent first.

Hence the one rule: once a connection has a writer, every byte it sends goes
through it (PONGs and handshake replies included), and a protocol that
closes its connection while a turn is open calls :meth:`FrameWriter.flush`
first (Twisted's ``loseConnection`` only waits for its own buffer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

LARGE_BODY = 1 << 20  # bodies from this size on are fed in slices; smaller ones cost little to join
SLICE = 512 << 10  # what the transport holds of a large body at a time
GATHER_LIMIT = 256 << 10  # a writer gathering more than this in one turn sends it at once


class SendTurn:
    """While open (``with turn:``), the frames of the writers that share it wait; they leave as it closes.

    Opened around a unit of reactor work (one ``dataReceived``, one timer);
    nesting is allowed, and only the outermost close sends.
    """

    __slots__ = ("depth", "waiting")

    def __init__(self) -> None:
        self.depth = 0
        self.waiting: list[FrameWriter] = []  # writers holding gathered frames

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if not self.depth and self.waiting:
            self.flush()

    def flush(self) -> None:
        """Send what every writer has gathered."""
        waiting, self.waiting = self.waiting, []
        for writer in waiting:
            writer.flush()


@implementer(IPullProducer)
class FrameWriter:
    """One connection's writes: gathered and sent directly, or through Twisted, or behind a large body."""

    def __init__(
        self, threshold: int = LARGE_BODY, slice_size: int = SLICE, turn: SendTurn | None = None
    ) -> None:
        if not 0 < slice_size <= threshold:
            raise ValueError(
                f"slice_size must be in (0, threshold], got {slice_size} (threshold {threshold})"
            )
        self.threshold = threshold
        self.slice_size = slice_size
        self.turn = turn
        self._transport: Any = None
        self._direct: Any = None  # a tcp.Connection  # the transport, when we may send on its socket
        self._gathered: list[bytes] = []  # written this turn, not yet sent (Twisted's buffer was empty)
        self._gathered_len = 0
        # Parts waiting their turn; while producing, the first is the large body being fed.
        self._queue: deque[bytes] = deque()
        self._offset = 0  # how much of the first part has been handed to the transport
        self._producing = False  # registered as the transport's producer

    def attach(self, transport: Any) -> None:
        """Write to ``transport`` from now on (the connection is made)."""
        self._transport = transport
        self._direct = transport if isinstance(transport, tcp.Connection) else None

    @property
    def queued(self) -> int:
        """Bytes accepted and not yet handed to the transport or the socket."""
        return sum(map(len, self._queue)) - self._offset + self._gathered_len

    def write(self, data: bytes) -> None:
        """Write ``data`` after everything written before it."""
        if data:
            self.write_sequence((data,))

    def write_now(self, data: bytes) -> None:
        """Write a lone heartbeat frame (``write``: it leaves at once unless a turn is open or bytes wait)."""
        if data:
            self.write_sequence((data,))

    def write_sequence(self, parts: Sequence[bytes]) -> None:
        """Write ``parts`` in order after everything written before them; large ones are not joined."""
        transport = self._transport
        if transport is None:
            return
        if self._producing:
            self._queue.extend(part for part in parts if part)
            return
        threshold = self.threshold
        for index, part in enumerate(parts):
            if len(part) >= threshold:
                self._start_large(parts, index)
                return
        if self._gathered or (self._direct is not None and _idle(self._direct)):
            self._gather(parts)
        else:
            transport.writeSequence(parts)

    def _gather(self, parts: Sequence[bytes]) -> None:
        """Hold ``parts`` for this turn's send (Twisted's buffer is empty); with no turn open, send now."""
        first = not self._gathered
        self._gathered.extend(parts)
        self._gathered_len += sum(map(len, parts))
        turn = self.turn
        if turn is None or not turn.depth or self._gathered_len >= GATHER_LIMIT:
            self.flush()
        elif first:
            turn.waiting.append(self)

    def flush(self) -> None:
        """Send what this writer has gathered: one ``send``, the rest (if any) to Twisted's buffer."""
        parts = self._gathered
        if not parts:
            return
        self._gathered = []
        self._gathered_len = 0
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        connection = self._direct
        assert connection is not None  # only a direct writer gathers
        if not connection.connected or connection._aborting or connection._writeDisconnected:
            return  # gone, or being dropped: Twisted would discard it too
        if len(connection.dataBuffer) != connection.offset or connection._tempDataBuffer:
            connection.write(data)  # cannot happen while every byte goes through us; keep the order anyway
            return
        try:
            sent = connection.socket.send(data)
        except OSError:
            sent = 0  # full, or broken: Twisted's own write finds out which
        if sent < len(data):
            connection.write(data[sent:])

    def send_direct(self, data: bytes) -> int:
        """Send ``data`` on the socket now, from any thread, if nothing waits ahead of it; bytes sent.

        For a connection written from two threads (a controller's): the caller
        holds the lock every write to this connection takes, so no other
        write runs meanwhile. Twisted's buffer is only read here (it fills
        only through writes under that lock, and drains in order), so a send
        made while it is empty cannot overtake anything. Returns 0 when
        something is queued, a large body is being fed, the connection is
        not a plain TCP one, or it is closing: the caller queues ``data``
        for the reactor thread instead.
        """
        connection = self._direct
        if (
            connection is None
            or self._producing
            or self._queue
            or self._gathered
            or not _idle(connection)
            or connection._aborting
            or connection._writeDisconnected
        ):
            return 0
        try:
            return int(connection.socket.send(data))
        except OSError:
            return 0  # full, or broken: the reactor's own write finds out which

    def _start_large(self, parts: Sequence[bytes], index: int) -> None:
        """Feed ``parts[index]`` (a large body) in slices, after what came before it."""
        self.flush()  # what this turn gathered goes first
        if index:
            self._transport.writeSequence(parts[:index])
        self._queue.extend(part for part in parts[index:] if part)
        self._producing = True
        self._transport.registerProducer(self, False)  # a real transport pulls a slice at once

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        """The transport has sent everything it had: give it the next slice, or what follows the body."""
        if not self._queue:
            self._stop()
            return
        body = self._queue[0]
        end = self._offset + self.slice_size
        self._transport.write(body[self._offset : end])  # a copy of one slice, not of the body
        if end < len(body):
            self._offset = end
            return
        self._queue.popleft()
        self._offset = 0
        small = []
        while self._queue and len(self._queue[0]) < self.threshold:
            small.append(self._queue.popleft())
        if small:
            self._transport.writeSequence(small)
        if not self._queue:
            self._stop()  # the next large body, if any, is fed from the next call on

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        """The connection is gone: drop what was waiting."""
        self._queue.clear()
        self._offset = 0
        self._producing = False

    def _stop(self) -> None:
        if self._producing:
            self._producing = False
            self._transport.unregisterProducer()


def _idle(transport: tcp.Connection) -> bool:
    """Connected, not closing, and nothing in Twisted's write buffer (its attributes, read only)."""
    if not transport.connected or transport.disconnecting:
        return False
    return len(transport.dataBuffer) == transport.offset and not transport._tempDataBuffer
