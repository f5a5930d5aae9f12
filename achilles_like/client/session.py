"""A Pool's (or an executor's) session: one connection and one job for the pool's whole life.

::

    caller threads                    session thread ("achilles-session")          reactor thread
    ──────────────                    ───────────────────────────────────          ──────────────
    apply_async / map_async / submit  JobDriver.feed(sources) on credit ──TASK──▶  server
      ├─ add(source): sent from this  JobDriver.handle(frames): outcomes ◀RESULT── (routed to
      │  thread if nobody drives      to each batch's sink; callbacks run here      this inbox,
      │  (else inbox+wake) ─────────▶ (the stdlib's result handler), and the        which wakes
    AsyncResult.get() / result():     work below: opening, ending, withdrawing     a waiting
      drive_until: handles the frames                                              caller first)
      itself while it waits ◀──────────────────────────────────────────────────────

``multiprocessing.Pool`` methods become *sources* of *batches* (see
``sources.py``) for the session's :class:`JobDriver`. The job is opened at the
first work and kept while the pool lives: when the pool is idle the server
lets other controllers' jobs run, and this one takes its turn again as soon as
it sends work, so there is no close and reopen around idle periods. The
initializer runs once in each worker process that runs the pool's tasks.

Calls are sent as credit allows, at once while little is in flight; a busy
job's freed credit gathers until a quarter of its window can go in one write
(see :func:`~achilles_like.client.driver.worth_feeding`). A feed reads only the sources it can send, so
thousands of queued ``submit`` calls add no work to a feed while they wait.

A caller blocked on its result (``get()``, ``Future.result()``, ``next()`` of
a ``Pool.imap``) is woken for the job's frames ahead of the session thread and
handles them itself (:meth:`Session.drive_until`): a round trip wakes the
reactor thread once and the caller once, and the session thread not at all.
Whoever handles frames takes them from the inbox under the driving lock, so
they are handled in order; a result with a user's callback is still set,
callback first, in the session thread.

A worker's outcomes are per item, so an exception fails only the call it
belongs to. A job-level failure (an initializer that raises, a task that
kills its worker on every attempt) fails the calls in flight; a Pool then
opens a new job for later work, an executor is broken (as the stdlib's is).
A lost connection fails every call and breaks the session.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from achilles_like.client import results
from achilles_like.client.connection import Connection, Lost
from achilles_like.client.driver import MAX_EVENTS_PER_WAKE, Batch, JobDriver, Source, worth_feeding
from achilles_like.client.inbox import SessionInbox, Waiter
from achilles_like.client.interrupts import InterruptsHeld
from achilles_like.config import Settings
from achilles_like.errors import ClusterConnectionError, JobFailedError

log = logging.getLogger("achilles_like.session")


class PoolSource(Source, Protocol):
    """A source a pool can close: a lazy one stops holding back then."""

    def unthrottle(self) -> None:
        """Stop holding back: the pool is closing and what was submitted must run."""


class Awaited(Protocol):
    """What a caller waits on (a result, a future): a caller that drives meanwhile hangs its waiter here.

    Whoever sets the result calls ``driver_waiter.wake()`` after setting it,
    so a caller blocked in the inbox hears of it at once.
    """

    driver_waiter: Waiter | None


class _Wake:
    """Put on the inbox to make the session thread look at its sources again."""


_WAKE = _Wake()


class _Call:
    """Put on the inbox to have the session thread make a call (a user's callback: see hand_to_session)."""

    __slots__ = ("call",)

    def __init__(self, call: Callable[[], object]) -> None:
        self.call = call


class _NoJob:
    """What the session thread waits on when no job is open: its inbox."""


_NO_JOB = _NoJob()


class Session:
    """Drives one job for one Pool or executor, in its own thread."""

    def __init__(
        self,
        settings: Settings,
        setup_blob: bytes,
        *,
        label: str,
        max_tasks: int | None = None,
        timeout: float | None = None,
        broken_type: type[Exception] = ClusterConnectionError,
        job_failure_breaks: bool = False,
        report_running: bool = False,
    ) -> None:
        self.settings = settings
        self.setup_blob = setup_blob
        self.label = label
        self.max_tasks = max_tasks
        self.timeout = timeout
        self.broken_type = broken_type  # what callers get once the session cannot run work
        # An executor is broken by a job-level failure (its initializer raised), as the
        # stdlib's is; a Pool hands that error to each call and carries on.
        self.job_failure_breaks = job_failure_breaks
        self.report_running = report_running  # batches hear when a worker takes them (executors)
        # Batches to take back from the cluster, and what to call once they are (see withdraw).
        self._withdrawals: deque[tuple[Batch, Callable[[], object] | None]] = deque()
        # Read by the session thread, or by a caller waiting on its result (drive_until).
        self.inbox = SessionInbox()
        self._waiter = Waiter()  # the session thread's, for the inbox
        self._lock = threading.Lock()
        # Held by whichever thread feeds the driver or hands it events (the session thread,
        # or a caller sending its own work); re-entrant, for a callback that submits work.
        self._driving = threading.RLock()
        self._sources: deque[PoolSource] = deque()
        self._closing = False
        self._terminating = False
        self.broken: BaseException | None = None
        self._caller_thread: int | None = None  # the caller handling frames now (drive_until), if any
        self._over = False  # the session thread has stopped: nobody takes a _Call any more
        self._connection: Connection | None = None
        self._driver: JobDriver | None = None
        self._thread = threading.Thread(target=self._run, name="achilles-session", daemon=True)
        self._thread.start()

    # -- called from the caller's threads -------------------------------------------

    def add(self, source: PoolSource) -> None:
        """Queue a source of work; raises the session's error if it is broken."""
        with self._lock:
            if self.broken is not None:
                raise self.broken_type(f"the pool can no longer run work: {self.broken}")
            if self._closing:
                raise ValueError("Pool not running")
            self._sources.append(source)
        self.feed_soon()

    def feed_soon(self) -> None:
        """Have the sources looked at again: by this thread if it may drive now, else the session thread.

        Ctrl-C is held off while this thread feeds (the main thread): a batch
        taken from its source and interrupted before it is sent would be lost.
        """
        with InterruptsHeld():
            fed = self._feed_now()
        if not fed:
            self.inbox.put(_WAKE)

    def _feed_now(self) -> bool:
        """Send from the caller's own thread when the job is open and nobody else is driving it.

        This saves a hop through the session thread: with the caller handling
        its own result (:meth:`drive_until`), a round trip wakes the reactor
        thread once and the caller once.
        """
        driver = self._driver
        if driver is None or driver.ended is not None:
            return False
        if not worth_feeding(driver):
            # Credit comes, and tasks in flight finish, only as events, after each of which
            # the session thread feeds its sources (this one is among them: it was added
            # before this read). So a burst of submits neither waits for the driver nor wakes anyone.
            return True
        if not self._driving.acquire(blocking=False):
            return False
        try:
            if driver is not self._driver or driver.ended is not None:
                return False
            with driver.one_write():
                driver.feed(self._snapshot())
            return True
        finally:
            self._driving.release()

    def withdraw(self, batch: Batch, then: Callable[[], object] | None = None) -> None:
        """Take ``batch`` back if no worker has it; call ``then`` once it is (any thread).

        The session thread does it, under the driving lock: a batch not sent
        yet gets ``then`` at once (its source must skip it from then on); a
        sent one is withdrawn from the server or node that holds it, and gets
        ``then`` when WITHDRAWN comes back. If a worker took it first, its
        RESULT comes instead and ``then`` is never called.
        """
        self._withdrawals.append((batch, then))
        self.inbox.put(_WAKE)

    def wake(self) -> None:
        """Look at the sources again (a throttled one may have room now)."""
        self.inbox.put(_WAKE)

    def drive_until(self, ready: Callable[[], bool], awaited: Awaited, timeout: float | None) -> float | None:
        """A caller's wait: until ``ready()``, handle the job's frames in this thread; the time left.

        The reactor thread wakes a waiting caller for frames ahead of the
        session thread (``inbox.py``), so the caller that waits for a result
        usually handles it itself: one wake-up of the caller instead of one of
        the session thread and then one of the caller. It stops at once when
        ``ready()`` (``awaited`` is woken by whoever sets it), at the timeout,
        or when this thread cannot drive: it is the session thread, or runs a
        callback inside a driving step, or another caller drives for the
        same result, or the session is over. The caller then waits as before;
        what it leaves in the inbox goes to the next reader.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if threading.current_thread() is self._thread or self.driving_here():
            return timeout  # the session thread, or a callback inside a driving step, calling get()
        waiter = Waiter()
        inbox = self.inbox
        mine = False
        try:
            with self._lock:  # one driving caller per result: only its waiter is woken when it is set
                if awaited.driver_waiter is not None:
                    return timeout
                mine = True  # first: Ctrl-C between the two still unhangs the waiter below
                awaited.driver_waiter = waiter
            while not ready() and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if inbox.wait(waiter, left, caller=True):
                    self._handle_as_caller()
        finally:
            if mine:
                awaited.driver_waiter = None
                inbox.leave()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def hand_to_session(self, call: Callable[[], object]) -> bool:
        """From a caller handling frames: leave ``call`` to the session thread; whether it will make it.

        A result with a user's callback is set there, callback first, as the
        stdlib's result-handler thread does: the callback never runs in a
        thread that waits for a result of its own (and may hold what the
        callback needs). Results with no callback are set by the caller.
        """
        if self._caller_thread != threading.get_ident() or self._over:
            return False  # the session thread (or, once it has stopped, whoever set it) makes the call
        self.inbox.put(_Call(call))
        return True

    def _handle_as_caller(self) -> None:
        """Handle the frames first in the inbox, and feed what they freed, as the session thread would.

        Ctrl-C is held off until the frames are handled (the main thread):
        one stopped halfway would lose a result another call waits for. Work
        only the session thread does (an ended job, withdrawals, closing)
        wakes it. A failure of the connection or the job breaks the session,
        as it would there.
        """
        with InterruptsHeld():
            self._handle_frames()

    def _handle_frames(self) -> None:
        """:meth:`_handle_as_caller`'s work, with Ctrl-C held off."""
        with self._driving:
            driver = self._driver
            events = self.inbox.take(MAX_EVENTS_PER_WAKE, frames_only=True)
            self._caller_thread = threading.get_ident()
            try:
                if driver is not None:
                    for event in events:
                        driver.handle(event)
                    if driver.ended is None and worth_feeding(driver):
                        with driver.one_write():
                            driver.feed(self._snapshot())
            except Exception as error:  # noqa: BLE001 - what would end the session thread ends the session
                self._terminating = True
                self._break(error if isinstance(error, self.broken_type) else self.broken_type(str(error)))
            finally:
                self._caller_thread = None
            needs_session = (
                driver is None
                or driver.ended is not None
                or self._withdrawals
                or self._terminating
                or self._closing
            )
        if needs_session:  # before a held Ctrl-C is raised: the session thread must still hear of it
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
        """Stop now: cancel the job on the cluster; calls not finished fail."""
        self._terminating = True
        self.inbox.put(_WAKE)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the session thread to end (after close or terminate)."""
        if threading.current_thread() is self._thread or self.driving_here():
            return  # a pool's finalizer may run in this very thread (garbage collection)
        self._thread.join(timeout)

    def driving_here(self) -> bool:
        """Whether this thread is inside a driving step (the session thread, or a caller handling frames)."""
        return bool(self._driving._is_owned())  # type: ignore[attr-defined]

    # -- the session thread ---------------------------------------------------------

    def _run(self) -> None:
        results.defer_wakeups()
        try:
            while self._step():
                pass
        except BaseException as error:  # noqa: BLE001 - every caller must hear of it
            log.debug("session stopped: %r", error)
            broken = error if isinstance(error, self.broken_type) else self.broken_type(str(error))
            with self._driving:  # no caller may feed the driver between failing its work and breaking
                self._break(broken)
        finally:
            with self._driving:  # the calls callers handed over still happen, here or (later) in theirs
                self._over = True
                for event in self.inbox.take(sys.maxsize):
                    if isinstance(event, _Call):
                        event.call()
            results.wake_deferred()
            if self._driver is not None:
                self._driver.cancel()
            if self._connection is not None:
                self._connection.close()

    def _snapshot(self) -> Iterator[PoolSource]:
        """The sources not exhausted, in order, read one at a time.

        A feed stops as soon as its credit runs out, so it reads only the first
        few of thousands of queued ``submit`` calls: copying the whole queue at
        every feed cost O(queued calls) per call.
        """
        with self._lock:
            while self._sources and self._sources[0].exhausted:
                self._sources.popleft()
            sources = self._sources
        index = 0
        while True:
            with self._lock:  # add() appends in other threads; a failure replaces the deque
                if sources is not self._sources or index >= len(sources):
                    return
                source = sources[index]
            index += 1
            yield source

    def _step(self) -> bool:
        with self._driving:
            wait_for = self._prepare()
        results.wake_deferred()  # before any wait: the consumers take what this step delivered
        if wait_for is None:
            return False
        # Wait, then take the events only under the driving lock: a caller may handle some
        # meanwhile (drive_until), and whoever takes them handles them in order.
        while not self.inbox.wait(self._waiter, 1.0, caller=False):
            if isinstance(wait_for, JobDriver):
                wait_for.connection.check_heard()
        with self._driving:
            events = self.inbox.take(MAX_EVENTS_PER_WAKE)
            for at, event in enumerate(events):
                try:
                    if isinstance(event, Lost):  # wake-ups, or the loss of an idle connection
                        raise ClusterConnectionError(event.message)
                    if isinstance(event, _Call):
                        event.call()
                    elif isinstance(wait_for, JobDriver):
                        wait_for.handle(event)
                except BaseException:
                    # The session breaks; results a caller handed over are set all the same (no
                    # longer in flight, the break would not fail them: their callers would wait).
                    for later in events[at + 1 :]:
                        if isinstance(later, _Call):
                            later.call()
                    raise
        return True

    def _prepare(self) -> JobDriver | _NoJob | None:
        """Open, feed or end the job; what to wait on next (None: the session is over)."""
        if self._terminating:
            self._break(self.broken or self.broken_type("the pool was terminated"))
            return None
        driver = self._driver
        if driver is not None and driver.ended is not None:
            if not driver.started:  # refused at SUBMIT (queue full): fail the waiting work, no retry loop
                self._fail_waiting(JobFailedError(driver.ended_message()))
            driver = self._driver = None  # the job failed: the next work opens another
        if driver is None and any(source.has_batch for source in self._snapshot()):
            driver = self._open_job()
        if driver is None:
            self._withdraw(None)
        else:
            with driver.one_write():  # SUBMIT, withdrawals, tasks and END of this step: one send
                if not driver.submitted:
                    driver.submit()
                self._withdraw(driver)
                if worth_feeding(driver):
                    driver.feed(self._snapshot())
                if self._done() and driver.idle:
                    driver.end()  # the server ends the job: ENDED comes back
        if driver is None and self._done():
            return None
        return _NO_JOB if driver is None else driver

    def _withdraw(self, driver: JobDriver | None) -> None:
        """Take back the batches asked for (see :meth:`withdraw`)."""
        while self._withdrawals:
            batch, then = self._withdrawals.popleft()
            if then is not None and (batch.task is None or driver is None):
                then()  # never sent
            elif driver is not None:
                batch.on_withdrawn = then
                driver.withdraw(batch)

    def _done(self) -> bool:
        """Closing, and every source handed out."""
        with self._lock:  # add() checks _closing under the same lock
            return self._closing and not self._sources

    def _open_job(self) -> JobDriver:
        if self._connection is None:
            self._connection = Connection.open(self.settings, events=self.inbox)
        on_failure = self._job_failed if self.job_failure_breaks else None
        driver = JobDriver(
            self._connection,
            self.inbox,
            label=self.label,
            setup_blob=self.setup_blob,
            timeout=self.timeout,
            max_tasks=self.max_tasks,
            on_job_failure=on_failure,
            report_running=self.report_running,
        )
        self._driver = driver  # submitted by the caller, in the same write as its first tasks
        return driver

    def _job_failed(self, failure: BaseException) -> BaseException:
        """Mark the session broken by a job-level failure; return what its calls get."""
        broken = self.broken_type(f"the pool can no longer run work: {failure}")
        broken.__cause__ = failure
        with self._lock:
            self.broken = broken
        self._terminating = True
        return broken

    def _fail_waiting(self, error: BaseException) -> None:
        """Fail the work waiting now; the session stays usable for later work."""
        with self._lock:
            sources, self._sources = list(self._sources), deque()
        for source in sources:
            source.fail(error)

    def _break(self, error: BaseException) -> None:
        if self._driver is not None:
            self._driver.fail_all(error)
        with self._lock:
            self.broken = error
            sources, self._sources = list(self._sources), deque()
        for source in sources:
            try:
                source.fail(error)
            except Exception:
                log.exception("failing a source raised")
