"""Results as ``multiprocessing.pool`` hands them out: AsyncResult, MapResult, IMapIterator.

Same names, same methods, same exceptions as the standard library's:
``get(timeout)`` raises ``multiprocessing.TimeoutError``, ``successful()``
raises ``ValueError`` before the result is ready, ``IMapIterator.next(timeout)``
raises ``multiprocessing.TimeoutError``. The thread handling the session's
frames fills them in (``_set``/``_set_chunk``/``_add_chunk``): the session
thread, or a caller waiting in ``get()`` or for a ``Pool.imap`` result,
which handles the frames itself (``Session.drive_until``). Callbacks run in
the session thread, in the caller's process, as the stdlib's result-handler
thread runs them.
"""

from __future__ import annotations

import itertools
import logging
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import TimeoutError as MpTimeoutError
from typing import TYPE_CHECKING, Any

from achilles_like.client.driver import Outcomes, Sink
from achilles_like.client.inbox import Waiter
from achilles_like.client.progress import ProgressSink
from achilles_like.scheduling.reorder import ReorderBuffer

if TYPE_CHECKING:
    from achilles_like.client.session import Session

log = logging.getLogger("achilles_like.results")

#: Ready chunks that all succeeded are handed out together up to this many items (see _start_chunk).
MERGE_ITEMS = 128

_NONE: Any = object()  # what next(iterator, _NONE) gives when the iterator is exhausted
_EXHAUSTED: Callable[[], Any] = iter(()).__next__  # raises StopIteration


def _value_of(outcome: tuple[bool, Any]) -> Any:
    """An ``(ok, value or error)`` outcome's value, or its error raised."""
    ok, value = outcome
    if ok:
        return value
    raise value


Callback = Callable[[Any], object] | None


class AsyncResult:
    """The result of ``apply_async`` (and the base of :class:`MapResult`)."""

    def __init__(
        self, callback: Callback = None, error_callback: Callback = None, progress: ProgressSink | None = None
    ) -> None:
        self._event = threading.Event()
        self._progress = progress  # progress=: counts items as chunks arrive, closed at the end
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None
        # The pool this result belongs to, kept alive until the result is ready
        # (as in the stdlib: ``Pool(2).map_async(f, xs).get()`` must work).
        self._owner: object = None
        # Its session: a caller waiting for the result handles the job's frames meanwhile.
        self._session: Session | None = None
        self.driver_waiter: Waiter | None = None  # that caller's, woken when the result is set
        self._handed_over = False  # its outcome waits for the session thread (a callback to run)

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
        session = self._session
        if session is not None and not self._event.is_set():
            timeout = session.drive_until(self._event.is_set, self, timeout)
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
        if self.ready() or self._handed_over:
            return  # the first outcome wins, even while the session thread has yet to set it
        session = self._session
        # A callback runs in the session thread, as the stdlib's do in its result handler.
        if (self._callback if success else self._error_callback) is not None and session is not None:
            self._handed_over = session.hand_to_session(lambda: self._complete(success, value))
            if self._handed_over:
                return
        self._complete(success, value)

    def _complete(self, success: bool, value: Any) -> None:
        callback = self._callback if success else self._error_callback
        self._success, self._value = success, value
        self._owner = None
        if self._progress is not None:
            self._progress.close()
        if callback is not None:
            try:
                callback(value)
            except Exception:
                log.exception("a result callback raised")
        self._event.set()
        self._session = None
        waiter = self.driver_waiter
        if waiter is not None:
            waiter.wake()

    def _sink(self, outcomes: Outcomes) -> None:
        self._set(*outcomes.pairs()[0])


class MapResult(AsyncResult):
    """The result of ``map_async``/``starmap_async``: a list once every chunk is in."""

    def __init__(
        self,
        chunks: int,
        callback: Callback = None,
        error_callback: Callback = None,
        progress: ProgressSink | None = None,
    ) -> None:
        super().__init__(callback, error_callback, progress)
        self._chunks: list[list[Any] | None] = [None] * chunks
        self._missing = chunks
        self._failure: BaseException | None = None
        if chunks == 0:
            self._set(True, [])

    def sink_for(self, index: int) -> Sink:
        """The sink that receives chunk ``index``'s outcomes."""
        return lambda outcomes: self._set_chunk(index, outcomes)

    def _set_chunk(self, index: int, outcomes: Outcomes) -> None:
        if self._chunks[index] is not None or self.ready():
            return
        self._chunks[index] = outcomes.items
        self._missing -= 1
        if self._progress is not None:
            self._progress.update(len(outcomes.items))
        failed = outcomes.first_failure()
        if failed is not None and self._failure is None:
            self._failure = failed  # the first failure is the map's result, as in the stdlib...
        if self._missing == 0:  # ...reported once every chunk is done, as the stdlib does
            if self._failure is not None:
                self._set(False, self._failure)
            else:
                values: list[Any] = []
                for chunk in self._chunks:
                    values += chunk or ()
                self._set(True, values)


class _Failing:
    """A chunk's ``(ok, value or error)`` outcomes as its values, raising each error in its place.

    A class, not a generator: it goes on after raising, to the items after
    the failed one.
    """

    def __init__(self, outcomes: Iterator[tuple[bool, Any]]) -> None:
        self._outcomes = outcomes

    def __iter__(self) -> _Failing:
        return self

    def __next__(self) -> Any:
        return _value_of(next(self._outcomes))


# A session thread's iterators whose waiting consumers it wakes before it next blocks.
_deferring = threading.local()


def defer_wakeups() -> None:
    """In this thread (a session's), chunks wake their waiting consumers only at :func:`wake_deferred`.

    A session delivers a frame's chunks one by one and then feeds the job:
    a consumer woken at the first chunk would fight it for the GIL through
    the rest of that work. Woken once, when the session is about to wait,
    it finds every chunk of the step ready. Only for a thread that calls
    :func:`wake_deferred` before every wait.
    """
    _deferring.pending = []


def wake_deferred() -> None:
    """Wake the consumers of the chunks this thread delivered since it last did."""
    pending = getattr(_deferring, "pending", None)
    if pending:
        _deferring.pending = []
        for iterator in pending:
            iterator._wake()


class IMapIterator:
    """The iterator ``imap``/``imap_unordered`` return; ``next(timeout)`` as in the stdlib.

    Chunks arrive whole; ordered results go through one :class:`ReorderBuffer`
    and are handed out from a queue of ready chunks, so placing a chunk costs
    one step, not one per item; small ready chunks that all succeeded are
    handed out as one (up to :data:`MERGE_ITEMS` items). A ``Pool``'s consumer
    that finds nothing ready handles the job's frames itself, and sends the
    input that its consuming made room for, so neither wakes the session
    thread. ``stop_at_failure`` (the module functions) ends the iteration at
    the first failure to arrive: the results already in order before it are
    handed out (the failing chunk's own items before the failure included),
    then the failure is raised. The job has ended, so results still missing
    before it will not come.
    """

    def __init__(
        self,
        ordered: bool,
        on_consumed: Callable[[], None] = lambda: None,
        progress: ProgressSink | None = None,
    ) -> None:
        self._ordered = ordered
        self._progress = progress  # progress=: counts items as chunks arrive, closed at the end
        self._on_consumed = on_consumed
        # A plain lock, taken directly on the hot path (one C call per item, as the stdlib's
        # iterator does); the condition on it is for waiting only.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._reorder: ReorderBuffer[Outcomes] = ReorderBuffer()
        self._chunks: deque[Outcomes] = deque()  # ready, in the order they are handed out
        self._offset = 0  # into the first ready chunk (pop_ready)
        # The chunk being handed out by next(): an iterator over its items, and its form.
        self._current: tuple[Iterator[Any], bool] | None = None
        # Its items one by one while they all succeeded, else always exhausted (see __next__).
        self._fast: Callable[[], Any] = _EXHAUSTED
        self._total_chunks: int | None = None
        self._chunks_in = 0
        self._failed = False
        self.stop_at_failure = False
        self.yielded = 0
        self.received = 0  # items of the chunks that arrived (ready or held for order)
        # Set by a throttled source: wake it (on_consumed) once no more than this many
        # results are unconsumed; -1: it wants no wake-up. A number, checked inline per item.
        self.wake_below = -1
        self._waiting = 0  # consumers waiting in next(): a chunk notifies only if there are any
        self._wake_pending = False  # a session thread will wake them (wake_deferred)
        self._owner: object = None  # the pool, kept alive while results are still coming
        # A Pool's session: a consumer that finds nothing ready handles the job's frames itself.
        self._session: Session | None = None
        self.driver_waiter: Waiter | None = None  # that consumer's, woken when a chunk is ready

    def __iter__(self) -> Iterator[Any]:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``StopIteration`` at the end; ``multiprocessing.TimeoutError`` on timeout."""
        current = self._current
        if current is not None:
            # The chunk being handed out, read without the lock: next() on a list iterator is
            # one C call, so each item still goes to exactly one consumer thread.
            item = next(current[0], _NONE)
            if item is not _NONE:
                return item if current[1] else _value_of(item)
        return self._next_chunk(timeout)

    def __next__(self) -> Any:
        # The per-item path of a for loop: one C call into the chunk being handed out (all of
        # its items succeeded), else next(), which starts the next chunk or raises a failure.
        try:
            return self._fast()
        except StopIteration:
            return self.next()

    def _next_chunk(self, timeout: float | None) -> Any:
        """Start handing out the next ready chunk (waiting for one), and return its first result.

        Its items count as consumed from now on: the memory bound may be
        exceeded by the chunk being handed out (one chunk, or up to
        :data:`MERGE_ITEMS` items of small ones merged).
        """
        if not self._chunks and self._session is not None:
            timeout = self._drive(timeout)
        with self._lock:
            current = self._current
            if current is not None:  # another consumer started one meanwhile: it goes first
                item = next(current[0], _NONE)
                if item is not _NONE:
                    return item if current[1] else _value_of(item)
            handing, ok, wake = self._start_chunk(timeout)
            if not wake:
                item = next(handing)  # never empty: empty chunks are not queued
                return item if ok else _value_of(item)
        # Before any item is taken: Ctrl-C raised here (the source may feed in this thread)
        # leaves the whole chunk to be handed out.
        self._on_consumed()
        return self.next(timeout)

    def chunk_iterators(self) -> Iterator[Iterator[Any]]:
        """The chunks being handed out, each as an iterator of its results, waiting for each.

        Each is the very iterator :meth:`next` hands items out of, so both
        may be used on one result set; a failed item raises from its chunk's
        iterator, which goes on after it. For :class:`ChunkedIMapIterator`.
        """
        while True:
            if not self._chunks and self._session is not None:
                self._drive(None)
            with self._lock:
                current = self._current
                if current is not None and operator.length_hint(current[0]):
                    handing, ok, wake = current[0], current[1], False
                else:
                    try:
                        handing, ok, wake = self._start_chunk(None)
                    except StopIteration:
                        return
            if wake:
                self._on_consumed()
            yield handing if ok else _Failing(handing)

    def _drive(self, timeout: float | None) -> float | None:
        """Wait for a ready chunk by handling the job's frames in this thread, if it may; the time left.

        As with :meth:`AsyncResult.wait`: the consumer is woken for the
        frames that carry its results and handles them itself, so the session
        thread is not woken for them (``Session.drive_until``). If this thread
        may not drive, it returns at once and the consumer waits as before.
        """
        session = self._session
        if session is None:
            return timeout
        return session.drive_until(self._has_ready, self, timeout)

    def _has_ready(self) -> bool:
        """Whether a chunk is ready or the results are over (read without the lock: when to stop driving)."""
        current = self._current
        if self._chunks or self._failed or (current is not None and operator.length_hint(current[0])):
            return True
        return self._all_in()

    def _all_in(self) -> bool:
        """Every chunk has arrived and none is held for order."""
        total = self._total_chunks
        return total is not None and self._chunks_in >= total and not len(self._reorder)

    def _start_chunk(self, timeout: float | None) -> tuple[Iterator[Any], bool, bool]:
        """Make the next ready chunk the current one (waiting for one, under the lock).

        Its items count as consumed from now on. Returns its items' iterator,
        whether they all succeeded, and whether the source wants waking.
        """
        chunks = self._chunks  # one deque for the iterator's life: only ever cleared, never replaced
        if not chunks:
            if not self._finished():
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: bool(chunks) or self._finished(), timeout)
                finally:
                    self._waiting -= 1
            if not chunks:
                if self._finished():
                    raise StopIteration
                raise MpTimeoutError
        chunk = chunks.popleft()
        items = chunk.items
        if self._offset:  # what pop_ready handed out of it already
            items, self._offset = items[self._offset :], 0
        if chunk.ok and chunks and chunks[0].ok and len(items) < MERGE_ITEMS:
            # Small chunks that all succeeded go out as one: a for loop then takes each item
            # in one C call, not through a Python call per chunk (chunksize=1: per item).
            items = list(items)
            while chunks and chunks[0].ok and len(items) < MERGE_ITEMS:
                items += chunks.popleft().items
        self.yielded += len(items)
        handing = iter(items)
        self._current = (handing, chunk.ok)
        self._fast = handing.__next__ if chunk.ok else _EXHAUSTED
        wake = self.wake_below >= 0 and self.received - self.yielded <= self.wake_below
        if wake:
            self.wake_below = -1
        return handing, chunk.ok, wake

    def pop_ready(self) -> tuple[bool, Any] | None:
        """The next outcome if one is ready, else None (never blocks)."""
        with self._lock:
            current = self._current
            if current is not None:
                item = next(current[0], _NONE)
                if item is not _NONE:
                    return (True, item) if current[1] else item
            return self._pop() if self._chunks else None

    def take_ready(self) -> list[Outcomes]:
        """Every chunk ready now, in order, taken in one step (never blocks); for the module functions.

        Their caller drives the job in this very thread and feeds it again
        only once it has gone through these, so the memory bound still holds.
        """
        with self._lock:
            current, self._current = self._current, None
            self._fast = _EXHAUSTED
            if current is not None:
                rest = list(current[0])
                if rest:  # counted as consumed already
                    self._chunks.appendleft(Outcomes(current[1], rest))
                    self.yielded -= len(rest)
            if not self._chunks:
                return []
            chunks = list(self._chunks)
            self._chunks.clear()
            offset, self._offset = self._offset, 0
            self.yielded += sum(len(chunk.items) for chunk in chunks) - offset
        if offset:  # what pop_ready handed out of the first chunk already
            chunks[0] = Outcomes(chunks[0].ok, chunks[0].items[offset:])
        return chunks

    @property
    def finished(self) -> bool:
        """Every result has been handed out."""
        with self._lock:
            current = self._current
            if current is not None and operator.length_hint(current[0]):
                return False
            return not self._chunks and self._finished()

    def _pop(self) -> tuple[bool, Any]:
        chunk = self._chunks[0]
        item = chunk.items[self._offset]
        self._offset += 1
        if self._offset == len(chunk.items):
            self._chunks.popleft()
            self._offset = 0
        self.yielded += 1
        return (True, item) if chunk.ok else item

    def hold_back(self, bound: int) -> bool:
        """Whether ``bound`` results or more are unconsumed; if so, wake the source at half of it.

        Checked and armed under the lock: a consumer that drains them meanwhile
        cannot slip past the mark unseen.
        """
        with self._lock:
            if self.received - self.yielded < bound:
                return False
            self.wake_below = bound // 2
            return True

    @property
    def unconsumed(self) -> int:
        """Results received and not handed out yet: what a lazy source bounds."""
        return self.received - self.yielded

    def _finished(self) -> bool:
        done = self._all_in()
        if done:
            self._owner = None
            if self._progress is not None:
                self._progress.close()
                self._progress = None
        return done

    def sink_for(self, index: int) -> Sink:
        """The sink that receives chunk ``index``'s outcomes."""
        return lambda outcomes: self._add_chunk(index, outcomes)

    def _add_chunk(self, index: int, outcomes: Outcomes) -> None:
        if self.stop_at_failure and not outcomes.ok:
            self._stop_at(index, outcomes)
            return
        with self._lock:
            if self._failed:
                return
            self._chunks_in += 1
            self.received += len(outcomes.items)
            if self._progress is not None:
                self._progress.update(len(outcomes.items))
            if not self._ordered:
                self._append(outcomes)
            else:
                self._reorder.add(index, outcomes)
                for ready in self._reorder.pop_ready():
                    self._append(ready)
            # The module functions' caller never waits here: no notify per chunk.
            if self._waiting or self.driver_waiter is not None:
                pending = getattr(_deferring, "pending", None)
                if pending is None:
                    self._notify()
                elif not self._wake_pending:
                    self._wake_pending = True
                    pending.append(self)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
            self._notify()

    def _notify(self) -> None:
        """Wake the consumers waiting for a chunk: on the condition, or handling frames (hold the lock)."""
        if self._waiting:
            self._cond.notify_all()
        waiter = self.driver_waiter
        if waiter is not None:
            waiter.wake()

    def _append(self, outcomes: Outcomes) -> None:
        if outcomes.items:
            self._chunks.append(outcomes)

    def _set_length(self, chunks: int) -> None:
        with self._cond:
            self._total_chunks = chunks
            self._finished()  # closes the progress bar if everything is in already
            self._notify()

    def _stop_at(self, index: int, outcomes: Outcomes) -> None:
        """Hand out what is in order before chunk ``index``'s first failure, then that failure."""
        good: list[Any] = []
        error: BaseException = RuntimeError("a task failed")
        for ok, value in outcomes.items:
            if not ok:
                error = value
                break
            good.append(value)
        with self._cond:
            if self._failed:
                return
            # In order, the failing chunk's good items come out only if every chunk before it
            # has; chunks after it never do.
            if not self._ordered or self._reorder.next_index == index:
                self._append(Outcomes(True, good))
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        """End the iteration with ``error``, after the results already in order (later ones are dropped).

        Once every result is in, nothing is missing: the iteration ends as it
        would have (a pool collected as its last result came, whose finalizer
        then terminates its session, fails its finished sources).
        """
        with self._cond:
            if self._failed or self._all_in():
                return
            self._failed = True
            self._reorder = ReorderBuffer()
            self._chunks.append(Outcomes(False, [(False, error)]))
            self._total_chunks = self._chunks_in
            if self._progress is not None:
                self._progress.close()
                self._progress = None
            self._notify()


class ChunkedIMapIterator:
    """What ``Pool.imap``/``imap_unordered`` return for a ``chunksize`` above 1: items at C speed.

    For ``chunksize > 1`` the stdlib returns a generator over its chunks; a
    ``for`` loop over this one runs an ``itertools.chain`` over the chunks of
    an :class:`IMapIterator` (:meth:`IMapIterator.chunk_iterators`), so it
    takes each item with no Python call of its own (a third of the time
    :meth:`IMapIterator.__next__` costs). Each ``iter()`` (each loop) gets a
    chain of its own over the shared chunks: a chain shared between threads
    is not safe (one thread finding it exhausted frees the iterator another
    thread is inside, and CPython crashes), so threads consuming one result
    set each run their own, and each item still goes to exactly one of them.
    ``next()`` and ``next(timeout)`` take one item as :class:`IMapIterator`
    does. A failed item is raised in its place and the iteration goes on
    after it; an interrupt (Ctrl-C) while a loop waits for a chunk ends that
    loop, and a new one goes on where it stopped.
    """

    __slots__ = ("_results",)

    def __init__(self, results: IMapIterator) -> None:
        self._results = results

    @classmethod
    def over(cls, results: IMapIterator) -> ChunkedIMapIterator:
        """The chained items of ``results``."""
        return cls(results)

    def __iter__(self) -> Iterator[Any]:
        return itertools.chain.from_iterable(self._results.chunk_iterators())

    def __next__(self) -> Any:
        return self._results.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``StopIteration`` at the end; ``multiprocessing.TimeoutError`` on timeout."""
        return self._results.next(timeout)
