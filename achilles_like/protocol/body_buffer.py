"""One buffer per body: bytes of an announced length filled in pieces, handed on without another copy.

A body arrives in pieces (64 KiB socket reads, pipe reads). Appending them to
a ``bytearray`` and slicing the body out copies it again, and joining a list
of pieces holds it twice at the moment of the join; both double the peak
memory of a large body. :class:`BodyBuffer` reserves the announced length
once (``bytes(n)`` is ``calloc``'d: untouched pages cost nothing), takes each
piece at its offset (:meth:`BodyBuffer.write`, or :meth:`BodyBuffer.view`
for ``readinto``/``os.readv`` straight from a descriptor), and
:meth:`BodyBuffer.value` returns that same memory as ``bytes``: CPython's
``io.BytesIO.getvalue()`` returns its buffer object itself when it is exactly
full and no view is exported. So a body costs its own size plus one piece.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import io


class BodyBuffer:
    """A body of ``length`` bytes being filled in order; ``value()`` once it is complete."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.filled = 0
        # The temporary's only reference ends up inside the BytesIO, so writes go in place.
        self._io = io.BytesIO(bytes(length))

    @property
    def missing(self) -> int:
        """Bytes still to come."""
        return self.length - self.filled

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Take as much of ``data`` as the body still needs; return how many bytes were taken."""
        take = min(len(data), self.missing)
        if take:
            self._io.write(data if take == len(data) else memoryview(data)[:take])
            self.filled += take
        return take

    def view(self) -> memoryview:
        """A writable view of the missing part, for ``readinto``; release it, then call :meth:`advance`."""
        return self._io.getbuffer()[self.filled :]

    def advance(self, count: int) -> None:
        """Record that ``count`` bytes were read into a :meth:`view`."""
        if not 0 <= count <= self.missing:
            raise ValueError(f"advance({count}) with {self.missing} bytes missing")
        self.filled += count
        self._io.seek(self.filled)

    def value(self) -> bytes:
        """The complete body, without copying it (every :meth:`view` must have been released)."""
        if self.missing:
            raise ValueError(f"the body is {self.missing} bytes short of its {self.length}")
        return self._io.getvalue()
