"""Sources of batches for a session: one call, a whole map, a lazy imap.

A source hands the session thread one batch (one task on the wire) at a time
and routes each batch's outcomes to the result object the caller holds.
``IMapSource`` pulls the caller's iterable lazily, in a feeder thread, and
stops (``throttled``) when the caller has ``max_ahead`` items it has not
consumed yet, so an endless input runs in bounded memory.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from achilles_like.client.job import DEFAULT_MAX_AHEAD
from achilles_like.client.results import IMapIterator, MapResult
from achilles_like.client.session import Batch, Outcome


class ApplySource:
    """One call: ``func(*args, **kwargs)``, for ``apply_async`` and ``submit``."""

    def __init__(
        self,
        func_blob: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        sink: Callable[[list[Outcome]], None],
        start: Callable[[], bool] = lambda: True,
    ) -> None:
        self._batch: Batch | None = Batch(func_blob, "apply", [(args, kwargs)], sink)
        self._start = start  # False: the call was cancelled before it started

    @classmethod
    def of(cls, batch: Batch, start: Callable[[], bool] = lambda: True) -> ApplySource:
        """A source of one ready-made batch."""
        source = cls(batch.func_blob, (), {}, batch.sink, start)
        source._batch = batch
        return source

    def next_batch(self) -> Batch | None:
        batch, self._batch = self._batch, None
        if batch is not None and not self._start():
            return None
        return batch

    @property
    def exhausted(self) -> bool:
        return self._batch is None

    @property
    def throttled(self) -> bool:
        return False

    @property
    def has_batch(self) -> bool:
        return self._batch is not None

    def fail(self, error: BaseException) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.sink([(False, error)] * len(batch.payloads))

    def unthrottle(self) -> None:
        pass  # never throttled


class MapSource:
    """A whole ``map_async``/``starmap_async``: chunks of a list, results into one MapResult."""

    def __init__(
        self, func_blob: bytes, mode: str, items: list[Any], chunksize: int, result: MapResult
    ) -> None:
        self._chunks = iter([items[i : i + chunksize] for i in range(0, len(items), chunksize)])
        self._func_blob = func_blob
        self._mode = mode
        self._result = result
        self._index = 0
        self._left = (len(items) + chunksize - 1) // chunksize

    def next_batch(self) -> Batch | None:
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        sink = self._result.sink_for(self._index)
        self._index += 1
        self._left -= 1
        return Batch(self._func_blob, self._mode, chunk, sink)

    @property
    def exhausted(self) -> bool:
        return self._left == 0

    @property
    def throttled(self) -> bool:
        return False

    @property
    def has_batch(self) -> bool:
        return self._left > 0

    def fail(self, error: BaseException) -> None:
        self._left = 0
        self._result._set(False, error)

    def unthrottle(self) -> None:
        pass  # never throttled


class _End:
    """Queued by an imap feeder when the caller's iterable is exhausted."""


_END = _End()


class IMapSource:
    """A lazy ``imap``/``imap_unordered``: pulls the iterable only as results are consumed.

    The caller's iterable is pulled in a feeder thread of its own (as the
    stdlib's task handler does), never in the session thread: an input that
    blocks, say until another call's callback has run, must not stop the
    session delivering that result. The feeder keeps at most two chunks
    ready, and the session takes them only while the caller has fewer than
    ``max_ahead`` items unconsumed, so an endless input stays bounded.
    """

    def __init__(
        self,
        func_blob: bytes,
        mode: str,
        iterable: Iterable[Any],
        chunksize: int,
        iterator: IMapIterator,
        max_ahead: int = DEFAULT_MAX_AHEAD,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._func_blob = func_blob
        self._mode = mode
        self._iterator = iterator
        self._max_ahead = max(max_ahead, chunksize)
        self._sent_items = 0
        self._index = 0
        self._done = False
        self._ready: queue.Queue[list[Any] | _End | Exception] = queue.Queue(maxsize=2)
        self._wake = wake
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
            while not self._done:  # a dropped or failed source must not keep this thread
                try:
                    self._ready.put(chunk, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self._wake()
            if not isinstance(chunk, list):
                return

    def next_batch(self) -> Batch | None:
        if self._done or self.throttled:
            return None
        try:
            chunk = self._ready.get_nowait()
        except queue.Empty:
            return None
        if isinstance(chunk, _End):
            self._finish()
            return None
        if isinstance(chunk, Exception):
            # As in the stdlib: the results before it come first, then this error, then the end.
            self._iterator.sink_for(self._index)([(False, chunk)])
            self._index += 1
            self._finish()
            return None
        sink = self._iterator.sink_for(self._index)
        self._index += 1
        self._sent_items += len(chunk)
        return Batch(self._func_blob, self._mode, chunk, sink)

    def _finish(self) -> None:
        self._done = True
        self._iterator._set_length(self._index)

    @property
    def exhausted(self) -> bool:
        return self._done

    @property
    def throttled(self) -> bool:
        return self._sent_items - self._iterator.yielded >= self._max_ahead

    @property
    def has_batch(self) -> bool:
        return not self._done and not self.throttled and not self._ready.empty()

    def fail(self, error: BaseException) -> None:
        self._done = True
        self._iterator._fail(error)

    def unthrottle(self) -> None:
        self._max_ahead = sys.maxsize
