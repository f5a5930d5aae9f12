"""The cluster server: Twisted glue between sockets and the pure scheduler.

::

    controller ──SUBMIT/TASK/END──▶ ┌──────────────────────┐ ──FUNC/TASK──▶ node
               ◀─CREDIT/RESULT/──── │ ServerProtocol (x N) │ ◀──RESULT───── node
                 ENDED              │   FrameDecoder       │
    admin ─────STATUS/KILL────────▶ │   ServerHandshake    │
                                    └─────────┬────────────┘
                                              │ calls, returns list[Action]
                                        ClusterServer ── Scheduler (pure)

Every connection starts with the mutual HMAC handshake; until it succeeds a
frame is only ever handed to the handshake, so nothing from an
unauthenticated peer is routed, and the server never unpickles any body at
all: it routes blobs by their header fields. After the handshake the peer's
role (node, controller, admin) decides which verbs it may send.

``ClusterServer`` owns the scheduler and the registry of live connections.
It turns the scheduler's actions into frames on the right connection; an
action for a connection that has gone away is dropped, because the
scheduler has already been told (``node_lost`` / ``controller_lost``).

Every peer is pinged every ``heartbeat_interval`` seconds; one that has sent
nothing for ``heartbeat_timeout`` seconds (stopped, partitioned) is
disconnected: a node's tasks are re-queued, a controller's job cancelled. A
running job left with no node at all fails after ``no_node_timeout``
seconds. Peers that do not finish the handshake within ``auth_timeout``
seconds are disconnected, and an address that keeps failing the handshake
waits longer and longer (up to ``max_auth_delay``) for its next HELLO.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

from achilles_like.config import LOOPBACK_HOSTS, Settings, generate_secret
from achilles_like.errors import (
    AuthenticationError,
    ConfigurationError,
    ProtocolError,
    ProtocolViolationError,
)
from achilles_like.liveness import enable_keepalive
from achilles_like.protocol import Frame, FrameDecoder, ServerHandshake, encode_frame, encode_header
from achilles_like.protocol.frames import body_limits
from achilles_like.protocol.handshake import NONCE_BYTES
from achilles_like.scheduling import actions as act
from achilles_like.scheduling.scheduler import Scheduler
from achilles_like.secret_store import ensure_secret
from achilles_like.secret_strength import check_secret_strength
from achilles_like.server.guard import raise_open_file_limit
from achilles_like.tls import server_context

log = logging.getLogger("achilles_like.server")


@dataclass
class ServerOptions:
    """Timing knobs of the server (seconds)."""

    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 10.0
    auth_timeout: float = 5.0  # a real peer authenticates in milliseconds; a stalled one holds a socket
    no_node_timeout: float = 60.0  # a running job with no node at all fails after this
    max_auth_delay: float = 5.0  # the longest a repeatedly failing address waits for HELLO


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
        self.address = "?"
        self.last_seen = 0.0
        self.closed = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        assert self.transport is not None
        enable_keepalive(self.transport)
        self.address = _describe(self.transport.getPeer())
        self.last_seen = self.cluster.clock.seconds()
        self.cluster.clock.callLater(self.cluster.options.auth_timeout, self._check_authenticated)
        delay = self.cluster.auth_delay(self.host)
        if delay:
            # This address failed the handshake recently: make guessing slow.
            self.cluster.clock.callLater(delay, self.send, self.handshake.hello())
        else:
            self.transport.write(self.handshake.hello())

    @property
    def host(self) -> str:
        """The peer's address without its port."""
        return self.address.rsplit(":", 1)[0]

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        if self.closed:
            return
        self.last_seen = self.cluster.clock.seconds()
        try:
            for frame in self.decoder.feed(data):
                self._handle(frame)
                if self.closed:
                    return
            if self.decoder.error is not None:
                raise self.decoder.error
        except AuthenticationError as error:
            log.warning("refused %s: %s", self.address, error)
            self.cluster.auth_failed(self.host)
            self._close(getattr(error, "reply", b""))
        except ProtocolError as error:
            log.warning("protocol error from %s %s: %s", self.role or "peer", self.address, error)
            self._close(encode_frame("ERROR", code="protocol", msg=str(error)))

    def _handle(self, frame: Frame) -> None:
        if not self.handshake.authenticated:
            self.send(self.handshake.receive(frame))
            assert self.handshake.identity is not None
            self.role = self.handshake.identity.role
            self.cluster.auth_succeeded(self.host)
            self.decoder.max_body = self.cluster.settings.max_body
            self.decoder.body_limit = body_limits(self.role, self.decoder.max_body)
            self.peer_id = self.cluster.register(self)
            return
        if frame.verb == "PING":
            self.send(encode_frame("PONG"))
        elif frame.verb == "PONG":
            pass
        elif self.role == "node":
            self.cluster.node_frame(self, frame)
        elif self.role == "controller":
            self.cluster.controller_frame(self, frame)
        else:
            self.cluster.admin_frame(self, frame)

    def send(self, data: bytes) -> None:
        """Write bytes unless the connection is closing."""
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def send_parts(self, header: bytes, body: bytes) -> None:
        """Write a header and a body without copying the body."""
        if not self.closed and self.transport is not None:
            self.transport.writeSequence([header, body])

    def _close(self, last_words: bytes = b"") -> None:
        self.send(last_words)
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (a peer that stopped answering)."""
        log.warning("dropping %s %s: %s", self.role, self.address, reason)
        self.closed = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _check_authenticated(self) -> None:
        if not self.handshake.authenticated and not self.closed:
            self.abort("no handshake within the time limit")

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.closed = True
        if self.peer_id:
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
        self.scheduler = scheduler or Scheduler()
        self.peers: dict[str, ServerProtocol] = {}
        self.node_info: dict[str, dict[str, Any]] = {}
        # Per-job options the nodes need (time limit, tasks per worker), passed on in FUNC.
        self.job_options: dict[int, dict[str, str]] = {}
        self._counter = 0
        self.on_stop_requested: Any = None  # set by start_server: stops the process
        self._auth_failures: dict[str, int] = {}
        self._heartbeat = task.LoopingCall(self._heartbeat_tick)
        self._heartbeat.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> ServerProtocol:  # noqa: N802 - Twisted's name
        return ServerProtocol(self)

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
        peer_id = f"{peer.role[0]}{self._counter}"
        self.peers[peer_id] = peer
        log.info("%s %s authenticated from %s", peer.role, peer_id, peer.address)
        return peer_id

    def unregister(self, peer: ServerProtocol) -> None:
        """A peer's connection is gone: re-queue or cancel what it held."""
        self.peers.pop(peer.peer_id, None)
        if peer.role == "node" and peer.peer_id in self.node_info:
            del self.node_info[peer.peer_id]
            log.info("node %s (%s) left", peer.peer_id, peer.address)
            self.execute(self.scheduler.node_lost(peer.peer_id))
        elif peer.role == "controller":
            self.execute(self.scheduler.controller_lost(peer.peer_id))

    # -- nodes ---------------------------------------------------------------

    def node_frame(self, peer: ServerProtocol, frame: Frame) -> None:
        """Handle a frame from an authenticated node."""
        if frame.verb == "RESULT":
            if peer.peer_id not in self.node_info:
                raise ProtocolViolationError("RESULT before REGISTER")
            self.execute(
                self.scheduler.result_received(
                    peer.peer_id,
                    frame.integer("job"),
                    frame.integer("task"),
                    frame.integer("attempt"),
                    frame.flag("ok"),
                    frame.body,
                )
            )
        elif frame.verb == "LOST":
            if peer.peer_id not in self.node_info:
                raise ProtocolViolationError("LOST before REGISTER")
            args = (frame.integer("job"), frame.integer("task"), frame.integer("attempt"))
            self.execute(self.scheduler.task_lost(peer.peer_id, *args, frame.text("reason", "")[:300]))
        elif frame.verb == "REGISTER" and peer.peer_id not in self.node_info:
            slots = frame.integer("slots")
            if not 1 <= slots <= 100_000:
                raise ProtocolViolationError(f"REGISTER slots={slots} is out of range")
            self.node_info[peer.peer_id] = {
                "node_id": peer.peer_id,
                "address": peer.address,
                "name": frame.text("name", "")[:200],
                "pid": frame.integer("pid", 0),
                "processes": frame.integer("processes", slots),
            }
            peer.send(encode_frame("REGISTERED", node=peer.peer_id))
            log.info("node %s registered from %s with %d slots", peer.peer_id, peer.address, slots)
            self.execute(self.scheduler.node_joined(peer.peer_id, slots))
        else:
            raise ProtocolViolationError(f"a node may not send {frame.verb} now")

    def _heartbeat_tick(self) -> None:
        """Ping every peer, drop the silent ones, fail a job left with no node for too long."""
        now = self.clock.seconds()
        for peer in list(self.peers.values()):
            if now - peer.last_seen > self.options.heartbeat_timeout:
                peer.abort(f"silent for {now - peer.last_seen:.1f}s (heartbeat timeout)")
            else:
                peer.send(encode_frame("PING"))
        self.execute(self.scheduler.tick(now, self.options.no_node_timeout))

    def auth_delay(self, host: str) -> float:
        """How long a new connection from ``host`` waits for HELLO after failed handshakes."""
        failures = self._auth_failures.get(host, 0)
        return 0.0 if failures < 3 else min(self.options.max_auth_delay, 0.1 * 2 ** (failures - 3))

    def auth_succeeded(self, host: str) -> None:
        """A good handshake from ``host`` clears its record."""
        self._auth_failures.pop(host, None)

    def auth_failed(self, host: str) -> None:
        """Count a failed handshake from ``host`` (bounded memory: the table is reset when full)."""
        if len(self._auth_failures) >= 10_000:
            self._auth_failures.clear()
        self._auth_failures[host] = self._auth_failures.get(host, 0) + 1

    # -- controllers ---------------------------------------------------------

    def controller_frame(self, peer: ServerProtocol, frame: Frame) -> None:
        """Handle a frame from an authenticated controller."""
        if frame.verb == "SUBMIT":
            label = frame.text("label", "")[:200]
            options = _job_options(frame)
            now = self.clock.seconds()
            job_id, actions = self.scheduler.submit_job(peer.peer_id, frame.body, label=label, now=now)
            if options:
                self.job_options[job_id] = options
            self.execute(actions)
            return
        if frame.verb not in ("TASK", "END", "CANCEL"):
            raise ProtocolViolationError(f"a controller may not send {frame.verb}")
        job_id = frame.integer("job")
        owner = self.scheduler.job_controller(job_id)
        if owner is not None and owner != peer.peer_id:
            raise ProtocolViolationError(f"job {job_id} belongs to another controller")
        if frame.verb == "TASK":
            self.execute(self.scheduler.task_received(job_id, frame.integer("task"), frame.body))
        elif frame.verb == "END":
            self.execute(self.scheduler.input_ended(job_id, frame.integer("tasks")))
        else:
            self.execute(self.scheduler.cancel_job(job_id))

    # -- admin ---------------------------------------------------------------

    def admin_frame(self, peer: ServerProtocol, frame: Frame) -> None:
        """Handle STATUS and KILL from an authenticated admin connection."""
        if frame.verb == "STATUS":
            peer.send(encode_frame("STATUS", json.dumps(self.status()).encode("utf-8")))
        elif frame.verb == "KILL":
            nodes = [p for pid, p in self.peers.items() if pid in self.node_info]
            for node in nodes:
                node.send(encode_frame("SHUTDOWN"))
            log.warning("KILL from %s: stopping %d node(s)", peer.address, len(nodes))
            peer.send(encode_frame("KILLED", nodes=len(nodes)))
            if frame.flag("server") and self.on_stop_requested is not None:
                self.clock.callLater(0.1, self.on_stop_requested)
        else:
            raise ProtocolViolationError(f"an admin connection may not send {frame.verb}")

    def status(self) -> dict[str, Any]:
        """The scheduler's status with each node's address, name and process count."""
        status = self.scheduler.status()
        nodes = []
        for entry in status["nodes"]:  # type: ignore[attr-defined]
            info = dict(self.node_info.get(entry["node_id"], {}))
            info.update(entry)
            nodes.append(info)
        status["nodes"] = nodes
        return status

    # -- actions -------------------------------------------------------------

    def execute(self, actions: list[act.Action]) -> None:
        """Carry out the scheduler's actions, in order, as frames."""
        for action in actions:
            self._execute_one(action)

    def _execute_one(self, action: act.Action) -> None:
        match action:
            case act.AssignTask(node_id, job_id, task_id, attempt, blob):
                header = encode_header("TASK", len(blob), job=job_id, task=task_id, attempt=attempt)
                self._send_parts(node_id, header, blob)
            case act.ForwardResult(controller_id, job_id, task_id, ok, blob):
                header = encode_header("RESULT", len(blob), job=job_id, task=task_id, ok=ok)
                self._send_parts(controller_id, header, blob)
            case act.GrantCredit(controller_id, job_id, count):
                self._send(controller_id, encode_frame("CREDIT", job=job_id, n=count))
            case act.SendFunction(node_id, job_id, blob):
                options = self.job_options.get(job_id, {})
                self._send_parts(node_id, encode_header("FUNC", len(blob), job=job_id, **options), blob)
            case act.JobQueued(controller_id, job_id, position):
                self._send(controller_id, encode_frame("QUEUED", job=job_id, position=position))
            case act.JobStarted(controller_id, job_id):
                log.info("job %d of %s started", job_id, controller_id)
                self._send(controller_id, encode_frame("STARTED", job=job_id))
            case act.JobEnded(controller_id, job_id, outcome, reason, task_id):
                log.info("job %d ended: %s %s", job_id, outcome.value, reason)
                self.job_options.pop(job_id, None)
                failed = {} if task_id is None else {"task": task_id}
                frame = encode_frame("ENDED", job=job_id, outcome=outcome.value, reason=reason, **failed)
                self._send(controller_id, frame)
            case act.CancelOnNode(node_id, job_id):
                self._send(node_id, encode_frame("CANCEL", job=job_id))

    def _send(self, peer_id: str, data: bytes) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.send(data)

    def _send_parts(self, peer_id: str, header: bytes, body: bytes) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.send_parts(header, body)


def _job_options(frame: Frame) -> dict[str, str]:
    """The SUBMIT fields a node needs, checked: ``timeout`` (seconds), ``maxtasks``, ``calls``."""
    options: dict[str, str] = {}
    if "timeout" in frame.fields:
        try:
            timeout = float(frame.fields["timeout"])
        except ValueError:
            raise ProtocolViolationError("SUBMIT timeout is not a number") from None
        if not 0 < timeout < 10**9:
            raise ProtocolViolationError("SUBMIT timeout is out of range")
        options["timeout"] = repr(timeout)
    if "maxtasks" in frame.fields:
        options["maxtasks"] = str(max(1, frame.integer("maxtasks")))
    if frame.flag("calls"):
        options["calls"] = "1"  # a Pool/executor job: one outcome per call, not one per job
    return options


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
        port = reactor.listenSSL(settings.port, cluster, context, interface=settings.host)
    else:
        tcp: IReactorTCP = reactor
        port = tcp.listenTCP(settings.port, cluster, interface=settings.host)
    cluster.start_heartbeats()
    cluster.on_stop_requested = reactor.stop
    return cluster, port


def runAchillesServer(  # noqa: N802 - achilles' public name
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
) -> None:
    """Run a server until interrupted (blocking), as in achilles."""
    from twisted.internet import reactor

    from achilles_like.config import load_settings

    settings = load_settings(host, port, username, secret_key)
    _, listening = start_server(settings, reactor)
    address = listening.getHost()
    print(f"achilles_like server listening on {address.host}:{address.port}", flush=True)  # type: ignore[attr-defined]
    reactor.run()
    sys.stdout.flush()
