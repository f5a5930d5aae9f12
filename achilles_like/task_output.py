"""What a task prints, captured in the worker so that it can reach the caller.

While a task runs, ``sys.stdout`` and ``sys.stderr`` are replaced by writers
that keep the text in order (stream by stream, as written) up to
:data:`LIMIT` characters per task; past that the rest is counted and dropped,
so a task that prints without end never fills memory or blocks. The node
forwards the capture to the server, which hands it to the job's controller
only; the controller writes it to its own stdout and stderr.

The capture travels as UTF-8 JSON, ``{"out": [[stream, text], ...],
"dropped": n}`` with stream 1 for stdout and 2 for stderr: plain data, never
a pickle.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LIMIT = 32 * 1024  # characters per task: the OUTPUT frame stays well under the control-frame limit


class Capture:
    """The text a task wrote to stdout and stderr, in order, bounded."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.parts: list[list[Any]] = []  # [stream, text], neighbours of one stream merged
        self.size = 0
        self.dropped = 0

    def write(self, stream: int, text: str) -> None:
        """Keep ``text`` if there is room, else count it as dropped."""
        room = self.limit - self.size
        kept = text[: max(room, 0)]
        self.dropped += len(text) - len(kept)
        if not kept:
            return
        self.size += len(kept)
        if self.parts and self.parts[-1][0] == stream:
            self.parts[-1][1] += kept
        else:
            self.parts.append([stream, kept])

    def clear(self) -> None:
        """Forget everything written (the next task's capture starts empty)."""
        self.parts = []
        self.size = 0
        self.dropped = 0

    def encode(self) -> bytes:
        """The capture as the bytes of an OUTPUT message; empty when nothing was written."""
        if not self.parts and not self.dropped:
            return b""
        return json.dumps({"out": self.parts, "dropped": self.dropped}).encode("utf-8")


class _Writer(io.TextIOBase):
    """A text stream that writes into a :class:`Capture`."""

    def __init__(self, capture: Capture, stream: int) -> None:
        self._capture = capture
        self._stream = stream

    def write(self, text: str) -> int:
        self._capture.write(self._stream, str(text))
        return len(text)

    def writable(self) -> bool:
        return True


@contextmanager
def captured() -> Iterator[Capture]:
    """Capture ``sys.stdout`` and ``sys.stderr`` for the duration of one task."""
    capture = Capture()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Writer(capture, 1), _Writer(capture, 2)
    try:
        yield capture
    finally:
        sys.stdout, sys.stderr = saved


class Capturing:
    """:func:`captured` for a loop of tasks: the writers are made once, each task only swaps streams."""

    def __init__(self) -> None:
        self.capture = Capture()
        self._writers = _Writer(self.capture, 1), _Writer(self.capture, 2)
        self._saved: tuple[Any, Any] | None = None

    def start(self) -> None:
        """Send ``sys.stdout`` and ``sys.stderr`` to an empty capture."""
        self.capture.clear()
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._writers

    def stop(self) -> bytes:
        """Give the standard streams back; the capture's bytes (empty when nothing was written)."""
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
        return self.capture.encode()


def replay(body: bytes, stdout: Any, stderr: Any) -> None:
    """Write a capture received from a node to ``stdout``/``stderr`` (the controller's side)."""
    try:
        data = json.loads(body)
        parts, dropped = data["out"], int(data["dropped"])
    except (ValueError, KeyError, TypeError):
        return  # not a capture: nothing to show
    for stream, text in parts:
        target = stderr if stream == 2 else stdout
        target.write(str(text))
    if dropped:
        stderr.write(f"[achilles_like: {dropped} more characters of a task's output were dropped]\n")
    stdout.flush()
    stderr.flush()
