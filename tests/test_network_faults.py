"""Network faults between real peers: bytes one at a time, latency, connections reset anywhere.

Each test gets a server of its own (``LocalCluster(nodes=0)``) and starts its
nodes and fault proxies (``tests/faultproxy.py``) itself, as subprocesses in
sessions of their own, so that a node and/or the controller reach the server
through a proxy. Ready lines are the only synchronisation; every process is
killed (its whole process group) when the test ends, whatever happened.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import random
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
from conftest import recv_line, status_of, target, wait_until
from faultproxy import ProxyFactory

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.client import reactor_thread, shared
from achilles_like.protocol import ClientHandshake, Frame, FrameDecoder, ServerHandshake

TESTS_DIR = Path(__file__).resolve().parent
PROXY = TESTS_DIR / "faultproxy.py"
STARTUP_TIMEOUT = 60.0
# A body that looks like frames: it must travel as opaque bytes, whatever it contains.
_FAKE_FRAMES = b"\r\nRESULT job=1 task=0 attempt=1 ok=1 len=3\r\nabc\nTASK len=999999999999\r\n"
_RNG = random.Random(20240611)
BIG = _RNG.randbytes(50_000) + _FAKE_FRAMES + _RNG.randbytes(50_000 - len(_FAKE_FRAMES))
ITEMS: list[Any] = [*range(29), BIG]  # 30 items, one of them 100 kB
SQUARES = [x * x for x in range(50)]


class Child:
    """A subprocess in a session of its own; a thread collects its stdout lines."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.name = " ".join(args[1:4])
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, start_new_session=True
        )
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        """Wait for an output line matching ``pattern``; fail the test on timeout or exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} from {self.name} in {timeout}s: {self.seen}")
            if line is None:
                pytest.fail(f"{self.name} exited ({self.process.poll()}) before {pattern!r}: {self.seen}")
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def stop(self) -> None:
        """Kill the child and everything it started (its process group)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def server() -> Iterator[LocalCluster]:
    """A server with no nodes, private to the test."""
    with LocalCluster(nodes=0) as running:
        yield running


@pytest.fixture
def spawn(server: LocalCluster) -> Iterator[Callable[..., Child]]:
    """Start children that share the server's secret; all of them are killed when the test ends."""
    children: list[Child] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env.update(ACHILLES_SECRET_KEY=server.secret_key, ACHILLES_NO_DOTENV="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])

    def start(*args: str) -> Child:
        children.append(Child([sys.executable, *args], env))
        return children[-1]

    try:
        yield start
    finally:
        for child in reversed(children):
            child.stop()


def start_proxy(spawn: Callable[..., Child], server: LocalCluster, *options: str) -> tuple[Child, int]:
    """A fault proxy in front of the server; returns it and the port it listens on."""
    proxy = spawn(str(PROXY), "--target-port", str(server.port), "--stop-on-stdin-eof", *options)
    return proxy, int(proxy.expect(r"^faultproxy listening on 127\.0\.0\.1:(\d+)$").group(1))


def start_node(spawn: Callable[..., Child], port: int) -> Child:
    """A node of two processes that reaches the server at ``port``, once it is registered."""
    args = ["node", "--host", "127.0.0.1", "--port", str(port), "--processes", "2", "--watch-stdin"]
    node = spawn("-m", "achilles_like", *args)  # --watch-stdin: it exits if this process dies
    node.expect(r"^achilles_like node \S+ ready")
    return node


def via(server: LocalCluster, port: int) -> dict[str, Any]:
    """API keyword arguments that reach ``server`` through the proxy at ``port``."""
    return {**target(server), "port": port}


def test_big_item_looks_like_frames() -> None:
    """The 100 kB test item holds line breaks and frame headers, so only length-framed bodies survive it."""
    assert len(BIG) == 100_000
    assert _FAKE_FRAMES in BIG and b"\r\n" in BIG


def test_bytes_one_at_a_time_on_every_link(server: LocalCluster, spawn: Callable[..., Child]) -> None:
    """With node and controller links delivering one byte per write, a map returns exact results."""
    _, port = start_proxy(spawn, server, "--chunk", "1")
    start_node(spawn, port)
    assert al.map(tasks.identity, ITEMS, chunksize=2, **via(server, port)) == ITEMS
    assert al.map(tasks.square, range(50), chunksize=3, **via(server, port)) == SQUARES


def test_latency_of_200ms_on_the_node_link(server: LocalCluster, spawn: Callable[..., Child]) -> None:
    """With 200 ms of latency each way between node and server, a map returns exact results."""
    _, port = start_proxy(spawn, server, "--latency", "200")
    start_node(spawn, port)
    started = time.monotonic()
    assert al.map(tasks.identity, ITEMS, chunksize=3, **target(server)) == ITEMS
    assert time.monotonic() - started >= 0.4  # every task went to the node and back: the delay applied


def test_node_link_reset_mid_frame_loses_nothing(server: LocalCluster, spawn: Callable[..., Child]) -> None:
    """A node link reset inside a 100 kB RESULT frame costs a reconnect, not a result: the map is exact."""
    proxy, port = start_proxy(spawn, server, "--cut-after", "50000", "--cut-connections", "1")
    node = start_node(spawn, port)
    # Upstream, the node sends its handshake, REGISTER and small results (a few kB in all)
    # before the 100 kB result: byte 50000 lies inside that frame's body.
    assert al.map(tasks.identity, ITEMS, chunksize=1, **target(server)) == ITEMS
    proxy.expect(r"^faultproxy reset connection 1 after 50000 upstream bytes$", timeout=10)
    node.expect(r"^achilles_like node \S+ ready", timeout=30)  # registered again, on connection 2
    status = status_of(server)
    assert (len(status["nodes"]), status["job"], status["jobs_done"]) == (1, None, 1)
    assert al.map(tasks.square, range(50), chunksize=3, **target(server)) == SQUARES


def test_node_handshake_reset_mid_auth_is_retried(server: LocalCluster, spawn: Callable[..., Child]) -> None:
    """A node whose first connection is reset in the middle of its AUTH frame retries, registers and works."""
    proxy, port = start_proxy(spawn, server, "--cut-after", "100", "--cut-connections", "1")
    start_node(spawn, port)
    assert proxy.expect(r"^faultproxy reset connection (\d+) after 100 upstream bytes$").group(1) == "1"
    assert len(status_of(server)["nodes"]) == 1
    assert al.map(tasks.identity, ITEMS, chunksize=3, **target(server)) == ITEMS


# -- a connection reset at every byte of the handshake ---------------------------------------


def read_frame(sock: socket.socket) -> Frame:
    """Read one body-less frame (a handshake frame) from ``sock``, byte by byte, past blank lines."""
    decoder = FrameDecoder()
    while not (frames := decoder.feed(recv_line(sock))):
        pass  # a blank line: the client's preamble
    (frame,) = frames
    return frame


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("ending", ["close", "reset"])
def test_server_survives_auth_cut_at_every_offset(server: LocalCluster, ending: str) -> None:
    """Any prefix of a valid AUTH, then a close or a reset, leaves the server serving and leak-free."""
    server.add_node(2)
    assert server.server is not None
    pid = server.server.pid
    fds_before = open_fds(pid)
    offset, length = 0, 1
    while offset <= length:
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            handshake = ClientHandshake(server.settings.secret_bytes, secrets.token_bytes(32), "controller")
            auth = handshake.receive(read_frame(sock))
            length = len(auth)
            sock.sendall(auth[:offset])
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                if offset == length:  # the whole AUTH: answered with a WELCOME the client accepts
                    handshake.receive(read_frame(sock))
                    assert handshake.authenticated
                # Read replies before the end of input: Twisted drops unsent ones when it reads EOF.
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(65536) == b"", offset  # nothing (more), then the server closes too
        offset += 1
    assert length == 176  # AUTH proto=1 role=controller user= nonce=<64 hex> mac=<64 hex>\r\n
    wait_until(lambda: open_fds(pid) == fds_before, what="every cut connection to be closed")
    assert (status_of(server)["job"], len(status_of(server)["nodes"])) == (None, 1)
    assert al.map(tasks.square, range(50), chunksize=3, **target(server)) == SQUARES


def test_controller_cut_at_every_upstream_offset(server: LocalCluster) -> None:
    """A map reset after any number of its upstream bytes raises ClusterConnectionError, never hangs."""
    server.add_node(2)
    reported: list[str] = []
    the_reactor = reactor_thread.reactor()
    factory = ProxyFactory(the_reactor, server.port, report=reported.append)
    listening = reactor_thread.call(lambda: the_reactor.listenTCP(0, factory, interface="127.0.0.1"))
    port = listening.getHost().port
    caller = concurrent.futures.ThreadPoolExecutor(1)
    try:
        job = [3, 1, 4, 1, 5]
        shared.close_all()  # each map below opens its own connection through the proxy
        assert al.map(tasks.square, job, **via(server, port)) == [9, 1, 16, 1, 25]
        total = factory.links[-1].passed  # the whole upstream conversation, uncut
        assert total > 300, total
        outcomes: dict[int, str] = {}
        for offset in range(1, total):
            factory.cut_after = offset
            shared.close_all()
            call = caller.submit(al.map, tasks.square, job, **via(server, port))
            try:
                call.result(timeout=20)
            except TimeoutError:
                pytest.fail(f"a map cut after {offset} of {total} bytes hangs")
            except Exception as error:
                outcomes[offset] = f"{type(error).__name__}: {error}"
            else:
                outcomes[offset] = "no error"
        lost = f"ClusterConnectionError: the connection to the server at 127.0.0.1:{port} was lost"
        # (a close before any byte also says what to check: a TLS server, an overloaded one)
        assert {offset: outcome for offset, outcome in outcomes.items() if not outcome.startswith(lost)} == {}
        assert len(outcomes) == total - 1
        expected = [f"faultproxy reset connection {n + 1} after {n} upstream bytes" for n in range(1, total)]
        assert reported == expected
    finally:
        caller.shutdown(wait=False)
        reactor_thread.call(listening.stopListening)
    wait_until(lambda: status_of(server)["job"] is None, what="the last cut job to be cancelled")
    assert status_of(server)["queue"] == []
    assert al.map(tasks.square, range(50), chunksize=3, **target(server)) == SQUARES


def test_controller_handshake_cut_at_every_downstream_offset() -> None:
    """A server hanging up after any prefix of its HELLO + WELCOME gives a map ClusterConnectionError."""
    secret = secrets.token_urlsafe(16)
    cuts: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    sizes: list[int] = []

    def fake_server(listener: socket.socket) -> None:
        """Run the real server handshake, but send only the first ``offset`` bytes of it."""
        while (offset := cuts.get()) is not None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(10)
                handshake = ServerHandshake(secret.encode(), secrets.token_bytes(32))
                hello = handshake.hello()
                connection.sendall(hello[:offset])
                if offset > len(hello):
                    welcome = handshake.receive(read_frame(connection))
                    connection.sendall(welcome[: offset - len(hello)])
                    sizes[:] = [len(hello), len(welcome)]

    with socket.create_server(("127.0.0.1", 0)) as listener:
        serving = threading.Thread(target=fake_server, args=(listener,), daemon=True)
        serving.start()
        port = listener.getsockname()[1]
        lost = f"ClusterConnectionError: the connection to the server at 127.0.0.1:{port} was lost"
        outcomes: dict[int, str] = {}
        offset = 0
        try:
            while not sizes or offset < sum(sizes):
                cuts.put(offset)
                try:
                    al.map(tasks.square, [1], host="127.0.0.1", port=port, secret_key=secret)
                    outcomes[offset] = "no error"
                except Exception as error:
                    if not f"{type(error).__name__}: {error}".startswith(lost):
                        outcomes[offset] = f"{type(error).__name__}: {error}"
                offset += 1
        finally:
            cuts.put(None)
            serving.join(timeout=10)
    assert outcomes == {}
    assert offset == sum(sizes) > 150  # every byte of HELLO and of WELCOME was a cut point
