"""The server's Twisted glue with a fake clock and in-memory transports: no sockets, no real time.

Twisted's ``StringTransport`` and ``task.Clock`` stand in for the network and
the reactor's time, so an hour of heartbeats takes a millisecond.
"""

from __future__ import annotations

import logging
import secrets

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from achilles_like.config import Settings
from achilles_like.errors import ConfigurationError
from achilles_like.liveness import SERVER_SILENCE_TIMEOUT, SilenceWatch
from achilles_like.protocol import ClientHandshake, FrameDecoder, batch, encode_frame
from achilles_like.protocol import messages as msg
from achilles_like.server.cluster import RELEASE_DELAY, ClusterServer, ServerOptions, ServerProtocol

SECRET = "glue-test-secret"


def make_server(**options: float) -> tuple[ClusterServer, Clock]:
    """A server on a fake clock."""
    clock = Clock()
    return ClusterServer(Settings(secret_key=SECRET), clock, ServerOptions(**options)), clock


def connect(server: ClusterServer, host: str = "10.0.0.1") -> tuple[ServerProtocol, StringTransport]:
    """A new connection from ``host`` on an in-memory transport."""
    protocol = server.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def authenticate(protocol: ServerProtocol, transport: StringTransport, secret: str, role: str) -> bytes:
    """Answer the server's HELLO as ``role`` with ``secret``; return what the server said back."""
    hello = FrameDecoder().feed(transport.value())[0]
    transport.clear()
    client = ClientHandshake(secret.encode(), secrets.token_bytes(32), role)
    protocol.dataReceived(client.receive(hello))
    return transport.value()


def test_hello_is_sent_at_once_to_a_new_address() -> None:
    """A connection from an address with no failed handshakes gets HELLO immediately."""
    server, _ = make_server()
    _, transport = connect(server)
    assert transport.value().startswith(b"HELLO proto=1 nonce=")


def test_repeated_failed_handshakes_slow_down_that_address_only() -> None:
    """Past its budget of failed handshakes an address waits for HELLO as the budget says; others do not."""
    server, clock = make_server()
    for _ in range(5):
        protocol, transport = connect(server)
        assert b"ERROR code=auth msg=authentication%20failed" in authenticate(
            protocol, transport, "wrong", "controller"
        )
    wait = server.throttle.delay("10.0.0.1", clock.seconds())
    assert wait == 2.0  # one failure over a burst of 5, refilled at 0.5 a second
    _, slowed = connect(server)
    assert slowed.value() == b""
    clock.advance(wait - 0.01)
    assert slowed.value() == b""
    clock.advance(0.02)
    assert slowed.value().startswith(b"HELLO")
    _, other = connect(server, host="10.0.0.2")
    assert other.value().startswith(b"HELLO")
    assert server.status()["unauthenticated"]["delayed"] == 1


def test_a_slowed_connection_gets_the_whole_auth_timeout_after_its_hello() -> None:
    """The auth timeout counts from the delayed HELLO, so a slowed peer holding the secret still gets in."""
    server, clock = make_server(auth_timeout=5.0)
    for _ in range(20):
        server.throttle.failed("10.0.0.1", 0.0)
    protocol, transport = connect(server)
    clock.advance(server.options.auth_budget.max_delay + 4.9)
    assert not transport.disconnecting
    assert authenticate(protocol, transport, SECRET, "admin").startswith(b"WELCOME")


def test_an_attacker_on_the_users_address_does_not_slow_the_user() -> None:
    """Right after a good handshake from an address, wrong MACs from it do not delay its next connection."""
    server, clock = make_server()
    protocol, transport = connect(server, host="127.0.0.1")
    assert authenticate(protocol, transport, SECRET, "controller").startswith(b"WELCOME")
    for _ in range(50):
        clock.advance(0.01)
        protocol, transport = connect(server, host="127.0.0.1")
        authenticate(protocol, transport, "wrong", "controller")
    _, user = connect(server, host="127.0.0.1")
    assert user.value().startswith(b"HELLO")
    assert server.status()["unauthenticated"]["delayed"] == 0


def test_unauthenticated_connection_is_dropped_at_the_auth_timeout() -> None:
    """A peer that never answers HELLO is disconnected after auth_timeout seconds, not before."""
    server, clock = make_server(auth_timeout=10.0)
    _, transport = connect(server)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


def _node(server: ClusterServer, slots: int = 2) -> tuple[ServerProtocol, StringTransport]:
    protocol, transport = connect(server)
    assert authenticate(protocol, transport, SECRET, "node").startswith(b"WELCOME")
    protocol.dataReceived(encode_frame("REGISTER", slots=slots, processes=1, name="n", pid=1))
    transport.clear()
    return protocol, transport


def _dropped_at(clock: Clock, transport: StringTransport, until: float) -> float | None:
    """Advance the clock in 0.5 s steps; when ``transport`` was aborted (None if not by ``until``)."""
    while clock.seconds() < until:
        clock.advance(0.5)
        if transport.disconnected:
            return clock.seconds()
    return None


def test_silent_node_holding_tasks_is_dropped_at_the_heartbeat_timeout() -> None:
    """A node given a task after 25 s of idle quiet is pinged, then aborted heartbeat_timeout later."""
    server, clock = make_server(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    server.start_heartbeats()
    node, node_transport = _node(server)
    assert _dropped_at(clock, node_transport, 25.0) is None  # idle: the 30 s idle timeout holds
    controller, _ = _controller(server)
    controller.dataReceived(
        encode_frame("SUBMIT", ref=1)
        + encode_frame("FUNC", b"f", job=0, ref=1, fn=0)
        + encode_frame("TASK", b"t", job=0, ref=1, fn=0, task=0)
    )
    assert b"TASK" in node_transport.value()
    assigned = clock.seconds()
    dropped = _dropped_at(clock, node_transport, 60.0)
    assert b"PING" in node_transport.value()
    assert dropped is not None and 3.0 <= dropped - assigned <= 4.0
    node.connectionLost()
    assert server.status()["nodes"] == []
    server.stop_heartbeats()


def test_silent_idle_node_is_dropped_at_the_idle_timeout_and_its_slot_leaves() -> None:
    """A registered node with no tasks that stops answering is pinged every 10 s and aborted after 30 s."""
    server, clock = make_server(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    server.start_heartbeats()
    node, transport = _node(server)
    assert len(server.status()["nodes"]) == 1
    dropped = _dropped_at(clock, transport, 60.0)
    assert dropped is not None and 30.0 <= dropped <= 32.0
    assert transport.value().count(b"PING") == 2
    node.connectionLost()
    assert server.status()["nodes"] == []
    server.stop_heartbeats()


@pytest.mark.parametrize("role", ["node", "controller"])
def test_an_idle_healthy_peer_is_never_dropped_by_either_side(role: str) -> None:
    """Over an idle hour the server never drops a peer that answers, nor the peer the server."""
    server, clock = make_server()  # the defaults: idle peers pinged every 10 s
    server.start_heartbeats()
    protocol, transport = connect(server)
    authenticate(protocol, transport, SECRET, role)
    transport.clear()
    gave_up: list[float] = []
    watch = SilenceWatch(clock, SERVER_SILENCE_TIMEOUT, gave_up.append)  # the node's and controller's limit
    watch.start()
    pings = 0
    for _ in range(3600):
        clock.advance(1.0)
        if transport.value():
            watch.touch()
            pings += transport.value().count(b"PING")
            transport.clear()
            protocol.dataReceived(encode_frame("PONG"))
    assert gave_up == [] and not transport.disconnecting
    assert 3600 / 12 <= pings <= 3600 / 10
    watch.stop()
    server.stop_heartbeats()


def test_heartbeat_limits_that_would_make_peers_drop_the_server_are_refused() -> None:
    """An idle heartbeat interval over half the peers' silence timeout is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=r"idle heartbeat interval 20\.0s is too long"):
        make_server(idle_heartbeat_interval=20.0)
    with pytest.raises(ConfigurationError, match=r"heartbeat interval 16\.0s"):
        make_server(heartbeat_interval=16.0)


def test_answering_node_is_kept() -> None:
    """A node that answers every PING stays registered however long it runs."""
    server, clock = make_server(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    server.start_heartbeats()
    protocol, transport = connect(server)
    authenticate(protocol, transport, SECRET, "node")
    protocol.dataReceived(encode_frame("REGISTER", slots=2, processes=1, name="n", pid=1))
    for _ in range(100):
        clock.advance(1.0)
        protocol.dataReceived(encode_frame("PONG"))
    assert not transport.disconnecting
    server.stop_heartbeats()


def test_an_admin_cannot_make_the_server_buffer_a_large_body() -> None:
    """An authenticated admin announcing a 1 GiB STATUS body gets an ERROR and is disconnected at once."""
    server, _ = make_server()
    protocol, transport = connect(server)
    assert b"WELCOME" in authenticate(protocol, transport, SECRET, "admin")
    transport.clear()
    protocol.dataReceived(b"STATUS len=1073741824\r\n" + b"x" * 1000)
    assert b"ERROR code=protocol" in transport.value()
    assert b"limit%20for%20STATUS" in transport.value()
    assert protocol.closed and protocol.decoder.buffered == 0


def _controller(server: ClusterServer) -> tuple[ServerProtocol, StringTransport]:
    protocol, transport = connect(server, "127.0.0.1")
    authenticate(protocol, transport, SECRET, "controller")
    transport.clear()
    return protocol, transport


def _said(transport: StringTransport) -> list[tuple[str, dict[str, str]]]:
    said = [(frame.verb, frame.fields) for frame in FrameDecoder().feed(transport.value())]
    transport.clear()
    return [(verb, fields) for verb, fields in said if verb != "PING"]


def test_a_queued_job_s_first_task_sent_ahead_runs_when_it_starts() -> None:
    """A first task and END sent by ref right after SUBMIT wait while the job is queued, then run."""
    server, _ = make_server()
    busy, busy_transport = _controller(server)
    busy.dataReceived(encode_frame("SUBMIT", ref=1))
    [(verb, fields), _credit] = _said(busy_transport)
    assert (verb, fields["ref"]) == ("STARTED", "1")
    busy.dataReceived(
        encode_frame("FUNC", b"f", job=0, ref=1, fn=0)
        + encode_frame("TASK", b"t", job=0, ref=1, fn=0, task=0)
    )
    late, late_transport = _controller(server)
    ahead = encode_frame("FUNC", b"g", job=0, ref=9, fn=0) + encode_frame(
        "TASK", b"u", job=0, ref=9, fn=0, task=0
    )
    late.dataReceived(encode_frame("SUBMIT", ref=9) + ahead + encode_frame("END", job=0, ref=9, tasks=1))
    assert [verb for verb, _ in _said(late_transport)] == ["QUEUED"]
    status = server.status()
    assert [job["job_id"] for job in status["queue"]] == [2]
    busy.dataReceived(encode_frame("CANCEL", job=1))  # the busy job ends: the held task is replayed
    status = server.status()
    assert status["job"]["job_id"] == 2 and status["job"]["tasks_received"] == 1
    assert status["job"]["input_ended"] is True


def test_only_a_job_s_first_task_may_be_sent_before_it_starts() -> None:
    """A second task before STARTED is a protocol error that closes that controller's connection."""
    server, _ = make_server()
    busy, _ = _controller(server)
    busy.dataReceived(encode_frame("SUBMIT", ref=1) + encode_frame("FUNC", b"f", job=0, ref=1, fn=0))
    busy.dataReceived(encode_frame("TASK", b"t", job=0, ref=1, fn=0, task=0))
    late, late_transport = _controller(server)
    tasks = b"".join(encode_frame("TASK", b"u", job=0, ref=9, fn=0, task=n) for n in range(2))
    late.dataReceived(encode_frame("SUBMIT", ref=9) + encode_frame("FUNC", b"g", job=0, ref=9, fn=0) + tasks)
    [*_, (verb, fields)] = _said(late_transport)
    assert verb == "ERROR" and "only a job's first task may be sent before it starts" in fields["msg"]


def test_a_flood_of_stalled_connections_cannot_keep_a_real_peer_out() -> None:
    """Past the per-address cap the oldest stalled connection is closed, so a peer from there gets in."""
    server, _ = make_server(max_pending=100, max_pending_per_address=5)
    stalled = [connect(server, host="10.0.0.1") for _ in range(20)]
    assert [transport.disconnected for _, transport in stalled] == [True] * 15 + [False] * 5
    protocol, transport = connect(server, host="10.0.0.1")
    assert stalled[15][1].disconnected and not transport.disconnected
    assert authenticate(protocol, transport, SECRET, "controller").startswith(b"WELCOME")
    guard = server.status()["unauthenticated"]
    assert (guard["pending"], guard["evicted"]) == (4, 16)


def test_authenticated_peers_are_never_evicted() -> None:
    """Only unauthenticated connections count against the caps: an authenticated peer outlives a flood."""
    server, _ = make_server(max_pending=3, max_pending_per_address=3)
    protocol, transport = connect(server, host="10.0.0.1")
    authenticate(protocol, transport, SECRET, "admin")
    for index in range(10):
        connect(server, host=f"10.0.1.{index}")
    assert not transport.disconnected
    assert len(server.pending) == 3


FORGED = "ok\n2026-01-01 00:00:00,000 WARNING achilles_like.server: forged line"


def test_peer_supplied_strings_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """Node names, job labels, loss reasons and protocol versions from peers are logged quoted."""
    caplog.set_level(logging.INFO, logger="achilles_like")
    server, _ = make_server()
    node, node_transport = connect(server, host="10.0.0.1")
    authenticate(node, node_transport, SECRET, "node")
    node.dataReceived(encode_frame("REGISTER", slots=1, processes=1, name=FORGED, pid=1))
    controller, controller_transport = connect(server, host="10.0.0.2")
    authenticate(controller, controller_transport, SECRET, "controller")
    controller.dataReceived(encode_frame("SUBMIT", label=FORGED, ref=1))
    controller.dataReceived(
        encode_frame("FUNC", b"f", job=1, fn=0) + encode_frame("TASK", b"t", job=1, task=0, fn=0)
    )
    for attempt in range(1, 5):  # lost every time: the job fails with the node's reason in it
        node.dataReceived(encode_frame("LOST", job=1, task=0, attempt=attempt, reason=FORGED))
    stranger, _ = connect(server, host="10.0.0.3")
    stranger.dataReceived(encode_frame("AUTH", proto=FORGED, role="node", user="", nonce="0" * 64, mac="0"))
    node.connectionLost()
    messages = [record.getMessage() for record in caplog.records]
    assert [m for m in messages if "\n" in m] == []
    quoted = [m for m in messages if repr(FORGED) in m or repr(FORGED)[1:-1] in m]
    assert len(quoted) >= 4  # job started, job ended, node left, version refused


def test_repeated_warnings_from_one_address_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """Fifty garbage connections from one address write five warnings, then one that counts the rest."""
    caplog.set_level(logging.WARNING, logger="achilles_like.server")
    server, clock = make_server()
    for _ in range(50):
        protocol, _ = connect(server, host="10.0.0.7")
        protocol.dataReceived(b"\x16garbage")
    assert len(caplog.records) == 5
    clock.advance(60.0)
    protocol, _ = connect(server, host="10.0.0.7")
    protocol.dataReceived(b"\x16garbage")
    assert len(caplog.records) == 6
    assert "(and 45 similar warnings from 10.0.0.7 not logged)" in caplog.records[-1].getMessage()


def test_only_quiet_peers_are_pinged() -> None:
    """A peer that talks and is answered every second gets no PING; a quiet one does, every 2 s."""
    server, clock = make_server(
        heartbeat_interval=2.0, heartbeat_timeout=5.0, idle_heartbeat_interval=2.0, idle_heartbeat_timeout=5.0
    )
    server.start_heartbeats()
    busy, busy_transport = connect(server)
    authenticate(busy, busy_transport, SECRET, "admin")
    idle, idle_transport = connect(server, "10.0.0.2")
    authenticate(idle, idle_transport, SECRET, "admin")
    busy_transport.clear()
    for _ in range(30):
        busy.dataReceived(encode_frame("STATUS"))  # answered with a STATUS: traffic both ways
        clock.advance(1.0)
        idle.dataReceived(encode_frame("PONG"))
    assert b"STATUS" in busy_transport.value() and b"PING" not in busy_transport.value()
    assert idle_transport.value().count(b"PING") >= 10  # 15 ticks in 30 s
    assert not busy_transport.disconnecting and not idle_transport.disconnecting
    server.stop_heartbeats()


def _running_job(
    slots: int, tasks: int
) -> tuple[ClusterServer, ServerProtocol, StringTransport, ServerProtocol, StringTransport]:
    """A server with a node of ``slots`` and job 1 (``running=1``) whose ``tasks`` tasks were sent.

    Returns the server, the node and its transport, the controller and its transport
    (what the controller was told so far is cleared; what the node was told is not).
    """
    server, _ = make_server()
    node, node_transport = _node(server, slots=slots)
    controller, transport = _controller(server)
    controller.dataReceived(encode_frame("SUBMIT", ref=1, running=1))
    _said(transport)
    frames = b"".join(encode_frame("TASK", b"t", job=1, fn=0, task=n) for n in range(tasks))
    controller.dataReceived(encode_frame("FUNC", b"f", job=1, fn=0) + frames)
    return server, node, node_transport, controller, transport


def test_running_reaches_the_controller_only_from_the_holder_and_withdrawals_are_answered() -> None:
    """RUNNING passes only for a task the node holds; WITHDRAW drops a waiting task or asks its node."""
    server, node, node_transport, controller, transport = _running_job(slots=1, tasks=2)
    said = _said(node_transport)
    assert [(verb, fields.get("task")) for verb, fields in said] == [
        ("JOB", None),
        ("FUNC", None),
        ("TASK", "0"),
    ]
    assert said[0][1]["running"] == "1"
    node.dataReceived(encode_frame("RUNNING", job=1, task=1, attempt=1))  # task 1 waits at the server
    node.dataReceived(encode_frame("RUNNING", job=1, task=0, attempt=1))
    assert _said(transport) == [("RUNNING", {"job": "1", "task": "0"})]
    controller.dataReceived(encode_frame("WITHDRAW", job=1, task=1) + encode_frame("WITHDRAW", job=1, task=0))
    assert _said(transport) == [("WITHDRAWN", {"job": "1", "task": "1"}), ("CREDIT", {"job": "1", "n": "1"})]
    assert _said(node_transport) == [("WITHDRAW", {"job": "1", "task": "0", "attempt": "1"})]
    node.dataReceived(encode_frame("WITHDRAWN", job=1, task=0, attempt=1))
    assert _said(transport) == [("WITHDRAWN", {"job": "1", "task": "0"}), ("CREDIT", {"job": "1", "n": "1"})]
    assert server.status()["nodes"][0]["busy"] == 0


def test_a_batch_of_running_notices_passes_on_as_one_frame_of_the_tasks_the_node_holds() -> None:
    """A node's RUNNING for several tasks reaches the controller as one frame, less those it does not hold."""
    _, node, node_transport, _, transport = _running_job(slots=2, tasks=3)
    assert [fields.get("task") for verb, fields in _said(node_transport) if verb == "TASK"] == ["0", "1"]
    # Task 2 waits at the server (two slots): a notice for it is not passed on.
    node.dataReceived(b"".join(msg.Running(job=1, entries=[(0, 1), (2, 1), (1, 1)]).encode()))
    [frame] = FrameDecoder().feed(transport.value())
    assert msg.decode(frame) == msg.Running(job=1, entries=[(0, 0), (1, 0)])
    transport.clear()
    node.dataReceived(b"".join(msg.Running(job=1, entries=[(2, 1), (7, 1)]).encode()))  # none held
    assert transport.value() == b""


def test_a_running_batch_with_blobs_is_a_protocol_violation() -> None:
    """RUNNING's table carries tasks and attempts only: a blob in it closes the node's connection."""
    server, _ = make_server()
    node, node_transport = _node(server, slots=2)
    table = b"".join(batch.pack([(0, 1, 0, b"x"), (1, 1, 0, b"")]))
    node.dataReceived(encode_frame("RUNNING", table, job=1, n=2))
    assert node_transport.disconnecting
    [error] = FrameDecoder().feed(node_transport.value())
    assert error.verb == "ERROR" and "only a task and an attempt" in error.fields["msg"]


def test_a_body_that_reads_pong_is_not_taken_for_a_pong() -> None:
    """The PONG fast path applies only between frames: a body of exactly b"PONG\\r\\n" is still a body."""
    server, _ = make_server()
    controller, _ = _controller(server)
    controller.dataReceived(encode_frame("SUBMIT", ref=1) + encode_frame("FUNC", b"f", job=0, ref=1, fn=0))
    controller.dataReceived(encode_frame("TASK", b"PONG\r\n", job=0, ref=1, fn=0, task=0)[:-6])
    controller.dataReceived(b"PONG\r\n")
    assert server.status()["job"]["tasks_received"] == 1


def _one_item_call(controller: ServerProtocol, ref: int) -> None:
    """What a one-item ``map`` writes: SUBMIT whole=1, its function, its one task and END, together."""
    controller.dataReceived(
        encode_frame("SUBMIT", ref=ref, whole=1)
        + encode_frame("FUNC", b"f", job=0, ref=ref, fn=0)
        + encode_frame("TASK", b"t", job=0, ref=ref, fn=0, task=0)
        + encode_frame("END", job=0, ref=ref, tasks=1)
    )


def test_a_whole_job_hears_nothing_before_its_result_and_started_precedes_it() -> None:
    """SUBMIT whole=1 gets no STARTED or CREDIT at once; STARTED (which routes by ref) leads the RESULT."""
    server, _ = make_server()
    node, node_transport = _node(server, slots=1)
    controller, transport = _controller(server)
    _one_item_call(controller, ref=7)
    assert _said(transport) == []  # the controller is not woken for nothing
    assert [verb for verb, _ in _said(node_transport)] == ["JOB", "FUNC", "TASK"]
    node.dataReceived(encode_frame("RESULT", b"r", job=1, task=0, ok=1, attempt=1))
    said = _said(transport)
    assert [verb for verb, _ in said] == ["STARTED", "RESULT", "ENDED"]
    assert said[0][1] == {"job": "1", "ref": "7"}
    assert server.whole_jobs == set() and server.unsent_started == {}


def test_a_job_that_sends_more_input_later_still_hears_started_and_credit_at_once() -> None:
    """Without whole=1 the controller may have more to send: STARTED and CREDIT go straight back."""
    server, _ = make_server()
    _node(server, slots=1)
    controller, transport = _controller(server)
    controller.dataReceived(
        encode_frame("SUBMIT", ref=3)
        + encode_frame("FUNC", b"f", job=0, ref=3, fn=0)
        + encode_frame("TASK", b"t", job=0, ref=3, fn=0, task=0)
    )
    assert [verb for verb, _ in _said(transport)] == ["STARTED", "CREDIT"]


def test_a_whole_job_ended_before_any_result_still_hears_started_first() -> None:
    """A whole job cancelled while its task runs gets STARTED, then ENDED: nothing is left unsaid."""
    server, _ = make_server()
    _node(server, slots=1)
    controller, transport = _controller(server)
    _one_item_call(controller, ref=2)
    controller.dataReceived(encode_frame("CANCEL", job=0, ref=2))
    said = _said(transport)
    assert [verb for verb, _ in said] == ["STARTED", "ENDED"]
    assert said[1][1]["outcome"] == "cancelled"


def test_release_goes_with_the_node_s_next_frame_or_after_the_release_delay() -> None:
    """A node hears RELEASE of an ended job ahead of its next job's frames, else RELEASE_DELAY later."""
    server, clock = make_server()
    node, node_transport = _node(server, slots=1)
    controller, _ = _controller(server)
    _one_item_call(controller, ref=1)
    _said(node_transport)
    node.dataReceived(encode_frame("RESULT", b"r", job=1, task=0, ok=1, attempt=1))
    assert _said(node_transport) == []  # not on the result's way home
    _one_item_call(controller, ref=2)
    said = _said(node_transport)
    assert [(verb, fields.get("job")) for verb, fields in said[:2]] == [("RELEASE", "1"), ("JOB", "2")]
    node.dataReceived(encode_frame("RESULT", b"r", job=2, task=0, ok=1, attempt=1))
    assert _said(node_transport) == []
    clock.advance(RELEASE_DELAY)
    assert _said(node_transport) == [("RELEASE", {"job": "2"})]
