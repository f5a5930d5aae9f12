"""Large results unpickled while they arrive, so the value is the only full-size buffer.

::

    reactor thread                                   the result's own thread
    ──────────────                                   ───────────────────────
    RESULT header, len ≥ STREAM_BYTES ─▶ StreamedResult ─ routed to the job's inbox (as today)
    each socket read of the body ─feed─▶ ChunkReader ─readinto─▶ pickle.Unpickler(reader).load()
      (paused while WINDOW bytes wait)                   └─▶ a Future: the value, or the error
    driving thread: JobDriver._result ─ wait() ─ value() ─▶ outcomes, as for a whole body

A result read whole and then ``pickle.loads``'d keeps its body alive next to
the value built from it: a 64 MiB result peaked at 2× its size in the
controller. Streamed, the value's buffer is filled from the arriving reads
(:mod:`achilles_like.chunk_reader`) and at most :data:`WINDOW` bytes of body
(plus one read) are held beside it.

Which results: a ``RESULT`` in the single form (one task; ``protocol/batch.py``
sends every blob of 64 KiB or more alone, so a large blob is always one) of
at least :data:`STREAM_BYTES`, on a plain TCP connection that has
authenticated the server (the hook is installed only then). Below 1 MiB the
body beside its value costs at most 1 MiB, and ``pickle.loads`` of a body in
hand stays the fast path for the many small results; above it a thread
start and a hand-off per 1 MiB read are a few percent of copying the body
once. Under TLS bodies keep the whole-body path.

Why a thread per result, not the driving thread: a connection is shared by
every job of a process, and a job whose caller is not reading (an ``imap``
left unconsumed while the same thread runs a ``map``) would leave the body
unread, pause the socket, and stall every other job behind it. The result's
own thread always reads on; the driving thread waits for its value where it
would have unpickled the body. Both are off the reactor thread, where user
code (``__reduce__``) never runs. A result whose job is no longer routed is
skipped unread, never unpickled.

Errors are today's: a value that does not unpickle (a corrupt stream, a
``__reduce__`` that raises) fails its task's items with that error; a
connection lost mid-body makes :meth:`StreamedResult.wait` raise the same
``ClusterConnectionError`` the lost connection's event raises. A server that
falls silent mid-body (not a socket we paused) is treated as the driving
thread's wait for events treats it: after ``SERVER_SILENCE_TIMEOUT`` the
connection is closed and the wait raises.
"""

from __future__ import annotations

import pickle
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from twisted.internet import tcp

from achilles_like.chunk_reader import ChunkReader
from achilles_like.client import reactor_thread
from achilles_like.errors import ClusterConnectionError
from achilles_like.liveness import SERVER_SILENCE_TIMEOUT

STREAM_BYTES = 1 << 20  # a RESULT body this large is unpickled as it arrives
WINDOW = 4 << 20  # body bytes held at most beside the value before the socket is paused


def possible(transport: Any) -> bool:
    """Whether a connection can stream results: plain TCP (under TLS, bodies are read whole)."""
    return isinstance(transport, tcp.Connection)


def wanted(verb: str, fields: dict[str, str], length: int) -> bool:
    """Whether a frame's body is a large single result, to stream."""
    return length >= STREAM_BYTES and verb == "RESULT" and "task" in fields and "n" not in fields


class StreamedResult:
    """One result body being unpickled on its own thread as the reactor feeds it."""

    def __init__(self, length: int, protocol: Any) -> None:
        # ``protocol``: the connection's ClientProtocol (its transport, last_seen, settings, failure).
        self._protocol = protocol
        transport = protocol.transport
        self.reader = ChunkReader(
            length,
            WINDOW,
            pause=transport.pauseProducing,  # called in the reactor thread, from feed
            resume=lambda: reactor_thread.call_soon(transport.resumeProducing),
        )
        self._value: Future[Any] = Future()
        self._lost: str | None = None

    def feed(self, data: bytes | memoryview) -> None:
        """The next piece of the body (reactor thread)."""
        self.reader.feed(data)

    def start(self) -> None:
        """Start unpickling: the frame reached its job's inbox."""
        threading.Thread(target=self._unpickle, name="achilles-result", daemon=True).start()

    def skip(self) -> None:
        """Nobody wants this result: let the rest of the body go by unread."""
        self.reader.close()

    def lose(self, message: str) -> None:
        """The connection ended: a body still incomplete fails with ``message``."""
        self._lost = message
        self.reader.fail(ClusterConnectionError(message))

    def _unpickle(self) -> None:
        try:
            value = pickle.Unpickler(self.reader).load()
        except BaseException as error:  # noqa: BLE001 - every failure goes to the waiting thread
            self._value.set_exception(error)
        else:
            self._value.set_result(value)
        finally:
            self.reader.close()  # bytes after the pickle's end (none from our nodes) go unread

    def wait(self) -> None:
        """Wait until the value is done; a connection lost mid-body raises ClusterConnectionError."""
        while True:
            try:
                error = self._value.exception(timeout=1.0)
                break
            except FutureTimeout:
                self._check_silence()
        if self._lost is not None and isinstance(error, ClusterConnectionError):
            raise ClusterConnectionError(self._lost)

    def value(self) -> Any:
        """The unpickled value, or the error unpickling raised."""
        return self._value.result()

    def _check_silence(self) -> None:
        """Close the connection if the server has sent nothing for too long while the body waits."""
        protocol = self._protocol
        silent = time.monotonic() - protocol.last_seen
        if silent > SERVER_SILENCE_TIMEOUT and not self.reader.paused and not protocol.lost:
            where = f"{protocol.settings.host}:{protocol.settings.port}"
            protocol.failure = protocol.failure or (
                f"no word from the server at {where} for {silent:.0f}s; it is down or unreachable"
            )
            reactor_thread.call_soon(protocol.transport.loseConnection)
