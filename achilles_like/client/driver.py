"""The job driver: one job on a shared connection, every job verb, for every kind of caller.

::

    driving thread (a caller, or a Pool's session thread)                   reactor thread
    ─────────────────────────────────────────────────────                   ──────────────
    submit()  ─────────────────────────────── SUBMIT ref ──send──────────▶  server
    feed(sources): batch ─ pickle items ─ FUNC (once per function) + TASK ─▶ (one frame, many tasks)
    handle(frames) ◀── inbox ◀── routed by ref/job ◀──────────────────────  QUEUED/STARTED/
      └─ RESULT: decode ─ outcomes ─▶ batch.sink                            CREDIT/RESULT/ENDED
    end() ── END; cancel() ── CANCEL (whenever a caller abandons its work)

A *source* hands out *batches* (one task: the function blob, its items, and
the *sink* that gets their outcomes); the driver sends them while it has
credit, and delivers each task's results to its batch's sink. The driver has
no thread of its own and never blocks: the module functions drive it from the
caller's thread, a Pool or an executor from its session thread and from the
callers waiting on their results (``session.py``). What a
driving step sends (inside :meth:`JobDriver.one_write`: SUBMIT, FUNC, the
tasks, WITHDRAW, END) leaves in one write, the tasks as one ``TASK`` frame
(``protocol/batch.py``), as the results come in a ``RESULT``; the driving
thread takes every event queued behind the one it waited for
(:meth:`JobDriver.next_events`), so one wake-up and one feed serve them all.

A function is sent once per job under a small id (``FUNC``), and a task names
the id, so a task carries only its items. A task's result is the plain list
of values when every item succeeded, a list of outcomes when some failed, or
one failure for all of its items (the function did not load, a time limit, an
initializer that raised): :func:`decode_result` turns each into one outcome
per item, naming a failing item by its index in the call's input.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from achilles_like import task_output
from achilles_like.client.connection import Connection, Inbox, Lost
from achilles_like.client.streamed_results import StreamedResult
from achilles_like.errors import ClusterConnectionError, JobFailedError
from achilles_like.protocol import Frame
from achilles_like.protocol import messages as msg
from achilles_like.protocol.batch import Entry
from achilles_like.serialization import RemoteFailure, dumps, loads

log = logging.getLogger("achilles_like.client")

_refs = itertools.count(1)
MAX_EVENTS_PER_WAKE = 64  # a bound, so a flood of frames still lets the driver feed now and then


@dataclass(frozen=True)
class Outcomes:
    """One task's results: ``values`` when all succeeded, else one ``(ok, value or error)`` per item."""

    ok: bool
    items: list[Any]

    @classmethod
    def failed(cls, error: BaseException, count: int) -> Outcomes:
        """Every one of ``count`` items failed with ``error``."""
        return cls(False, [(False, error)] * count)

    def pairs(self) -> list[tuple[bool, Any]]:
        """One ``(ok, value or error)`` per item, whatever the form."""
        return [(True, value) for value in self.items] if self.ok else self.items

    def first_failure(self) -> BaseException | None:
        """The first item's error, if any failed."""
        if self.ok:
            return None
        return next((value for ok, value in self.items if not ok), None)


Sink = Callable[[Outcomes], None]


@dataclass
class Batch:
    """One task: a function blob, its items, where the outcomes go, and the index of its first item."""

    func_blob: bytes = field(repr=False)
    items: list[Any]
    sink: Sink
    first_index: int | None = None  # in the call's input; None for a single call (apply, submit)
    on_running: Callable[[], object] | None = None  # a worker took it (jobs that report RUNNING)
    on_withdrawn: Callable[[], object] | None = None  # it was withdrawn before any worker took it
    task: int | None = field(default=None, repr=False)  # its task id, once sent


class Source(Protocol):
    """Where a driver pulls batches from, in order."""

    def next_batch(self) -> Batch | None:
        """The next batch, or None when there is none now (exhausted or throttled)."""

    @property
    def exhausted(self) -> bool:
        """No batch will ever come again."""

    @property
    def has_batch(self) -> bool:
        """A batch can be had now."""

    def fail(self, error: BaseException) -> None:
        """Nothing more can run: fail everything not yet delivered."""


# A busy job sends once this share of its window (credit + tasks in flight) is free.
_FEED_BATCH = 4


def worth_feeding(driver: JobDriver) -> bool:
    """Whether to send now: at once when little is in flight, else once a quarter of the window is free.

    Sending as each result returns credit costs a wake-up of the reactor, a
    write and a read on the server per call. While three quarters of the
    window are in flight, at least a quarter of it waits on the server for a
    node (the server's window is at least twice the nodes' slots), so the
    nodes lose nothing while the freed credit gathers into one write. A lone
    call, or the first of a burst, still goes at once.
    """
    credit = driver.credit
    return credit > 0 and credit * _FEED_BATCH >= credit + len(driver.inflight)


def decode_result(
    ok: bool, body: bytes | StreamedResult, batch: Batch
) -> tuple[Outcomes, RemoteFailure | None]:
    """A RESULT body (or a streamed one's value) as one outcome per item, and the whole-task failure."""
    count = len(batch.items)
    try:
        payload = body.value() if isinstance(body, StreamedResult) else loads(body)
    except Exception as error:  # noqa: BLE001 - a result this process cannot unpickle
        return Outcomes.failed(error, count), None
    if ok:
        return Outcomes(True, payload), None
    if isinstance(payload, RemoteFailure):
        if payload.item_index is None and count == 1 and batch.first_index is not None:
            payload.item_index = batch.first_index  # a one-item task: that item failed
        return Outcomes.failed(payload.to_exception(), count), payload
    outcomes: list[tuple[bool, Any]] = []
    for item_ok, value in payload:
        if not item_ok:
            if value.item_index is not None and batch.first_index is not None:
                value.item_index += batch.first_index
            else:
                value.item_index = None
            value = value.to_exception()
        outcomes.append((item_ok, value))
    return Outcomes(False, outcomes), None


class JobDriver:
    """Speaks every job verb for one job; see the module docstring."""

    def __init__(
        self,
        connection: Connection,
        inbox: Inbox,
        *,
        label: str,
        setup_blob: bytes = b"",
        stop_on_failure: bool = False,
        timeout: float | None = None,
        max_tasks: int | None = None,
        on_job_failure: Callable[[BaseException], BaseException] | None = None,
        report_running: bool = False,
    ) -> None:
        self.connection = connection
        self.max_body = connection.settings.max_body  # the server's too: a batch frame stays within it
        self.inbox = inbox
        self.ref = next(_refs)
        self._submit = msg.Submit(
            ref=self.ref,
            label=label,
            timeout=timeout,
            maxtasks=max_tasks,
            stop=stop_on_failure,
            # What tasks print reaches this process's stdout/stderr unless turned off.
            output=os.environ.get("ACHILLES_FORWARD_OUTPUT", "1") != "0",
            running=report_running,  # an executor's running(): true only once a worker has the call
            body=setup_blob,
        )
        # A job-level failure (the initializer raised): what every call gets instead.
        self.on_job_failure = on_job_failure
        self.job_id: int | None = None
        self.submitted = False
        self.started = False
        # A job may send its first task before the server says STARTED (it holds it until
        # then), so a one-item call costs one round trip; the first CREDIT includes it.
        self.credit = 1
        self._first_grant = True
        self.next_task = 0
        self.inflight: dict[int, Batch] = {}
        self.withdrawing: set[int] = set()  # tasks asked back, until WITHDRAWN or their RESULT
        self.functions: dict[bytes, int] = {}
        self.end_sent = False
        self.ended: msg.Ended | None = None
        self.job_failure: BaseException | None = None
        self._held_sends: list[bytes] | None = None  # inside one_write(): sent at its end
        self._submit_at: int | None = None  # where in them the SUBMIT goes (submit())
        self._one_write = _OneWrite(self)

    # -- sending ----------------------------------------------------------------

    def one_write(self) -> _OneWrite:
        """A ``with`` block: what the driver sends inside it leaves in one write at its end.

        A driving step may send a SUBMIT, a FUNC, a TASK frame and an END (a
        one-item ``map``): each send is a wake-up of the reactor thread, and
        each write a read and a frame-handling turn on the server.
        """
        return self._one_write

    def _send(self, *parts: bytes) -> None:
        if self._held_sends is not None:
            self._held_sends += parts
        else:
            self.connection.send(*parts)

    def submit(self) -> None:
        """Open the job on the server.

        Inside :meth:`one_write` the SUBMIT is encoded as the write leaves: if
        the END went with it (a one-item call), it says ``whole=1``, and the
        server sends no STARTED or CREDIT before the result, which would wake
        this process for nothing.
        """
        self.submitted = True
        self.connection.route(self.ref, self.inbox)
        if self._held_sends is not None:
            self._submit_at = len(self._held_sends)
            self._held_sends.append(b"")  # its place, filled in by _OneWrite.__exit__
        else:
            self._send(*self._submit.encode())

    def feed(self, sources: Iterable[Source]) -> bool:
        """Send batches while there is credit; return whether anything was sent."""
        if self.end_sent or self.ended is not None:
            return False
        functions: list[bytes] = []  # FUNC frames first: they precede the tasks that call them
        entries: list[Entry] = []
        try:
            for source in sources:
                if self.credit <= 0:
                    break  # the rest wait for credit: a long queue of calls is not walked
                while self.credit > 0:
                    batch = source.next_batch()
                    if batch is None:
                        break
                    self._task(batch, functions, entries)
        finally:
            if entries:  # one TASK frame (protocol/batch.py) and one write for every task of this feed
                job, ref = self._address()
                tasks = msg.Tasks(job=job, ref=ref, entries=entries, limit=self.max_body)
                self._send(*functions, *tasks.encode())
        return bool(entries)

    def _address(self) -> tuple[int, int | None]:
        """``(job, ref)``: the job's id once known; before that, job 0 and this driver's ref."""
        return (self.job_id, None) if self.job_id is not None else (0, self.ref)

    def _task(self, batch: Batch, functions: list[bytes], entries: list[Entry]) -> None:
        """Pickle one batch's items as a task entry (and its function's FUNC, the first time)."""
        try:
            body = dumps(batch.items)
        except Exception as error:  # noqa: BLE001 - an argument that cannot travel fails its call
            _deliver(batch, Outcomes.failed(_unpicklable(error, batch), len(batch.items)))
            return
        fn = self.functions.get(batch.func_blob)
        if fn is None:
            fn = self.functions[batch.func_blob] = len(self.functions)
            job, ref = self._address()
            functions += msg.Func(job=job, ref=ref, fn=fn, body=batch.func_blob).encode()
        entries.append((self.next_task, 0, fn, body))
        self.inflight[self.next_task] = batch
        batch.task = self.next_task
        self.next_task += 1
        self.credit -= 1

    def withdraw(self, batch: Batch) -> None:
        """Ask the cluster to drop a sent task that no worker has started (its caller cancelled it).

        Either WITHDRAWN comes back (it never ran) or, if a worker had it
        already, its RESULT; the caller has given up on it either way.
        """
        task = batch.task
        if task is None or self.inflight.get(task) is not batch or task in self.withdrawing:
            return  # not sent by this job, or already answered or asked
        if self.ended is None and not self.connection.closed:
            self.withdrawing.add(task)
            job, ref = self._address()
            self._send(msg.Withdraw(job=job, ref=ref, task=task).to_bytes())

    def end(self) -> None:
        """Say the job's input is complete (the server ends it once every task is done)."""
        if not self.end_sent and self.ended is None:
            self.end_sent = True
            job, ref = self._address()
            self._send(msg.End(job=job, ref=ref, tasks=self.next_task).to_bytes())

    def cancel(self) -> None:
        """Abandon the job: the cluster drops its tasks (sent whenever a caller gives up its work)."""
        if self.ended is None and not self.connection.closed:
            job, ref = self._address()
            self._send(msg.Cancel(job=job, ref=ref).to_bytes())
        self.release()

    def release(self) -> None:
        """Stop receiving this job's frames."""
        self.connection.unroute(self.ref, self.job_id)

    @property
    def idle(self) -> bool:
        """Nothing in flight."""
        return not self.inflight

    # -- receiving --------------------------------------------------------------

    def next_event(self) -> Any:
        """Wait for the next event of this job (frames, a wake-up, or the connection's loss)."""
        return self.connection.next_event(self._queue())

    def next_events(self) -> list[Any]:
        """Wait for the next event, and take every one queued behind it (one wake-up for them all).

        Handling them all before the next feed means one send for what they
        freed, not one per event. For a driver whose caller reads its inbox
        (the module functions); a session reads its own (``session.py``).
        """
        inbox = self._queue()
        events = [self.connection.next_event(inbox)]
        while not inbox.empty() and len(events) < MAX_EVENTS_PER_WAKE:
            events.append(inbox.get_nowait())
        return events

    def _queue(self) -> queue.SimpleQueue[Any]:
        inbox = self.inbox
        assert isinstance(inbox, queue.SimpleQueue), "a session reads its own inbox"
        return inbox

    def handle(self, event: Any) -> None:
        """Apply one inbox event; a lost connection or a server's refusal raises ClusterConnectionError."""
        if isinstance(event, Lost):
            raise ClusterConnectionError(event.message)
        if not isinstance(event, list):
            return  # a wake-up put by the driving thread's own helpers
        for frame in event:
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        match msg.decode(frame):
            case msg.Results(entries=entries):
                for task, _, ok, body in entries:
                    self._result(task, bool(ok), body if frame.stream is None else _streamed(frame))
            case msg.Output(body=body):
                task_output.replay(body, sys.stdout, sys.stderr)
            case msg.Running(entries=entries):
                for task, _ in entries:
                    batch = self.inflight.get(task)
                    if batch is not None and batch.on_running is not None:
                        batch.on_running()
            case msg.Withdrawn(task=task):
                self.withdrawing.discard(task)
                batch = self.inflight.pop(task, None)  # it never ran: no RESULT will come
                if batch is not None and batch.on_withdrawn is not None:
                    batch.on_withdrawn()
            case msg.Credit(n=n):
                self.credit += n - 1 if self._first_grant else n
                self._first_grant = False
            case msg.Started(job=job):
                self.job_id, self.started = job, True
            case msg.Queued(job=job):
                self.job_id = job
            case msg.Ended() as ended:
                self.job_id = ended.job if self.job_id is None else self.job_id  # refused at SUBMIT
                self.ended = ended
                self.release()
                if ended.outcome != "done" or self.inflight:
                    self.fail_all(self.job_failure or JobFailedError(self.ended_message()))
            case msg.Error(msg=text):
                raise ClusterConnectionError(f"the server refused the job: {text}")
            case _:
                pass  # nothing else is addressed to a job

    def _result(self, task: int, ok: bool, body: bytes | StreamedResult) -> None:
        if isinstance(body, StreamedResult):
            body.wait()  # a connection lost mid-body raises here, the task still in flight, as Lost does
        batch = self.inflight.pop(task, None)
        if self.withdrawing:
            self.withdrawing.discard(task)
        if batch is None:
            return  # a duplicate would be a server bug; never deliver twice
        outcomes, failure = decode_result(ok, body, batch)
        if failure is not None and failure.whole_job:
            error = outcomes.items[0][1]
            if self.on_job_failure is not None:
                error = self.on_job_failure(error)
            self.job_failure = error
            outcomes = Outcomes.failed(error, len(batch.items))
        _deliver(batch, outcomes)

    def ended_message(self) -> str:
        """What the server said when it ended the job, naming the failed task's input items."""
        ended = self.ended
        assert ended is not None
        message = f"the cluster ended job {self.job_id}: {ended.reason or ended.outcome}"
        batch = None if ended.task is None else self.inflight.get(ended.task)
        if batch is not None and batch.first_index is not None:
            first, count = batch.first_index, len(batch.items)
            message += (
                f" (input item {first})" if count == 1 else f" (input items {first}..{first + count - 1})"
            )
        return message

    def fail_all(self, error: BaseException) -> None:
        """Every batch in flight fails with ``error``."""
        inflight, self.inflight = self.inflight, {}
        for batch in inflight.values():
            _deliver(batch, Outcomes.failed(error, len(batch.items)))


def _streamed(frame: Frame) -> StreamedResult:
    """The large result a RESULT frame's body streams into (``client/streamed_results.py``)."""
    assert isinstance(frame.stream, StreamedResult)
    return frame.stream


_SUBMIT_FIELDS = tuple(item.name for item in dataclasses.fields(msg.Submit) if item.name != "whole")


class _OneWrite:
    """:meth:`JobDriver.one_write`'s block (a class, not a generator: it is entered per driving step)."""

    def __init__(self, driver: JobDriver) -> None:
        self._driver = driver
        self._depth = 0  # nested blocks: the outermost one sends

    def __enter__(self) -> None:
        if self._depth == 0:
            self._driver._held_sends = []
        self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            driver = self._driver
            parts, driver._held_sends = driver._held_sends, None
            if driver._submit_at is not None and parts is not None:
                at, driver._submit_at = driver._submit_at, None
                submit = driver._submit
                if driver.end_sent:  # a new message, not a changed one (dataclasses.replace: 7 us)
                    submit = msg.Submit(
                        **{name: getattr(submit, name) for name in _SUBMIT_FIELDS}, whole=True
                    )
                parts[at : at + 1] = submit.encode()
            if parts:
                driver.connection.send(*parts)


def _deliver(batch: Batch, outcomes: Outcomes) -> None:
    """Hand outcomes to a batch's sink; a sink that raises must not stop the driver."""
    try:
        batch.sink(outcomes)
    except Exception:
        log.exception("delivering a result raised")


def _unpicklable(error: Exception, batch: Batch) -> Exception:
    """The error a call gets when its arguments cannot be pickled: that very error, with a note.

    As with the standard library, the caller catches the type pickling raised
    (a ``PicklingError``, a ``TypeError``, whatever a ``__reduce__`` raises).
    """
    if batch.first_index is None:
        where = "the call's arguments"
    elif len(batch.items) == 1:
        where = f"input item {batch.first_index}"
    else:
        where = f"input items {batch.first_index}..{batch.first_index + len(batch.items) - 1}"
    error.add_note(f"achilles_like: {where} cannot be pickled; every item must be picklable by dill")
    return error
