"""A node: one agent per machine that runs tasks in a long-lived process pool.

::

    server ──FUNC/TASK/CANCEL/PING──▶ NodeProtocol ──▶ NodeAgent ──apply_async──▶ multiprocess.Pool
           ◀──RESULT/PONG──────────── (reactor thread)   ▲                          (worker processes)
                                                         └── callFromThread ◀── pool result thread

The reactor thread only moves bytes. User code runs in the pool's worker
processes (``achilles_like.worker``), never on the reactor thread, so the node
answers heartbeats however long a task runs. The pool's result thread hands
each finished task back to the reactor with ``callFromThread``.

The server may send up to ``2 × processes`` tasks (a small prefetch, so a
worker never idles for a round trip) and the agent hands them all to the
pool at once. A CANCEL cannot pull tasks back out of the pool's queue, so it
raises a shared "cancelled up to" mark that workers check before running a
task: queued tasks of a cancelled job are skipped, not run.

Every connection to the server has a generation number. A result that comes
back after the connection it belongs to was lost is dropped: the server has
already re-queued that task elsewhere. The node reconnects with exponential
backoff and jitter; a failed handshake (wrong secret, other version) is final.
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

import multiprocess
from twisted.internet.protocol import Protocol, ReconnectingClientFactory, connectionDone
from twisted.python.failure import Failure

from achilles_like.config import Settings, load_settings
from achilles_like.errors import AuthenticationError, ProtocolError, ProtocolViolationError
from achilles_like.protocol import ClientHandshake, Frame, FrameDecoder, encode_frame, encode_header
from achilles_like.protocol.handshake import NONCE_BYTES
from achilles_like.worker import init_worker, run_task, task_key

log = logging.getLogger("achilles_like.node")

PREFETCH_PER_PROCESS = 2
_REMEMBERED_JOBS = 8


@dataclass(frozen=True)
class TaskRef:
    """One task attempt as the node holds it."""

    job_id: int
    task_id: int
    attempt: int
    blob: bytes


class NodeAgent:
    """Long-lived state of a node: its pool, its queue and the current connection."""

    def __init__(self, settings: Settings, reactor: Any, processes: int | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.processes = processes or settings.processes or multiprocess.cpu_count()
        # Workers skip queued tasks at or below this mark (see worker.run_task).
        self.cancelled_mark = multiprocess.Value("q", 0, lock=False)
        self.pool = multiprocess.Pool(
            self.processes, initializer=init_worker, initargs=(self.cancelled_mark,)
        )
        self.queue: deque[TaskRef] = deque()
        self.running = 0
        self.functions: dict[int, bytes] = {}
        self.cancelled: deque[int] = deque(maxlen=_REMEMBERED_JOBS)
        self.protocol: NodeProtocol | None = None
        self.generation = 0
        self.tasks_done = 0
        self.closed = False

    @property
    def slots(self) -> int:
        """How many tasks the server may send ahead."""
        return self.processes * PREFETCH_PER_PROCESS

    def attach(self, protocol: NodeProtocol) -> None:
        """A new authenticated connection: everything from the old one is stale."""
        self.generation += 1
        self.cancelled_mark.value = task_key(self.generation, 0)
        self.protocol = protocol
        self.queue.clear()
        self.functions.clear()

    def detach(self, protocol: NodeProtocol) -> None:
        """The connection is gone: drop queued work (the server re-queues it)."""
        if self.protocol is protocol:
            self.cancelled_mark.value = task_key(self.generation + 1, 0) - 1
            self.protocol = None
            self.queue.clear()
            self.functions.clear()

    def add_function(self, job_id: int, blob: bytes) -> None:
        """Remember a job's function; forget functions of older jobs."""
        self.functions[job_id] = blob
        for old in sorted(self.functions)[:-_REMEMBERED_JOBS]:
            del self.functions[old]

    def add_task(self, ref: TaskRef) -> None:
        """Queue a task and start it when a process is free."""
        if ref.job_id not in self.functions:
            raise ProtocolViolationError(f"TASK for job {ref.job_id} arrived before its FUNC")
        self.queue.append(ref)
        self._pump()

    def cancel(self, job_id: int) -> None:
        """Drop a job's queued tasks; its running tasks' results will be discarded."""
        self.cancelled.append(job_id)
        # Jobs run one at a time, so every task of this job or an older one is dead.
        mark = task_key(self.generation, job_id)
        self.cancelled_mark.value = max(self.cancelled_mark.value, mark)
        self.queue = deque(ref for ref in self.queue if ref.job_id != job_id)
        self.functions.pop(job_id, None)

    def _pump(self) -> None:
        # The pool gets the whole prefetch, so a worker never waits for a thread hop
        # between tasks; cancelled ones are skipped by the workers (cancelled_mark).
        while self.queue and self.running < self.slots and not self.closed:
            ref = self.queue.popleft()
            generation = self.generation
            args = (task_key(generation, ref.job_id), self.functions[ref.job_id], ref.blob)

            def finished(outcome: tuple[bool, bytes], ref: TaskRef = ref, gen: int = generation) -> None:
                self.reactor.callFromThread(self._finished, gen, ref, outcome)

            def crashed(error: BaseException, ref: TaskRef = ref, gen: int = generation) -> None:
                # run_task catches everything; this is the pool itself failing.
                self.reactor.callFromThread(self._crashed, gen, ref, error)

            self.running += 1
            self.pool.apply_async(run_task, args, callback=finished, error_callback=crashed)

    def _finished(self, generation: int, ref: TaskRef, outcome: tuple[bool, bytes]) -> None:
        self.running -= 1
        self.tasks_done += 1
        ok, blob = outcome
        skipped = not ok and not blob  # the worker saw the cancel mark and did not run it
        current = generation == self.generation and not skipped
        if current and ref.job_id not in self.cancelled and self.protocol is not None:
            fields = {"job": ref.job_id, "task": ref.task_id, "attempt": ref.attempt, "ok": ok}
            self.protocol.send_parts(encode_header("RESULT", len(blob), **fields), blob)
        self._pump()

    def _crashed(self, generation: int, ref: TaskRef, error: BaseException) -> None:
        log.error("pool failed to run task %d of job %d: %r", ref.task_id, ref.job_id, error)
        from achilles_like.serialization import RemoteFailure, dumps

        try:
            raise error
        except BaseException as caught:  # noqa: BLE001 - capture with its traceback
            blob = dumps(RemoteFailure.capture(caught, None))
        self._finished(generation, ref, (False, blob))

    def close(self) -> None:
        """Stop the pool's workers (node shutdown)."""
        if self.closed:
            return
        self.closed = True
        workers = list(getattr(self.pool, "_pool", []))
        if all(worker.exitcode is None for worker in workers):
            self.pool.terminate()
            return
        # A worker died (killed from outside) and may have held the pool's
        # queue lock: Pool.terminate() would wait on it forever. Kill the rest
        # directly and drop the pool's exit-time finalizer, which would too.
        finalizer = getattr(self.pool, "_terminate", None)
        if finalizer is not None:
            finalizer.cancel()
        for worker in workers:
            if worker.exitcode is None:
                worker.kill()
                worker.join(1)


class NodeProtocol(Protocol):
    """The node's connection to the server: handshake, REGISTER, then tasks."""

    def __init__(self, factory: NodeFactory) -> None:
        self.factory = factory
        self.agent = factory.agent
        settings = self.agent.settings
        self.decoder = FrameDecoder(max_body=settings.max_body)
        self.handshake = ClientHandshake(settings.secret_bytes, secrets.token_bytes(NONCE_BYTES), "node")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        try:
            for frame in self.decoder.feed(data):
                self._handle(frame)
        except AuthenticationError as error:
            self.factory.fatal(f"the server refused this node: {error}")
        except ProtocolError as error:
            log.error("protocol error from the server: %s", error)
            self.send(encode_frame("ERROR", code="protocol", msg=str(error)))
            if self.transport is not None:
                self.transport.loseConnection()

    def _handle(self, frame: Frame) -> None:
        if not self.handshake.authenticated:
            self.send(self.handshake.receive(frame))
            if self.handshake.authenticated:
                self._register()
            return
        verb = frame.verb
        if verb == "TASK":
            ref = TaskRef(frame.integer("job"), frame.integer("task"), frame.integer("attempt"), frame.body)
            self.agent.add_task(ref)
        elif verb == "FUNC":
            self.agent.add_function(frame.integer("job"), frame.body)
        elif verb == "PING":
            self.send(encode_frame("PONG"))
        elif verb == "CANCEL":
            self.agent.cancel(frame.integer("job"))
        elif verb == "REGISTERED":
            self.factory.registered(frame.text("node"))
        elif verb == "SHUTDOWN":
            log.warning("the server asked this node to shut down")
            self.factory.shutdown()
        elif verb == "ERROR":
            log.error("the server reported: %s", frame.fields.get("msg", ""))
        elif verb != "PONG":
            raise ProtocolViolationError(f"a server may not send {verb} to a node")

    def _register(self) -> None:
        self.factory.resetDelay()
        self.agent.attach(self)
        agent = self.agent
        name = socket.gethostname()
        self.send(
            encode_frame("REGISTER", slots=agent.slots, processes=agent.processes, name=name, pid=os.getpid())
        )

    def send(self, data: bytes) -> None:
        """Write bytes if connected."""
        if data and self.transport is not None:
            self.transport.write(data)

    def send_parts(self, header: bytes, body: bytes) -> None:
        """Write a header and a body without copying the body."""
        if self.transport is not None:
            self.transport.writeSequence([header, body])

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.agent.detach(self)


class NodeFactory(ReconnectingClientFactory):
    """Connects (and reconnects, with backoff and jitter) to the server."""

    initialDelay = 0.5
    maxDelay = 10

    def __init__(self, agent: NodeAgent, on_fatal: Any = None, on_ready: Any = None) -> None:
        self.agent = agent
        self.on_fatal = on_fatal
        self.on_ready = on_ready
        self.node_id = ""

    def buildProtocol(self, addr: Any) -> NodeProtocol:  # noqa: N802 - Twisted's name
        return NodeProtocol(self)

    def registered(self, node_id: str) -> None:
        """The server accepted this node."""
        self.node_id = node_id
        settings = self.agent.settings
        print(
            f"achilles_like node {node_id} ready: connected to {settings.host}:{settings.port}"
            f" with {self.agent.processes} processes",
            flush=True,
        )
        if self.on_ready is not None:
            self.on_ready(node_id)

    def fatal(self, message: str) -> None:
        """Give up for good (authentication failed)."""
        log.error("%s", message)
        print(f"achilles_like node: {message}", file=sys.stderr, flush=True)
        self.stopTrying()  # type: ignore[no-untyped-call]
        if self.on_fatal is not None:
            self.on_fatal(message)

    def shutdown(self) -> None:
        """Stop reconnecting and stop the node (killCluster)."""
        self.stopTrying()  # type: ignore[no-untyped-call]
        self.agent.close()
        if self.on_fatal is not None:
            self.on_fatal(None)


def start_node(settings: Settings, reactor: Any, processes: int | None = None) -> NodeFactory:
    """Start a node without blocking: it connects and keeps reconnecting."""
    agent = NodeAgent(settings, reactor, processes)
    factory = NodeFactory(agent)
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
