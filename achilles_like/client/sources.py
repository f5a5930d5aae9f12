"""Sources of batches for a job driver: one call, a whole map, a lazy imap.

A source hands the driver one batch (one task on the wire) at a time and
routes each batch's outcomes to the result object the caller holds. Lazy
sources stop handing out batches (*throttled*) while their caller holds
``max_ahead`` results it has received and not consumed yet, so an endless
input runs in bounded memory; that one bound, counted in items, serves every
lazy path. Tasks in flight are not counted: the server's credit bounds them,
and it grows with the cluster's slots, so a big cluster is kept busy.

- :class:`ApplySource`: one call, for ``apply_async`` and ``submit``.
- :class:`MapSource`: a whole ``map_async``/``starmap_async`` list.
- :class:`IterSource`: an iterable pulled in the driving thread itself (the
  module functions, whose caller is the driving thread).
- :class:`IMapSource`: an iterable pulled in a feeder thread of its own
  (``Pool.imap``), as the stdlib's task handler does.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from achilles_like.client.calls import DEFAULT_MAX_AHEAD
from achilles_like.client.driver import Batch, Outcomes, Sink
from achilles_like.client.results import IMapIterator, MapResult


class ApplySource:
    """One call: ``func(*args, **kwargs)``, for ``apply_async`` and ``submit``."""

    def __init__(self, batch: Batch, start: Callable[[], bool] = lambda: True) -> None:
        self._batch: Batch | None = batch
        self._start = start  # False: the call was cancelled before it was sent

    @classmethod
    def call(
        cls,
        func_blob: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sink: Sink,
        start: Callable[[], bool] = lambda: True,
    ) -> ApplySource:
        """A source of one ``apply``-mode call."""
        return cls(Batch(func_blob, [(args, kwargs)], sink), start)

    def next_batch(self) -> Batch | None:
        batch, self._batch = self._batch, None
        if batch is not None and not self._start():
            return None
        return batch

    @property
    def exhausted(self) -> bool:
        return self._batch is None

    @property
    def has_batch(self) -> bool:
        return self._batch is not None

    def fail(self, error: BaseException) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.sink(Outcomes.failed(error, len(batch.items)))

    def unthrottle(self) -> None:
        pass  # never throttled


class MapSource:
    """A whole ``map_async``/``starmap_async``: chunks of a list, results into one MapResult."""

    def __init__(self, func_blob: bytes, items: list[Any], chunksize: int, result: MapResult) -> None:
        self._items = items
        self._chunksize = chunksize
        self._func_blob = func_blob
        self._result = result
        self._index = 0
        self._left = (len(items) + chunksize - 1) // chunksize

    def next_batch(self) -> Batch | None:
        if self._left == 0:
            return None
        first = self._index * self._chunksize
        sink = self._result.sink_for(self._index)
        self._index += 1
        self._left -= 1
        return Batch(self._func_blob, self._items[first : first + self._chunksize], sink, first)

    @property
    def exhausted(self) -> bool:
        return self._left == 0

    @property
    def has_batch(self) -> bool:
        return self._left > 0

    def fail(self, error: BaseException) -> None:
        self._left = 0
        self._result._set(False, error)

    def unthrottle(self) -> None:
        pass  # never throttled


class _Throttle:
    """The one memory bound of lazy sources: at most ``max_ahead`` results received and not consumed.

    Results still on their way are not counted: the server's credit bounds
    those. So the caller holds at most ``max_ahead`` plus one credit's worth
    of results it has not consumed.
    """

    def __init__(self, iterator: IMapIterator, max_ahead: int) -> None:
        self.iterator = iterator
        self.max_ahead = max_ahead
        self.sent_items = 0

    @property
    def throttled(self) -> bool:
        # If so, the consumer wakes the driver once it has drained half the bound.
        return self.iterator.hold_back(self.max_ahead)


class _LazySource:
    """What the lazy sources share: chunks become batches for one IMapIterator, within the bound."""

    def __init__(self, func_blob: bytes, chunksize: int, iterator: IMapIterator, max_ahead: int) -> None:
        self._func_blob = func_blob
        self._iterator = iterator
        self._throttle = _Throttle(iterator, max(max_ahead, chunksize))
        self._index = 0
        self._done = False

    def _batch(self, chunk: list[Any]) -> Batch:
        """The next chunk as a batch whose outcomes go to the iterator, in input order."""
        batch = Batch(self._func_blob, chunk, self._iterator.sink_for(self._index), self._throttle.sent_items)
        self._index += 1
        self._throttle.sent_items += len(chunk)
        return batch

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._iterator._set_length(self._index)

    @property
    def exhausted(self) -> bool:
        return self._done

    def fail(self, error: BaseException) -> None:
        self._done = True
        self._iterator._fail(error)


class IterSource(_LazySource):
    """An iterable pulled lazily in the driving thread (the module functions' own caller)."""

    def __init__(
        self,
        func_blob: bytes,
        items: Iterator[Any],
        chunksize: int,
        iterator: IMapIterator,
        max_ahead: int = DEFAULT_MAX_AHEAD,
    ) -> None:
        super().__init__(func_blob, chunksize, iterator, max_ahead)
        self._items = items
        self._chunksize = chunksize
        # One chunk read ahead (from the first pull on), so the last task is known to be
        # the last as it is sent: its END can go in the same round trip.
        self._next: list[Any] | None = None

    def _pull(self) -> list[Any]:
        return list(itertools.islice(self._items, self._chunksize))

    def next_batch(self) -> Batch | None:
        if self._done or self._throttle.throttled:
            return None
        chunk = self._pull() if self._next is None else self._next
        if not chunk:
            self._finish()
            return None
        batch = self._batch(chunk)
        self._next = self._pull()
        if not self._next:
            self._finish()
        return batch

    @property
    def has_batch(self) -> bool:
        return not self._done and not self._throttle.throttled


class _End:
    """Queued by an imap feeder when the caller's iterable is exhausted."""


_END = _End()


class IMapSource(_LazySource):
    """A lazy ``Pool.imap``/``imap_unordered``: pulls the iterable only as results are consumed.

    The caller's iterable is pulled in a feeder thread of its own (as the
    stdlib's task handler does), never in the session thread: an input that
    blocks, say until another call's callback has run, must not stop the
    session delivering that result. A list, tuple or range cannot block, so
    the session thread takes its chunks itself. The feeder keeps a few chunks ready (at
    most about ``max_ahead`` items), and the session takes them only while the
    caller has fewer than ``max_ahead`` results received and unconsumed.
    """

    def __init__(
        self,
        func_blob: bytes,
        iterable: Iterable[Any],
        chunksize: int,
        iterator: IMapIterator,
        max_ahead: int = DEFAULT_MAX_AHEAD,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(func_blob, chunksize, iterator, max_ahead)
        # Chunks read ahead, so the session thread finds one ready whenever it has credit
        # (two made it wait on the feeder at every round trip); bounded by the memory bound.
        self._ahead = max(2, min(64, max_ahead // chunksize))
        self._ready: deque[list[Any] | _End | Exception] = deque()
        self._room = threading.Condition()  # the feeder waits there while the queue is full
        # Set by the session thread before it looks for a chunk; the feeder wakes it only
        # then (it found none, or may have), not once per chunk.
        self._starved = True
        self._wake = wake
        self._chunksize = chunksize
        # A list, tuple or range is read in the session thread itself: taking a chunk of one
        # runs no user code and cannot block, and a feeder thread would cost a wake-up of its
        # own and of the session for every few chunks.
        self._inline: Iterator[Any] | None = None
        if type(iterable) in (list, tuple, range):
            self._inline = iter(iterable)
            return
        feeder = threading.Thread(
            target=self._feed, args=(iter(iterable), chunksize), name="achilles-imap-feeder", daemon=True
        )
        feeder.start()

    def _feed(self, items: Iterator[Any], chunksize: int) -> None:
        while not self._done:
            try:
                chunk: list[Any] | _End | Exception = list(itertools.islice(items, chunksize)) or _END
            except Exception as error:  # noqa: BLE001 - the caller's iterable raised
                chunk = error
            with self._room:
                while len(self._ready) >= self._ahead and not self._done:
                    self._room.wait(0.5)  # a dropped or failed source must not keep this thread
                self._ready.append(chunk)
            if self._starved:  # after the append: a session that looked before it is woken
                self._starved = False
                self._wake()
            if not isinstance(chunk, list):
                return

    def _take(self) -> list[Any] | _End | Exception | None:
        """The next chunk read ahead, or None; the feeder refills once half the queue is taken."""
        if self._inline is not None:
            return list(itertools.islice(self._inline, self._chunksize)) or _END
        self._starved = True  # before looking: a chunk appended after the look wakes the session
        try:
            chunk = self._ready.popleft()
        except IndexError:
            return None
        self._starved = False
        if len(self._ready) == self._ahead // 2:  # one wake-up of the feeder per half a queue
            with self._room:
                self._room.notify()
        return chunk

    def next_batch(self) -> Batch | None:
        if self._done or self._throttle.throttled:
            return None
        chunk = self._take()
        if chunk is None:
            return None
        if isinstance(chunk, _End):
            self._finish()
            return None
        if isinstance(chunk, Exception):
            # As in the stdlib: the results before it come first, then this error, then the end.
            self._iterator.sink_for(self._index)(Outcomes(False, [(False, chunk)]))
            self._index += 1
            self._finish()
            return None
        return self._batch(chunk)

    @property
    def has_batch(self) -> bool:
        if self._done or self._throttle.throttled:
            return False
        if self._inline is not None:
            return True  # a chunk, or the end: next_batch makes progress either way
        self._starved = True  # as in _take: none now, so the feeder's next chunk wakes the session
        if not self._ready:
            return False
        self._starved = False
        return True

    def unthrottle(self) -> None:
        self._throttle.max_ahead = sys.maxsize
