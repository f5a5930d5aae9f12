"""Shared fixtures: real local clusters on 127.0.0.1 (port 0, ready lines).

Every process a fixture starts is stopped when the fixture ends, whatever the
test did: LocalCluster kills whole process groups.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from achilles_like import LocalCluster, getClusterStatus


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A server and two nodes of two processes, shared by a module's tests."""
    with LocalCluster(nodes=2, processes=2) as running:
        yield running


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """A private server and two nodes for a test that kills or stops things."""
    with LocalCluster(nodes=2, processes=2) as running:
        yield running


def target(cluster: LocalCluster) -> dict[str, Any]:
    """Keyword arguments that point an API call at ``cluster``."""
    return {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds.

    For state only observable by asking (the server's status), polling is the
    synchronisation point; the short pause only keeps the poll from spinning.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def recv_line(sock: socket.socket) -> bytes:
    """Read one header line from a raw socket, byte by byte (never past it)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        assert byte, f"the server closed before a full line: {line!r}"
        line += byte
    return line


def status_of(cluster: LocalCluster) -> dict[str, Any]:
    """The cluster's status dict."""
    return getClusterStatus(**target(cluster))
