"""A turn's frames leave a plain TCP connection in one send, in order, with Twisted's buffer as the fallback.

Each test drives a real ``tcp.Connection`` that no reactor runs (a
``MemoryReactorClock``) over a fake socket that records every ``send`` and takes
only as many bytes as the test allows, standing in for a full socket buffer.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock

from achilles_like.frame_writer import GATHER_LIMIT, FrameWriter, SendTurn
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg


class FakeSocket:
    """The socket under a connection: records each send, takes at most ``room`` bytes in all."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.sends: list[bytes] = []

    def setblocking(self, flag: bool) -> None:
        """Twisted makes its sockets non-blocking."""

    def fileno(self) -> int:
        """A descriptor number Twisted keeps but never uses here."""
        return -1

    def send(self, data: bytes) -> int:
        """Take what fits; a full socket raises as a non-blocking one does."""
        if self.room <= 0:
            raise BlockingIOError
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sends.append(taken)
        return len(taken)

    @property
    def received(self) -> bytes:
        """Every byte the socket took, in order."""
        return b"".join(self.sends)


def connection(
    room: int = 1 << 30, turn: SendTurn | None = None
) -> tuple[tcp.Connection, FrameWriter, FakeSocket]:
    """A connected Twisted connection on a fake socket, and a writer attached to it."""
    sock = FakeSocket(room)
    conn = tcp.Connection(sock, Protocol(), MemoryReactorClock())
    conn.connected = True
    writer = FrameWriter(turn=turn)
    writer.attach(conn)
    return conn, writer, sock


def twisted_holds(conn: tcp.Connection) -> bytes:
    """What waits in Twisted's write buffer."""
    return bytes(conn.dataBuffer[conn.offset :]) + b"".join(conn._tempDataBuffer)


def frames(data: bytes) -> list[tuple[str, int]]:
    """The (verb, task or 0) of each frame in ``data``."""
    return [(f.verb, int(f.fields.get("n", 0))) for f in FrameDecoder(max_body=1 << 30).feed(data)]


def credit(n: int) -> list[bytes]:
    """A small frame whose ``n`` tells it apart."""
    return msg.Credit(job=1, n=n).encode()


def test_frames_of_one_turn_leave_in_one_send_when_it_closes() -> None:
    """Within an open turn nothing is sent; at its close each connection's frames go in one send, in order."""
    turn = SendTurn()
    first, writer_a, sock_a = connection(turn=turn)
    second, writer_b, sock_b = connection(turn=turn)
    with turn:
        writer_a.write_sequence(credit(1))
        writer_b.write_sequence(credit(2))
        writer_a.write_now(msg.Pong().to_bytes())
        writer_a.write_sequence(credit(3))
        assert sock_a.sends == [] and sock_b.sends == []
    assert len(sock_a.sends) == 1 and len(sock_b.sends) == 1
    assert frames(sock_a.received) == [("CREDIT", 1), ("PONG", 0), ("CREDIT", 3)]
    assert frames(sock_b.received) == [("CREDIT", 2)]
    assert twisted_holds(first) == b"" and twisted_holds(second) == b""
    assert not first.reactor.writers and not second.reactor.writers  # never armed for writing: no epoll_ctl


def test_nested_turns_send_only_at_the_outermost_close() -> None:
    """A turn opened inside another leaves the frames gathered until the outer one closes."""
    turn = SendTurn()
    _, writer, sock = connection(turn=turn)
    with turn:
        with turn:
            writer.write_sequence(credit(1))
        assert sock.sends == []
        writer.write_sequence(credit(2))
    assert len(sock.sends) == 1 and frames(sock.received) == [("CREDIT", 1), ("CREDIT", 2)]


def test_with_no_turn_open_a_write_is_sent_at_once() -> None:
    """A writer outside any turn (a timer, a controller's flush) sends each write straight away."""
    conn, writer, sock = connection(turn=SendTurn())
    writer.write_sequence(credit(1))
    assert frames(sock.received) == [("CREDIT", 1)]
    assert twisted_holds(conn) == b""


def test_what_the_socket_does_not_take_goes_to_twisted_and_later_frames_queue_behind_it() -> None:
    """A partial send leaves the rest in Twisted's buffer, later writes wait behind it, and no byte moves."""
    turn = SendTurn()
    conn, writer, sock = connection(room=30, turn=turn)
    with turn:
        for n in range(1, 4):
            writer.write_sequence(credit(n))
    assert len(sock.received) == 30 and twisted_holds(conn) != b""
    with turn:
        writer.write_sequence(credit(4))  # Twisted holds bytes: this one must not overtake them
    writer.write_sequence(credit(5))
    assert len(sock.sends) == 1  # nothing more went past Twisted's buffer
    sock.room = 1 << 20
    conn.doWrite()  # the reactor, once the socket can take more
    assert frames(sock.received) == [("CREDIT", n) for n in range(1, 6)]
    assert twisted_holds(conn) == b""
    writer.write_sequence(credit(6))  # drained: straight to the socket again
    assert len(sock.sends) == 3 and frames(sock.sends[-1]) == [("CREDIT", 6)]


def test_a_full_socket_hands_everything_to_twisted() -> None:
    """A send that raises (the socket is full) loses nothing: Twisted's buffer takes all of it."""
    conn, writer, sock = connection(room=0)
    writer.write_sequence(credit(1))
    assert sock.sends == [] and frames(twisted_holds(conn)) == [("CREDIT", 1)]


def test_frames_written_while_twisted_holds_bytes_go_behind_them() -> None:
    """Bytes already in Twisted's buffer go first: a turn's frames are appended to that buffer, not sent."""
    turn = SendTurn()
    conn, writer, sock = connection(turn=turn)
    conn.write(b"".join(credit(1)))  # as if an earlier send had been partial
    with turn:
        writer.write_sequence(credit(2))
    assert sock.sends == []
    conn.doWrite()
    assert frames(sock.received) == [("CREDIT", 1), ("CREDIT", 2)]


def test_gathered_frames_leave_before_a_large_body() -> None:
    """A large body written in a turn sends what was gathered first, then is fed in slices behind it."""
    turn = SendTurn()
    conn, writer, sock = connection(turn=turn)
    body = b"\x07" * (writer.threshold + 10)
    with turn:
        writer.write_sequence(credit(1))
        writer.write_sequence(msg.Func(job=1, fn=5, body=body).encode())
        writer.write_sequence(credit(2))
    assert frames(sock.received) == [("CREDIT", 1)]
    while conn.producer is not None or twisted_holds(conn):
        conn.doWrite()
    decoded = FrameDecoder(max_body=1 << 30).feed(sock.received)
    assert [f.verb for f in decoded] == ["CREDIT", "FUNC", "CREDIT"]
    assert decoded[1].body == body


def test_a_writer_sends_early_past_the_gather_limit() -> None:
    """One turn's frames to one connection are held up to GATHER_LIMIT bytes, then sent without waiting."""
    turn = SendTurn()
    _, writer, sock = connection(turn=turn)
    entry = (1, 1, 0, b"x" * (GATHER_LIMIT // 4))
    with turn:
        for _ in range(4):
            writer.write_sequence(msg.Tasks(job=1, entries=[entry]).encode())
        assert len(sock.sends) == 1  # the fourth frame reached the limit
        writer.write_sequence(credit(1))
    assert len(sock.sends) == 2
    assert [f.verb for f in FrameDecoder(max_body=1 << 30).feed(sock.received)] == ["TASK"] * 4 + ["CREDIT"]


def test_an_aborted_connection_sends_nothing_it_had_gathered() -> None:
    """abortConnection during a turn drops the gathered frames, as it drops Twisted's buffer."""
    turn = SendTurn()
    conn, writer, sock = connection(turn=turn)
    with turn:
        writer.write_sequence(credit(1))
        conn.abortConnection()
    assert sock.sends == []


def test_frames_gathered_before_a_close_still_leave() -> None:
    """flush() before loseConnection sends the turn's frames; Twisted then closes an empty buffer."""
    turn = SendTurn()
    conn, writer, sock = connection(turn=turn)
    with turn:
        writer.write_sequence(credit(1))
        writer.flush()
        conn.loseConnection()
    assert frames(sock.received) == [("CREDIT", 1)]


# -- a send from another thread (a controller's caller), under the connection's lock --


def test_send_direct_goes_out_on_the_socket_when_nothing_waits() -> None:
    """With Twisted's buffer empty the bytes leave in one send, and the reactor is left nothing to do."""
    conn, writer, sock = connection()
    data = b"".join(credit(1))
    assert writer.send_direct(data) == len(data)
    assert sock.sends == [data] and twisted_holds(conn) == b""


def test_send_direct_refuses_while_twisted_holds_bytes() -> None:
    """Bytes waiting in Twisted's buffer go first: a direct send then sends nothing and says so."""
    conn, writer, sock = connection(room=0)
    writer.write(b"".join(credit(1)))  # the socket is full: this waits in Twisted's buffer
    assert twisted_holds(conn)
    sock.room = 1 << 20
    assert writer.send_direct(b"".join(credit(2))) == 0
    assert sock.sends == []


def test_send_direct_refuses_while_a_large_body_is_fed() -> None:
    """While a large body goes out slice by slice nothing may cut into it."""
    _, writer, sock = connection()
    writer.write_sequence([b"".join(credit(1)), bytes(writer.threshold)])
    sent = len(sock.received)
    assert writer.send_direct(b"".join(credit(2))) == 0
    assert len(sock.received) == sent


def test_send_direct_reports_a_partial_send() -> None:
    """A socket that takes part of the bytes: the count says how much, so the caller queues the rest."""
    _, writer, sock = connection(room=10)
    data = b"".join(credit(1))
    assert writer.send_direct(data) == 10
    assert sock.received == data[:10]
