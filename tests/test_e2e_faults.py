"""End-to-end fault tests: failing functions, killed nodes and controllers, bad peers.

Every test runs against a real server and real nodes on 127.0.0.1 (the
``cluster`` / ``fresh_cluster`` fixtures, or a LocalCluster of its own) and
asserts exact outcomes; every process a test starts itself is stopped in
``finally``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from multiprocessing.pool import RemoteTraceback
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import tasks
from conftest import recv_line, status_of, target, wait_until

import achilles_like as al
from achilles_like import AuthenticationError, LocalCluster

API: dict[str, Callable[..., Any]] = {"map": al.map, "imap": al.imap, "imap_unordered": al.imap_unordered}
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SQUARES = [x * x for x in range(50)]


def assert_cluster_serves(cluster: LocalCluster) -> None:
    """The cluster runs a fresh job to exact results."""
    assert al.map(tasks.square, range(50), chunksize=3, **target(cluster)) == SQUARES


# -- an exception in the user's function ------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 7])
@pytest.mark.parametrize("api", list(API))
def test_user_exception_reaches_the_caller(cluster: LocalCluster, api: str, chunksize: int) -> None:
    """A raising function gives the caller its own exception type, with the remote traceback as cause."""
    with pytest.raises(tasks.CustomError) as caught:
        list(API[api](tasks.fail_on_three, range(10), chunksize=chunksize, **target(cluster)))
    error = caught.value
    assert type(error) is tasks.CustomError
    assert str(error) == "item 3 is unlucky"
    cause = error.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on_three" in str(cause)
    assert "item 3 is unlucky" in str(cause)
    assert "(input item 3)" in str(cause)
    wait_until(lambda: status_of(cluster)["job"] is None, what="the failed job to end")
    assert_cluster_serves(cluster)


# -- lost nodes, killCluster ---------------------------------------------------------------


def test_node_killed_mid_job_loses_nothing(fresh_cluster: LocalCluster) -> None:
    """A node SIGKILLed mid-job changes nothing in the results: none lost, none duplicated, in order."""
    results = al.imap(tasks.slow_square, range(60), **target(fresh_cluster))
    collected = []
    try:
        for value in results:
            collected.append(value)
            if len(collected) == 5:
                fresh_cluster.kill_node(0, signal.SIGKILL)
    finally:
        results.close()
    assert collected == [x * x for x in range(60)]
    assert fresh_cluster.nodes[0].wait(timeout=10) == -signal.SIGKILL
    wait_until(lambda: len(status_of(fresh_cluster)["nodes"]) == 1, what="the dead node to be dropped")
    assert status_of(fresh_cluster)["job"] is None
    assert_cluster_serves(fresh_cluster)


def test_kill_cluster_stops_every_node(fresh_cluster: LocalCluster) -> None:
    """killCluster(command_verified=True) reports 2 nodes, they exit, and the server lists none."""
    assert al.killCluster(command_verified=True, **target(fresh_cluster)) == 2
    for node in fresh_cluster.nodes:
        assert node.wait(timeout=20) == 0
    wait_until(lambda: status_of(fresh_cluster)["nodes"] == [], what="the server to drop the nodes")
    assert status_of(fresh_cluster)["job"] is None


def test_dead_pool_workers_cost_no_node() -> None:
    """After every pool worker of a node is SIGKILLed while idle, the node still runs the next job."""
    caller = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with LocalCluster(nodes=1, processes=2) as own:
            pids = set(al.map(tasks.slow_pid_of, range(8), **target(own)))
            assert len(pids) == 2
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            job = caller.submit(al.map, tasks.square, range(50), **target(own))
            assert job.result(timeout=8) == SQUARES  # healthy: ~0.1 s
    finally:
        caller.shutdown(wait=True)  # the cluster is gone, so a hung call has ended by now


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["map", "getClusterStatus"])
def test_wrong_secret_is_refused(cluster: LocalCluster, call: str) -> None:
    """A wrong secret raises AuthenticationError('authentication failed...'); the right one still works."""
    wrong = {**target(cluster), "secret_key": "wrong"}
    with pytest.raises(AuthenticationError, match="authentication failed"):
        if call == "map":
            al.map(tasks.square, range(5), **wrong)
        else:
            al.getClusterStatus(**wrong)
    assert_cluster_serves(cluster)


class Canary:
    """Unpickling this creates a file: proof that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def frame(header: str, body: bytes = b"") -> bytes:
    """One wire frame: a header line (``len`` added for a body) and the raw body."""
    if body:
        header += f" len={len(body)}"
    return header.encode("ascii") + b"\r\n" + body


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, tolerating a server that already hung up (the expected outcome)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


read_line = recv_line  # the server's HELLO


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def canary_attack(cluster: LocalCluster, how: str, blob: bytes) -> bytes:
    """Deliver the canary ``blob`` to the server as an unauthenticated peer; return the server's bytes."""
    with socket.create_connection((cluster.host, cluster.port), timeout=15) as sock:
        if how == "raw-blob-then-eof":
            send_quietly(sock, blob)
            sock.shutdown(socket.SHUT_WR)
            return read_until_closed(sock)
        if how == "raw-blob-then-line-break":
            send_quietly(sock, blob + b"\r\n")
            return read_until_closed(sock)
        if how == "frames-before-handshake":
            send_quietly(sock, frame("SUBMIT", blob) + frame("TASK job=1 task=0", blob))
            return read_until_closed(sock)
        # wrong-mac-<role>: answer HELLO with a well-formed AUTH whose mac is wrong, then the canary.
        hello = read_line(sock)
        assert hello.startswith(b"HELLO ")
        role = how.removeprefix("wrong-mac-")
        auth = frame(f"AUTH proto=1 role={role} user= nonce={'ab' * 32} mac={'0' * 64}")
        payload = [frame("SUBMIT", blob), frame("TASK job=1 task=0", blob), frame("FUNC job=1", blob)]
        payload.append(frame("RESULT job=1 task=0 attempt=1 ok=1", blob))
        send_quietly(sock, auth + b"".join(payload))
        return hello + read_until_closed(sock)


@pytest.mark.parametrize(
    "how",
    [
        "raw-blob-then-eof",
        "raw-blob-then-line-break",
        "frames-before-handshake",
        "wrong-mac-controller",
        "wrong-mac-node",
    ],
)
def test_nothing_from_an_unauthenticated_peer_is_unpickled(
    cluster: LocalCluster, tmp_path: Path, how: str
) -> None:
    """A pickle canary sent by a peer that never authenticated is never unpickled, and the server stays up."""
    proof = tmp_path / "canary-is-live"
    pickle.loads(pickle.dumps(Canary(proof))).close()
    assert proof.exists()  # the canary really fires when unpickled

    tripwire = tmp_path / "unpickled-by-the-cluster"
    jobs_before = status_of(cluster)["jobs_done"]
    received = canary_attack(cluster, how, pickle.dumps(Canary(tripwire)))

    assert received.startswith(b"HELLO proto=1 nonce=")
    if how == "raw-blob-then-line-break":
        assert b"ERROR code=protocol" in received
    elif how != "raw-blob-then-eof":
        # Refused either as a failed handshake or, for a body, before any is accepted.
        assert b"ERROR code=auth" in received or b"ERROR code=protocol" in received
    if how.startswith("wrong-mac"):
        assert "authentication failed" in unquote(received.decode("ascii"))  # header values are %-encoded
    assert not tripwire.exists()
    status = status_of(cluster)
    assert status["job"] is None
    assert status["jobs_done"] == jobs_before
    assert len(status["nodes"]) == 2
    assert_cluster_serves(cluster)
    assert not tripwire.exists()


# -- a controller that dies ------------------------------------------------------------------

CONTROLLER = textwrap.dedent(
    """
    import sys

    import tasks
    from achilles_like import imap

    results = imap(tasks.slow_square, range(500))  # the cluster comes from ACHILLES_* variables
    print("first result", next(results), flush=True)
    sys.stdin.read()  # hold the job open until this process is killed
    """
)


def read_line_within(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or fail the test after ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"no line from the controller process within {timeout}s")
    return process.stdout.readline()


def test_killed_controller_cancels_its_job(fresh_cluster: LocalCluster, tmp_path: Path) -> None:
    """A controller process SIGKILLed mid-job has its job cancelled, and the next job runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env.update(
        ACHILLES_HOST=fresh_cluster.host,
        ACHILLES_PORT=str(fresh_cluster.port),
        ACHILLES_SECRET_KEY=fresh_cluster.secret_key,
        ACHILLES_NO_DOTENV="1",
        PYTHONPATH=os.pathsep.join([TESTS_DIR, *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    try:
        assert read_line_within(controller, 60) == "first result 0\n"
        job = status_of(fresh_cluster)["job"]
        assert job is not None and job["label"] == "slow_square"
        controller.kill()
        assert controller.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: status_of(fresh_cluster)["job"] is None, what="the orphaned job to be cancelled")
        assert status_of(fresh_cluster)["queue"] == []
        assert_cluster_serves(fresh_cluster)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(timeout=10)
        for stream in (controller.stdin, controller.stdout):
            if stream is not None:
                stream.close()
