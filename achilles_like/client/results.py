"""Results as ``multiprocessing.pool`` hands them out: AsyncResult, MapResult, IMapIterator.

Same names, same methods, same exceptions as the standard library's:
``get(timeout)`` raises ``multiprocessing.TimeoutError``, ``successful()``
raises ``ValueError`` before the result is ready, ``IMapIterator.next(timeout)``
raises ``multiprocessing.TimeoutError``. A session thread fills them in
(``_set``/``_set_chunk``/``_add_chunk``) and runs the callbacks there, in the
caller's process, as the stdlib's result-handler thread does.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import TimeoutError as MpTimeoutError
from typing import Any

log = logging.getLogger("achilles_like.results")

Outcome = tuple[bool, Any]
Callback = Callable[[Any], object] | None


class AsyncResult:
    """The result of ``apply_async`` (and the base of :class:`MapResult`)."""

    def __init__(self, callback: Callback = None, error_callback: Callback = None) -> None:
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        # The pool this result belongs to, kept alive until the result is ready
        # (as in the stdlib: ``Pool(2).map_async(f, xs).get()`` must work).
        self._owner: object = None

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising; ``ValueError`` if not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Return the result, or raise the call's exception, or ``multiprocessing.TimeoutError``."""
        self.wait(timeout)
        if not self.ready():
            raise MpTimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, success: bool, value: Any) -> None:
        if self.ready():
            return
        self._success, self._value = success, value
        self._owner = None
        callback = self._callback if success else self._error_callback
        if callback is not None:
            try:
                callback(value)
            except Exception:
                log.exception("a result callback raised")
        self._event.set()

    def _sink(self, outcomes: list[Outcome]) -> None:
        self._set(*outcomes[0])


class MapResult(AsyncResult):
    """The result of ``map_async``/``starmap_async``: a list once every chunk is in."""

    def __init__(self, chunks: int, callback: Callback = None, error_callback: Callback = None) -> None:
        super().__init__(callback, error_callback)
        self._chunks: list[list[Any] | None] = [None] * chunks
        self._missing = chunks
        self._failure: BaseException | None = None
        if chunks == 0:
            self._set(True, [])

    def sink_for(self, index: int) -> Callable[[list[Outcome]], None]:
        """The sink that receives chunk ``index``'s outcomes."""
        return lambda outcomes: self._set_chunk(index, outcomes)

    def _set_chunk(self, index: int, outcomes: list[Outcome]) -> None:
        if self._chunks[index] is not None or self.ready():
            return
        self._chunks[index] = [value for _, value in outcomes]
        self._missing -= 1
        failed = next((value for ok, value in outcomes if not ok), None)
        if failed is not None and self._failure is None:
            self._failure = failed  # the first failure is the map's result, as in the stdlib...
        if self._missing == 0:  # ...reported once every chunk is done, as the stdlib does
            if self._failure is not None:
                self._set(False, self._failure)
            else:
                self._set(True, [value for chunk in self._chunks for value in chunk or ()])


class IMapIterator:
    """The iterator ``imap``/``imap_unordered`` return; ``next(timeout)`` as in the stdlib."""

    def __init__(self, ordered: bool, on_consumed: Callable[[], None] = lambda: None) -> None:
        self._ordered = ordered
        self._on_consumed = on_consumed
        self._cond = threading.Condition()
        self._ready: deque[Outcome] = deque()
        self._held: dict[int, list[Outcome]] = {}  # ordered: chunks ahead of the next one
        self._next_chunk = 0
        self._total_chunks: int | None = None
        self._chunks_in = 0
        self.yielded = 0
        self._owner: object = None  # the pool, kept alive while results are still coming

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``StopIteration`` at the end; ``multiprocessing.TimeoutError`` on timeout."""
        with self._cond:
            if not self._ready and not self._finished():
                self._cond.wait_for(lambda: bool(self._ready) or self._finished(), timeout)
            if not self._ready:
                if self._finished():
                    raise StopIteration
                raise MpTimeoutError
            ok, value = self._ready.popleft()
            self.yielded += 1
        self._on_consumed()
        if ok:
            return value
        raise value

    def _finished(self) -> bool:
        done = self._total_chunks is not None and self._chunks_in >= self._total_chunks and not self._held
        if done:
            self._owner = None
        return done

    def sink_for(self, index: int) -> Callable[[list[Outcome]], None]:
        """The sink that receives chunk ``index``'s outcomes."""
        return lambda outcomes: self._add_chunk(index, outcomes)

    def _add_chunk(self, index: int, outcomes: list[Outcome]) -> None:
        with self._cond:
            self._chunks_in += 1
            if not self._ordered:
                self._ready.extend(outcomes)
            else:
                self._held[index] = outcomes
                while self._next_chunk in self._held:
                    self._ready.extend(self._held.pop(self._next_chunk))
                    self._next_chunk += 1
            self._cond.notify_all()

    def _set_length(self, chunks: int) -> None:
        with self._cond:
            self._total_chunks = chunks
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._held.clear()
            self._ready.append((False, error))
            self._total_chunks = self._chunks_in
            self._cond.notify_all()
