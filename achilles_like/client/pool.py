"""``achilles_like.Pool``: ``multiprocessing.Pool`` with the cluster's workers.

Change the import and the code runs on the cluster::

    from achilles_like import Pool          # was: from multiprocessing import Pool

    with Pool(4) as pool:
        print(pool.map(square, range(10)))

With no cluster configured, ``Pool(n)`` starts a private local cluster with
``n`` worker processes (as ``multiprocessing.Pool(n)`` starts ``n`` workers)
and stops it with the pool; with ``host=`` (or ``ACHILLES_HOST``/``.env``, or
inside ``with LocalCluster()``) it submits to that cluster (see
``target.py``). Every method is a source of work for the pool's
:class:`Session`, which keeps one job on the cluster for the pool's life;
results are the stdlib's kinds of objects (see ``client/results.py``).
"""

from __future__ import annotations

import secrets
import threading
import weakref
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from achilles_like import at_exit
from achilles_like.client.calls import (
    FunctionBlobs,
    check_chunksize,
    check_timeout,
    label_of,
    pickle_setup,
    warm_up,
)
from achilles_like.client.progress import Progress, input_length, open_progress
from achilles_like.client.results import AsyncResult, ChunkedIMapIterator, IMapIterator, MapResult
from achilles_like.client.session import Session
from achilles_like.client.sources import ApplySource, IMapSource, MapSource
from achilles_like.client.target import pool_cluster
from achilles_like.config import Settings, usable_cpus
from achilles_like.errors import ClusterConnectionError
from achilles_like.local import LocalCluster


class PoolState(Enum):
    """The stdlib's pool states."""

    RUN = "RUN"
    CLOSE = "CLOSE"
    TERMINATE = "TERMINATE"


def start_session(
    settings: Settings,
    initializer: Callable[..., Any] | None,
    initargs: Iterable[Any],
    max_tasks: int | None,
    label: str,
    broken_type: type[Exception],
    job_failure_breaks: bool = False,
    timeout: float | None = None,
    report_running: bool = False,
) -> Session:
    """A session whose job runs ``initializer(*initargs)`` once in each worker first."""
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    # The token lets a worker run the initializer once for all of this session's jobs.
    setup_blob = pickle_setup(initializer, tuple(initargs), secrets.token_hex(8))
    return Session(
        settings,
        setup_blob,
        label=label,
        max_tasks=max_tasks,
        timeout=timeout,
        broken_type=broken_type,
        job_failure_breaks=job_failure_breaks,
        report_running=report_running,
    )


def _shutdown(session: Session, cluster: LocalCluster | None, terminate: bool) -> None:
    """Stop a session (and the private cluster); also run when a pool is garbage-collected."""
    if session.driving_here():
        # Collected as a caller set the result that held it last (``Pool(2).apply_async(f).get()``):
        # that caller holds the session's driving lock, which the session thread needs to stop.
        threading.Thread(target=_shutdown, args=(session, cluster, terminate), daemon=True).start()
        return
    if terminate:
        session.terminate()
    else:
        session.close()
    session.join(timeout=None if not terminate else 30)
    if cluster is not None:
        cluster.shutdown()


class Pool:
    """A drop-in for ``multiprocessing.Pool`` whose workers are the cluster's."""

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        secret_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """``timeout`` (beyond the stdlib) limits each task, in seconds: an over-time task has
        only its worker stopped, and its calls fail with :class:`TaskTimeoutError`."""
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        check_timeout(timeout)
        self._state = PoolState.RUN
        settings, self._cluster = pool_cluster(processes, host, port, username, secret_key)
        self._processes = processes or usable_cpus()
        try:
            self._session = start_session(
                settings,
                initializer,
                initargs,
                maxtasksperchild,
                "Pool",
                ClusterConnectionError,
                timeout=timeout,
            )
        except BaseException:
            if self._cluster is not None:
                self._cluster.shutdown()
            raise
        self._blobs = FunctionBlobs()
        # Garbage-collected without close(): stop it, as the stdlib does, without hanging exit.
        self._finalizer = weakref.finalize(self, _shutdown, self._session, self._cluster, True)
        # At exit it runs in the library's hook, after atexit functions registered since import.
        self._finalizer.atexit = False
        at_exit.register(self._finalizer)
        if initializer is not None:
            self._warm_up()

    def _warm_up(self) -> None:
        """Run the initializer in ``processes`` workers now, as the stdlib's pool does at start.

        One no-op call per process: each lands on a worker, which runs the
        initializer before it (once per worker and pool, as for any task).
        """
        blob = self._blobs.blob(warm_up, "apply")
        for _ in range(self._processes):
            self._session.add(ApplySource.call(blob, (), {}, lambda outcomes: None))

    def __repr__(self) -> str:
        return f"<achilles_like.Pool state={self._state.value} processes={self._processes}>"

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # -- submitting work ------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not PoolState.RUN:
            raise ValueError("Pool not running")

    def apply(
        self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> Any:
        """Call ``func(*args, **kwds)`` on the cluster and wait for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult:
        """Call ``func(*args, **kwds)`` on the cluster; return an AsyncResult at once."""
        self._check_running()
        result = AsyncResult(callback, error_callback)
        result._owner = self
        result._session = self._session
        blob = self._blobs.blob(func, "apply")
        self._session.add(ApplySource.call(blob, tuple(args), dict(kwds or {}), result._sink))
        return result

    def map(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        progress: Progress = None,
    ) -> list[Any]:
        """``func`` over ``iterable``, in order, like the builtin ``map`` but on the cluster.

        ``progress=True`` (beyond the stdlib) shows a tqdm bar; a caller's own bar works too.
        """
        result = self._map_async(func, iterable, "map", chunksize, progress=progress)
        return result.get()  # type: ignore[no-any-return]

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult:
        """Like :meth:`map`, but return a MapResult at once."""
        return self._map_async(func, iterable, "map", chunksize, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        progress: Progress = None,
    ) -> list[Any]:
        """Like :meth:`map`, but each item is unpacked as ``func(*item)``."""
        result = self._map_async(func, iterable, "star", chunksize, progress=progress)
        return result.get()  # type: ignore[no-any-return]

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult:
        """Like :meth:`starmap`, but return a MapResult at once."""
        return self._map_async(func, iterable, "star", chunksize, callback, error_callback)

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        mode: str,
        chunksize: int | None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        progress: Progress = None,
    ) -> MapResult:
        self._check_running()
        items = list(iterable)
        bar = open_progress(progress, len(items), label_of(func))
        if chunksize is None:
            # The stdlib's choice: about four chunks per worker process.
            chunksize, extra = divmod(len(items), self._processes * 4)
            chunksize += 1 if extra else 0
        chunksize = check_chunksize(max(chunksize, 1) if items else 1)
        chunks = (len(items) + chunksize - 1) // chunksize
        result = MapResult(chunks, callback, error_callback, bar)
        result._owner = self if chunks else None
        result._session = self._session if chunks else None
        if chunks:
            self._session.add(MapSource(self._blobs.blob(func, mode), items, chunksize, result))
        return result

    def imap(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        progress: Progress = None,
    ) -> IMapIterator | ChunkedIMapIterator:
        """Lazy ``map``: results in order, the input pulled only as results are consumed."""
        return self._imap(func, iterable, chunksize, ordered=True, progress=progress)

    def imap_unordered(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        progress: Progress = None,
    ) -> IMapIterator | ChunkedIMapIterator:
        """Like :meth:`imap`, but results come in the order they complete."""
        return self._imap(func, iterable, chunksize, ordered=False, progress=progress)

    def _imap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int,
        ordered: bool,
        progress: Progress = None,
    ) -> IMapIterator | ChunkedIMapIterator:
        self._check_running()
        chunksize = check_chunksize(chunksize)
        bar = open_progress(progress, input_length(iterable), label_of(func))
        # A consumer that made room for a throttled source sends it from its own thread if it can.
        iterator = IMapIterator(ordered, on_consumed=self._session.feed_soon, progress=bar)
        iterator._owner = self
        iterator._session = self._session
        blob = self._blobs.blob(func, "map")
        source = IMapSource(blob, iterable, chunksize, iterator, wake=self._session.wake)
        self._session.add(source)
        # Chunks of several items are handed out at C speed, as the stdlib's generator does.
        return iterator if chunksize == 1 else ChunkedIMapIterator.over(iterator)

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Accept no more work; what was submitted still runs."""
        if self._state is PoolState.RUN:
            self._state = PoolState.CLOSE
            self._session.close()

    def terminate(self) -> None:
        """Stop at once: the cluster drops this pool's work; unfinished results fail."""
        self._state = PoolState.TERMINATE
        self._finalizer()

    def join(self) -> None:
        """Wait for the work to finish after :meth:`close` (or :meth:`terminate`)."""
        if self._state is PoolState.RUN:
            raise ValueError("Pool is still running")
        if self._state is PoolState.CLOSE:
            self._finalizer.detach()
            _shutdown(self._session, self._cluster, terminate=False)
        else:
            self._finalizer()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()
