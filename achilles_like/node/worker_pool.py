"""A node's worker processes, watched one by one (what ``multiprocess.Pool`` does not do), on the reactor.

::

    reactor thread (the node's only thread)                           worker processes
    ───────────────────────────────────────                           ────────────────
    submit(item) → idle worker? ── TaskHeader + blobs, non-blocking ──▶ worker_main: run_items(...)
    _WorkerLink.doRead ◀──────────── ResultHeader + result blob ◀────── (blocking pipe end)
      └─ deliver(item, OK/ERROR, blob)
    _Sentinel.doRead: the process exited → deliver(item, LOST), spawn a replacement
    callLater(timeout): kill that worker → deliver(item, TIMEOUT), spawn a replacement
    cancel(job): drop its queued tasks, kill the workers running one

``multiprocess.Pool.map`` hangs forever when a worker dies: the task it held
never completes and, if the worker died holding the shared queue's lock,
neither does any other. Here every worker has its own socket pair, so the
pool knows which tasks each one holds. A worker that dies (SIGKILL, segfault,
``os._exit``, out of memory), even in the middle of writing a large result,
costs exactly the tasks it had begun and not answered, reported as LOST so the server can retry it; a
task over its time limit has only its own worker killed and is reported as
TIMEOUT. Either way a fresh worker replaces it.

Everything here runs on the node's reactor thread: each worker's socket and
its process sentinel are Twisted file descriptors (``addReader``), time
limits are ``callLater`` calls, and outcomes go to ``deliver`` directly, so
a task costs no thread hand-off on the node. Nothing here blocks the
reactor: the node's end of each socket is non-blocking, and what the socket
does not take at once stays queued on that worker and is written as the
socket drains (``addWriter``), so a 64 MiB task or a stopped worker does not
stall the heartbeats. The bytes on the socket are ``pipe_format``: a struct
header and the blobs as they came off the wire, nothing pickled around them.

Per task the node spends as few system calls and wake-ups as it can:

- While the node's tasks are short (the agent sets :attr:`WorkerPool.batch`
  to half its depth, at most :data:`BATCH_WHEN_SHORT`), a worker holds up to that many tasks of one
  job, and the tasks it gets in one reactor turn (a TASK frame, the room a
  read of results made) leave in one ``writev``; otherwise it holds one, as
  does any *exclusive* task (a time limit, ``max_tasks``, or items over
  :data:`READ_SIZE`), which goes only to an idle worker with nothing behind it
  and counts as started once written. A task whose job hears RUNNING (an
  executor's) is reported once written, and a worker holds at most
  :data:`REPORTED_PER_WORKER` of them, so the next call is in its socket when
  the last one ends. Results come back in order.
- The worker claims each task before it runs it (``claims.py``: a lock and a
  few integers in shared memory), so the node can take back the ones it has
  not started, race-free: to give them to a worker that has idled
  :data:`STEAL_AFTER` seconds (a task never waits for long behind another while
  a worker is free, so tasks that wait for each other, as a local pool allows,
  do not deadlock), for ``withdraw``, and after the worker's death (its unstarted
  tasks go to another worker; the ones it began are LOST).
- One ``read`` takes every result a worker has written (up to
  :data:`READ_SIZE`), and the tasks they made room for are assigned once per read;
  a larger blob is read into one buffer of its announced
  length (``BodyBuffer``) and forwarded as those very bytes.

A killed worker is reaped when its sentinel fires, never waited for on the
reactor. Workers are forked; they die with the node (``PR_SET_PDEATHSIG`` on
Linux) and ignore Ctrl-C, which is the node's.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import multiprocess
from twisted.python.failure import Failure

from achilles_like.node import pipe_format
from achilles_like.node.claims import ClaimBoard
from achilles_like.node.exit_reason import describe_exit
from achilles_like.node.in_worker import JOB_CACHE_SIZE, worker_main
from achilles_like.protocol.body_buffer import BodyBuffer

log = logging.getLogger("achilles_like.node.worker_pool")
_context = multiprocess.get_context("fork")


class Outcome(Enum):
    """How a task left the worker pool."""

    OK = "ok"  # blob: the pickled results
    ERROR = "error"  # blob: a pickled RemoteFailure (or per-item outcomes) from the user's code
    LOST = "lost"  # the worker died while running it
    TIMEOUT = "timeout"  # it ran over its time limit and its worker was killed


@dataclass(slots=True)
class WorkItem:
    """One task attempt as the worker pool runs it."""

    job_key: int  # unique per job and connection: workers cache the job's code by it
    job_id: int
    task_id: int
    attempt: int
    setup_blob: bytes = field(repr=False)  # the job's initializer, sent with a worker's first task of it
    fn: int
    func_blob: bytes = field(repr=False)  # the function, sent with a worker's first task calling it
    items_blob: bytes = field(repr=False)  # dropped once written to the worker
    timeout: float | None = None
    max_tasks: int | None = None  # replace a worker once it has run this many tasks
    capture: bool = False  # the worker sends what the task prints (see ``achilles_like/task_output.py``)
    report_start: bool = False  # call ``on_start`` when a worker takes it (an executor's ``running()``)
    reported: bool = False  # ``on_start`` was called: once, even if it is taken back and written again
    seq: int = 0  # its number on the worker it was last written to (``claims.py``)
    alone: bool = False  # written as an exclusive task: its items blob is dropped

    @property
    def exclusive(self) -> bool:
        """Written only to an idle worker, nothing behind it: timed, counted, or large.

        It counts as started once written, so it is never taken back or written again, and its
        items blob is dropped then (a large body is not held on the node while it runs).
        """
        return (
            self.alone
            or self.timeout is not None
            or self.max_tasks is not None
            or len(self.items_blob) > READ_SIZE
        )


BATCH_WHEN_SHORT = 8  # tasks a worker may hold while the node's tasks are short (``WorkerPool.batch``)
# Of a job that hears RUNNING (an executor's), a worker holds at most its running task and the
# next: the next is reported running once written, as the stdlib marks the calls it queues for
# its workers (one beyond their number), and starts with no round trip through the node.
REPORTED_PER_WORKER = 2
STEAL_AFTER = 0.005  # seconds a worker idles before it takes the unstarted tasks queued on another
READ_BUDGET = 4 << 20  # bytes of a result read per reactor turn, at most (about, plus one read)
READ_SIZE = 256 << 10  # bytes asked of a worker's socket per read: every result it has written
_IOV_MAX = 1024  # Linux's limit on buffers per writev

Deliver = Callable[[WorkItem, Outcome, bytes, str], None]
OnOutput = Callable[[WorkItem, bytes], None]
OnStart = Callable[[WorkItem], None]


class WorkerPool:
    """``processes`` watched worker processes, served by ``reactor`` (call everything on its thread)."""

    def __init__(
        self,
        processes: int,
        deliver: Deliver,
        reactor: Any,
        on_output: OnOutput | None = None,
        on_start: OnStart | None = None,
    ) -> None:
        self.processes = processes
        self._deliver = deliver
        self._on_output = on_output
        self._on_start = on_start
        self._reactor = reactor
        self._pending: deque[WorkItem] = deque()
        self.batch = 1  # tasks a worker may hold (running and queued); the node deepens it for short tasks
        self._steal_call: Any = None  # the IDelayedCall of the next steal attempt
        self._closed = False
        self._retired: list[_Worker] = []  # killed, waiting for their sentinel to be reaped
        self._workers: list[_Worker] = [self._spawn() for _ in range(processes)]

    def submit(self, item: WorkItem) -> None:
        """Queue a task; it starts as soon as a worker is idle."""
        if not self._closed:
            self._pending.append(item)
            self._assign()

    def submit_many(self, items: list[WorkItem]) -> None:
        """Queue tasks in order; each worker's share of them leaves in one write."""
        if not self._closed:
            self._pending.extend(items)
            self._assign()

    def withdraw(self, should_drop: Callable[[WorkItem], bool]) -> list[WorkItem]:
        """Drop the tasks matching ``should_drop`` that no worker has started, and return them.

        That includes tasks written to a worker but not claimed by it: the worker skips them
        (``claims.py``). A task a worker has claimed, or might claim this very instant (its
        claim lock is busy), is left alone: its result comes as usual.
        """
        taken = False
        for worker in self._workers:
            # An exclusive task counts as started once written (``on_start`` said so): never taken back.
            if any(should_drop(item) and not item.exclusive for item in worker.queue):
                taken = self._take_back(worker) or taken
        dropped = [item for item in self._pending if should_drop(item)]
        if dropped:
            self._pending = deque(item for item in self._pending if not should_drop(item))
        if taken:
            self._assign()  # what was taken back with them goes out again
        return dropped

    def cancel(self, should_drop: Callable[[WorkItem], bool]) -> None:
        """Drop queued tasks matching ``should_drop`` and kill the workers holding one."""
        self._pending = deque(item for item in self._pending if not should_drop(item))
        for worker in list(self._workers):
            if any(should_drop(item) for item in worker.queue):
                # Nobody wants the result: free the process for the next job now. A worker's
                # queue holds one job's tasks, so nothing else is lost with them.
                self._pending.extendleft(reversed([item for item in worker.queue if not should_drop(item)]))
                worker.queue.clear()
                self._replace(worker)
        self._assign()

    @property
    def result_bytes_in_flight(self) -> int:
        """Bytes of results read so far but not yet complete (a test's view of a result mid-transfer)."""
        return sum(worker.link.receiving for worker in self._workers)

    def close(self) -> None:
        """Stop every worker (idempotent; waits up to a few seconds for them to exit: node shutdown)."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        if self._steal_call is not None and self._steal_call.active():
            self._steal_call.cancel()
        for worker in self._workers + self._retired:
            self._detach(worker)
            worker.sentinel.close()
            if worker.process.exitcode is None:
                worker.process.kill()
            worker.process.join(5)
        self._workers, self._retired = [], []

    # -- tasks to workers ------------------------------------------------------------------

    def _assign(self) -> None:
        """Give the queued tasks to workers; each worker's share leaves in one ``writev``."""
        batches: dict[_Worker, list[bytes]] = {}
        while self._pending:
            item = self._pending[0]
            worker = self._pick(item)
            if worker is None:
                break
            self._pending.popleft()
            self._start(worker, item, batches)
        for worker, parts in batches.items():
            worker.link.send(parts)
        if self.batch > 1 and not self._pending and self._steal_call is None and self._starved():
            self._steal_call = self._reactor.callLater(STEAL_AFTER, self._steal)

    def _starved(self) -> bool:
        """A worker idles while another holds several tasks (some perhaps not started)."""
        workers = self._workers
        return any(w.alive and not w.queue for w in workers) and any(len(w.queue) > 1 for w in workers)

    def _pick(self, item: WorkItem) -> _Worker | None:
        """An idle worker, preferring one that has not run this job yet; else the shortest queue of its job.

        A worker's queue holds the tasks of one job, none of them exclusive, at most ``batch`` of them.
        """
        idle = None
        queued = None
        # How many tasks a worker may already hold for this one to queue behind them (0: only idle).
        if item.exclusive:
            room = 0
        else:
            room = min(self.batch, REPORTED_PER_WORKER) if item.report_start else self.batch
        for worker in self._workers:
            if not worker.alive:
                continue
            queue = worker.queue
            if not queue:
                # A pool's first calls then run its initializer in as many processes as it has
                # calls, as a local pool's would.
                if item.job_key not in worker.jobs_seen:
                    return worker
                idle = idle or worker
            elif (
                len(queue) < room
                and queue[0].job_key == item.job_key
                and not queue[0].exclusive
                and not worker.stalled
                and (queued is None or len(queue) < len(queued.queue))
            ):
                queued = worker
        return idle or queued

    def _start(self, worker: _Worker, item: WorkItem, batches: dict[_Worker, list[bytes]]) -> None:
        first = item.job_key not in worker.jobs_seen
        if first:
            if len(worker.jobs_seen) == worker.jobs_seen.maxlen:
                worker.functions_seen.pop(worker.jobs_seen[0], None)  # the worker forgets it too
            worker.jobs_seen.append(item.job_key)
            worker.functions_seen[item.job_key] = set()
        functions = worker.functions_seen[item.job_key]
        new_function = item.fn not in functions
        if new_function:
            functions.add(item.fn)
        header = pipe_format.encode_task(
            item.job_key,
            item.fn,
            len(item.setup_blob) if first else None,
            len(item.func_blob) if new_function else None,
            len(item.items_blob),
            item.capture,
        )
        parts = batches.get(worker)
        if parts is None:
            parts = batches[worker] = []
        parts.append(header)
        if first:
            parts.append(item.setup_blob)
        if new_function:
            parts.append(item.func_blob)
        parts.append(item.items_blob)
        worker.next_seq += 1
        item.seq = worker.next_seq
        worker.queue.append(item)
        if item.exclusive:
            item.alone = True
            item.items_blob = b""  # the socket (or the link's buffer) holds it; the server retries it, not us
        if item.timeout is not None:
            worker.timer = self._reactor.callLater(item.timeout, self._expire, worker)
        if item.report_start and not item.reported and self._on_start is not None:
            item.reported = True
            self._on_start(item)

    # -- taking unstarted tasks back from a worker ---------------------------------------------

    def _steal(self) -> None:
        """A worker idles while another holds tasks it has not started: queue those again."""
        self._steal_call = None
        if self._closed or self._pending or not self._starved():
            return
        busy = [w for w in self._workers if w.alive and len(w.queue) > 1]
        for worker in busy:
            self._take_back(worker)
        self._assign()

    def _take_back(self, worker: _Worker) -> bool:
        """Queue again (first in line) the tasks ``worker`` has not claimed; they are skipped there.

        True if some were taken. Until its next result nothing more is queued behind it.
        """
        first = worker.board.take_back(worker.next_seq + 1)
        if first is None:  # the worker is claiming a task this instant: try again soon
            if self._steal_call is None and not self._closed:
                self._steal_call = self._reactor.callLater(STEAL_AFTER, self._steal)
            return False
        taken = [item for item in worker.queue if item.seq >= first]
        for _ in taken:
            worker.queue.pop()
        self._pending.extendleft(reversed(taken))
        worker.stalled = bool(worker.queue)
        return bool(taken)

    # -- outcomes ----------------------------------------------------------------------------

    def _output(self, worker: _Worker, blob: bytes) -> None:
        """What the worker's current task printed (it comes just before the task's result)."""
        if worker.queue and self._on_output is not None:
            self._on_output(worker.queue[0], blob)

    def _result(self, worker: _Worker, ok: bool, blob: bytes) -> None:
        """The result of the oldest task of the worker (the caller assigns the next tasks, once per read)."""
        if not worker.queue:
            return  # cancelled or timed out meanwhile
        item = worker.queue.popleft()
        worker.cancel_timer()
        worker.stalled = False
        worker.tasks_run += 1
        self._deliver(item, Outcome.OK if ok else Outcome.ERROR, blob, "")
        if item.max_tasks is not None and worker.tasks_run >= item.max_tasks and worker in self._workers:
            self._replace(worker)

    def _expire(self, worker: _Worker) -> None:
        worker.timer = None
        if not worker.queue or worker not in self._workers:
            return
        item = worker.queue.popleft()  # an exclusive task: alone on its worker
        self._deliver(item, Outcome.TIMEOUT, b"", f"it ran over its {item.timeout:g}s time limit")
        self._replace(worker)
        self._assign()

    def _died(self, worker: _Worker) -> None:
        """A worker's process exited (its sentinel fired): reap it, report its task, replace it."""
        worker.alive = False  # no new task for it while its last results are read
        if worker.link.connected:
            worker.link.doRead()  # a result it wrote in full before dying still counts
        self._detach(worker)
        worker.sentinel.close()
        worker.process.join(1)  # its sentinel fired: it has exited, this only collects the status
        if worker in self._retired:
            self._retired.remove(worker)
            return
        # Tasks it never claimed go to another worker; the ones it began (with their results
        # unwritten) are lost, and the server retries them.
        # An exclusive task counted as started once written, so it is lost in any case.
        started = worker.board.started
        unstarted = [item for item in worker.queue if item.seq > started and not item.exclusive]
        lost = [item for item in worker.queue if item.seq <= started or item.exclusive]
        self._pending.extendleft(reversed(unstarted))
        worker.queue.clear()
        worker.cancel_timer()
        # Names memory when the kernel's OOM killer is the likely cause.
        detail = describe_exit(worker.process.exitcode)
        for item in lost:
            log.warning("task %d of job %d lost: %s", item.task_id, item.job_id, detail)
            self._deliver(item, Outcome.LOST, b"", detail)
        if worker in self._workers and not self._closed:
            self._workers[self._workers.index(worker)] = self._spawn()
            self._assign()

    def _link_broken(self, worker: _Worker) -> None:
        """The worker wrote something that is not a result (or its socket failed): treat it as dead."""
        if worker.process.exitcode is None:
            worker.process.kill()  # its sentinel fires next, and _died reports its task LOST

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        node_end, worker_end = socket.socketpair()
        board = ClaimBoard(_context)
        process = _context.Process(
            target=worker_main, args=(worker_end.fileno(), board), daemon=True, name="achilles-worker"
        )
        process.start()
        worker_end.close()
        node_end.setblocking(False)
        worker = _Worker(process, board)
        worker.link = _WorkerLink(self, worker, node_end)
        worker.sentinel = _Sentinel(self, worker)
        self._reactor.addReader(worker.link)
        self._reactor.addReader(worker.sentinel)
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker that is still running and put a fresh one in its place."""
        self._detach(worker)
        worker.queue.clear()
        if worker.process.exitcode is None:
            worker.process.kill()
        self._retired.append(worker)  # reaped when its sentinel fires
        self._workers[self._workers.index(worker)] = self._spawn()

    def _detach(self, worker: _Worker) -> None:
        worker.cancel_timer()
        worker.link.close()


@dataclass(eq=False)
class _Worker:
    process: Any
    board: ClaimBoard  # which of its queued tasks it has started (shared with the process)
    link: _WorkerLink = field(init=False)
    sentinel: _Sentinel = field(init=False)
    # The tasks written to it and not answered, oldest first: one job's, at most the pool's batch;
    # the first is running (or done, its result on the way), the rest wait in its socket.
    queue: deque[WorkItem] = field(default_factory=deque)
    next_seq: int = 0  # the sequence number of the last task written to it
    stalled: bool = False  # tasks were taken back from it: queue nothing behind it until its next result
    timer: Any = None  # the IDelayedCall of its running task's time limit
    # Jobs whose setup this worker has (the same last few the worker caches), with their functions.
    jobs_seen: deque[int] = field(default_factory=lambda: deque(maxlen=JOB_CACHE_SIZE))
    functions_seen: dict[int, set[int]] = field(default_factory=dict)
    tasks_run: int = 0  # since this process started, for max_tasks (maxtasksperchild)
    alive: bool = True  # False once its process has exited

    @property
    def item(self) -> WorkItem | None:
        """The task it runs or runs next (None: idle)."""
        return self.queue[0] if self.queue else None

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _WorkerLink:
    """The node's non-blocking end of one worker's socket pair, as a Twisted read/write descriptor.

    Reading takes every byte the worker has written, up to :data:`READ_SIZE`,
    in one ``read`` and hands on each complete message in it; a blob larger
    than that is read into a buffer of its own (``BodyBuffer``) and forwarded
    as those very bytes.
    """

    def __init__(self, pool: WorkerPool, worker: _Worker, sock: socket.socket) -> None:
        self._pool = pool
        self._worker = worker
        self._sock = sock
        self._fd = sock.fileno()
        self._reactor = pool._reactor
        self._out: deque[memoryview] = deque()  # what the socket has not taken yet
        self._rest = b""  # the start of a message that is not complete yet
        self._kind = 0
        self._body: BodyBuffer | None = None  # a large blob being read into its own buffer
        self.connected = True

    @property
    def receiving(self) -> int:
        """Bytes of a result received so far, while it is incomplete."""
        return len(self._rest) + (0 if self._body is None else self._body.filled)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "achilles-worker"

    def send(self, parts: list[bytes]) -> None:
        """Write ``parts`` without blocking; what does not fit now is written as the socket drains."""
        if not self.connected:
            return
        if self._out:  # still draining: keep the order
            self._out.extend(memoryview(part) for part in parts if part)
            return
        try:
            sent = os.writev(self._fd, parts[:_IOV_MAX])
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # it died: its sentinel fires and the task is reported LOST
        for part in parts:
            if sent >= len(part) and not self._out:
                sent -= len(part)
            elif part:
                self._out.append(memoryview(part)[sent:])
                sent = 0
        if self._out:
            self._reactor.addWriter(self)

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        if not self._write_some():
            self._reactor.removeWriter(self)

    def _write_some(self) -> bool:
        """Write what the socket takes; True if something is left."""
        while self._out and self.connected:
            try:
                sent = os.writev(self._fd, list(itertools.islice(self._out, 64)))
            except BlockingIOError:
                return True
            except OSError:
                self._out.clear()  # it died: its sentinel fires and the task is reported LOST
                return False
            while sent and self._out:
                head = self._out[0]
                if sent >= len(head):
                    sent -= len(head)
                    self._out.popleft()
                else:
                    self._out[0] = head[sent:]
                    sent = 0
        return bool(self._out) and self.connected

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        """Read what the worker has written; hand on every complete output and result."""
        budget = READ_BUDGET  # a 64 MiB result arrives over several reactor turns, heartbeats between
        try:
            self._read(budget)
        finally:
            self._pool._assign()  # the tasks the results made room for, one write per worker

    def _read(self, budget: int) -> None:
        try:
            while self.connected and budget > 0:
                if self._body is not None:
                    count = self._read_body()
                    if count <= 0:
                        return
                    budget -= count
                    continue
                try:
                    chunk = os.read(self._fd, READ_SIZE)
                except BlockingIOError:
                    return
                except OSError:
                    chunk = b""
                if not chunk:
                    self._eof()
                    return
                self._parse(self._rest + chunk if self._rest else chunk)
                if len(chunk) < READ_SIZE:
                    return  # drained (the reactor calls again when more arrives)
                budget -= len(chunk)
        except pipe_format.PipeFormatError as error:
            log.error("worker %s wrote garbage to its pipe: %s", self._worker.process.pid, error)
            self.close()
            self._pool._link_broken(self._worker)

    def _parse(self, data: bytes) -> None:
        """Hand on the complete messages at the start of ``data``; keep the rest for later."""
        pos, size = 0, len(data)
        header = pipe_format.RESULT_HEADER_SIZE
        self._rest = b""
        while size - pos >= header and self.connected:
            kind, length = pipe_format.reply_at(data, pos)
            end = pos + header + length
            if end > size:
                if length > READ_SIZE:  # large: into a buffer of its own, not through ours
                    self._kind, self._body = kind, BodyBuffer(length)
                    self._body.write(memoryview(data)[pos + header :])
                    pos = size
                break
            blob = data[pos + header : end]
            pos = end
            self._hand_on(kind, blob)
        if pos < size and self.connected:
            self._rest = data[pos:]

    def _hand_on(self, kind: int, blob: bytes) -> None:
        if kind == pipe_format.OUTPUT:
            self._pool._output(self._worker, blob)  # the task's result follows
        else:
            self._pool._result(self._worker, kind == pipe_format.RESULT_OK, blob)

    def _read_body(self) -> int:
        """Read into the large blob's buffer; the byte count (0: nothing now, or the socket closed)."""
        body = self._body
        assert body is not None
        view = body.view()
        try:
            count = os.readv(self._fd, [view])
        except BlockingIOError:
            return 0
        except OSError:
            count = 0
        finally:
            view.release()
        if count == 0:
            self._eof()
            return 0
        body.advance(count)
        if not body.missing:
            self._body = None
            self._hand_on(self._kind, body.value())
        return count

    def _eof(self) -> None:
        # The worker is gone (or closing): stop listening; its sentinel reports the death.
        if self.connected:
            self._reactor.removeReader(self)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        """Twisted calls this if doRead or doWrite raised: the worker cannot be trusted any more."""
        log.error("worker %s link failed: %s", self._worker.process.pid, reason.getErrorMessage())
        self.close()
        self._pool._link_broken(self._worker)

    def close(self) -> None:
        """Stop serving this socket and close it (idempotent)."""
        if self.connected:
            self.connected = False
            self._reactor.removeReader(self)
            self._reactor.removeWriter(self)
            self._sock.close()
            self._out.clear()
            self._body = None
            self._rest = b""


class _Sentinel:
    """A worker process's exit, as a Twisted read descriptor (readable once the process has exited)."""

    def __init__(self, pool: WorkerPool, worker: _Worker) -> None:
        self._pool = pool
        self._worker = worker
        self._fd = worker.process.sentinel
        self._watched = True

    def fileno(self) -> int:
        return int(self._fd)

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "achilles-worker-sentinel"

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self._pool._died(self._worker)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        # epoll reports a pipe whose writer has gone as a hang-up without input, so
        # Twisted calls this rather than doRead: it is the same news.
        self._watched = False
        self._pool._died(self._worker)

    def close(self) -> None:
        """Stop watching (the process object keeps and closes the descriptor itself)."""
        if self._watched:
            self._watched = False
            self._pool._reactor.removeReader(self)
