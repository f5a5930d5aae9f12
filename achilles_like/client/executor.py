"""``achilles_like.ProcessPoolExecutor``: a ``concurrent.futures.Executor`` on the cluster.

``submit`` returns a real ``concurrent.futures.Future`` (a subclass,
:class:`ClusterFuture`, whose waiting caller handles the session's frames
itself); it works with ``as_completed``, ``wait`` and ``add_done_callback``.
A future is marked running only once a worker has taken its call, so
``cancel()`` succeeds on one that no worker has: the call is withdrawn from
the server or node that holds it (one a worker takes meanwhile runs, and its
result is dropped). ``map`` sends
``chunksize`` items per task and, with ``buffersize`` (as in Python 3.14),
keeps at most that many tasks submitted ahead of the consumer. When the
cluster connection is lost, pending futures fail with ``BrokenProcessPool``,
as the stdlib's do when a worker dies.
"""

from __future__ import annotations

import concurrent.futures.process as cf_process
import itertools
import multiprocessing.pool as mp_pool
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from achilles_like.client.calls import FunctionBlobs, check_timeout, label_of
from achilles_like.client.driver import Batch, Outcomes, Sink
from achilles_like.client.inbox import Waiter
from achilles_like.client.pool import _shutdown, start_session
from achilles_like.client.progress import Progress, ProgressSink, input_length, open_progress
from achilles_like.client.session import Session
from achilles_like.client.sources import ApplySource
from achilles_like.client.target import pool_cluster
from achilles_like.errors import JobFailedError
from achilles_like.local import LocalCluster


class BrokenWorkerError(JobFailedError, BrokenProcessPool):
    """An executor's call whose worker died on every attempt (``BrokenProcessPool``, as the stdlib raises)."""


_interpreter_exiting = False
# Sessions of executors not shut down yet: their submitted work finishes at interpreter exit.
_live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


def _note_interpreter_exit() -> None:
    """Called as the interpreter starts to exit, before atexit stops any embedded cluster.

    As the stdlib joins its executors at exit, the work already submitted runs
    to the end; new submissions are refused from now on.
    """
    global _interpreter_exiting
    _interpreter_exiting = True
    sessions = list(_live_sessions)
    for session in sessions:
        session.close()
    for session in sessions:
        session.join()


# The stdlib's own hook: runs when the interpreter begins to shut down, before atexit.
threading._register_atexit(_note_interpreter_exit)  # type: ignore[attr-defined]


def _as_executor_error(error: BaseException) -> BaseException:
    """An error as ``concurrent.futures`` reports it.

    A remote error's cause is a ``_RemoteTraceback``; a call the cluster gave up
    on (its worker died on every attempt) is a ``BrokenProcessPool`` (and still
    a ``JobFailedError``), with the cluster's reason in its message.
    """
    original = getattr(error, "original", None)
    if isinstance(error, mp_pool.MaybeEncodingError) and isinstance(original, BaseException):  # type: ignore[attr-defined]
        # A result that could not be sent back: concurrent.futures raises the pickling error.
        original.__cause__ = error.__cause__
        error = original
    if isinstance(error, JobFailedError) and not isinstance(error, BrokenProcessPool):
        broken = BrokenWorkerError(str(error))
        broken.__cause__ = error.__cause__
        return broken
    cause = error.__cause__
    if isinstance(cause, mp_pool.RemoteTraceback):  # type: ignore[attr-defined]
        error.__cause__ = cf_process._RemoteTraceback(str(cause))  # type: ignore[arg-type]  # takes the text
    return error


class ClusterFuture(Future[Any]):
    """A ``concurrent.futures.Future`` whose waiting caller handles its session's frames meanwhile.

    ``result()`` and ``exception()`` drive the job while they wait
    (:meth:`Session.drive_until`), so the result is usually handled by the
    very thread that wants it, with no hop through the session thread. A
    future with done-callbacks is settled in the session thread instead, so
    they run there, as the stdlib's run in its executor's thread.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session: Session | None = session
        self.driver_waiter: Waiter | None = None  # a caller's in result(), woken once it is done
        self.on_done: Callable[[ClusterFuture], object] | None = None  # the executor's own, called once

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._drive(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._drive(timeout))

    def _drive(self, timeout: float | None) -> float | None:
        session = self._session
        if session is None or self.done():
            return timeout
        return session.drive_until(self.done, self, timeout)

    def set_result(self, result: Any) -> None:
        if not self._handed_over(lambda: self._settle(True, result)):
            super().set_result(result)
            self._settled()

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._handed_over(lambda: self._settle(False, exception)):
            super().set_exception(exception)
            self._settled()

    def _settle(self, ok: bool, value: Any) -> None:
        """Settle in the session thread, unless it was cancelled meanwhile."""
        if not self.done():
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)

    def cancel(self) -> bool:
        cancelled = super().cancel()
        self._settled()
        return cancelled

    def _handed_over(self, settle: Callable[[], object]) -> bool:
        """Whether the session thread will settle the future (it has done-callbacks of the user's)."""
        session = self._session
        return bool(self._done_callbacks) and session is not None and session.hand_to_session(settle)  # type: ignore[attr-defined]

    def _invoke_callbacks(self) -> None:
        # Called by set_result/set_exception/cancel once the state is set: a caller waiting in
        # result() goes on before the done-callbacks run, as the stdlib's waiters are notified.
        waiter = self.driver_waiter
        if waiter is not None:
            waiter.wake()
        super()._invoke_callbacks()  # type: ignore[misc]

    def _settled(self) -> None:
        """Once done: forget the session, and tell the executor (its waiting caller was woken already)."""
        if self.done():
            self._session = None
            on_done, self.on_done = self.on_done, None
            if on_done is not None:
                on_done(self)


_SinkFor = Callable[[Future[Any]], Sink]  # a call's sink, given the future it settles


def _future_sink(future: Future[Any]) -> Sink:
    def sink(outcomes: Outcomes) -> None:
        ok, value = (True, outcomes.items[0]) if outcomes.ok else outcomes.items[0]
        if not ok:
            value = _as_executor_error(value)
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    return sink


def _mark_running(future: Future[Any]) -> None:
    """A worker took the call: running, unless cancelled, finished, or already so (a retried call)."""
    # Only a thread handling the session's frames (under its driving lock) moves a future out
    # of PENDING other than by cancel(), which set_running_or_notify_cancel handles; so this
    # check cannot race.
    if not future.running() and not future.done():
        future.set_running_or_notify_cancel()


def _shutdown_in_background(session: Session, cluster: LocalCluster | None) -> None:
    """Let the session finish its work and stop the private cluster, without blocking the caller."""
    threading.Thread(target=_shutdown, args=(session, cluster, False), daemon=True).start()


def _chunk_sink(future: Future[Any]) -> Sink:
    """A map chunk's outcomes become one future: the list of values, or the first error."""

    def sink(outcomes: Outcomes) -> None:
        failed = outcomes.first_failure()
        whole = Outcomes(True, [outcomes.items]) if failed is None else Outcomes(False, [(False, failed)])
        _future_sink(future)(whole)

    return sink


class ProcessPoolExecutor(Executor):
    """A drop-in for ``concurrent.futures.ProcessPoolExecutor`` whose workers are the cluster's."""

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        secret_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """``timeout`` (beyond the stdlib) limits each task, in seconds: an over-time task has
        only its worker stopped, and its future fails with :class:`TaskTimeoutError`."""
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None and max_tasks_per_child <= 0:
            raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        check_timeout(timeout)
        del mp_context  # workers are the cluster's processes; kept for signature compatibility
        settings, self._cluster = pool_cluster(max_workers, host, port, username, secret_key)
        self._session = start_session(
            settings,
            initializer,
            initargs,
            max_tasks_per_child,
            "ProcessPoolExecutor",
            BrokenProcessPool,
            True,
            timeout=timeout,
            report_running=True,  # running() only once a worker has the call, as cancel() relies on
        )
        self._lock = threading.Lock()
        self._shutdown = False
        self._pending: dict[Future[Any], Batch] = {}  # futures not done, and their tasks
        self._blobs = FunctionBlobs()
        # Dropped without shutdown(): finish the submitted work in the background, then stop.
        self._finalizer = weakref.finalize(self, _shutdown_in_background, self._session, self._cluster)
        _live_sessions.add(self._session)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its Future."""
        blob = self._blobs.blob(fn, "apply", "fn")
        return self._add(blob, [(args, kwargs)], _future_sink)

    def _add(self, func_blob: bytes, items: list[Any], sink_for: _SinkFor) -> Future[Any]:
        """A future for one task: running once a worker takes it; cancelled, it is withdrawn.

        A call cancelled before it was sent is never sent. One cancelled after
        is withdrawn from the server or the node that holds it; a worker that
        took it meanwhile runs it, and its result is dropped.
        """
        future = ClusterFuture(self._session)
        batch = Batch(func_blob, items, sink_for(future), on_running=lambda: _mark_running(future))
        with self._lock:
            if self._session.broken is not None:
                raise BrokenProcessPool(f"the executor can no longer run work: {self._session.broken}")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            self._pending[future] = batch
        session, held = self._session, weakref.ref(batch)  # a done future must not keep the arguments
        forget = self._forget

        def finished(done: Future[Any]) -> None:
            """Forget the future; a cancelled one's call is withdrawn (called once per future)."""
            forget(done)
            cancelled = held() if done.cancelled() else None
            if cancelled is not None:
                session.withdraw(cancelled)

        future.on_done = finished  # not a done-callback: those are the user's (see ClusterFuture)
        self._session.add(ApplySource(batch, lambda: not future.cancelled()))
        return future

    def _submit_chunk(self, fn_blob: bytes, chunk: list[tuple[Any, ...]]) -> Future[Any]:
        """One task of ``map``: ``fn(*args)`` for every argument tuple of the chunk."""
        return self._add(fn_blob, chunk, _chunk_sink)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.pop(future, None)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = None,
    ) -> Iterator[Any]:
        """Like the builtin ``map`` on the cluster; lazy and bounded with ``buffersize``.

        ``progress=True`` (beyond the stdlib) shows a tqdm bar of the results consumed.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        lengths = [input_length(iterable) for iterable in iterables]
        total = None if not lengths or None in lengths else min(n for n in lengths if n is not None)
        bar = open_progress(progress, total, label_of(fn))
        args = zip(*iterables, strict=False)
        chunks = iter(lambda: list(itertools.islice(args, chunksize)), [])
        deadline = None if timeout is None else time.monotonic() + timeout
        fn_blob = self._blobs.blob(fn, "star", "fn")
        ahead = chunks if buffersize is None else itertools.islice(chunks, buffersize)
        futures = deque(self._submit_chunk(fn_blob, chunk) for chunk in ahead)
        return self._results(futures, chunks if buffersize is not None else iter(()), fn_blob, deadline, bar)

    def _results(
        self,
        futures: deque[Future[Any]],
        chunks: Iterator[list[Any]],
        fn_blob: bytes,
        deadline: float | None,
        bar: ProgressSink | None,
    ) -> Iterator[Any]:
        try:
            while futures:
                future = futures.popleft()
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                values = future.result(left)
                # Keep the buffer full: one new task for each one consumed.
                chunk = next(chunks, None)
                if chunk is not None:
                    futures.append(self._submit_chunk(fn_blob, chunk))
                if bar is not None:
                    bar.update(len(values))
                yield from values
        finally:
            if bar is not None:
                bar.close()
            for future in futures:
                future.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more work; optionally cancel what has not started; optionally wait."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending.items())
        if cancel_futures:
            # Each call no worker has taken is cancelled: at once if it was never sent, else once
            # the server or node holding it has given it back (one a worker took first runs).
            for future, batch in pending:
                if not future.running():
                    self._session.withdraw(batch, future.cancel)
        self._session.close()
        self._finalizer.detach()
        if wait:
            _shutdown(self._session, self._cluster, terminate=False)
        else:
            _shutdown_in_background(self._session, self._cluster)
