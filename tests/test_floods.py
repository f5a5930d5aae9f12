"""Floods against a real server: stalled connections, wrong MACs and too many jobs.

Each test starts a small cluster of its own on 127.0.0.1, floods it from
raw sockets the way an attacker on the same machine would (bounded: a few
hundred sockets at most), and checks that a controller holding the secret
still gets its ``map`` through, or a clear refusal when the queue is full.
"""

from __future__ import annotations

import resource
import secrets
import select
import socket
from collections.abc import Iterator

import pytest
import tasks
from conftest import recv_line, status_of, target, wait_until
from test_attacks import Peer

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.errors import JobFailedError
from achilles_like.protocol import ClientHandshake, Frame, FrameDecoder, encode_frame

FD_LIMIT = 128  # the server's open-file limit during the flood: the 1,024 scaled down
FLOOD = 200  # stalled connections: more than the server has file descriptors
PENDING_CAP, PENDING_PER_ADDRESS = 40, 20


def stalled_socket(port: int) -> socket.socket:
    """A connection to the server that will never say anything (connected without blocking)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    return sock


def all_heard_from(sockets: list[socket.socket], waiting: set[int]) -> bool:
    """Whether the server has accepted every socket: each one got its HELLO (or was closed after it)."""
    ready, _, _ = select.select([s for s in sockets if s.fileno() in waiting], [], [], 0)
    waiting.difference_update(s.fileno() for s in ready)
    return not waiting


def open_stalled(port: int, count: int, flood: list[socket.socket]) -> None:
    """Add ``count`` stalled connections to ``flood``, each one accepted by the server.

    In rounds smaller than the listen backlog, so the kernel never drops a
    connection: every one reaches the server, which must make room for it.
    """
    while count > 0:
        batch = [stalled_socket(port) for _ in range(min(count, 20))]
        flood += batch
        count -= len(batch)
        waiting = {sock.fileno() for sock in batch}
        wait_until(lambda: all_heard_from(batch, waiting), 10, f"the server to accept socket {len(flood)}")  # noqa: B023


@pytest.fixture
def flooded_cluster() -> Iterator[LocalCluster]:
    """A cluster whose server may hold few file descriptors and few unauthenticated connections.

    The long auth timeout stands for an attacker that reconnects as fast as
    the server drops it: no stalled connection goes away on its own.
    """
    args = ["--auth-timeout", "60", "--max-pending", str(PENDING_CAP)]
    args += ["--max-pending-per-address", str(PENDING_PER_ADDRESS)]
    with LocalCluster(nodes=1, processes=1, server_args=tuple(args)) as cluster:
        assert cluster.server is not None
        resource.prlimit(cluster.server.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        yield cluster


def test_a_controller_gets_in_through_a_flood_of_stalled_connections(flooded_cluster: LocalCluster) -> None:
    """With more stalled connections from its address than the server has descriptors, a map succeeds."""
    flood: list[socket.socket] = []
    try:
        open_stalled(flooded_cluster.port, FLOOD, flood)
        assert al.map(tasks.square, range(20), **target(flooded_cluster)) == [x * x for x in range(20)]
        guard = status_of(flooded_cluster)["unauthenticated"]
        assert guard["pending"] <= PENDING_PER_ADDRESS
        assert guard["evicted"] >= FLOOD - PENDING_PER_ADDRESS
    finally:
        for sock in flood:
            sock.close()


def wrong_macs(port: int, count: int, source: str = "127.0.0.1") -> None:
    """``count`` handshakes with a wrong secret from ``source``, connected at once, each refused."""
    peers = [
        socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        for _ in range(count)
    ]
    try:
        for peer in peers:
            hello = FrameDecoder().feed(recv_line(peer))[0]
            peer.sendall(
                ClientHandshake(b"wrong secret", secrets.token_bytes(32), "controller").receive(hello)
            )
        for peer in peers:
            assert recv_line(peer).startswith(b"ERROR code=auth")
    finally:
        for peer in peers:
            peer.close()


def test_wrong_macs_from_the_users_address_do_not_slow_the_user() -> None:
    """Wrong MACs from the user's address add no wait to the user's calls; from elsewhere they do."""
    with LocalCluster(nodes=1, processes=1) as cluster:
        status_of(cluster)  # the user has just authenticated from 127.0.0.1
        for _ in range(3):
            wrong_macs(cluster.port, 10)
            assert al.map(tasks.square, range(10), **target(cluster)) == [x * x for x in range(10)]
            guard = status_of(cluster)["unauthenticated"]  # a new handshake from 127.0.0.1
            assert "127.0.0.1" not in guard["slowed"]
        assert guard["delayed"] == 0  # no connection waited for its HELLO
        wrong_macs(cluster.port, 10, source="127.0.0.2")
        assert status_of(cluster)["unauthenticated"]["slowed"]["127.0.0.2"] > 0  # the budget does hold


def reply(peer: Peer) -> Frame:
    """The server's next frame to ``peer`` other than a heartbeat."""
    while (frame := peer.next_frame()).verb == "PING":
        peer.send(encode_frame("PONG"))
    return frame


def test_a_job_past_the_queue_cap_is_refused_and_the_queued_one_is_kept() -> None:
    """With the queue full a map or a Pool fails at once naming the cap; the queued job still starts."""
    full = r"queue is full \(1 jobs waiting, the limit is 1\)"
    with LocalCluster(nodes=1, processes=1, server_args=("--max-queued-jobs", "1")) as cluster:
        with Peer(cluster.port) as holder:
            holder.authenticate(cluster.secret_key.encode(), "controller")
            running = holder.submit()  # started with no task yet: the next job must wait
            holder.send(encode_frame("SUBMIT", label="queued", ref=7))
            queued = reply(holder)
            assert (queued.verb, queued.text("ref")) == ("QUEUED", "7")
            with pytest.raises(JobFailedError, match=full):
                al.map(tasks.square, range(5), **target(cluster))
            with al.Pool(**target(cluster)) as pool, pytest.raises(JobFailedError, match=full):
                pool.map(tasks.square, range(5))  # failed, not resubmitted in a loop
            assert status_of(cluster)["jobs"][0]["job_id"] == running
            holder.send(encode_frame("CANCEL", job=running))
            assert reply(holder).verb == "ENDED"
            started = reply(holder)
            assert (started.verb, started.text("ref")) == ("STARTED", "7")
        assert al.map(tasks.square, range(5), **target(cluster)) == [0, 1, 4, 9, 16]
