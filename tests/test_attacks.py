"""Bad input and attacks against a running server: garbage, protocol abuse, idle peers, fuzzing.

Every test talks to a real server over raw sockets, the way an attacker or a
broken peer would, and then checks that the server closed (only) that
connection, did not grow by what was announced, and still runs jobs to
exact results for a peer that holds the secret. Most tests share the
``cluster`` fixture (a server and two nodes); the auth-timeout tests start a
server of their own with a short ``--auth-timeout``.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
import tasks
from conftest import status_of, target, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.client.calls import pickle_function
from achilles_like.protocol import ClientHandshake, Frame, FrameDecoder, encode_frame, encode_header
from achilles_like.serialization import dumps, loads

SQUARES = [x * x for x in range(50)]
RSS_SLACK_KB = 16 * 1024  # allocator noise; every announced size below is far larger
PEER_TIMEOUT = 10.0  # how long a recv may wait for the server to answer or close


def assert_cluster_serves(cluster: LocalCluster) -> None:
    """The cluster runs a fresh job to exact results, with nothing left running."""
    assert al.map(tasks.square, range(50), chunksize=3, **target(cluster)) == SQUARES
    status = status_of(cluster)
    assert status["job"] is None
    assert status["queue"] == []
    assert len(status["nodes"]) == 2


def rss_kb(pid: int) -> int:
    """The resident set size of process ``pid`` in kB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS line for pid {pid}")


def server_pid(cluster: LocalCluster) -> int:
    """The pid of the cluster's server process."""
    assert cluster.server is not None
    return cluster.server.pid


class Peer:
    """A raw TCP peer of the server that decodes whatever the server sends back."""

    def __init__(self, port: int, timeout: float = PEER_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = FrameDecoder()
        self.frames: deque[Frame] = deque()
        self.received = bytearray()  # every byte the server sent, undecoded
        self.hello = self.next_frame()
        assert self.hello.verb == "HELLO"

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Send, tolerating a server that already hung up (often the expected outcome)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def next_frame(self) -> Frame:
        """The next frame from the server; fails if the server closes first or is silent too long."""
        while not self.frames:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.received += data
            self.frames.extend(self.decoder.feed(data))
        return self.frames.popleft()

    def frames_until_closed(self) -> list[Frame]:
        """Every further frame until the server closes the connection (a recv timeout fails the test)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            self.received += data
            self.frames.extend(self.decoder.feed(data))
        frames = list(self.frames)
        self.frames.clear()
        return frames

    def authenticate(self, secret: bytes, role: str) -> None:
        """Run the real client handshake against this connection's HELLO."""
        handshake = ClientHandshake(secret, secrets.token_bytes(32), role)
        self.send(handshake.receive(self.hello))
        handshake.receive(self.next_frame())
        assert handshake.authenticated

    def submit(self) -> int:
        """Submit a job of ``tasks.square`` as a controller; return its id once it has started."""
        self.send(encode_frame("SUBMIT", label="attack"))
        started = self.next_frame()
        assert started.verb == "STARTED", started
        job_id = started.integer("job")
        credit = self.next_frame()
        assert (credit.verb, credit.integer("job")) == ("CREDIT", job_id)
        self.send(encode_frame("FUNC", pickle_function(tasks.square), job=job_id, fn=0))
        return job_id


def error_of(frames: list[Frame]) -> tuple[str, str]:
    """The ``(code, msg)`` of the one frame a refused peer gets: an ERROR."""
    assert [frame.verb for frame in frames] == ["ERROR"], frames
    return frames[0].text("code"), frames[0].text("msg")


# -- garbage from a peer that never authenticates ------------------------------------------


class TlsClient:
    """Python's own TLS client stack, driven through memory buffers."""

    def __init__(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def client_hello(self) -> bytes:
        """The first bytes the client sends (a ClientHello; its random fields differ on each run)."""
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        hello: bytes = self.outgoing.read()
        assert hello[:3] == b"\x16\x03\x01"  # a TLS handshake record
        return hello

    def receive(self, data: bytes) -> None:
        """Hand the client bytes from the server and let it continue its handshake."""
        self.incoming.write(data)
        self.tls.do_handshake()


RANDOM_BYTES = random.Random(20240611).randbytes(8192)
GARBAGE: dict[str, tuple[bytes, str]] = {
    # name: (bytes sent, start of the ERROR message the server answers)
    "header-line-of-100-kB": (b"A" * 100_000, "header line is over the 4096-byte limit"),
    "huge-announced-body": (
        b"TASK len=999999999999\r\n",
        # Before the handshake no body at all is accepted: the limit is 0.
        "TASK frame announces a 999999999999-byte body, over the 0-byte limit",
    ),
    "random-bytes": (RANDOM_BYTES, "a frame cannot start with byte"),
    "http-request": (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        "malformed header field '/' in GET frame",
    ),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_gets_an_error_and_a_closed_connection(cluster: LocalCluster, name: str) -> None:
    """Garbage first bytes get one ERROR code=protocol and a closed connection; the server does not grow."""
    data, message = GARBAGE[name]
    rss_before = rss_kb(server_pid(cluster))
    with Peer(cluster.port) as peer:
        peer.send(data)
        code, msg = error_of(peer.frames_until_closed())
    assert code == "protocol"
    assert msg.startswith(message)
    assert rss_kb(server_pid(cluster)) - rss_before < RSS_SLACK_KB
    assert_cluster_serves(cluster)


def test_tls_client_hello_is_refused(cluster: LocalCluster) -> None:
    """A TLS client gets a plaintext HELLO it cannot parse; when it gives up, the server has closed too."""
    rss_before = rss_kb(server_pid(cluster))
    client = TlsClient()
    client_hello = client.client_hello()
    with Peer(cluster.port) as peer:
        peer.send(client_hello)
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER"):
            client.receive(bytes(peer.received))  # what a TLS client makes of the server's HELLO
        peer.sock.shutdown(socket.SHUT_WR)  # ... so it hangs up
        frames = peer.frames_until_closed()
    # The ClientHello is random: with a line break in it the server already refused the line.
    if b"\n" in client_hello:
        assert error_of(frames)[0] == "protocol"
    else:
        assert frames == []
    assert rss_kb(server_pid(cluster)) - rss_before < RSS_SLACK_KB
    assert_cluster_serves(cluster)


@pytest.mark.parametrize("how", ["half-close", "close", "reset"])
def test_connect_and_close_leaves_the_server_serving(cluster: LocalCluster, how: str) -> None:
    """A peer that connects and leaves at once (FIN, full close or RST) costs the server nothing."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=PEER_TIMEOUT) as sock:
            if how == "half-close":
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):  # HELLO, unless the server saw the end of input first
                    pass  # the loop ends when the server closes its side (a timeout fails the test)
            elif how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert_cluster_serves(cluster)


def test_unauthenticated_peer_cannot_make_the_server_buffer_a_body(cluster: LocalCluster) -> None:
    """A frame with a body before the handshake is refused at once: the server does not buffer 64 MB of it."""
    pid = server_pid(cluster)
    rss_before = rss_kb(pid)
    piece = b"\0" * (1 << 20)
    with Peer(cluster.port) as peer:
        peer.send(b"AUTH len=268435456\r\n")  # 256 MB, under the 1 GiB body limit
        try:
            for _ in range(64):
                peer.sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused: the server hung up
        grown_mb = (rss_kb(pid) - rss_before) // 1024
        assert grown_mb < RSS_SLACK_KB // 1024, (
            f"the server buffered {grown_mb} MB for an unauthenticated peer"
        )
        code, _ = error_of(peer.frames_until_closed())
    assert code == "protocol"
    assert_cluster_serves(cluster)


# -- an authenticated peer that breaks the protocol ----------------------------------------


def last_job_id(cluster: LocalCluster) -> int:
    """Submit and cancel a job to learn the newest job id (the next one is this plus one)."""
    with Peer(cluster.port) as peer:
        peer.authenticate(cluster.settings.secret_bytes, "controller")
        job_id = peer.submit()
        peer.send(encode_frame("CANCEL", job=job_id))
        ended = peer.next_frame()
        assert (ended.verb, ended.integer("job"), ended.text("outcome")) == ("ENDED", job_id, "cancelled")
    return job_id


TASK_BODY = dumps([7])


def break_protocol(cluster: LocalCluster, case: str) -> tuple[str, str]:
    """Authenticate as a controller, commit protocol violation ``case``; return its (code, msg)."""
    next_job = last_job_id(cluster) + 1
    with Peer(cluster.port) as peer:
        peer.authenticate(cluster.settings.secret_bytes, "controller")
        if case == "task-for-unknown-job":
            peer.send(encode_frame("TASK", TASK_BODY, job=987654321, task=0, fn=0))
            expected = "task 0 for job 987654321, which was never submitted"
        elif case == "task-before-submit":
            blob = pickle_function(tasks.square, None)
            task = encode_frame("TASK", TASK_BODY, job=next_job, task=0, fn=0)
            peer.send(task + encode_header("SUBMIT", len(blob), label="attack") + blob)
            expected = f"task 0 for job {next_job}, which was never submitted"
        elif case == "end-with-wrong-count":
            job_id = peer.submit()
            peer.send(
                encode_frame("TASK", TASK_BODY, job=job_id, task=0, fn=0)
                + encode_frame("END", job=job_id, tasks=3)
            )
            expected = f"job {job_id} ended its input at 3 tasks, but 1 were received"
        elif case == "result-from-a-controller":
            job_id = peer.submit()
            peer.send(encode_frame("RESULT", dumps([49]), job=job_id, task=0, ok=True))
            expected = "a controller may not send RESULT"
        else:
            raise AssertionError(case)
        frames = peer.frames_until_closed()
    code, msg = error_of([frame for frame in frames if frame.verb not in ("RESULT", "CREDIT")])
    assert msg == expected
    if case == "task-before-submit":  # the SUBMIT behind the bad TASK was never run
        assert last_job_id(cluster) == next_job
    return code, msg


@pytest.mark.parametrize(
    "case", ["task-for-unknown-job", "task-before-submit", "end-with-wrong-count", "result-from-a-controller"]
)
def test_controller_breaking_the_protocol_is_disconnected(cluster: LocalCluster, case: str) -> None:
    """A controller breaking the protocol gets ERROR code=protocol and is dropped; jobs still run."""
    code, _ = break_protocol(cluster, case)
    assert code == "protocol"
    wait_until(lambda: status_of(cluster)["job"] is None, what="the offender's job to be cancelled")
    assert_cluster_serves(cluster)


@pytest.mark.parametrize("verb", ["TASK", "CANCEL"])
def test_controller_cannot_touch_another_controllers_job(cluster: LocalCluster, verb: str) -> None:
    """A TASK or CANCEL for another controller's running job is refused, and that job completes untouched."""
    with Peer(cluster.port) as owner, Peer(cluster.port) as intruder:
        owner.authenticate(cluster.settings.secret_bytes, "controller")
        job_id = owner.submit()
        intruder.authenticate(cluster.settings.secret_bytes, "controller")
        if verb == "TASK":
            intruder.send(encode_frame("TASK", dumps([666]), job=job_id, task=0, fn=0))
        else:
            intruder.send(encode_frame("CANCEL", job=job_id))
        refusal = error_of(intruder.frames_until_closed())
        assert refusal == ("protocol", f"job {job_id} belongs to another controller")
        task = encode_frame("TASK", TASK_BODY, job=job_id, task=0, fn=0)
        owner.send(task + encode_frame("END", job=job_id, tasks=1))
        frames = [owner.next_frame(), owner.next_frame()]
        while frames[-1].verb == "CREDIT":
            frames[-1] = owner.next_frame()
    result, ended = frames
    assert (result.verb, result.integer("job"), result.integer("task")) == ("RESULT", job_id, 0)
    assert result.flag("ok")
    assert loads(result.body) == [49]
    assert (ended.verb, ended.integer("job"), ended.text("outcome")) == ("ENDED", job_id, "done")
    assert_cluster_serves(cluster)


def send_kill(cluster: LocalCluster, role: str) -> tuple[str, str]:
    """Send KILL server=1 as an authenticated ``role``; return the (code, msg) of the server's answer."""
    with Peer(cluster.port) as peer:
        peer.authenticate(cluster.settings.secret_bytes, role)
        peer.send(encode_frame("KILL", server=True))
        return error_of(peer.frames_until_closed())


@pytest.mark.parametrize("role", ["controller", "node"])
def test_kill_from_a_non_admin_is_refused(cluster: LocalCluster, role: str) -> None:
    """KILL server=1 from an authenticated controller or node is a protocol error and stops nothing."""
    code, msg = send_kill(cluster, role)
    assert code == "protocol"
    if role == "node":
        assert msg == "a node may not send KILL now"
    assert all(node.poll() is None for node in cluster.nodes)
    assert_cluster_serves(cluster)


def test_admin_verb_from_a_controller_is_named_in_the_error(cluster: LocalCluster) -> None:
    """A controller's KILL is refused with an error that names the verb it may not send."""
    assert send_kill(cluster, "controller") == ("protocol", "a controller may not send KILL")


def test_stale_result_from_a_node_is_ignored(cluster: LocalCluster) -> None:
    """A node's RESULT for a task it does not hold is dropped as stale; the node stays connected."""
    assert_cluster_serves(cluster)  # so that a job has ended and its id is a "late" one
    ended_job = last_job_id(cluster)
    stale_before = status_of(cluster)["stale_results"]
    with Peer(cluster.port) as peer:
        peer.authenticate(cluster.settings.secret_bytes, "node")
        peer.send(encode_frame("REGISTER", slots=1, processes=1, name="attacker", pid=0))
        registered = peer.next_frame()
        assert registered.verb == "REGISTERED"
        assert len(status_of(cluster)["nodes"]) == 3
        peer.send(encode_frame("RESULT", dumps([1]), job=ended_job, task=0, attempt=1, ok=True))
        wait_until(lambda: status_of(cluster)["stale_results"] == stale_before + 1, what="the stale result")
        peer.send(encode_frame("PING"))
        assert peer.next_frame().verb == "PONG"  # still connected
        assert len(status_of(cluster)["nodes"]) == 3
    wait_until(lambda: len(status_of(cluster)["nodes"]) == 2, what="the fake node to be dropped")
    assert_cluster_serves(cluster)


def test_version_mismatch_is_refused_naming_both_versions(cluster: LocalCluster) -> None:
    """An AUTH with proto=99 (otherwise valid) gets ERROR code=version naming versions 1 and 99."""
    with Peer(cluster.port) as peer:
        handshake = ClientHandshake(cluster.settings.secret_bytes, secrets.token_bytes(32), "controller")
        auth = handshake.receive(peer.hello)
        assert auth.startswith(b"AUTH proto=1 ")
        peer.send(auth.replace(b"AUTH proto=1 ", b"AUTH proto=99 ", 1))
        code, msg = error_of(peer.frames_until_closed())
    assert code == "version"
    assert "this server speaks version 1," in msg
    assert "the other side speaks version 99;" in msg
    assert_cluster_serves(cluster)


# -- idle peers and the auth timeout -------------------------------------------------------

AUTH_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def quick_server() -> Iterator[dict[str, Any]]:
    """A server of our own with a 0.5 s auth timeout (no nodes): its port and secret."""
    secret = "quick-server-secret"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env.update(ACHILLES_SECRET_KEY=secret, ACHILLES_NO_DOTENV="1")
    command = [sys.executable, "-m", "achilles_like", "server", "--host", "127.0.0.1", "--port", "0"]
    server = subprocess.Popen(
        [*command, "--auth-timeout", str(AUTH_TIMEOUT), "--watch-stdin"],  # exits if we die
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            assert selector.select(60), "the server printed no ready line within 60 s"
        ready = re.search(r"listening on 127\.0\.0\.1:(\d+)", server.stdout.readline())
        assert ready is not None
        yield {"host": "127.0.0.1", "port": int(ready.group(1)), "secret_key": secret}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("sent", [b"", b"AUTH proto=1 role=controller"])
def test_idle_unauthenticated_connection_is_closed(quick_server: dict[str, Any], sent: bytes) -> None:
    """A peer that sends nothing (or half an AUTH line) is disconnected once the auth timeout has passed."""
    started = time.monotonic()
    with Peer(quick_server["port"], timeout=5.0) as peer:
        peer.send(sent)
        assert peer.frames_until_closed() == []
    assert AUTH_TIMEOUT - 0.1 < time.monotonic() - started < 5.0
    assert al.getClusterStatus(**quick_server)["nodes"] == []  # the server still answers


def test_authenticated_idle_connection_is_kept(quick_server: dict[str, Any]) -> None:
    """The auth timeout spares a peer that authenticated: it is still served long after the timeout."""
    with Peer(quick_server["port"]) as peer:
        peer.authenticate(quick_server["secret_key"].encode(), "admin")
        # For four auth timeouts the server sends nothing but heartbeats, and never closes.
        deadline = time.monotonic() + 4 * AUTH_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            peer.sock.settimeout(left)
            try:
                assert peer.next_frame().verb == "PING"
            except TimeoutError:
                break
            peer.send(encode_frame("PONG"))
        peer.sock.settimeout(PEER_TIMEOUT)
        peer.send(encode_frame("STATUS"))
        assert peer.next_frame().verb == "STATUS"


# -- fuzzing ---------------------------------------------------------------------------------

VERBS = ["AUTH", "HELLO", "WELCOME", "ERROR", "SUBMIT", "TASK", "END", "CANCEL", "RESULT", "REGISTER"]
VERBS += ["STATUS", "KILL", "PING", "PONG", "SHUTDOWN", "FUNC", "X"]
header_lines = st.builds(
    lambda verb, fields: " ".join([verb, *(f"{k}={v}" for k, v in fields.items())]).encode("ascii") + b"\r\n",
    st.sampled_from(VERBS),
    st.dictionaries(
        st.sampled_from(["proto", "role", "user", "nonce", "mac", "job", "task", "len", "ok", "server", "x"]),
        st.one_of(st.integers(-5, 10**13).map(str), st.text("0123456789abcdef=% \t", max_size=70)),
        max_size=6,
    ),
)
frame_like = st.lists(st.one_of(header_lines, st.binary(max_size=64)), max_size=8).map(b"".join)


@settings(max_examples=30, deadline=None)
@given(data=st.one_of(st.binary(max_size=2048), frame_like.filter(lambda data: len(data) <= 2048)))
def test_fuzzed_first_bytes_never_break_the_server(cluster: LocalCluster, data: bytes) -> None:
    """Any first 2 kB from a stranger get at most one ERROR and a close; the server keeps serving."""
    with Peer(cluster.port) as peer:
        peer.send(data)
        try:
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already closed it
        frames = peer.frames_until_closed()
    assert [frame.verb for frame in frames] in ([], ["ERROR"])
    if frames:
        assert frames[0].text("code") in ("protocol", "auth", "version")
    status = status_of(cluster)
    assert (status["job"], len(status["nodes"])) == (None, 2)
    assert al.map(tasks.square, range(5), **target(cluster)) == [0, 1, 4, 9, 16]
