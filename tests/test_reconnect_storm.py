"""Many nodes connecting at once: a large listen backlog, and nodes that give up on a silent accept."""

from __future__ import annotations

import secrets
import selectors
import socket
import time
from pathlib import Path
from typing import Any

from conftest import status_of
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from achilles_like import LocalCluster
from achilles_like.config import Settings
from achilles_like.node.agent import NodeFactory, NodeProtocol
from achilles_like.protocol import ClientHandshake, FrameDecoder, encode_frame
from achilles_like.server.backlog import FALLBACK_BACKLOG, listen_backlog
from achilles_like.server.cluster import start_server

# Simulated nodes: with Twisted's default backlog of 50, a third of 600 were still not
# registered after 20 s; with the system maximum all register in about a second.
STORM = 600
STORM_DEADLINE = 30.0  # the test fails if the storm has not registered by then


class _StormNode:
    """One simulated node on a raw socket: HELLO -> handshake -> REGISTER -> REGISTERED."""

    def __init__(self, port: int, secret: bytes) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))  # all of them at once: nothing waits here
        self.decoder = FrameDecoder()
        self.handshake = ClientHandshake(secret, secrets.token_bytes(32), "node")
        self.node_id = ""

    def readable(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the server closed a storm node's connection"
        for frame in self.decoder.feed(data):
            if not self.handshake.authenticated:
                self.sock.setblocking(True)  # a few dozen bytes: sendall completes at once
                self.sock.sendall(self.handshake.receive(frame))
                if self.handshake.authenticated:
                    self.sock.sendall(encode_frame("REGISTER", slots=1, processes=1, name="storm", pid=1))
                self.sock.setblocking(False)
            elif frame.verb == "REGISTERED":
                self.node_id = frame.fields["node"]
            elif frame.verb == "PING":
                self.sock.send(encode_frame("PONG"))


def test_hundreds_of_nodes_connecting_at_once_all_register() -> None:
    """600 nodes that connect in the same instant are all accepted, authenticated and registered.

    Real nodes come from as many addresses; these all come from 127.0.0.1, so the per-address
    cap on unauthenticated connections (a flood guard) is raised to let them be one storm.
    """
    with LocalCluster(nodes=0, server_args=("--max-pending-per-address", str(STORM))) as cluster:
        secret = cluster.secret_key.encode()
        storm = [_StormNode(cluster.port, secret) for _ in range(STORM)]
        try:
            with selectors.DefaultSelector() as selector:
                for node in storm:
                    selector.register(node.sock, selectors.EVENT_READ, node)
                deadline = time.monotonic() + STORM_DEADLINE
                while any(not node.node_id for node in storm):
                    assert time.monotonic() < deadline, (
                        f"{sum(not n.node_id for n in storm)} of {STORM} nodes not registered"
                    )
                    for key, _ in selector.select(timeout=1.0):
                        key.data.readable()
            assert len({node.node_id for node in storm}) == STORM
            assert len(status_of(cluster)["nodes"]) == STORM
        finally:
            for node in storm:
                node.sock.close()


def test_the_server_listens_with_the_system_maximum_backlog() -> None:
    """The server asks for the largest accept queue the system allows, not Twisted's 50."""
    reactor = MemoryReactorClock()
    cluster, _ = start_server(Settings(secret_key="storm-test-secret", port=0), reactor)
    cluster.stop_heartbeats()
    [(_port, _factory, backlog, _interface)] = reactor.tcpServers
    assert backlog == listen_backlog() >= FALLBACK_BACKLOG


def test_listen_backlog_follows_somaxconn(tmp_path: Path) -> None:
    """A larger system maximum is used as is; a missing or garbled one falls back to 4096."""
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("65535\n")
    assert listen_backlog(somaxconn) == 65535
    somaxconn.write_text("128\n")
    assert listen_backlog(somaxconn) == FALLBACK_BACKLOG  # the kernel caps it at its own maximum
    somaxconn.write_text("many")
    assert listen_backlog(somaxconn) == FALLBACK_BACKLOG
    assert listen_backlog(tmp_path / "absent") == FALLBACK_BACKLOG


class _Agent:
    """The little of a NodeAgent that a connection touches before the handshake."""

    settings = Settings(secret_key="storm-test-secret")
    client_tls = False

    def detach(self, protocol: Any) -> None:
        pass


class _Connector:
    """Counts the reconnections the factory makes."""

    def __init__(self) -> None:
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1

    def getDestination(self) -> Any:
        return None


def test_a_node_that_gets_no_hello_gives_up_and_reconnects() -> None:
    """A connection on which the server says nothing is dropped after hello_timeout, then retried."""
    clock = Clock()
    factory = NodeFactory(_Agent(), hello_timeout=5.0)  # type: ignore[arg-type]
    factory.clock = clock
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, NodeProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # aborted: no HELLO in 5 s
    connector = _Connector()
    factory.clientConnectionLost(connector, Failure(ConnectionError("aborted")))  # type: ignore[arg-type]
    clock.advance(factory.maxDelay)
    assert connector.connects == 1
    assert "no HELLO from the server within 5s" in factory.last_complaint


def test_a_hello_in_time_keeps_the_connection() -> None:
    """Once the server's first bytes arrive, the HELLO deadline no longer applies."""
    clock = Clock()
    factory = NodeFactory(_Agent(), hello_timeout=5.0)  # type: ignore[arg-type]
    factory.clock = clock
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    clock.advance(1.0)
    protocol.dataReceived(b"HELLO proto=1 nonce=" + b"00" * 32)  # a partial line: no frame yet
    clock.advance(10.0)
    assert not transport.disconnecting
    assert "no HELLO" not in factory.last_complaint
