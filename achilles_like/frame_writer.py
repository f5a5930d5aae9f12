"""Writing a connection's frames in order, with large bodies fed to the transport in slices.

Twisted's ``FileDescriptor.doWrite`` joins everything written since its last
send into one new ``bytes`` (its ``_tempDataBuffer``), so a 64 MiB body
handed to ``write`` or ``writeSequence`` behind its header line is held
twice until it has gone out: the caller's copy and the join. A
:class:`FrameWriter` hands the transport a body of ``threshold`` bytes or
more one ``slice_size`` piece at a time instead, as a pull producer
(``registerProducer(writer, streaming=False)``): the transport asks for the
next piece only once it has sent everything before it, so the extra memory
is one slice, whatever the size of the body.

Whatever is written on the connection while a large body is being fed waits
in the writer's queue behind it, so frames stay in order; with no large body
in progress a write goes straight to the transport, as it would without the
writer. Hence the one rule: once a connection has a writer, every byte it
sends goes through it (PONGs and handshake replies included).

A heartbeat (a lone PING or PONG) is sent with one ``send`` at once
(:meth:`FrameWriter.write_now`) when nothing waits ahead of it: through
Twisted's buffer it would cost two ``epoll_ctl`` calls (watch the socket for
writing, stop watching) and a reactor turn, most of what an idle peer costs.
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


@implementer(IPullProducer)
class FrameWriter:
    """One connection's writes: straight through, or queued behind a large body being fed in slices."""

    def __init__(self, threshold: int = LARGE_BODY, slice_size: int = SLICE) -> None:
        if not 0 < slice_size <= threshold:
            raise ValueError(
                f"slice_size must be in (0, threshold], got {slice_size} (threshold {threshold})"
            )
        self.threshold = threshold
        self.slice_size = slice_size
        self._transport: Any = None
        # Parts waiting their turn; while producing, the first is the large body being fed.
        self._queue: deque[bytes] = deque()
        self._offset = 0  # how much of the first part has been handed to the transport
        self._producing = False  # registered as the transport's producer

    def attach(self, transport: Any) -> None:
        """Write to ``transport`` from now on (the connection is made)."""
        self._transport = transport

    @property
    def queued(self) -> int:
        """Bytes accepted and not yet handed to the transport."""
        return sum(map(len, self._queue)) - self._offset

    def write(self, data: bytes) -> None:
        """Write ``data`` after everything written before it."""
        if self._producing or len(data) >= self.threshold or self._transport is None:
            self.write_sequence((data,))
        elif data:
            self._transport.write(data)  # the common case (a PING, a CREDIT): one call, as before

    def write_now(self, data: bytes) -> None:
        """Send a small lone frame at once with one ``send`` if nothing waits ahead of it; else ``write``."""
        transport = self._transport
        if self._producing or not isinstance(transport, tcp.Connection) or not _idle(transport):
            self.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full, or broken: Twisted's own write deals with it
        if sent < len(data):
            self._transport.write(data[sent:])

    def write_sequence(self, parts: Sequence[bytes]) -> None:
        """Write ``parts`` in order after everything written before them; large ones are not joined."""
        if self._transport is None:
            return
        if self._producing:
            self._queue.extend(part for part in parts if part)
            return
        for index, part in enumerate(parts):
            if len(part) >= self.threshold:
                if index:
                    self._transport.writeSequence(parts[:index])
                self._queue.extend(part for part in parts[index:] if part)
                self._producing = True
                self._transport.registerProducer(self, False)  # a real transport pulls a slice at once
                return
        self._transport.writeSequence(parts)

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
