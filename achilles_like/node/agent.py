"""A node: one agent per machine that runs tasks in its own watched worker processes.

::

    server ──JOB/FUNC/TASK/CANCEL──▶ NodeProtocol ──▶ NodeAgent ──submit──▶ WorkerPool ──▶ worker processes
           ◀──RESULT/LOST/PONG─────── NodeProtocol ◀── NodeAgent._finished ◀── deliver ◀─┘
              (one RESULT frame per job and reactor turn: NodeAgent.flush_results)
                                      (all on the reactor thread: no thread hand-off on the node)

The reactor thread only moves bytes: the worker processes' sockets are served
by the reactor like the server's connection. User code runs in worker processes
(``achilles_like.node.in_worker``), never on the reactor thread, so the node answers
heartbeats however long a task runs. ``WorkerPool`` (``worker_pool.py``) knows
which worker holds which task: a worker that dies costs that one task,
reported to the server as LOST so it is retried (within the job's attempt
budget), and a task over its job's time limit has only its own worker
killed and is reported as a timeout error for its items.

The server may send up to ``PREFETCH_PER_PROCESS × processes`` tasks,
several in one TASK frame, so a worker never idles for a round trip; while
the node's tasks are short it offers more per process (``SLOTS``, see
``depth_for``: about ``QUEUED_WORK`` seconds and at most ``QUEUED_BYTES`` of
tasks per process, up to ``MAX_PREFETCH_PER_PROCESS``), so that tasks
arrive and results leave in large frames (``_finished``) while the workers
stay busy. A CANCEL drops
the job's queued tasks (and its results not yet sent) and kills the workers
still running one, so the next job starts at once on fresh workers.

Every connection to the server has a generation number, part of each task's
job key. A result that comes back after the connection it belongs to was
lost is dropped: the server has already re-queued that task elsewhere. The
node reconnects with exponential backoff and jitter, also when nothing has
arrived from the server for ``server_timeout`` seconds (it pings a quiet
node every two while it holds tasks, and at least every ten when it holds none):
a server whose machine vanished closes nothing; and when no HELLO came
within ``hello_timeout`` seconds of connecting: a server swamped by every
node reconnecting at once may leave a connection unserved. A failed handshake (an ERROR,
another version, a bad WELCOME, a TASK before WELCOME) is only a retry: it
comes from something that has not proved the secret, and must not be able to
stop the node. Only a SHUTDOWN after the server has proved itself does.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, ReconnectingClientFactory, connectionDone
from twisted.python.failure import Failure

from achilles_like import connection_setup
from achilles_like.config import Settings, load_settings, usable_cpus
from achilles_like.errors import AuthenticationError, ProtocolError, ProtocolViolationError, TaskTimeoutError
from achilles_like.frame_writer import FrameWriter
from achilles_like.liveness import SERVER_SILENCE_TIMEOUT, SilenceWatch
from achilles_like.node.worker_pool import BATCH_WHEN_SHORT, Outcome, WorkerPool, WorkItem
from achilles_like.plain_or_tls import PREAMBLE, explain_early_close
from achilles_like.protocol import ClientHandshake, Frame, FrameDecoder
from achilles_like.protocol import messages as msg
from achilles_like.protocol.batch import Entry
from achilles_like.protocol.handshake import NONCE_BYTES, HandshakeState
from achilles_like.secret_strength import check_peer_secret
from achilles_like.serialization import RemoteFailure, dumps
from achilles_like.tls import client_creator

log = logging.getLogger("achilles_like.node")
_PONG = msg.Pong().to_bytes()

# Tasks a node holds per process (running and queued): two, so a worker never idles for a
# round trip; more while its tasks are short (measured over DEPTH_WINDOW), so tasks come and
# results leave in large frames: every frame costs a send, a wake-up and a reactor turn on
# each hop, whatever it carries. Deep leaves a tail of queued tasks at a job's end, so a node
# holds about QUEUED_WORK seconds of work per process, and no more than QUEUED_BYTES of
# task bodies (large arguments are memory on the node and a long transfer to wait behind).
PREFETCH_PER_PROCESS = 2
MAX_PREFETCH_PER_PROCESS = 64
QUEUED_WORK = 0.02
QUEUED_BYTES = 32 * 2**20
DEPTH_WINDOW = 0.5
DEPTH_SAMPLES = 32  # per process: a measurement also ends after this many finished tasks
IDLE_RESET = 0.1  # seconds with no task before a deep node offers the shallow slots again
SERVER_TIMEOUT = SERVER_SILENCE_TIMEOUT  # seconds without a byte from the server before reconnecting
HELLO_TIMEOUT = 5.0  # seconds to wait for the server's first message (HELLO) on a new connection
_REMEMBERED_JOBS = 8
# Longest a finished task's result waits to share a frame with others (see NodeAgent._finished).
RESULT_DELAY = 0.002


def depth_for(task_seconds: float, task_bytes: float) -> int:
    """Tasks to hold per process for tasks of this average length and body size (a power of two)."""
    depth = PREFETCH_PER_PROCESS
    while (
        depth < MAX_PREFETCH_PER_PROCESS
        and 2 * depth * task_seconds <= QUEUED_WORK
        and 2 * depth * task_bytes <= QUEUED_BYTES
    ):
        depth *= 2
    return depth


def job_key(generation: int, job_id: int) -> int:
    """A job's key, unique across reconnections: workers cache its function by it."""
    return (generation << 32) | job_id


class NodeAgent:
    """Long-lived state of a node: its workers and the current connection."""

    def __init__(self, settings: Settings, reactor: Any, processes: int | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.processes = processes or settings.processes or usable_cpus()
        self.workers = WorkerPool(self.processes, self._finished, reactor, self._output, self._started)
        self.jobs: dict[int, tuple[bytes, JobOptions]] = {}  # job id -> setup blob, options
        self.functions: dict[tuple[int, int], bytes] = {}  # (job id, fn) -> function blob
        self.cancelled: deque[int] = deque(maxlen=_REMEMBERED_JOBS)
        self.protocol: NodeProtocol | None = None
        # Results gathered, by job; sent as one frame each by flush_results (see _finished).
        self._results: dict[int, list[Entry]] = {}
        self._gathered = 0
        # RUNNING notices, by job, sent with the next results as one frame per job: the caller's
        # running() needs no sub-millisecond news, and a send per task was most of an executor
        # call's cost.
        self._notices: dict[int, list[tuple[int, int]]] = {}
        self._flush_call: IDelayedCall | None = None
        self._flush_soon = False  # the flush call is for the end of this reactor turn
        self.holding: dict[int, int] = {}  # job id -> its tasks on this node (queued or running)
        self.depth = PREFETCH_PER_PROCESS  # tasks offered per process now (see SLOTS)
        self._idle_call: IDelayedCall | None = None
        self._window_start = 0.0  # when the current measurement of task length began
        self._done_in_window = 0
        self._bytes_in_window = 0  # task bodies received in the measurement, and how many
        self._added_in_window = 0
        self.generation = 0
        self.closed = False

    @property
    def slots(self) -> int:
        """How many tasks the server may send ahead."""
        return self.processes * self.depth

    def attach(self, protocol: NodeProtocol) -> None:
        """A new authenticated connection: everything from the old one is stale."""
        self._drop_connection_state()
        self.generation += 1
        self.protocol = protocol
        self.depth = PREFETCH_PER_PROCESS  # what REGISTER offers; deepened once tasks prove short
        self.workers.batch = 1
        self._start_window()

    def detach(self, protocol: NodeProtocol) -> None:
        """The connection is gone: drop its work (the server re-queues it)."""
        if self.protocol is protocol:
            self.protocol = None
            self._drop_connection_state()

    def _drop_connection_state(self) -> None:
        self._results.clear()  # the old connection's results: the server has re-queued those tasks
        self._notices.clear()
        self._gathered = 0
        self.holding.clear()
        self.jobs.clear()
        self.functions.clear()
        self.cancelled.clear()
        stale = job_key(self.generation + 1, 0)
        self.workers.cancel(lambda item: item.job_key < stale)

    def add_job(self, job_id: int, setup_blob: bytes, options: JobOptions) -> None:
        """Remember a job's setup and options until the server releases or cancels the job."""
        self.jobs[job_id] = (setup_blob, options)

    def release(self, job_id: int) -> None:
        """The job finished: forget its setup and functions."""
        self._forget(job_id)

    def add_function(self, job_id: int, fn: int, blob: bytes) -> None:
        """Remember one of a job's functions."""
        if job_id not in self.jobs:
            raise ProtocolViolationError(f"FUNC for job {job_id} arrived before its JOB")
        self.functions[(job_id, fn)] = blob

    def add_task(self, job_id: int, task_id: int, attempt: int, fn: int, blob: bytes) -> None:
        """Hand a task to the workers."""
        self.add_tasks(job_id, [(task_id, attempt, fn, blob)])

    def add_tasks(self, job_id: int, entries: list[tuple[int, int, int, bytes]]) -> None:
        """Hand a TASK frame's tasks ``(task, attempt, fn, items blob)`` to the workers in one step.

        One step, so the tasks a worker gets from the frame leave in one write.
        """
        job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolViolationError(f"TASK for job {job_id} arrived before its JOB")
        setup_blob, options = job
        key = job_key(self.generation, job_id)
        timeout, max_tasks = options.timeout, options.max_tasks
        functions = self.functions
        items = []
        received = 0
        for task_id, attempt, fn, blob in entries:
            func_blob = functions.get((job_id, fn))
            if func_blob is None:
                raise ProtocolViolationError(f"TASK for job {job_id} arrived before its FUNC {fn}")
            item = WorkItem(
                key, job_id, task_id, attempt, setup_blob, fn, func_blob, blob, timeout, max_tasks
            )
            item.capture = options.output
            item.report_start = options.running
            items.append(item)
            received += len(blob)
        self._bytes_in_window += received
        self.holding[job_id] = self.holding.get(job_id, 0) + len(items)
        self._added_in_window += len(items)
        self.workers.submit_many(items)

    def withdraw(self, job_id: int, task_id: int, attempt: int) -> None:
        """Drop a task no worker has started, and say so; a started one finishes as usual."""
        key = job_key(self.generation, job_id)
        dropped = self.workers.withdraw(
            lambda item: item.job_key == key and item.task_id == task_id and item.attempt == attempt
        )
        if not dropped or self.protocol is None:
            return
        left = self._let_go(job_id)
        self.protocol.send(msg.Withdrawn(job=job_id, task=task_id, attempt=attempt).to_bytes())
        if left == 0 and job_id in self._results and not self._flush_soon:
            self._schedule_flush(0.0)  # results waiting for the job's last task need not wait

    def _let_go(self, job_id: int) -> int:
        """One task of the job left this node (finished, lost or withdrawn); how many it still holds."""
        left = self.holding.get(job_id, 1) - 1
        if left > 0:
            self.holding[job_id] = left
            return left
        self.holding.pop(job_id, None)
        if not self.holding and self._idle_call is None and self.depth != PREFETCH_PER_PROCESS:
            self._idle_call = self.reactor.callLater(IDLE_RESET, self._idle_check)
        return 0

    def cancel(self, job_id: int) -> None:
        """Drop a job's queued tasks and stop its running ones."""
        self.cancelled.append(job_id)
        self._gathered -= len(self._results.pop(job_id, ()))
        self._notices.pop(job_id, None)
        self.holding.pop(job_id, None)
        self._forget(job_id)
        key = job_key(self.generation, job_id)
        self.workers.cancel(lambda item: item.job_key == key)

    def _forget(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)
        for key in [key for key in self.functions if key[0] == job_id]:
            del self.functions[key]

    def _stale(self, item: WorkItem) -> bool:
        """From an earlier connection, or of a cancelled job: nobody wants to hear of it."""
        return item.job_key >> 32 != self.generation or item.job_id in self.cancelled

    def _output(self, item: WorkItem, body: bytes) -> None:
        """Send what a task printed to the server (for its job's controller), unless it is stale.

        It leaves at once; the task's RESULT waits for the end of the turn, so it comes after.
        """
        if not self._stale(item) and self.protocol is not None:
            output = msg.Output(job=item.job_id, task=item.task_id, attempt=item.attempt, body=body)
            self.protocol.send_message(output)

    def _started(self, item: WorkItem) -> None:
        """A worker took a task of a job that wants to know (RUNNING): tell the server, with the results.

        The notice leaves with the next results frame, within RESULT_DELAY:
        one send for a turn's notices and results instead of one per task.
        """
        if not self._stale(item) and self.protocol is not None:
            notice = (item.task_id, item.attempt)
            if item.job_id in self._notices:
                self._notices[item.job_id].append(notice)
            else:
                self._notices[item.job_id] = [notice]
            if self._flush_call is None:
                self._schedule_flush(RESULT_DELAY)

    def _finished(self, item: WorkItem, outcome: Outcome, blob: bytes, detail: str) -> None:
        """A task left the worker pool (called by it, on the reactor thread): tell the server.

        Results are gathered and leave as one RESULT frame per job (``protocol/batch.py``):
        at the end of this reactor turn once the node holds no other task of the job
        or has gathered results for half its slots, else within RESULT_DELAY seconds. So tiny
        tasks travel in batches both ways (the server refills what a frame frees), and
        a lone call (``Pool.apply``) or the last tasks of a job are not held back.
        """
        if self._stale(item) or self.protocol is None:
            return
        job, task, attempt = item.job_id, item.task_id, item.attempt
        self._measure()
        left = self._let_go(job)
        if outcome is Outcome.LOST:
            self.flush_results()  # in order: what finished before the loss leaves first
            self.protocol.send(msg.Lost(job=job, task=task, attempt=attempt, reason=detail).to_bytes())
            return
        if outcome is Outcome.TIMEOUT:
            blob = dumps(_timeout_failure(item, detail))  # a failure of the whole task
        entry = (task, attempt, int(outcome is Outcome.OK), blob)
        if job in self._results:
            self._results[job].append(entry)
        else:
            self._results[job] = [entry]
        self._gathered += 1
        if left <= 0 or self._gathered >= self.slots // 2:
            if not self._flush_soon:
                self._schedule_flush(0.0)
        elif self._flush_call is None:
            self._schedule_flush(RESULT_DELAY)

    def _measure(self) -> None:
        """Count a finished task; after a measurement, offer the slots ``depth_for`` its tasks.

        A measurement lasts DEPTH_WINDOW seconds or DEPTH_SAMPLES tasks per process,
        whichever ends first, so a burst of tiny tasks deepens the node within a few
        milliseconds.

        The average task length is ``processes × elapsed / finished``: idle time makes
        tasks look long. A node left with no task for IDLE_RESET seconds goes back
        to the shallow default (``_idle_check``), so a job of long tasks after one
        of short ones does not find it deep; a pipeline that drains for a moment
        between two batches does not.
        """
        self._done_in_window += 1
        now = self.reactor.seconds()
        elapsed = now - self._window_start
        if elapsed < DEPTH_WINDOW and self._done_in_window < DEPTH_SAMPLES * self.processes:
            return
        task_seconds = self.processes * elapsed / self._done_in_window
        task_bytes = self._bytes_in_window / max(1, self._added_in_window)
        self._offer(depth_for(task_seconds, task_bytes))

    def _idle_check(self) -> None:
        """Still no task IDLE_RESET seconds after the last one finished: offer the shallow slots again."""
        self._idle_call = None
        if not self.holding:
            self._offer(PREFETCH_PER_PROCESS)  # the next job's tasks may be long

    def _offer(self, depth: int) -> None:
        """Offer ``depth`` tasks per process from now on (a SLOTS frame if that changes anything)."""
        self._start_window()
        # Short tasks also travel to a worker several at a time (one pipe write and read per
        # batch): up to half the node's depth, so a batch never holds all of a process's share.
        self.workers.batch = min(BATCH_WHEN_SHORT, depth // 2) if depth > PREFETCH_PER_PROCESS else 1
        if depth != self.depth and self.protocol is not None:
            self.depth = depth
            self.protocol.send(msg.Slots(slots=self.slots).to_bytes())

    def _start_window(self) -> None:
        self._window_start, self._done_in_window = self.reactor.seconds(), 0
        self._bytes_in_window = self._added_in_window = 0

    def _schedule_flush(self, delay: float) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_soon = delay == 0.0
        self._flush_call = self.reactor.callLater(delay, self.flush_results)

    def flush_results(self) -> None:
        """Send the gathered results now: one RESULT frame per job."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._flush_soon = False
        results, self._results, self._gathered = self._results, {}, 0
        notices, self._notices = self._notices, {}
        if self.protocol is not None:
            parts: list[bytes] = []
            for job, running in notices.items():  # a task's RUNNING goes before its RESULT
                parts += msg.Running(job=job, entries=running).encode()
            limit = self.settings.max_body
            for job, entries in results.items():
                parts += msg.Results(job=job, entries=entries, limit=limit).encode()
            self.protocol.send_parts(parts)

    def close(self) -> None:
        """Stop the workers (node shutdown)."""
        if not self.closed:
            self.closed = True
            self.workers.close()


@dataclass(frozen=True)
class JobOptions:
    """What a JOB message says about its job besides its setup."""

    timeout: float | None = None
    max_tasks: int | None = None
    output: bool = False  # capture what tasks print and send it to the job's controller
    running: bool = False  # say when a worker starts each task (RUNNING)


def _timeout_failure(item: WorkItem, detail: str) -> RemoteFailure:
    """The failure record of a task that ran over its time limit."""
    try:
        raise TaskTimeoutError(f"a task of job {item.job_id} was stopped: {detail}")
    except TaskTimeoutError as error:
        return RemoteFailure.capture(error, None)


class NodeProtocol(Protocol):
    """The node's connection to the server: handshake, REGISTER, then tasks."""

    def __init__(self, factory: NodeFactory) -> None:
        self.factory = factory
        self.agent = factory.agent
        settings = self.agent.settings
        self.decoder = FrameDecoder(max_body=0)  # raised once the server has proved itself
        self.handshake = ClientHandshake(settings.secret_bytes, secrets.token_bytes(NONCE_BYTES), "node")
        self.watch = SilenceWatch(factory.clock or _reactor(), factory.server_timeout, self._silent)
        # A server flooded with connections (all nodes reconnecting after a restart) may leave
        # one accepted and unserved: give up soon and retry with backoff rather than wait.
        self._hello_wait: IDelayedCall | None = None
        self._no_hello = False
        self.out = FrameWriter()  # every write: large bodies are fed in slices, in order

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        connection_setup.prepare(self.transport, self.out, self.decoder)
        self.watch.start()
        clock = self.factory.clock or _reactor()
        self._hello_wait = clock.callLater(self.factory.hello_timeout, self._hello_overdue)
        self.send(PREAMBLE)

    def _hello_overdue(self) -> None:
        self._hello_wait = None
        self._no_hello = True
        self.factory.handshake_failed(
            f"no HELLO from the server within {self.factory.hello_timeout:.0f}s of connecting"
            " (overloaded, or not an achilles_like server)"
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _stop_hello_wait(self) -> None:
        if self._hello_wait is not None and self._hello_wait.active():
            self._hello_wait.cancel()
        self._hello_wait = None

    def _silent(self, seconds: float) -> None:
        log.warning("nothing from the server for %.0fs: reconnecting", seconds)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.watch.touch()
        if self._hello_wait is not None:
            self._stop_hello_wait()
        try:
            for frame in self.decoder.feed(data):
                self._handle(frame)
            if self.decoder.error is not None:
                raise self.decoder.error
        except AuthenticationError as error:
            # Whoever sent this has not proved the secret: retry, never stop.
            self.factory.handshake_failed(str(error))
            if self.transport is not None:
                self.transport.loseConnection()
        except ProtocolError as error:
            log.error("protocol error from the server: %r", str(error))
            self.send(msg.Error(code="protocol", msg=str(error)).to_bytes())
            if self.transport is not None:
                self.transport.loseConnection()

    def _handle(self, frame: Frame) -> None:
        if not self.handshake.authenticated:
            self.send(self.handshake.receive(frame))
            if self.handshake.authenticated:
                self.decoder.max_body = self.agent.settings.max_body
                self._register()
            return
        match msg.decode(frame):
            case msg.Tasks(job=job, entries=entries):
                self.agent.add_tasks(job, entries)
            case msg.Func(job=job, fn=fn, body=body):
                self.agent.add_function(job, fn, body)
            case msg.Job() as job:
                options = JobOptions(job.timeout, job.maxtasks, job.output, job.running)
                self.agent.add_job(job.job, job.body, options)
            case msg.Ping():
                self.out.write_now(_PONG)
            case msg.Pong():
                pass
            case msg.Cancel(job=job):
                self.agent.cancel(job)
            case msg.Withdraw(job=job, task=task, attempt=attempt):
                if attempt is None:
                    raise ProtocolViolationError("a WITHDRAW to a node must name the attempt")
                self.agent.withdraw(job, task, attempt)
            case msg.Release(job=job):
                self.agent.release(job)
            case msg.Registered(node=node):
                self.factory.registered(node)
            case msg.Shutdown():
                log.warning("the server asked this node to shut down")
                self.factory.shutdown()
            case msg.Error(msg=text):
                log.error("the server reported: %r", text)
            case other:
                raise ProtocolViolationError(f"a server may not send {other.VERB} to a node")

    def _register(self) -> None:
        self.factory.resetDelay()
        self.agent.attach(self)
        agent = self.agent
        name = socket.gethostname()
        register = msg.Register(slots=agent.slots, processes=agent.processes, name=name, pid=os.getpid())
        self.send(register.to_bytes())

    def send(self, data: bytes) -> None:
        """Write bytes if connected."""
        if data and self.transport is not None:
            self.out.write(data)

    def send_message(self, message: msg.Message) -> None:
        """Write a message without copying its body."""
        if self.transport is not None:
            self.out.write_sequence(message.encode())

    def send_parts(self, parts: list[bytes]) -> None:
        """Write frames' bytes in order, in one write (large bodies are not joined)."""
        if parts and self.transport is not None:
            self.out.write_sequence(parts)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.watch.stop()
        self._stop_hello_wait()
        if self._no_hello:
            pass  # already said why
        elif self.handshake.state in (HandshakeState.WAITING, HandshakeState.PROVING):
            self.factory.handshake_failed(explain_early_close(reason, self.agent.settings.client_tls))
        self.agent.detach(self)


class NodeFactory(ReconnectingClientFactory):
    """Connects (and reconnects, with backoff and jitter) to the server."""

    initialDelay = 0.5
    maxDelay = 10

    def __init__(
        self,
        agent: NodeAgent,
        on_fatal: Any = None,
        on_ready: Any = None,
        server_timeout: float = SERVER_TIMEOUT,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        self.agent = agent
        self.on_fatal = on_fatal
        self.on_ready = on_ready
        self.node_id = ""
        self.server_timeout = server_timeout
        self.hello_timeout = hello_timeout
        self.last_complaint = ""

    def buildProtocol(self, addr: Any) -> NodeProtocol:  # noqa: N802 - Twisted's name
        return NodeProtocol(self)

    def registered(self, node_id: str) -> None:
        """The server accepted this node."""
        self.node_id = node_id
        self.last_complaint = ""
        settings = self.agent.settings
        print(
            f"achilles_like node {node_id} ready: connected to {settings.host}:{settings.port}"
            f" with {self.agent.processes} processes",
            flush=True,
        )
        if self.on_ready is not None:
            self.on_ready(node_id)

    def handshake_failed(self, message: str) -> None:
        """Say why the handshake failed (once per distinct reason); the factory retries with backoff."""
        if message and message != self.last_complaint:
            self.last_complaint = message
            log.error("%r", message)  # may come from an unauthenticated server: quoted
            line = repr(message)[1:-1]  # control characters escaped: one line, whatever the server sent
            print(f"achilles_like node: {line}; retrying with backoff", file=sys.stderr, flush=True)

    def shutdown(self) -> None:
        """Stop reconnecting and stop the node (killCluster)."""
        self.stopTrying()  # type: ignore[no-untyped-call]
        self.agent.close()
        if self.on_fatal is not None:
            self.on_fatal(None)


def start_node(settings: Settings, reactor: Any, processes: int | None = None) -> NodeFactory:
    """Start a node without blocking: it connects and keeps reconnecting."""
    check_peer_secret(settings, "node")
    creator = client_creator(settings)  # checked first: a TLS mistake fails before any fork
    # Tasks run in forked workers: they must not find the cluster secret in their environment.
    os.environ.pop("ACHILLES_SECRET_KEY", None)
    agent = NodeAgent(settings, reactor, processes)
    factory = NodeFactory(agent)
    factory.clock = reactor
    if creator is not None:
        reactor.connectSSL(settings.host, settings.port, factory, creator)
    else:
        reactor.connectTCP(settings.host, settings.port, factory)
    reactor.addSystemEventTrigger("before", "shutdown", agent.close)
    return factory


def runAchillesNode(  # noqa: N802 - achilles' public name
    host: str | None = None,
    port: int | None = None,
    secret_key: str | None = None,
    processes: int | None = None,
) -> None:
    """Run a node until interrupted or killed by ``killCluster`` (blocking), as in achilles."""
    from twisted.internet import reactor

    settings = load_settings(host, port, None, secret_key, processes=processes)
    exit_code = 0

    def stop(message: str | None) -> None:
        nonlocal exit_code
        exit_code = 0 if message is None else 1
        if reactor.running:
            reactor.stop()

    factory = start_node(settings, reactor, processes)
    factory.on_fatal = stop
    reactor.run()
    if exit_code:
        raise SystemExit(exit_code)


def _reactor() -> IReactorTime:
    from twisted.internet import reactor

    clock: IReactorTime = reactor
    return clock
