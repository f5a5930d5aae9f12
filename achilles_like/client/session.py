"""A Pool's (or executor's) session: one connection, jobs of calls opened while there is work.

::

    caller threads                    session thread ("achilles-session")         reactor thread
    ──────────────                    ───────────────────────────────────         ──────────────
    apply_async / map_async / submit  pull batches from sources on credit ──TASK─▶ server
      └─ add(source) ──inbox+wake──▶  give each batch's outcomes to its sink ◀RESULT─
    AsyncResult.get() ◀── sink ─────  (sinks fire callbacks in this thread)

``multiprocessing.Pool`` methods become *sources* of *batches*: a batch is one
task on the wire, ``(function blob, mode, payloads)``, and its *sink* receives
one outcome per payload. ``apply_async`` is a source of one batch;
``map_async`` and ``imap`` are sources of chunks, pulled lazily from the
caller's iterable as the server grants credit.

The server runs one job at a time, and other controllers' jobs wait behind
the running one. So a session does not hold a job for its whole life: it
opens a *call job* (the job's function is ``None``: each task names its own)
when work arrives, and ends it (``END``) as soon as nothing is queued or in
flight, letting other controllers' jobs run between its bursts. The
initializer runs in each worker at the first task of each such job.

A worker's outcomes are per payload, so an exception fails only the call it
belongs to. Only a job-level failure (an initializer that raises, a task
that kills its worker on every attempt) or a lost connection fails every
call in flight; a lost connection also marks the session broken.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from achilles_like.client.connection import Connection, Lost
from achilles_like.config import Settings
from achilles_like.errors import ClusterConnectionError, JobFailedError
from achilles_like.protocol import Frame, encode_frame, encode_header
from achilles_like.serialization import dumps, loads

log = logging.getLogger("achilles_like.session")

Outcome = tuple[bool, Any]  # (True, value) or (False, exception)


@dataclass
class Batch:
    """One task: a function blob, a mode, payloads, and who gets the outcomes."""

    func_blob: bytes
    mode: str  # "map": f(x), "star": f(*x), "apply": f(*args, **kwargs)
    payloads: list[Any]
    sink: Callable[[list[Outcome]], None]


class Source(Protocol):
    """Where a session pulls batches from, in order."""

    def next_batch(self) -> Batch | None:
        """The next batch, or None when exhausted (or ``throttled``)."""

    @property
    def exhausted(self) -> bool:
        """No batch will ever come again."""

    @property
    def throttled(self) -> bool:
        """No batch for now (its consumer is far behind); ask again later."""

    @property
    def has_batch(self) -> bool:
        """A batch can be had now (not exhausted, not throttled)."""

    def fail(self, error: BaseException) -> None:
        """The session can run nothing more: fail everything not yet delivered."""

    def unthrottle(self) -> None:
        """Stop holding back: the pool is closing and what was submitted must run."""


class _Wake:
    """Put on the inbox to make the session thread look at its sources again."""


_WAKE = _Wake()


class Session:
    """Drives call jobs for one Pool or executor, in its own thread."""

    def __init__(
        self,
        settings: Settings,
        job_blob: bytes,
        *,
        label: str,
        max_tasks: int | None = None,
        timeout: float | None = None,
        broken_type: type[Exception] = ClusterConnectionError,
        job_failure_breaks: bool = False,
    ) -> None:
        self.settings = settings
        self.job_blob = job_blob
        self.options: dict[str, object] = {"label": label, "calls": True}
        if max_tasks is not None:
            self.options["maxtasks"] = max_tasks
        if timeout is not None:
            self.options["timeout"] = timeout
        self.broken_type = broken_type  # what callers get once the session cannot run work
        # An executor is broken by a job-level failure (its initializer raised), as the
        # stdlib's is; a Pool hands that error to each call and carries on.
        self.job_failure_breaks = job_failure_breaks
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._sources: deque[Source] = deque()
        self._closing = False
        self._terminating = False
        self.broken: BaseException | None = None
        self._connection: Connection | None = None
        self._job: _JobState | None = None
        self._thread = threading.Thread(target=self._run, name="achilles-session", daemon=True)
        self._thread.start()

    # -- called from the caller's threads -------------------------------------------

    def add(self, source: Source) -> None:
        """Queue a source of work; raises the session's error if it is broken."""
        with self._lock:
            if self.broken is not None:
                raise self.broken_type(f"the pool can no longer run work: {self.broken}")
            if self._closing:
                raise ValueError("Pool not running")
            self._sources.append(source)
        self.inbox.put(_WAKE)

    def wake(self) -> None:
        """Look at the sources again (a throttled one may have room now)."""
        self.inbox.put(_WAKE)

    def close(self) -> None:
        """Finish what was added, then stop (the thread ends when all is done).

        A lazy ``imap`` source stops being throttled: as with the stdlib, what
        was submitted runs to the end, whether or not its results are read.
        """
        with self._lock:
            self._closing = True
            sources = list(self._sources)
        for source in sources:
            source.unthrottle()
        self.inbox.put(_WAKE)

    def terminate(self) -> None:
        """Stop now: cancel the running job; calls not finished fail."""
        self._terminating = True
        self.inbox.put(_WAKE)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the session thread to end (after close or terminate)."""
        if threading.current_thread() is self._thread:
            return  # a pool's finalizer may run in this very thread (garbage collection)
        self._thread.join(timeout)

    # -- the session thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as error:  # noqa: BLE001 - every caller must hear of it
            log.debug("session stopped: %r", error)
            broken = error if isinstance(error, self.broken_type) else self.broken_type(str(error))
            self._break(broken)
        finally:
            if self._connection is not None:
                self._connection.close()

    def _snapshot(self) -> list[Source]:
        with self._lock:
            return list(self._sources)

    def _step(self) -> bool:
        if self._terminating:
            self._break(self.broken or self.broken_type("the pool was terminated"))
            return False
        self._drop_exhausted()
        if self._job is None and self._has_work():
            self._open_job()
        if self._job is not None:
            self._job.feed(self._snapshot())
        with self._lock:  # add() checks _closing under the same lock
            if self._job is None and self._closing and not self._sources:
                return False
        connection = self._connection
        self._handle(self.inbox.get() if connection is None else connection.next_event())
        return True

    def _has_work(self) -> bool:
        return any(source.has_batch for source in self._snapshot())

    def _drop_exhausted(self) -> None:
        with self._lock:
            while self._sources and self._sources[0].exhausted:
                self._sources.popleft()

    def _open_job(self) -> None:
        if self._connection is None:
            self._connection = Connection.open(self.settings, events=self.inbox)
        self._job = _JobState(self._connection, self._job_failed if self.job_failure_breaks else None)
        self._connection.send(encode_header("SUBMIT", len(self.job_blob), **self.options), self.job_blob)

    def _handle(self, event: Any) -> None:
        if isinstance(event, _Wake):
            return
        if isinstance(event, Lost):
            raise ClusterConnectionError(event.message)
        for frame in event:
            if self._job is not None and self._job.handle(frame):
                self._job = None  # ended: the next step opens another if there is work

    def _job_failed(self, failure: BaseException) -> BaseException:
        """Mark the session broken by a job-level failure; return what its calls get."""
        broken = self.broken_type(f"the pool can no longer run work: {failure}")
        broken.__cause__ = failure
        with self._lock:
            self.broken = broken
        self._terminating = True
        return broken

    def _break(self, error: BaseException) -> None:
        if self._job is not None:
            self._job.fail_all(error)
        with self._lock:
            self.broken = error
            sources, self._sources = list(self._sources), deque()
        for source in sources:
            try:
                source.fail(error)
            except Exception:
                log.exception("failing a source raised")


class _JobState:
    """One call job on the server: its credit, its batches in flight, its end."""

    def __init__(
        self, connection: Connection, on_failure: Callable[[BaseException], BaseException] | None = None
    ) -> None:
        self.connection = connection
        self.on_failure = on_failure
        self.job_id: int | None = None
        self.credit = 0
        self.next_task = 0
        self.inflight: dict[int, Batch] = {}
        self.started = False
        self.end_sent = False
        self.failure: BaseException | None = None

    def feed(self, sources: list[Source]) -> None:
        """Send batches while there is credit; END the job when it has nothing to do."""
        if not self.started or self.end_sent:
            return
        sent = False
        for source in sources:
            parts: list[bytes] = []
            while self.credit > 0 and not source.throttled:
                batch = source.next_batch()
                if batch is None:
                    break
                try:
                    body = dumps((batch.func_blob, batch.mode, batch.payloads))
                except Exception as error:  # noqa: BLE001 - an argument that cannot travel
                    _deliver(batch, [(False, _unpicklable(error))] * len(batch.payloads))
                    continue
                parts += [encode_header("TASK", len(body), job=self.job_id, task=self.next_task), body]
                self.inflight[self.next_task] = batch
                self.next_task += 1
                self.credit -= 1
            if parts:
                # Sent before the next source's iterable is pulled, which may block.
                self.connection.send(*parts)
                sent = True
        if not self.inflight and not sent and not any(s.has_batch for s in sources):
            # Idle: end this job so other controllers' jobs can run.
            self.connection.send(encode_frame("END", job=self.job_id, tasks=self.next_task))
            self.end_sent = True

    def handle(self, frame: Frame) -> bool:
        """Apply one frame; return True when the job has ended."""
        verb = frame.verb
        if verb in ("STARTED", "QUEUED"):
            self.job_id = frame.integer("job")
            self.started = self.started or verb == "STARTED"
        elif verb == "CREDIT":
            self.credit += frame.integer("n")
        elif verb == "RESULT":
            self._result(frame)
        elif verb == "ENDED":
            if frame.text("outcome") != "done" or self.inflight:
                reason = frame.text("reason", "")
                self.fail_all(self.failure or JobFailedError(f"the cluster ended the job: {reason}"))
            return True
        elif verb == "ERROR":
            raise ClusterConnectionError(f"the server refused the pool's work: {frame.text('msg', '')}")
        return False

    def _result(self, frame: Frame) -> None:
        batch = self.inflight.pop(frame.integer("task"), None)
        if batch is None:
            return
        try:
            if not frame.flag("ok"):
                # A job-level failure (the initializer raised): every call of the job gets it.
                self.failure = loads(frame.body).to_exception()
                if self.on_failure is not None:
                    self.failure = self.on_failure(self.failure)
                outcomes: list[Outcome] = [(False, self.failure)]
            else:
                outcomes = [
                    (ok, value.to_exception() if not ok else value) for ok, value in loads(frame.body)
                ]
        except Exception as error:  # noqa: BLE001 - a result this process cannot unpickle
            outcomes = [(False, error)]
        if len(outcomes) < len(batch.payloads):  # one outcome for the whole task
            outcomes = outcomes[:1] * len(batch.payloads)
        _deliver(batch, outcomes)

    def fail_all(self, error: BaseException) -> None:
        """Every batch in flight fails with ``error``."""
        inflight, self.inflight = self.inflight, {}
        for batch in inflight.values():
            _deliver(batch, [(False, error)] * len(batch.payloads))


def _deliver(batch: Batch, outcomes: list[Outcome]) -> None:
    """Hand outcomes to a batch's sink; a sink that raises must not stop the session."""
    try:
        batch.sink(outcomes)
    except Exception:
        log.exception("delivering a result raised")


def _unpicklable(error: Exception) -> Exception:
    """The error a call gets when its arguments cannot be pickled."""
    failure = TypeError(f"the call's arguments cannot be pickled ({type(error).__name__}: {error})")
    failure.__cause__ = error
    return failure
