"""A node's worker processes, watched one by one (what ``multiprocess.Pool`` does not do).

::

    reactor thread                manager thread ("achilles-workers")         worker processes
    ──────────────                ───────────────────────────────────         ────────────────
    submit(item) ──queue+wake──▶  assign to an idle worker ──send_bytes──▶    run_task(...)
    cancel(job)  ──queue+wake──▶  drop queued, kill running ones              │
    deliver(item, outcome) ◀───── recv_bytes ◀──────────────────────────────── result
                                  sentinel fired: worker died → LOST, respawn
                                  deadline passed: kill worker → TIMEOUT, respawn

``multiprocess.Pool.map`` hangs forever when a worker dies: the task it held
never completes and, if the worker died holding the shared queue's lock,
neither does any other. Here every worker has its own pipe, so the manager
knows which task each one holds. A worker that dies (SIGKILL, segfault,
``os._exit``, out of memory) costs exactly its one task, reported as LOST so
the server can retry it; a task over its time limit has only its own worker
killed and is reported as TIMEOUT. Either way a fresh worker replaces it.

The manager thread is the only one that touches the pipes and processes. The
reactor thread talks to it through a queue and a wake-up pipe, and gets
outcomes back through ``deliver``, which the node wraps in
``callFromThread``. Workers are forked; they die with the node
(``PR_SET_PDEATHSIG`` on Linux) and ignore Ctrl-C, which is the node's.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import wait
from typing import Any

import multiprocess

from achilles_like.node.exit_reason import describe_exit
from achilles_like.node.in_worker import JOB_CACHE_SIZE, worker_main

log = logging.getLogger("achilles_like.node.worker_pool")
_context = multiprocess.get_context("fork")


class Outcome(Enum):
    """How a task left the worker pool."""

    OK = "ok"  # blob: the pickled results
    ERROR = "error"  # blob: a pickled RemoteFailure from the user's code
    LOST = "lost"  # the worker died while running it
    TIMEOUT = "timeout"  # it ran over its time limit and its worker was killed


@dataclass
class WorkItem:
    """One task attempt as the worker pool runs it."""

    job_key: int  # unique per job and connection: workers cache the job's code by it
    job_id: int
    task_id: int
    attempt: int
    setup_blob: bytes = field(repr=False)  # the job's initializer, sent with a worker's first task of it
    fn: int
    func_blob: bytes = field(repr=False)  # the function, sent with a worker's first task calling it
    items_blob: bytes = field(repr=False)
    timeout: float | None = None
    max_tasks: int | None = None  # replace a worker once it has run this many tasks


@dataclass
class _Worker:
    process: Any
    conn: Any
    item: WorkItem | None = None
    deadline: float | None = None
    # Jobs whose setup this worker has (the same last few the worker caches), with their functions.
    jobs_seen: deque[int] = field(default_factory=lambda: deque(maxlen=JOB_CACHE_SIZE))
    functions_seen: dict[int, set[int]] = field(default_factory=dict)
    tasks_run: int = 0  # since this process started, for max_tasks (maxtasksperchild)


Deliver = Callable[[WorkItem, Outcome, bytes, str], None]


class WorkerPool:
    """``processes`` watched worker processes and the thread that drives them."""

    def __init__(self, processes: int, deliver: Deliver) -> None:
        self.processes = processes
        self._deliver = deliver
        self._requests: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)  # a wake-up must never block the reactor
        self._pending: deque[WorkItem] = deque()
        self._workers: list[_Worker] = [self._spawn() for _ in range(processes)]
        self._closed = False
        self._fd_lock = threading.Lock()  # the wake pipe is written by callers, closed by close()
        self._fds_open = True
        self.dead: BaseException | None = None  # set if the manager thread failed
        self._thread = threading.Thread(target=self._run, name="achilles-workers", daemon=True)
        self._thread.start()

    # -- called from other threads ----------------------------------------------

    def submit(self, item: WorkItem) -> None:
        """Queue a task; it starts as soon as a worker is idle (reported LOST if the pool is dead)."""
        if self.dead is not None:
            self._deliver(item, Outcome.LOST, b"", f"the node's worker manager failed: {self.dead}")
            return
        self._request("submit", item)

    def cancel(self, should_drop: Callable[[WorkItem], bool]) -> None:
        """Drop queued tasks matching ``should_drop`` and kill workers running one."""
        self._request("cancel", should_drop)

    def close(self) -> None:
        """Stop every worker and the manager thread (idempotent)."""
        if not self._closed:
            self._closed = True
            self._request("close", None)
            self._thread.join(timeout=10)
            with self._fd_lock:
                self._fds_open = False
                for fd in (self._wake_read, self._wake_write):
                    os.close(fd)

    def _request(self, verb: str, argument: Any) -> None:
        self._requests.put((verb, argument))
        with self._fd_lock:
            if self._fds_open:  # never write to a closed descriptor: its number may be reused
                try:
                    os.write(self._wake_write, b"x")
                except BlockingIOError:
                    pass  # the pipe is full of wake-ups already

    # -- the manager thread ---------------------------------------------------

    def _run(self) -> None:
        try:
            while self._serve_once():
                pass
        except BaseException as error:
            log.exception("the node's worker manager failed")
            self.dead = error
            held = [w.item for w in self._workers if w.item is not None] + list(self._pending)
            for item in held:  # handed back to the server, which runs them elsewhere
                self._deliver(item, Outcome.LOST, b"", f"the node's worker manager failed: {error}")
        finally:
            self._shutdown()

    def _serve_once(self) -> bool:
        self._assign()
        owners = {
            id(handle): worker
            for worker in self._workers
            for handle in (worker.conn, worker.process.sentinel)
        }
        ready = wait(self._waitables(), timeout=self._next_timeout())
        for handle in ready:
            if handle == self._wake_read:
                os.read(self._wake_read, 65536)
                if not self._handle_requests():
                    return False
                continue
            # Match by the worker this round waited on: a replacement made earlier in the
            # round may have been given the same descriptor number.
            worker = owners.get(id(handle))
            if worker is not None and worker in self._workers:
                self._handle_worker(worker, handle)
        self._expire(time.monotonic())
        return True

    def _waitables(self) -> list[Any]:
        handles: list[Any] = [self._wake_read]
        for worker in self._workers:
            handles += [worker.conn, worker.process.sentinel]
        return handles

    def _next_timeout(self) -> float | None:
        deadlines = [w.deadline for w in self._workers if w.deadline is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _handle_requests(self) -> bool:
        while True:
            try:
                verb, argument = self._requests.get_nowait()
            except queue.Empty:
                return True
            if verb == "submit":
                self._pending.append(argument)
            elif verb == "cancel":
                self._cancel(argument)
            else:
                return False

    def _cancel(self, should_drop: Callable[[WorkItem], bool]) -> None:
        self._pending = deque(item for item in self._pending if not should_drop(item))
        for worker in self._workers:
            if worker.item is not None and should_drop(worker.item):
                # Nobody wants the result: free the process for the next job now.
                worker.item = None
                self._replace(worker)

    def _assign(self) -> None:
        for worker in self._workers:
            if not self._pending:
                return
            if worker.item is None:
                self._start(worker, self._pending.popleft())

    def _start(self, worker: _Worker, item: WorkItem) -> None:
        first = item.job_key not in worker.jobs_seen
        if first:
            if len(worker.jobs_seen) == worker.jobs_seen.maxlen:
                worker.functions_seen.pop(worker.jobs_seen[0], None)  # the worker forgets it too
            worker.jobs_seen.append(item.job_key)
            worker.functions_seen[item.job_key] = set()
        functions = worker.functions_seen[item.job_key]
        new_function = item.fn not in functions
        functions.add(item.fn)
        message = (
            item.job_key,
            item.setup_blob if first else None,
            item.fn,
            item.func_blob if new_function else None,
            item.items_blob,
        )
        worker.item = item
        worker.deadline = None if item.timeout is None else time.monotonic() + item.timeout
        try:
            worker.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # it died: its sentinel fires and the task is reported LOST

    def _handle_worker(self, worker: _Worker, handle: Any) -> None:
        if handle is worker.conn:
            try:
                ok, blob = pickle.loads(worker.conn.recv_bytes())
            except (EOFError, OSError):
                return  # it died: its sentinel is ready too
            self._finish(worker, Outcome.OK if ok else Outcome.ERROR, blob, "")
            return
        item, worker.item = worker.item, None
        worker.process.join(1)  # reap it, so its exit code is known
        code = worker.process.exitcode
        if item is not None:
            detail = describe_exit(code)  # names memory when the kernel's OOM killer is the likely cause
            log.warning("task %d of job %d lost: %s", item.task_id, item.job_id, detail)
            self._deliver(item, Outcome.LOST, b"", detail)
        self._replace(worker)

    def _finish(self, worker: _Worker, outcome: Outcome, blob: bytes, detail: str) -> None:
        item, worker.item, worker.deadline = worker.item, None, None
        if item is None:
            return  # cancelled meanwhile
        worker.tasks_run += 1
        self._deliver(item, outcome, blob, detail)
        if item.max_tasks is not None and worker.tasks_run >= item.max_tasks:
            self._replace(worker)

    def _expire(self, now: float) -> None:
        for worker in self._workers:
            if worker.deadline is not None and worker.deadline <= now and worker.item is not None:
                item, worker.item = worker.item, None
                self._deliver(item, Outcome.TIMEOUT, b"", f"it ran over its {item.timeout:g}s time limit")
                self._replace(worker)

    def _spawn(self) -> _Worker:
        parent_end, child_end = _context.Pipe(duplex=True)
        process = _context.Process(target=worker_main, args=(child_end,), daemon=True, name="achilles-worker")
        process.start()
        child_end.close()
        return _Worker(process, parent_end)

    def _replace(self, worker: _Worker) -> None:
        _kill(worker)
        index = self._workers.index(worker)
        self._workers[index] = self._spawn()

    def _shutdown(self) -> None:
        for worker in self._workers:
            _kill(worker)  # the wake pipe stays open until close(): callers may still write


def _kill(worker: _Worker) -> None:
    worker.deadline = None
    if worker.process.exitcode is None:
        worker.process.kill()
    worker.process.join(5)
    worker.conn.close()
