"""A node's connection on a fake clock and in-memory transport: silent servers and bad servers.

The node must notice a server that says nothing (its machine vanished) and
reconnect, and must never stop because of anything a peer that has not
proved the secret sends: only an authenticated SHUTDOWN stops it.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from achilles_like.config import Settings
from achilles_like.liveness import SilenceWatch
from achilles_like.node.agent import NodeFactory, NodeProtocol
from achilles_like.protocol import FrameDecoder, ServerHandshake, encode_frame

SECRET = "node-liveness-Secret-4Kd8Px2Qm7Zt5Wn9"
TIMEOUT = 30.0


class FakeAgent:
    """The parts of a NodeAgent the connection uses, without worker processes."""

    def __init__(self) -> None:
        self.settings = Settings(secret_key=SECRET)
        self.processes = 1
        self.slots = 2
        self.attached: list[NodeProtocol] = []
        self.closed = False

    def attach(self, protocol: NodeProtocol) -> None:
        self.attached.append(protocol)

    def detach(self, protocol: NodeProtocol) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Node:
    """A node's factory and one connection to an in-memory 'server'."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.stopped: list[str | None] = []
        self.factory = NodeFactory(FakeAgent(), on_fatal=self.stopped.append, server_timeout=TIMEOUT)  # type: ignore[arg-type]
        self.factory.clock = self.clock
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.server = ServerHandshake(SECRET.encode(), secrets.token_bytes(32))

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def sent(self) -> list[Any]:
        frames = FrameDecoder().feed(self.transport.value())
        self.transport.clear()
        return frames

    def authenticate(self) -> None:
        """Run the real handshake with a server that holds the secret."""
        self.receive(self.server.hello())
        auth = self.sent()[-1]
        self.receive(self.server.receive(auth))
        assert self.protocol.handshake.authenticated

    @property
    def dropped(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)


# -- a silent server ------------------------------------------------------------------------------


def test_a_silent_server_is_dropped_after_the_timeout() -> None:
    """An authenticated connection on which nothing arrives for the server timeout is aborted."""
    node = Node()
    node.authenticate()
    node.clock.advance(TIMEOUT - 1)
    assert not node.dropped
    node.clock.advance(2)
    assert node.transport.disconnected  # aborted, so the factory reconnects
    assert node.stopped == [] and node.factory.continueTrying


def test_a_pinging_server_is_kept() -> None:
    """A server whose pings keep arriving is never dropped, however long the node is idle."""
    node = Node()
    node.authenticate()
    for _ in range(100):
        node.clock.advance(2.0)
        node.receive(encode_frame("PING"))
    assert not node.dropped


def test_a_server_silent_before_hello_is_dropped() -> None:
    """A connection where no HELLO ever comes is dropped after the timeout too."""
    node = Node()
    node.clock.advance(TIMEOUT + 1)
    assert node.transport.disconnected


def test_silence_watch_rearms_from_the_last_byte() -> None:
    """The watch fires timeout seconds after the last byte, not after the first check."""
    clock, fired = Clock(), []
    watch = SilenceWatch(clock, 10.0, fired.append)
    watch.start()
    clock.advance(9)
    watch.touch()
    clock.advance(9)
    assert fired == []
    clock.advance(1)
    assert fired == [10.0]


# -- a bad or false server ------------------------------------------------------------------------


def _bad_welcome(node: Node) -> bytes:
    node.receive(node.server.hello())
    return encode_frame("WELCOME", proto=1, mac="0" * 64)


BAD_SERVERS = {
    "error-line": lambda node: encode_frame("ERROR", code="auth", msg="go away"),
    "wrong-version": lambda node: encode_frame("HELLO", proto=99, nonce="ab" * 32),
    "bad-welcome": _bad_welcome,
    "early-task": lambda node: encode_frame("TASK", b"x", job=1, task=1, attempt=1),
    "early-shutdown": lambda node: encode_frame("SHUTDOWN"),
    "garbage": lambda node: b"\x00\x01binary noise\n",
}


@pytest.mark.parametrize("name", list(BAD_SERVERS))
def test_an_unauthenticated_server_never_stops_the_node(name: str) -> None:
    """Whatever a server that has not proved the secret sends, the node drops it and keeps retrying."""
    node = Node()
    node.receive(BAD_SERVERS[name](node))
    assert node.dropped
    assert node.stopped == []
    assert node.factory.continueTrying
    assert not node.factory.agent.closed


def test_only_an_authenticated_shutdown_stops_the_node() -> None:
    """SHUTDOWN from a server that has proved the secret stops the node."""
    node = Node()
    node.authenticate()
    node.receive(encode_frame("SHUTDOWN"))
    assert node.stopped == [None]
    assert not node.factory.continueTrying


def test_a_failed_handshake_is_reported_once_per_reason(capsys: pytest.CaptureFixture[str]) -> None:
    """The node says on stderr why it retries, once per distinct reason, not on every retry."""
    node = Node()
    node.receive(encode_frame("ERROR", code="auth", msg="authentication failed: check SECRET_KEY"))
    for _ in range(3):
        node.factory.handshake_failed("authentication failed: check SECRET_KEY")
    err = capsys.readouterr().err
    assert err.count("authentication failed: check SECRET_KEY; retrying with backoff") == 1
