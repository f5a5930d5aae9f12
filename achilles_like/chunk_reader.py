"""A read-only file fed in chunks by another thread: unpickle a body while it arrives.

``pickle.loads(body)`` needs the whole body first, so a large value and the
body it is built from are alive together: twice the value's size. CPython's C
unpickler, given a file instead (``pickle.Unpickler(file).load()``), reads a
large ``bytes``/``bytearray``/``str`` payload with ``file.readinto`` straight
into the new object's buffer, so the value is filled from the arriving chunks
and the body is never held whole. :class:`ChunkReader` is that file: the
reactor thread :meth:`~ChunkReader.feed`\\ s it the pieces of a body as they
are read, the unpickling thread reads them, blocking until they come.

Bounded: once :data:`window` bytes are queued, ``pause()`` is called (the
feeder stops reading its socket), and ``resume()`` once the reader has drained
half of them, both under the reader's lock so they alternate. A body that
ends before the reader is satisfied reads as end of file (the unpickler then
raises its usual "truncated" error); :meth:`~ChunkReader.fail` makes the
reader raise that error instead once the fed bytes run out (a connection lost
mid-body). :meth:`~ChunkReader.close` drops what is queued and whatever comes
later: the unpickler stopped (a value is done, or it raised), the rest of the
body is skipped, and reading resumes if it was paused.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class ChunkReader:
    """A file of ``length`` bytes whose data arrives through :meth:`feed`; see the module docstring."""

    def __init__(
        self,
        length: int,
        window: int,
        pause: Callable[[], object] = lambda: None,
        resume: Callable[[], object] = lambda: None,
    ) -> None:
        self.length = length
        self.window = window
        self._pause = pause
        self._resume = resume
        self._ready = threading.Condition(threading.Lock())
        self._chunks: deque[memoryview] = deque()  # fed and not yet read, in order
        self.held = 0  # bytes in _chunks
        self.fed = 0
        self.paused = False
        self._failure: BaseException | None = None
        self._closed = False

    # -- the feeding side (the reactor thread) -------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
        """Queue the next piece of the body (kept by reference, not copied); pause if the window is full."""
        with self._ready:
            if self.fed + len(data) > self.length:
                raise ValueError(f"{self.fed + len(data)} bytes fed to a {self.length}-byte body")
            self.fed += len(data)
            if self._closed or not data:
                return
            self._chunks.append(memoryview(data).cast("B"))
            self.held += len(data)
            if self.held >= self.window and not self.paused:
                self.paused = True
                self._pause()
            self._ready.notify()

    def fail(self, error: BaseException) -> None:
        """The body will not be completed: a read past what was fed raises ``error``."""
        with self._ready:
            if self.fed < self.length and self._failure is None:
                self._failure = error
                self._ready.notify()

    def close(self) -> None:
        """Nothing more will be read: drop what is queued and whatever is fed later."""
        with self._ready:
            self._closed = True
            self._chunks.clear()
            self.held = 0
            self._unpause()

    # -- the reading side (the unpickling thread) ----------------------------------

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Fill ``buffer`` from the body (less only at its end); blocks until the bytes have come."""
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target):
            piece = self._take(len(target) - filled)
            if not piece:
                break
            target[filled : filled + len(piece)] = piece
            filled += len(piece)
        return filled

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes (fewer only at the end of the body; all that is left if negative)."""
        wanted = self.length if size < 0 else size
        out = bytearray(wanted)
        return bytes(out[: self.readinto(out)]) if wanted else b""

    def peek(self, size: int = 0) -> bytes:
        """Some of the next bytes without consuming them (at least one unless at the end)."""
        with self._ready:
            chunk = self._wait()
            return bytes(chunk[: max(size, 1)]) if chunk is not None else b""

    def readline(self) -> bytes:
        """Bytes up to and including the next newline (pickle protocol 0's text opcodes)."""
        line = bytearray()
        while not line.endswith(b"\n"):
            piece = self._take(1)
            if not piece:
                break
            line += piece
        return bytes(line)

    def _take(self, most: int) -> memoryview:
        """Up to ``most`` of the next bytes, consumed (empty at the end of the body)."""
        with self._ready:
            chunk = self._wait()
            if chunk is None:
                return memoryview(b"")
            piece = chunk[:most]
            if len(piece) == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[most:]
            self.held -= len(piece)
            if self.paused and self.held <= self.window // 2:
                self._unpause()
            return piece

    def _wait(self) -> memoryview | None:
        """The first queued chunk, waiting for one; None at the end of the body (lock held)."""
        while not self._chunks:
            if self._failure is not None:
                raise self._failure
            if self.fed >= self.length or self._closed:
                return None
            self._ready.wait()
        return self._chunks[0]

    def _unpause(self) -> None:
        if self.paused:
            self.paused = False
            self._resume()
