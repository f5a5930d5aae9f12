"""The cluster server: Twisted glue between sockets and the pure scheduler.

::

    controller ──SUBMIT/FUNC/──────▶ ┌──────────────────────┐ ──JOB/FUNC/──▶ node
                 TASK/END/CANCEL   │ ServerProtocol (x N) │   TASK/CANCEL
               ◀─STARTED/CREDIT/── │                      │ ◀──RESULT───── node
                 ENDED              │   FrameDecoder       │
    admin ─────STATUS/KILL────────▶ │   ServerHandshake    │
                                    └─────────┬────────────┘
                                              │ calls, returns list[Action]
                                        ClusterServer ── Scheduler (pure)

Every connection starts with the mutual HMAC handshake; until it succeeds a
frame is only ever handed to the handshake, so nothing from an
unauthenticated peer is routed, and the server never unpickles any body at
all: it routes blobs by their header fields. After the handshake every frame
is decoded into its typed message (``protocol/messages.py``) and the peer's
role (node, controller, admin) decides which messages it may send.

Tasks and results travel in batches (``protocol/batch.py``): a controller's
TASK frame is queued in one scheduler call, and :meth:`ClusterServer.execute`
turns the actions of one event into one TASK frame per node, one RESULT
frame and one CREDIT per controller and job. A node's RESULT frame is checked
result by result: only each task's current attempt completes it.

``ClusterServer`` owns the scheduler and the registry of live connections.
It turns the scheduler's actions into frames on the right connection; an
action for a connection that has gone away is dropped, because the
scheduler has already been told (``node_lost`` / ``controller_lost``).

Any frame is a sign of life: a peer that holds work (a node with tasks, a
controller with a started job) is pinged only when it has been silent, or
has heard nothing from the server, for ``heartbeat_interval`` seconds
(``server/heartbeat.py``), and one that has sent nothing for
``heartbeat_timeout`` seconds (stopped, partitioned) is disconnected: a
node's tasks are re-queued, a controller's job cancelled. A peer with
nothing in flight is held to the longer ``idle_heartbeat_*`` limits, which
is what keeps a server of thousands of idle nodes cheap; it is switched to
the short ones the moment it is given work. A running job
left with no node at all fails after ``no_node_timeout`` seconds. Peers
that do not finish the handshake within ``auth_timeout`` seconds are
disconnected; past ``max_pending`` unauthenticated connections
(``max_pending_per_address`` from one address) the oldest is closed to admit
the newest (``server/guard.py``). Failed handshakes spend from a budget per
address and one for the server; past them a new connection waits for its
HELLO, except from an address that has just authenticated, so guessing is
slow and the people who hold the secret never wait (``server/auth_throttle.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

from achilles_like import connection_setup
from achilles_like.config import LOOPBACK_HOSTS, Settings, generate_secret
from achilles_like.errors import (
    AuthenticationError,
    ConfigurationError,
    ProtocolError,
    ProtocolViolationError,
)
from achilles_like.frame_writer import FrameWriter, SendTurn
from achilles_like.liveness import IDLE_PING_INTERVAL, SERVER_SILENCE_TIMEOUT
from achilles_like.protocol import Frame, FrameDecoder, ServerHandshake
from achilles_like.protocol import messages as msg
from achilles_like.protocol.batch import Entry
from achilles_like.protocol.frames import body_limits
from achilles_like.protocol.handshake import NONCE_BYTES
from achilles_like.scheduling import actions as act
from achilles_like.scheduling.scheduler import Scheduler
from achilles_like.secret_store import ensure_secret
from achilles_like.secret_strength import check_secret_strength
from achilles_like.server.auth_throttle import FailedHandshakes, HandshakeBudget
from achilles_like.server.backlog import listen_backlog
from achilles_like.server.guard import PendingConnections, raise_open_file_limit
from achilles_like.server.heartbeat import Heartbeat
from achilles_like.server.log_limit import WarningLimiter
from achilles_like.server.metrics import ServerStats
from achilles_like.tls import server_context

log = logging.getLogger("achilles_like.server")

# The longest a node waits to hear that a job ended (it then forgets the job's functions).
RELEASE_DELAY = 0.05
_PING = msg.Ping().to_bytes()  # encoded once: the heartbeat sends it to every silent peer
_PONG = msg.Pong().to_bytes()  # an idle peer's whole answer, usually alone in its segment


@dataclass
class ServerOptions:
    """Timing knobs of the server (seconds)."""

    heartbeat_interval: float = 2.0  # for a peer that holds work
    heartbeat_timeout: float = 10.0
    # For a peer with nothing in flight (raised to the busy values if below them). Nodes and
    # controllers drop a server silent for SERVER_SILENCE_TIMEOUT: the interval stays well inside it.
    idle_heartbeat_interval: float = IDLE_PING_INTERVAL
    idle_heartbeat_timeout: float = 3 * IDLE_PING_INTERVAL
    auth_timeout: float = 5.0  # a real peer authenticates in milliseconds; a stalled one holds a socket
    no_node_timeout: float = 60.0  # a running job with no node at all fails after this
    # Failed handshakes allowed before new connections wait for HELLO (server/auth_throttle.py).
    auth_budget: HandshakeBudget = field(default_factory=HandshakeBudget)
    # Unauthenticated connections held at once; past a cap the oldest is closed (server/guard.py).
    max_pending: int = 1024
    max_pending_per_address: int = 256
    # A bounded queue: a SUBMIT past either cap is refused with ENDED outcome=failed (scheduler.py).
    max_queued_jobs: int = 1000
    max_held_bytes: int = 4 << 30


def _describe(address: IAddress) -> str:
    host, port = getattr(address, "host", "?"), getattr(address, "port", "?")
    return f"{host}:{port}"


class ServerProtocol(Protocol):
    """One connection: decode frames, authenticate, then route by role."""

    def __init__(self, cluster: ClusterServer) -> None:
        self.cluster = cluster
        # No bodies until the peer has authenticated: the handshake has none, and
        # a stranger must not make us buffer anything (raised after WELCOME).
        self.decoder = FrameDecoder(max_body=0)
        self.handshake = ServerHandshake(
            cluster.settings.secret_bytes, secrets.token_bytes(NONCE_BYTES), cluster.settings.username
        )
        self.peer_id = ""
        self.role = ""
        self.refs: dict[int, int] = {}  # a controller's own job references -> live job ids
        self.max_ref = 0  # refs only grow: a lower unknown one names a job that has ended
        self.releases: list[int] = []  # a node's ended jobs, not yet told (ClusterServer._release_later)
        self.address = "?"
        self.last_seen = 0.0  # when a byte last arrived (any frame is a sign of life)
        self.last_sent = 0.0  # when we last wrote to it (the heartbeat pings only quiet peers)
        self.last_ping = 0.0
        self.closed = False
        self.close_reason = ""  # why we closed it, for the log and the dashboard
        # Every write: gathered per turn into one send, large bodies fed in slices, in order.
        self.out = FrameWriter(turn=cluster.turn)

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        assert self.transport is not None
        connection_setup.prepare(self.transport, self.out, self.decoder, self.cluster.events.bytes_received)
        self.address = _describe(self.transport.getPeer())
        self.last_seen = self.cluster.clock.seconds()
        self.cluster.admit_pending(self)  # flood guard: may close older unauthenticated connections
        delay = self.cluster.throttle.on_connect(self.host, self.last_seen)
        # The auth timeout runs from HELLO: a slowed peer that holds the secret still gets all of it.
        self.cluster.clock.callLater(delay + self.cluster.options.auth_timeout, self._check_authenticated)
        if delay:
            # Too many failed handshakes from here or everywhere: make guessing slow.
            self.cluster.clock.callLater(delay, self.send, self.handshake.hello())
        else:
            self.out.write(self.handshake.hello())

    @property
    def host(self) -> str:
        """The peer's address without its port."""
        return self.address.rsplit(":", 1)[0]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        self.last_seen = self.cluster.clock.seconds()
        self.cluster.events.bytes_received(len(data))  # metrics hook
        if data == _PONG and self.decoder.between_frames and self.handshake.authenticated:
            return  # most of an idle server's traffic: nothing to do but note the sign of life
        with self.cluster.turn:  # every frame this read causes, to any peer, leaves as it ends
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        try:
            for frame in self.decoder.feed(data):
                self._handle(frame)
                if self.closed:
                    return
            if self.decoder.error is not None:
                raise self.decoder.error
        except AuthenticationError as error:
            self.cluster.warn(self.host, "refused %s: %r", self.address, str(error))
            self.cluster.throttle.failed(self.host, self.cluster.clock.seconds())
            self.cluster.events.auth_failed(self.address, str(error))  # metrics hook
            self._close(getattr(error, "reply", b""))
        except ProtocolError as error:
            self.cluster.warn(
                self.host, "protocol error from %s %s: %r", self.role or "peer", self.address, str(error)
            )
            self.close_reason = f"protocol error: {error}"
            self._close(msg.Error(code="protocol", msg=str(error)).to_bytes())

    def _handle(self, frame: Frame) -> None:
        if not self.handshake.authenticated:
            self.send(self.handshake.receive(frame))
            assert self.handshake.identity is not None
            self.role = self.handshake.identity.role
            self.cluster.pending.settle(self)  # flood guard: no longer pending
            self.cluster.throttle.succeeded(self.host, self.cluster.clock.seconds())
            self.decoder.max_body = self.cluster.settings.max_body
            self.decoder.body_limit = body_limits(self.role, self.decoder.max_body)
            self.peer_id = self.cluster.register(self)
            return
        message = msg.decode(frame)
        if isinstance(message, msg.Ping):
            self.send_now(_PONG)
        elif isinstance(message, msg.Pong):
            pass
        elif self.role == "node":
            self.cluster.node_message(self, message)
        elif self.role == "controller":
            self.cluster.controller_message(self, message)
        else:
            self.cluster.admin_message(self, message)

    def send_now(self, data: bytes) -> None:
        """Send a lone heartbeat frame at once (``FrameWriter.write_now``) unless closing."""
        if not self.closed and self.transport is not None:
            self.cluster.events.bytes_sent(len(data))  # metrics hook
            self.last_sent = self.cluster.clock.seconds()
            self.out.write_now(data)

    def send(self, data: bytes) -> None:
        """Write bytes unless the connection is closing."""
        if data and not self.closed and self.transport is not None:
            self.cluster.events.bytes_sent(len(data))  # metrics hook
            self.last_sent = self.cluster.clock.seconds()
            self.out.write(data)

    def send_message(self, message: msg.Message) -> None:
        """Write a message; a body is written without being copied."""
        if not self.closed and self.transport is not None:
            parts = message.encode()
            self.cluster.events.bytes_sent(sum(map(len, parts)))  # metrics hook
            self.last_sent = self.cluster.clock.seconds()
            self.out.write_sequence(parts)

    def _close(self, last_words: bytes = b"") -> None:
        self.send(last_words)
        self.out.flush()  # Twisted's loseConnection waits for its own buffer, not for a turn
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (a peer that stopped answering)."""
        self.cluster.warn(self.host, "dropping %s %s: %s", self.role or "peer", self.address, reason)
        self.close_reason = reason
        self.closed = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def evict(self) -> None:
        """Close this unauthenticated connection to admit a newer one (a pending cap was reached)."""
        self.close_reason = "closed to admit a newer connection (too many unauthenticated connections)"
        self.closed = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _check_authenticated(self) -> None:
        if not self.handshake.authenticated and not self.closed:
            self.abort("no handshake within the time limit")

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.closed = True
        self.close_reason = self.close_reason or reason.getErrorMessage()
        self.cluster.pending.settle(self)  # flood guard
        if self.peer_id:
            with self.cluster.turn:  # the lost peer's work, re-queued to others, leaves together
                self.cluster.unregister(self)


class ClusterServer(ServerFactory):
    """The server's state: the scheduler and every authenticated connection."""

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        options: ServerOptions | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.options = options or ServerOptions()
        self.scheduler = scheduler or Scheduler(
            max_queued_jobs=self.options.max_queued_jobs, max_held_bytes=self.options.max_held_bytes
        )
        self.peers: dict[str, ServerProtocol] = {}
        self.turn = SendTurn()  # open while one event is handled: its frames leave together (frame_writer.py)
        self.node_info: dict[str, dict[str, Any]] = {}
        # Per-job options the nodes need (time limit, tasks per worker), passed on in JOB,
        # and the controller's reference for each job, echoed in QUEUED and STARTED.
        self.job_options: dict[int, msg.Job] = {}  # what a node's JOB says besides the setup
        self.job_refs: dict[int, int] = {}
        # A controller may send its job's first task (and END) before the job starts:
        # held here until it does, so a one-item call costs one round trip, not two.
        self.early: dict[int, list[msg.Tasks | msg.End | msg.Withdraw]] = {}
        # Jobs whose whole input came with their SUBMIT (``whole=1``, a one-item call): they get
        # no CREDIT, and their STARTED goes with their first frame to the controller (a result,
        # or ENDED), so the controller is woken once per call, not twice.
        self.whole_jobs: set[int] = set()
        self.unsent_started: dict[int, msg.Started] = {}
        # RELEASE waits for the node's next frame, or RELEASE_DELAY: on the critical path it
        # would wake the node just as the result reaches its caller (see _release_later).
        self.releasing: set[str] = set()
        self._release_timer: Any = None
        self._counter = 0
        self.authenticated: dict[str, int] = {"node": 0, "controller": 0, "admin": 0}  # connections, by role
        self.on_stop_requested: Any = None  # set by start_server: stops the process
        self.dashboard_url = ""  # set by start_server when the dashboard is on
        self.throttle = FailedHandshakes(self.options.auth_budget)  # slows secret guessing
        self.warnings = WarningLimiter()  # a few warnings a minute per address: floods cannot fill the log
        self.pending: PendingConnections[ServerProtocol] = PendingConnections(
            self.options.max_pending, self.options.max_pending_per_address
        )
        self.heartbeat: Heartbeat[ServerProtocol] = _heartbeat(self.options, self._holds_work)
        self._heartbeat = task.LoopingCall(self._heartbeat_tick)
        self._heartbeat.clock = clock
        # Metrics, the dashboard's history and job log lines: one observer, fed by one-line hooks.
        self.events = ServerStats(clock.seconds, self.status, self.scheduler.job_label)

    def buildProtocol(self, addr: IAddress | None) -> ServerProtocol:  # noqa: N802 - Twisted's name
        return ServerProtocol(self)

    def _holds_work(self, peer: ServerProtocol) -> bool:
        return self.scheduler.holds_work(peer.peer_id)

    def _work_assigned(self, peer_id: str) -> None:
        """``peer_id`` was given work: the heartbeat holds it to the short limits (cheap if it already is)."""
        peer = self.peers.get(peer_id)
        if peer is not None:
            self.heartbeat.work_assigned(peer, self.clock.seconds())

    def admit_pending(self, peer: ServerProtocol) -> None:
        """Track a new unauthenticated connection; close the oldest ones past a cap."""
        for old in self.pending.admit(peer, peer.host):
            self.warn(
                peer.host,
                "too many unauthenticated connections: closed %s to admit %s",
                old.address,
                peer.address,
            )
            old.evict()

    def warn(self, host: str, message: str, *args: object) -> None:
        """Log a warning about a peer at ``host``, rate-limited per address (quote peers' words with %r)."""
        allowed, held_back = self.warnings.allow(host, self.clock.seconds())
        if allowed and held_back:
            log.warning(message + " (and %d similar warnings from %s not logged)", *args, held_back, host)
        elif allowed:
            log.warning(message, *args)

    def start_heartbeats(self) -> None:
        """Begin pinging nodes and dropping silent ones."""
        self._heartbeat.start(self.options.heartbeat_interval, now=False)

    def stop_heartbeats(self) -> None:
        """Stop the heartbeat loop (server shutdown)."""
        if self._heartbeat.running:
            self._heartbeat.stop()

    def register(self, peer: ServerProtocol) -> str:
        """Give a freshly authenticated peer its id."""
        self._counter += 1
        self.authenticated[peer.role] = self.authenticated.get(peer.role, 0) + 1
        peer_id = f"{peer.role[0]}{self._counter}"
        self.peers[peer_id] = peer
        self.heartbeat.watch(peer, self.clock.seconds())
        log.info("%s %s authenticated from %s", peer.role, peer_id, peer.address)
        return peer_id

    def unregister(self, peer: ServerProtocol) -> None:
        """A peer's connection is gone: re-queue or cancel what it held."""
        self.peers.pop(peer.peer_id, None)
        self.heartbeat.forget(peer)
        if peer.role == "node" and peer.peer_id in self.node_info:
            self.events.node_left(self.node_info.pop(peer.peer_id), peer.close_reason)
            self.execute(self.scheduler.node_lost(peer.peer_id))
        elif peer.role == "controller":
            self.execute(self.scheduler.controller_lost(peer.peer_id))

    # -- nodes ---------------------------------------------------------------

    def node_message(self, peer: ServerProtocol, message: msg.Message) -> None:
        """Handle a message from an authenticated node."""
        registered = peer.peer_id in self.node_info
        match message:
            case msg.Results(job=job, entries=entries) if registered:
                # Each result is checked on its own: one without the current attempt is stale.
                self.execute(self.scheduler.results_received(peer.peer_id, job, entries))
            case msg.Output(job=job, task=task, body=body) if registered:
                # Only to the controller of the job, and only from the node that holds the task.
                controller = self.scheduler.task_owner(peer.peer_id, job, task)
                if controller is not None:
                    self._send(controller, msg.Output(job=job, task=task, body=body))
            case msg.Running(job=job, entries=entries) if registered:
                # Passed on in one frame, only for the tasks this node holds (all of one controller).
                owner, started = None, []
                for task, _ in entries:
                    controller = self.scheduler.task_owner(peer.peer_id, job, task)
                    if controller is not None:
                        owner = controller
                        started.append((task, 0))
                if owner is not None:
                    self._send(owner, msg.Running(job=job, entries=started))
            case msg.Withdrawn(job=job, task=task, attempt=attempt) if registered:
                if attempt is None:
                    raise ProtocolViolationError("a node's WITHDRAWN must name its attempt")
                self.execute(self.scheduler.task_withdrawn(peer.peer_id, job, task, attempt))
            case msg.Lost(job=job, task=task, attempt=attempt, reason=reason) if registered:
                self.events.task_lost(peer.peer_id, job, task, reason[:300])  # metrics hook
                self.execute(self.scheduler.task_lost(peer.peer_id, job, task, attempt, reason[:300]))
            case msg.Slots(slots=slots) if registered:
                if not 1 <= slots <= 100_000:
                    raise ProtocolViolationError(f"SLOTS slots={slots} is out of range")
                self.execute(self.scheduler.node_resized(peer.peer_id, slots))
            case msg.Register(slots=slots, processes=processes, name=name, pid=pid) if not registered:
                if not 1 <= slots <= 100_000:
                    raise ProtocolViolationError(f"REGISTER slots={slots} is out of range")
                self.node_info[peer.peer_id] = {
                    "node_id": peer.peer_id,
                    "address": peer.address,
                    "name": name[:200],
                    "pid": pid or 0,
                    "processes": processes or slots,
                }
                peer.send(msg.Registered(node=peer.peer_id).to_bytes())
                log.info("node %s registered from %s with %d slots", peer.peer_id, peer.address, slots)
                self.execute(self.scheduler.node_joined(peer.peer_id, slots))
            case _:
                raise ProtocolViolationError(f"a node may not send {message.VERB} now")

    def _heartbeat_tick(self) -> None:
        """Ping quiet peers, drop the silent ones, fail a job left with no node for too long."""
        with self.turn:
            self._heartbeat_due(self.clock.seconds())

    def _heartbeat_due(self, now: float) -> None:
        ping, drop = self.heartbeat.due(now)
        for peer in drop:
            peer.abort(f"silent for {now - peer.last_seen:.1f}s (heartbeat timeout)")
        for peer in ping:
            peer.send_now(_PING)
        self.execute(self.scheduler.tick(now, self.options.no_node_timeout))

    # -- controllers ---------------------------------------------------------

    def controller_message(self, peer: ServerProtocol, message: msg.Message) -> None:
        """Handle a message from an authenticated controller."""
        if isinstance(message, msg.Submit):
            job_id, actions = self.scheduler.submit_job(
                peer.peer_id,
                message.body,
                label=message.label[:200],
                now=self.clock.seconds(),
                stop_on_failure=message.stop,
            )
            if message.whole:
                self.whole_jobs.add(job_id)
            if message.ref is not None:
                self.job_refs[job_id] = message.ref
                peer.refs[message.ref] = job_id
                peer.max_ref = max(peer.max_ref, message.ref)
            options = (message.timeout, message.maxtasks, message.output, message.running)
            if any(option not in (None, False) for option in options):
                max_tasks = None if message.maxtasks is None else max(1, message.maxtasks)
                self.job_options[job_id] = msg.Job(
                    job=job_id,
                    timeout=message.timeout,
                    maxtasks=max_tasks,
                    output=message.output,
                    running=message.running,
                )
            self.execute(actions)
            return
        if not isinstance(message, msg.Func | msg.Tasks | msg.End | msg.Cancel | msg.Withdraw):
            raise ProtocolViolationError(f"a controller may not send {message.VERB}")
        if message.job == 0:  # addressed by the controller's own reference
            ref = -1 if message.ref is None else message.ref
            referenced = peer.refs.get(ref)
            if referenced is None and (0 <= ref <= peer.max_ref or isinstance(message, msg.Cancel)):
                # A late message for a job that has already ended (refused, or cancelled), or
                # the cancel of a SUBMIT that an interrupt stopped from ever being sent.
                return
            if referenced is None:
                raise ProtocolViolationError(f"{message.VERB} job=0 must name the ref of a job it submitted")
            job = referenced
        else:
            job = message.job
        owner = self.scheduler.job_controller(job)
        if owner is not None and owner != peer.peer_id:
            raise ProtocolViolationError(f"job {job} belongs to another controller")
        if (
            isinstance(message, msg.Tasks | msg.End | msg.Withdraw)
            and owner is not None
            and not self.scheduler.is_started(job)
        ):
            self._hold_early(message if message.job == job else dataclasses.replace(message, job=job))
            return
        # The job id comes from ``job``: a message addressed by ref still says job=0.
        match message:
            case msg.Func(fn=fn, body=body):
                self.execute(self.scheduler.function_received(job, fn, body))
            case msg.Tasks(entries=entries):
                tasks = [(task, blob, fn) for task, _, fn, blob in entries]
                self.execute(self.scheduler.tasks_received(job, tasks))
            case msg.End(tasks=tasks):
                self.execute(self.scheduler.input_ended(job, tasks))
            case msg.Cancel():
                self.execute(self.scheduler.cancel_job(job))
            case msg.Withdraw(task=task):
                self.execute(self.scheduler.withdraw(job, task))

    def _hold_early(self, message: msg.Tasks | msg.End | msg.Withdraw) -> None:
        """Keep a queued job's first task (and its END) until the job starts."""
        early = self.early.setdefault(message.job, [])
        if isinstance(message, msg.Tasks) and (
            len(message.entries) > 1 or any(isinstance(held, msg.Tasks) for held in early)
        ):
            raise ProtocolViolationError(
                f"task {message.entries[-1][0]} of job {message.job} arrived before STARTED; only a job's"
                " first task may be sent before it starts"
            )
        early.append(message)

    def _replay_early(self, controller_id: str, job_id: int) -> None:
        peer = self.peers.get(controller_id)
        for message in self.early.pop(job_id, []):
            if peer is not None:
                self.controller_message(peer, message)

    # -- admin ---------------------------------------------------------------

    def admin_message(self, peer: ServerProtocol, message: msg.Message) -> None:
        """Handle STATUS and KILL from an authenticated admin connection."""
        match message:
            case msg.Status():
                peer.send_message(msg.Status(body=json.dumps(self.status()).encode("utf-8")))
            case msg.Kill(server=stop_server):
                nodes = [p for pid, p in self.peers.items() if pid in self.node_info]
                for node in nodes:
                    node.send(msg.Shutdown().to_bytes())
                log.warning("KILL from %s: stopping %d node(s)", peer.address, len(nodes))
                peer.send(msg.Killed(nodes=len(nodes)).to_bytes())
                if stop_server and self.on_stop_requested is not None:
                    self.clock.callLater(0.1, self.on_stop_requested)
            case _:
                raise ProtocolViolationError(f"an admin connection may not send {message.VERB}")

    def status(self) -> dict[str, Any]:
        """The scheduler's status with each node's address, name, process count and last frame.

        ``now`` is the server's clock, so a reader can turn ``last_heard`` into an age;
        ``events.decorate`` adds the running job's rate, ETA, retries and failures and
        the recent failures and node losses (see ``server/metrics.py``).
        """
        status: dict[str, Any] = self.scheduler.status()
        nodes = []
        for entry in status["nodes"]:
            info = dict(self.node_info.get(entry["node_id"], {}))
            info.update(entry)
            peer = self.peers.get(entry["node_id"])
            info["last_heard"] = None if peer is None else peer.last_seen
            nodes.append(info)
        status["nodes"] = nodes
        status["connections"] = dict(self.authenticated)
        status["unauthenticated"] = {
            "pending": len(self.pending),
            "evicted": self.pending.evicted,
            "delayed": self.throttle.delayed,
            "slowed": self.throttle.slowed(self.clock.seconds()),
        }
        status["now"] = self.clock.seconds()
        return self.events.decorate(status)

    # -- actions -------------------------------------------------------------

    def execute(self, actions: list[act.Action]) -> None:
        """Carry out the scheduler's actions as frames, in order per peer.

        The tasks for one node, the results for one controller and the credit
        of one job that follow each other become one frame each (``protocol/batch.py``):
        they are gathered here and written when another kind of action comes
        (which must not overtake them) or at the end.
        """
        if not actions:
            return
        self.events.observe(actions)  # metrics, dashboard and job log lines
        tasks: dict[tuple[str, int], list[Entry]] = {}
        results: dict[tuple[str, int], list[Entry]] = {}
        credit: dict[tuple[str, int], int] = {}
        for action in actions:
            # Identity tests, not isinstance: nothing subclasses an action, and this runs per task.
            if type(action) is act.AssignTask:
                key = (action.node_id, action.job_id)
                entry = (action.task_id, action.attempt, action.fn or 0, action.blob)
                if key in tasks:
                    tasks[key].append(entry)
                else:
                    tasks[key] = [entry]
            elif type(action) is act.ForwardResult:
                key = (action.controller_id, action.job_id)
                entry = (action.task_id, 0, int(action.ok), action.blob)
                if key in results:
                    results[key].append(entry)
                else:
                    results[key] = [entry]
            elif type(action) is act.GrantCredit:
                key = (action.controller_id, action.job_id)
                credit[key] = credit.get(key, 0) + action.count
            else:
                if tasks or results or credit:
                    self._send_batches(tasks, results, credit)
                self._execute_one(action)
        if tasks or results or credit:
            self._send_batches(tasks, results, credit)
        for action in actions:
            if isinstance(action, act.JobStarted) and action.job_id in self.early:
                self._replay_early(action.controller_id, action.job_id)

    def _send_batches(
        self,
        tasks: dict[tuple[str, int], list[Entry]],
        results: dict[tuple[str, int], list[Entry]],
        credit: dict[tuple[str, int], int],
    ) -> None:
        """Write the gathered batches (one frame per node and job, or controller and job); forget them."""
        limit = self.settings.max_body  # every machine has the same (docs/protocol.md)
        for (node_id, job_id), entries in tasks.items():
            self._send(node_id, msg.Tasks(job=job_id, entries=entries, limit=limit))
            self._work_assigned(node_id)
        for (controller_id, job_id), entries in results.items():
            self._send(controller_id, msg.Results(job=job_id, entries=entries, limit=limit))
        for (controller_id, job_id), count in credit.items():
            if job_id not in self.whole_jobs:  # a whole job has nothing more to send
                self._send(controller_id, msg.Credit(job=job_id, n=count))
        tasks.clear()
        results.clear()
        credit.clear()

    def _execute_one(self, action: act.Action) -> None:
        match action:
            case act.SendJob(node_id, job_id, blob):
                options = self.job_options.get(job_id)
                if options is None:
                    job = msg.Job(job=job_id, body=blob)
                else:
                    job = msg.Job(
                        job=job_id,
                        timeout=options.timeout,
                        maxtasks=options.maxtasks,
                        output=options.output,
                        running=options.running,
                        body=blob,
                    )
                self._send(node_id, job)
            case act.SendFunction(node_id, job_id, fn, blob):
                self._send(node_id, msg.Func(job=job_id, fn=fn, body=blob))
            case act.JobQueued(controller_id, job_id, position):
                ref = self.job_refs.get(job_id)
                self._send(controller_id, msg.Queued(job=job_id, position=position, ref=ref))
            case act.JobStarted(controller_id, job_id):
                started = msg.Started(job=job_id, ref=self.job_refs.get(job_id))
                if job_id in self.whole_jobs:
                    self.unsent_started[job_id] = started  # sent just before its first frame (_send)
                else:
                    self._send(controller_id, started)
                self._work_assigned(controller_id)
            case act.JobEnded(controller_id, job_id, outcome, reason, task_id):
                self.job_options.pop(job_id, None)
                self.early.pop(job_id, None)
                ref = self.job_refs.pop(job_id, None)  # routes a job refused at SUBMIT to its caller
                controller = self.peers.get(controller_id)
                if controller is not None and ref is not None:
                    controller.refs.pop(ref, None)
                ended = msg.Ended(job=job_id, outcome=outcome.value, reason=reason, task=task_id, ref=ref)
                self._send(controller_id, ended)
                self.whole_jobs.discard(job_id)
                self.unsent_started.pop(job_id, None)  # its controller had gone
            case act.ReleaseOnNode(node_id, job_id):
                self._release_later(node_id, job_id)
            case act.CancelOnNode(node_id, job_id):
                self._send(node_id, msg.Cancel(job=job_id))
            case act.WithdrawOnNode(node_id, job_id, task_id, attempt):
                self._send(node_id, msg.Withdraw(job=job_id, task=task_id, attempt=attempt))
            case act.TaskWithdrawn(controller_id, job_id, task_id):
                self._send(controller_id, msg.Withdrawn(job=job_id, task=task_id))

    def _send(self, peer_id: str, message: msg.Message) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            if peer.releases:  # a node's pending RELEASEs go before anything else it is sent
                self._send_releases(peer)
            if self.unsent_started and peer.role == "controller":
                started = self.unsent_started.pop(getattr(message, "job", 0), None)
                if started is not None:
                    peer.send_message(started)
            peer.send_message(message)

    def _release_later(self, node_id: str, job_id: int) -> None:
        """Tell a node its job is over with its next frame, or after RELEASE_DELAY at the latest.

        A node only forgets the job's setup and functions on RELEASE, so nothing
        waits on it; sent at once it would wake the node (and take a core from
        the controller) just as a one-item call's result comes home. A steady
        stream of calls carries each RELEASE with the next job's first frame.
        """
        peer = self.peers.get(node_id)
        if peer is None:
            return
        peer.releases.append(job_id)
        self.releasing.add(node_id)
        if self._release_timer is None:
            self._release_timer = self.clock.callLater(RELEASE_DELAY, self._releases_due)

    def _releases_due(self) -> None:
        self._release_timer = None
        releasing, self.releasing = self.releasing, set()
        with self.turn:
            for node_id in releasing:
                peer = self.peers.get(node_id)
                if peer is not None and peer.releases:
                    self._send_releases(peer)

    def _send_releases(self, peer: ServerProtocol) -> None:
        releases, peer.releases = peer.releases, []
        for job_id in releases:
            peer.send_message(msg.Release(job=job_id))


def _heartbeat(options: ServerOptions, holds_work: Any) -> Heartbeat[ServerProtocol]:
    """The heartbeat for ``options``; refuses limits that would make peers drop a healthy server."""
    interval, timeout = options.heartbeat_interval, options.heartbeat_timeout
    if not 0 < interval <= SERVER_SILENCE_TIMEOUT / 2 or timeout <= 0:
        raise ConfigurationError(
            f"heartbeat interval {interval}s and timeout {timeout}s: both must be positive, and the"
            f" interval at most {SERVER_SILENCE_TIMEOUT / 2:.0f}s (nodes and controllers drop a server"
            f" they hear nothing from for {SERVER_SILENCE_TIMEOUT:.0f}s)"
        )
    idle_interval = max(options.idle_heartbeat_interval, interval)
    if idle_interval > SERVER_SILENCE_TIMEOUT / 2:
        raise ConfigurationError(
            f"idle heartbeat interval {idle_interval}s is too long: nodes and controllers drop a server"
            f" they hear nothing from for {SERVER_SILENCE_TIMEOUT:.0f}s; use at most"
            f" {SERVER_SILENCE_TIMEOUT / 2:.0f}s"
        )
    idle_timeout = max(options.idle_heartbeat_timeout, timeout, idle_interval)
    ping_after = min(interval, timeout)
    return Heartbeat(ping_after, timeout, idle_interval, idle_timeout, holds_work)


def check_bind_allowed(settings: Settings) -> None:
    """Refuse to listen beyond loopback with neither a secret nor mutual TLS: anyone could run code."""
    mutual_tls = bool(settings.tls_cert and settings.tls_ca)
    if settings.host not in LOOPBACK_HOSTS and not settings.secret_key and not mutual_tls:
        raise ConfigurationError(
            f"refusing to listen on {settings.host} without a SECRET_KEY: anyone who can reach"
            " the port could run code on every node. Set SECRET_KEY (achilles genconfig"
            " writes a strong one), use mutual TLS (TLS_CERT, TLS_KEY and TLS_CA), or listen"
            " on 127.0.0.1."
        )


def with_server_secret(settings: Settings) -> Settings:
    """The server's settings with a secret: configured (checked), or this user's stored one.

    With no secret configured, the server uses the per-user secret file, making a
    strong secret there first if there is none, so nobody connects without proving
    a secret, even on loopback. Only mutual TLS beyond it stands in for a secret
    (the peers' certificates are their proof).
    """
    check_bind_allowed(settings)
    if settings.secret_key:
        check_secret_strength(settings.secret_key, settings.host, "server")
        return settings
    if settings.tls_cert and settings.tls_ca:
        log.warning("no SECRET_KEY set: peers are trusted on their TLS client certificate alone")
        return settings
    secret, path, created = ensure_secret(generate_secret())
    log.warning(
        "no SECRET_KEY configured: %s the secret in %s (mode 0600); nodes, controllers and admin"
        " commands of this user with no secret configured read it there",
        "created" if created else "using",
        path,
    )
    return replace(settings, secret_key=secret)


def start_server(
    settings: Settings, reactor: Any, options: ServerOptions | None = None
) -> tuple[ClusterServer, IListeningPort]:
    """Listen without blocking; return the server state and the listening port.

    ``settings.port`` may be 0 to take any free port: read the real one from
    ``port.getHost().port``.
    """
    settings = with_server_secret(settings)
    raise_open_file_limit()  # a flood of connections must not exhaust a 1,024-file limit
    cluster = ClusterServer(settings, reactor, options)
    context = server_context(settings)
    if context is not None:
        port = reactor.listenSSL(
            settings.port, cluster, context, backlog=listen_backlog(), interface=settings.host
        )
    else:
        tcp: IReactorTCP = reactor
        port = tcp.listenTCP(settings.port, cluster, backlog=listen_backlog(), interface=settings.host)
    cluster.start_heartbeats()
    cluster.on_stop_requested = reactor.stop
    if settings.dashboard_port is not None:
        from achilles_like.server.web import start_dashboard

        _, cluster.dashboard_url = start_dashboard(
            reactor,
            cluster.status,
            cluster.events,
            settings.dashboard_host,
            settings.dashboard_port,
            settings.dashboard_token,
        )
    return cluster, port


def announce(cluster: ClusterServer, listening: IListeningPort) -> None:
    """Print the ready line a LocalCluster waits for, with the dashboard's address if it is on."""
    address = listening.getHost()
    dashboard = f" dashboard at {cluster.dashboard_url}" if cluster.dashboard_url else ""
    print(f"achilles_like server listening on {address.host}:{address.port}{dashboard}", flush=True)  # type: ignore[attr-defined]


def runAchillesServer(  # noqa: N802 - achilles' public name
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    dashboard_port: int | None = None,
) -> None:
    """Run a server until interrupted (blocking), as in achilles.

    ``dashboard_port`` also serves the dashboard, ``/api/status`` and ``/metrics``
    there (0: any free port); its address is printed.
    """
    from twisted.internet import reactor

    from achilles_like.config import load_settings

    settings = load_settings(host, port, username, secret_key, dashboard_port=dashboard_port)
    cluster, listening = start_server(settings, reactor)
    announce(cluster, listening)
    reactor.run()
    sys.stdout.flush()
