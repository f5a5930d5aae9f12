"""An authenticated connection to the server, shared by every job of a session.

The protocol object lives in the reactor thread: it decodes frames, runs the
client side of the handshake, answers PINGs, and after the handshake routes
each frame to the inbox (a ``queue.SimpleQueue``) of the job it belongs to:
by the ``ref`` the controller put in its SUBMIT (echoed in QUEUED/STARTED),
then by job id. Frames that name no job (admin replies, ERROR) go to the
default inbox. Frames for one inbox that arrive together are put as one list,
so a burst of results wakes its reader once. The reader writes through
:meth:`Connection.send`, which hops to the reactor thread with
``callFromThread``. Nothing a peer sends is unpickled here: the reading
thread unpickles result bodies, and only after the server has proved it
knows the secret. A large result is the exception to "whole frames": once
the server has authenticated, its body is streamed to a thread that
unpickles it as it arrives (``client/streamed_results.py``), and its frame
is routed as soon as its header is read.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from achilles_like import connection_setup
from achilles_like.client import reactor_thread, streamed_results
from achilles_like.config import Settings
from achilles_like.errors import (
    AuthenticationError,
    ClusterConnectionError,
    ProtocolError,
    ProtocolViolationError,
)
from achilles_like.frame_writer import FrameWriter
from achilles_like.liveness import SERVER_SILENCE_TIMEOUT
from achilles_like.plain_or_tls import PREAMBLE, explain_early_close, server_is_plain
from achilles_like.protocol import ClientHandshake, Frame, FrameDecoder
from achilles_like.protocol import messages as msg
from achilles_like.protocol.handshake import NONCE_BYTES
from achilles_like.secret_strength import check_peer_secret
from achilles_like.tls import client_creator

CONNECT_TIMEOUT = 10.0
# SERVER_SILENCE_TIMEOUT: the server speaks to a quiet controller at least every 10 s (every 2 s
# while its job runs); this long without a byte from it (a dead machine, a silent partition) ends
# the wait with a clear error.


M = TypeVar("M", bound=msg.Message)
_PONG = msg.Pong().to_bytes()
# A flush smaller than this is joined and sent with one send() (FrameWriter.write_now).
_SEND_NOW = 64 << 10


def _small(parts: tuple[bytes, ...] | list[bytes]) -> bool:
    return sum(map(len, parts)) < _SEND_NOW


def _joined(parts: tuple[bytes, ...] | list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Lost:
    """Queued when the connection ends; ``message`` says why."""

    def __init__(self, message: str) -> None:
        self.message = message


Event = list[Frame] | Lost


class Inbox(TypingProtocol):
    """Where routed frames and the connection's loss are put: a ``queue.SimpleQueue``, or a session's."""

    def put(self, item: Any) -> None:
        """Queue one event (the reactor thread puts frames and the loss)."""


class ClientProtocol(Protocol):
    """Reactor-side half: handshake, then route frames to their job's inbox."""

    def __init__(self, settings: Settings, role: str, events: Inbox | None = None) -> None:
        self.settings = settings
        self.decoder = FrameDecoder(max_body=0)  # raised once the server has proved itself
        self.handshake = ClientHandshake(
            settings.secret_bytes, secrets.token_bytes(NONCE_BYTES), role, settings.username
        )
        # The default inbox; each job's inbox is found by its ref, then by its job id.
        self.events: Inbox = queue.SimpleQueue() if events is None else events
        self.by_ref: dict[int, Inbox] = {}
        self.by_job: dict[int, Inbox] = {}
        self.ready: defer.Deferred[ClientProtocol] = defer.Deferred()
        # Held around every write once the handshake is done: the caller's thread may send on
        # the socket itself (Connection.send), the reactor thread answers PINGs and flushes.
        self.send_lock = threading.Lock()
        self.failure: str = ""
        self.last_seen = time.monotonic()
        self.lost = False
        self.received_any = False  # nothing at all before a close: a TLS server, most likely
        self.out = FrameWriter()  # every write: large bodies are fed in slices, in order
        self.streamed: streamed_results.StreamedResult | None = None  # the latest large result

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        connection_setup.prepare(self.transport, self.out, self.decoder)
        self.out.write(PREAMBLE)  # a TLS server refuses it at once

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.last_seen = time.monotonic()
        self.received_any = True
        try:
            frames = self.decoder.feed(data)
            if not self.handshake.authenticated:
                frames = self._handshake(frames)
            if self.decoder.error is not None:
                self._route(frames)  # what came before the bad frame still counts
                raise self.decoder.error
        except (AuthenticationError, ProtocolError) as problem:
            self.failure = str(problem)
            self._fail_ready(problem)
            if self.transport is not None:
                self.transport.loseConnection()
            return
        self._route(frames)

    def _route(self, frames: list[Frame]) -> None:
        batches: dict[int, tuple[Inbox, list[Frame]]] = {}
        for frame in frames:
            if frame.verb == msg.Ping.VERB:
                # Answered here, in the reactor thread, so a busy caller still looks alive.
                if self.transport is not None:
                    with self.send_lock:
                        self.out.write_now(_PONG)
                continue
            inbox = self._inbox(frame)
            if isinstance(frame.stream, streamed_results.StreamedResult):
                if inbox is not None:
                    frame.stream.start()  # unpickled as it arrives; the driver waits for its value
                else:
                    frame.stream.skip()  # nobody wants it: its body goes by, never unpickled
            if inbox is not None:
                batches.setdefault(id(inbox), (inbox, []))[1].append(frame)
        for inbox, batch in batches.values():
            inbox.put(batch)

    def _stream_body(
        self, verb: str, fields: dict[str, str], length: int
    ) -> streamed_results.StreamedResult | None:
        """The decoder's hook: a large result's body goes to a streamed unpickle, not a buffer."""
        if not streamed_results.wanted(verb, fields, length):
            return None
        self.streamed = streamed_results.StreamedResult(length, self)
        return self.streamed

    def _inbox(self, frame: Frame) -> Inbox | None:
        """Where a frame goes: its job's inbox, the default one if it names no job, else nowhere.

        A frame of a job nobody routes any more (its caller gave it up, or it
        ended) is dropped, so a shared connection never piles them up.
        """
        fields = frame.fields
        job = fields.get("job")
        if "ref" in fields:
            inbox = self.by_ref.get(int(fields["ref"]) if fields["ref"].isdigit() else -1)
            if inbox is not None and job is not None and job.isdigit():
                self.by_job[int(job)] = inbox
                return inbox
        if job is None:
            return self.events
        inbox = self.by_job.get(int(job)) if job.isdigit() else None
        if inbox is None:
            return None
        if frame.verb == msg.Ended.VERB:
            del self.by_job[int(job or 0)]
        return inbox

    def _handshake(self, frames: list[Frame]) -> list[Frame]:
        while frames and not self.handshake.authenticated:
            reply = self.handshake.receive(frames.pop(0))
            if reply and self.transport is not None:
                self.out.write(reply)
            if self.handshake.authenticated:
                self.decoder.max_body = self.settings.max_body
                if streamed_results.possible(self.transport):
                    self.decoder.stream_body = self._stream_body
                self.ready.callback(self)
        return frames

    def _fail_ready(self, problem: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(problem)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.lost = True
        where = f"{self.settings.host}:{self.settings.port}"
        message = self.failure or f"the connection to the server at {where} was lost"
        if not self.failure and not self.handshake.authenticated and server_is_plain(reason):
            message = f"{message}: {explain_early_close(reason, self.settings.client_tls)}"
        elif not self.failure and not self.handshake.authenticated and _is_tls_error(reason):
            message = (
                f"TLS with the server at {where} failed ({reason.getErrorMessage()}): is TLS_CA the CA"
                " that signed the server's certificate, and does that certificate name this host?"
            )
        elif not self.failure and not self.received_any:
            message = f"{message}: {explain_early_close(reason, self.settings.client_tls)}"
        self._fail_ready(ClusterConnectionError(message))
        if self.streamed is not None:
            self.streamed.lose(message)  # before Lost: its reader raises what Lost would
        lost = Lost(message)
        # Copies: caller threads may add routes while this runs on the reactor thread.
        routes = [self.events, *self.by_ref.copy().values(), *self.by_job.copy().values()]
        for inbox in {id(q): q for q in routes}.values():
            inbox.put(lost)


def _open(settings: Settings, role: str, events: Inbox | None) -> defer.Deferred[ClientProtocol]:
    the_reactor = reactor_thread.reactor()
    endpoint: Any = HostnameEndpoint(the_reactor, settings.host, settings.port, timeout=CONNECT_TIMEOUT)
    creator = client_creator(settings)
    if creator is not None:
        endpoint = wrapClientTLS(creator, endpoint)
    protocol = ClientProtocol(settings, role, events)
    connecting = connectProtocol(endpoint, protocol)  # type: ignore[no-untyped-call]

    def refused(failure: Failure) -> Failure:
        if failure.check(error.ConnectError, error.DNSLookupError, OSError):  # type: ignore[no-untyped-call]
            raise ClusterConnectionError(
                f"could not connect to the achilles_like server at {settings.host}:{settings.port}"
                f" ({failure.getErrorMessage()}); is `achilles server` running there?"
            )
        return failure

    connecting.addErrback(refused)
    connecting.addCallback(lambda _: protocol.ready)

    def cancelled(failure: Failure) -> Failure:
        # Given up by the caller: close what may already be open, so nothing lingers.
        if failure.check(defer.CancelledError) and protocol.transport is not None:  # type: ignore[no-untyped-call]
            protocol.transport.loseConnection()
        return failure

    connecting.addErrback(cancelled)
    result: defer.Deferred[ClientProtocol] = connecting
    result.protocol = protocol  # type: ignore[attr-defined]  # for _abandon, whatever state it is in
    return result


def _abandon(opening: defer.Deferred[ClientProtocol]) -> None:
    """The caller gave up on a connection (timeout, Ctrl-C): stop it, or close it if it opened."""
    opening.cancel()
    protocol: ClientProtocol = opening.protocol  # type: ignore[attr-defined]
    if protocol.transport is not None:
        protocol.transport.loseConnection()


def _is_tls_error(reason: Failure) -> bool:
    """Whether a connection ended because TLS failed (bad chain, or a certificate for another host)."""
    try:
        from OpenSSL.SSL import Error as TlsError
        from service_identity.exceptions import VerificationError
    except ImportError:
        return False
    return reason.check(TlsError, VerificationError) is not None  # type: ignore[no-untyped-call]


class Connection:
    """The caller-side handle: blocking connect, thread-safe send, event queue."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol
        self.events = protocol.events
        self.closed = False
        self.settings = protocol.settings
        # Bytes waiting for the reactor thread. Sends made before it runs join the same
        # flush: one wake-up of the reactor for a burst (an executor's submit loop).
        self._outbox: list[bytes] = []
        self._outbox_lock = protocol.send_lock
        # True only once a flush is surely scheduled: an interrupt (Ctrl-C) anywhere in
        # send() then leaves at worst one extra flush, never bytes that no flush will take.
        self._flush_scheduled = False

    @property
    def alive(self) -> bool:
        """Open, and not lost."""
        return not self.closed and self._protocol.transport is not None and not self._protocol.lost

    def route(self, ref: int, inbox: Inbox) -> None:
        """Deliver the frames of the job submitted with ``ref`` to ``inbox`` (from any thread)."""
        self._protocol.by_ref[ref] = inbox
        if self._protocol.lost:
            inbox.put(Lost(self._protocol.failure or "the connection to the server was lost"))

    def unroute(self, ref: int, job_id: int | None) -> None:
        """Stop routing a job's frames (it ended, or its caller gave it up)."""
        self._protocol.by_ref.pop(ref, None)
        if job_id is not None:
            self._protocol.by_job.pop(job_id, None)

    @classmethod
    def open(cls, settings: Settings, role: str = "controller", events: Inbox | None = None) -> Connection:
        """Connect and authenticate, or raise ClusterConnectionError/AuthenticationError."""
        check_peer_secret(settings, role)
        opening: list[defer.Deferred[ClientProtocol]] = []

        def start() -> defer.Deferred[ClientProtocol]:
            opening.append(_open(settings, role, events))
            return opening[0]

        try:
            protocol = reactor_thread.call(start, timeout=CONNECT_TIMEOUT * 3)
        except BaseException as error:
            if opening:  # give up on it, so a late success (or Ctrl-C) leaves no stray connection
                reactor_thread.call_soon(_abandon, opening[0])
            if not isinstance(error, TimeoutError):
                raise
            raise ClusterConnectionError(
                f"no authenticated connection to the server at {settings.host}:{settings.port}"
                f" within {CONNECT_TIMEOUT * 3:.0f}s; is it overloaded or behind a firewall?"
            ) from None
        return cls(protocol)

    def send(self, *parts: bytes) -> None:
        """Send bytes to the server (from any thread), in order.

        A small send with nothing queued ahead of it goes out on the socket
        from the calling thread (one ``send()``, no wake-up of the reactor
        thread: half of a round trip's hand-offs); the rest, and anything
        while the reactor holds bytes for this connection, is queued for the
        reactor thread, which sends it in one flush.
        """
        if self.closed:
            return
        with self._outbox_lock:
            if not self._outbox and not self._flush_scheduled and _small(parts):
                data = _joined(parts)
                sent = self._protocol.out.send_direct(data)
                if sent == len(data):
                    return
                parts = (data[sent:],)
            self._outbox.extend(parts)
            if not self._flush_scheduled:
                reactor_thread.call_soon(self._flush)
                self._flush_scheduled = True

    def _flush(self) -> None:
        # Under the lock to the end: a caller's direct send must not overtake these bytes.
        with self._outbox_lock:
            parts, self._outbox = self._outbox, []
            self._flush_scheduled = False
            if not parts or self._protocol.transport is None:
                return
            if _small(parts):
                # A burst of small frames (tasks, CREDIT-driven feeds, END): one send() at once when
                # nothing waits ahead of it, instead of Twisted's buffer, which costs an epoll_ctl
                # pair (watch the socket for writing, stop watching) and a reactor turn per flush.
                self._protocol.out.write_now(_joined(parts))
            else:
                self._protocol.out.write_sequence(parts)

    def next_event(self, inbox: queue.SimpleQueue[Any] | None = None) -> Any:
        """The next event of ``inbox`` (default: the connection's own); an error if the server is silent."""
        events = self.events if inbox is None else inbox
        assert isinstance(events, queue.SimpleQueue), "a session's inbox is read by its session"
        while True:
            try:
                return events.get(timeout=1.0)
            except queue.Empty:
                self.check_heard()

    def check_heard(self) -> None:
        """Raise ClusterConnectionError (and close) if the server has been silent too long."""
        silent = time.monotonic() - self._protocol.last_seen
        if silent > SERVER_SILENCE_TIMEOUT:
            self.close()
            where = f"{self._protocol.settings.host}:{self._protocol.settings.port}"
            raise ClusterConnectionError(
                f"no word from the server at {where} for {silent:.0f}s; it is down or unreachable"
            ) from None

    def request(self, message: msg.Message, answer: type[M]) -> M:
        """Send one message and wait for the answer of type ``answer`` (admin calls)."""
        self.send(*message.encode())
        while True:
            event: Event = self.next_event()
            if isinstance(event, Lost):
                raise ClusterConnectionError(event.message)
            for frame in event:
                reply = msg.decode(frame)
                if isinstance(reply, answer):
                    return reply
                if isinstance(reply, msg.Error):
                    raise ClusterConnectionError(f"the server refused the request: {reply.msg}")
                if not isinstance(reply, msg.Pong):
                    raise ProtocolViolationError(f"expected {answer.VERB} from the server, got {reply.VERB}")

    def close(self) -> None:
        """Close the connection (idempotent, from any thread)."""
        if not self.closed:
            self.closed = True
            reactor_thread.call_soon(self._lose)

    def _lose(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.loseConnection()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
