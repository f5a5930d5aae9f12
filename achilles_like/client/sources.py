"""Sources of batches for a session: one call, a whole map, a lazy imap.

A source hands the session thread one batch (one task on the wire) at a time
and routes each batch's outcomes to the result object the caller holds.
``IMapSource`` pulls the caller's iterable lazily and stops (``throttled``)
when the caller has ``max_ahead`` items it has not consumed yet, so an
endless input runs in bounded memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from achilles_like.client.results import IMapIterator, MapResult
from achilles_like.client.session import Batch, Outcome

DEFAULT_MAX_AHEAD = 1024


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


class IMapSource:
    """A lazy ``imap``/``imap_unordered``: pulls the iterable only as results are consumed."""

    def __init__(
        self,
        func_blob: bytes,
        mode: str,
        iterable: Iterable[Any],
        chunksize: int,
        iterator: IMapIterator,
        max_ahead: int = DEFAULT_MAX_AHEAD,
    ) -> None:
        self._items: Iterator[Any] = iter(iterable)
        self._func_blob = func_blob
        self._mode = mode
        self._chunksize = chunksize
        self._iterator = iterator
        self._max_ahead = max(max_ahead, chunksize)
        self._sent_items = 0
        self._index = 0
        self._done = False

    def next_batch(self) -> Batch | None:
        if self._done or self.throttled:
            return None
        try:
            chunk = list(itertools.islice(self._items, self._chunksize))
        except Exception as error:  # noqa: BLE001 - the caller's iterable raised
            self.fail(error)
            return None
        if not chunk:
            self._done = True
            self._iterator._set_length(self._index)
            return None
        sink = self._iterator.sink_for(self._index)
        self._index += 1
        self._sent_items += len(chunk)
        return Batch(self._func_blob, self._mode, chunk, sink)

    @property
    def exhausted(self) -> bool:
        return self._done

    @property
    def throttled(self) -> bool:
        return self._sent_items - self._iterator.yielded >= self._max_ahead

    @property
    def has_batch(self) -> bool:
        return not self._done and not self.throttled

    def fail(self, error: BaseException) -> None:
        self._done = True
        self._iterator._fail(error)
