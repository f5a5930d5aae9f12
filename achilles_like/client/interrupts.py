"""Ctrl-C held off for a short block in the main thread, then raised: :class:`InterruptsHeld`.

A caller that handles its session's frames (``Session.drive_until``) must not
stop halfway through them: a result taken from the inbox and not delivered
would leave another call waiting for ever. Python raises KeyboardInterrupt
in the main thread between any two bytecodes, so for the length of the block
SIGINT only sets a flag, and KeyboardInterrupt is raised once the block is
done. Only while SIGINT has Python's default handler: another handler is
the program's own, and is left alone.

It uses ``_signal``, the C module ``signal`` wraps: ``signal.signal`` and
``signal.getsignal`` convert handlers to and from enums, which costs about
6 µs a call, paid on every round trip that the main thread handles.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import threading
from collections.abc import Callable
from typing import Any

_SIGINT = 2
_default: Callable[..., Any] = _signal.default_int_handler
_getsignal: Callable[[int], object] = _signal.getsignal
_setsignal: Callable[[int, object], object] = _signal.signal
_main = threading.main_thread()


class InterruptsHeld:
    """``with InterruptsHeld():`` SIGINT during the block raises KeyboardInterrupt after it (main thread)."""

    __slots__ = ("_caught", "_old")

    def __enter__(self) -> None:
        self._old: object = None
        self._caught = False
        if threading.current_thread() is _main and _getsignal(_SIGINT) is _default:
            self._old = _setsignal(_SIGINT, self._hold)

    def _hold(self, signum: int, frame: object) -> None:
        self._caught = True

    def __exit__(self, *exc_info: object) -> None:
        if self._old is not None:
            _setsignal(_SIGINT, self._old)
            if self._caught:
                raise KeyboardInterrupt
