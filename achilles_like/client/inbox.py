"""A job's inbox that holds ``RUNNING`` notices back, so they cost no wake-up of their own.

An executor's job hears ``RUNNING`` once per call, when a worker takes it,
and a node sends it on its own, a moment before that call's result: about
half of the frames that reached an executor's session came alone, and each
woke the session thread to mark one future running. The connection's reactor
thread puts routed frames here (``ClientProtocol._route``); a batch made only
of ``RUNNING`` frames is held instead of put, and goes out in front of the
next batch for this inbox (a ``RESULT`` or ``CREDIT``, which wakes the reader
anyway), or on its own after :data:`RUNNING_DELAY` if nothing else comes.

So ``running()`` still turns true only once a worker has the call, at most
:data:`RUNNING_DELAY` later than it would have; order is kept (a held notice
goes before any frame routed after it). Everything else (wake-ups, the
connection's loss) passes straight through. Only the reactor thread touches
what is held: frames and the loss are put there, and the timer runs there.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from achilles_like.client.connection import Lost
from achilles_like.protocol import Frame
from achilles_like.protocol import messages as msg

#: The longest a ``RUNNING`` notice waits for company before it is delivered alone (seconds).
RUNNING_DELAY = 0.005

_RUNNING = msg.Running.VERB

CallLater = Callable[[float, Callable[[], None]], object]


def _reactor_call_later(delay: float, fn: Callable[[], None]) -> object:
    from achilles_like.client import reactor_thread

    return reactor_thread.reactor().callLater(delay, fn)


class HoldingInbox(queue.SimpleQueue[Any]):
    """A ``SimpleQueue`` whose ``RUNNING``-only batches of frames wait for the next batch (see module)."""

    def __init__(self, call_later: CallLater = _reactor_call_later) -> None:
        super().__init__()
        self._call_later = call_later
        self._held: list[Frame] = []
        self._timer_armed = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``item``; a list of only ``RUNNING`` frames is held back (reactor thread)."""
        if type(item) is list:
            if item and all(frame.verb == _RUNNING for frame in item):
                self._hold(item)
                return
            if self._held:
                item, self._held = self._held + item, []
        elif isinstance(item, Lost) and self._held:
            super().put(self._take())  # what was held goes before the connection's loss
        super().put(item)

    def _hold(self, frames: list[Frame]) -> None:
        self._held += frames
        if not self._timer_armed:
            self._timer_armed = True
            self._call_later(RUNNING_DELAY, self._release)

    def _release(self) -> None:
        """The delay ran out: deliver what is held, if the next batch has not taken it already."""
        self._timer_armed = False
        if self._held:
            super().put(self._take())

    def _take(self) -> list[Frame]:
        held, self._held = self._held, []
        return held
