"""A reactor iteration's frames leave a TCP connection in one send, in order; Twisted's buffer takes the rest.

Each test drives a real ``tcp.Connection`` that no reactor runs (a
``MemoryReactorClock``: ``advance(0)`` is the end of the reactor iteration)
over a fake socket that records every ``send`` and takes only as many bytes
as the test allows, standing in for a full socket buffer.
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

    def setsockopt(self, *args: object) -> None:
        """Twisted sets SO_LINGER on an aborted connection."""

    def close(self) -> None:
        """Twisted closes the socket once the connection is lost."""

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
    reactor: MemoryReactorClock, room: int = 1 << 30, turn: SendTurn | None = None
) -> tuple[tcp.Connection, FrameWriter, FakeSocket]:
    """A connected Twisted connection on a fake socket, and a writer attached to it."""
    sock = FakeSocket(room)
    conn = tcp.Connection(sock, Protocol(), reactor)
    conn.connected = True
    writer = FrameWriter(turn=turn)
    writer.attach(conn)
    return conn, writer, sock


def twisted_holds(conn: tcp.Connection) -> bytes:
    """What waits in Twisted's write buffer."""
    return bytes(conn.dataBuffer[conn.offset :]) + b"".join(conn._tempDataBuffer)


def frames(data: bytes) -> list[tuple[str, int]]:
    """The (verb, n or 0) of each frame in ``data``."""
    return [(f.verb, int(f.fields.get("n", 0))) for f in FrameDecoder(max_body=1 << 30).feed(data)]


def credit(n: int) -> list[bytes]:
    """A small frame whose ``n`` tells it apart."""
    return msg.Credit(job=1, n=n).encode()


def test_frames_of_one_iteration_leave_in_one_send_per_connection_at_its_end() -> None:
    """Nothing is sent during the iteration; at its end each connection's frames go in one send, in order."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    first, writer_a, sock_a = connection(reactor, turn=turn)
    second, writer_b, sock_b = connection(reactor, turn=turn)
    writer_a.write_sequence(credit(1))
    writer_b.write_sequence(credit(2))
    writer_a.write_now(msg.Pong().to_bytes())
    writer_a.write_sequence(credit(3))
    assert sock_a.sends == [] and sock_b.sends == []
    assert len(reactor.getDelayedCalls()) == 1  # one flush for the iteration, not one per write
    reactor.advance(0)
    assert len(sock_a.sends) == 1 and len(sock_b.sends) == 1
    assert frames(sock_a.received) == [("CREDIT", 1), ("PONG", 0), ("CREDIT", 3)]
    assert frames(sock_b.received) == [("CREDIT", 2)]
    assert twisted_holds(first) == b"" and twisted_holds(second) == b""
    assert not reactor.writers  # never armed for writing: no epoll_ctl


def test_without_a_turn_a_write_is_sent_at_once() -> None:
    """A writer with no turn (a node's, a controller's) sends each write straight away."""
    conn, writer, sock = connection(MemoryReactorClock())
    writer.write_sequence(credit(1))
    writer.write_sequence(credit(2))
    assert [frames(sent) for sent in sock.sends] == [[("CREDIT", 1)], [("CREDIT", 2)]]
    assert twisted_holds(conn) == b""


def test_what_the_socket_does_not_take_goes_to_twisted_and_later_frames_queue_behind_it() -> None:
    """A partial send leaves the rest in Twisted's buffer, later writes wait behind it, and no byte moves."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    conn, writer, sock = connection(reactor, room=30, turn=turn)
    for n in range(1, 4):
        writer.write_sequence(credit(n))
    reactor.advance(0)
    assert len(sock.received) == 30 and twisted_holds(conn) != b""
    writer.write_sequence(credit(4))  # Twisted holds bytes: this one must not overtake them
    reactor.advance(0)
    assert len(sock.sends) == 1  # nothing more went past Twisted's buffer
    sock.room = 1 << 20
    conn.doWrite()  # the reactor, once the socket can take more
    assert frames(sock.received) == [("CREDIT", n) for n in range(1, 5)]
    assert twisted_holds(conn) == b""
    writer.write_sequence(credit(5))  # drained: gathered for the socket again
    reactor.advance(0)
    assert len(sock.sends) == 3 and frames(sock.sends[-1]) == [("CREDIT", 5)]


def test_a_full_socket_hands_everything_to_twisted() -> None:
    """A send that raises (the socket is full) loses nothing: Twisted's buffer takes all of it."""
    conn, writer, sock = connection(MemoryReactorClock(), room=0)
    writer.write_sequence(credit(1))
    assert sock.sends == [] and frames(twisted_holds(conn)) == [("CREDIT", 1)]


def test_frames_written_while_twisted_holds_bytes_go_behind_them() -> None:
    """Bytes already in Twisted's buffer go first: later frames are appended to that buffer, not sent."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    conn, writer, sock = connection(reactor, turn=turn)
    conn.write(b"".join(credit(1)))  # as if an earlier send had been partial
    writer.write_sequence(credit(2))
    reactor.advance(0)
    assert sock.sends == []
    conn.doWrite()
    assert frames(sock.received) == [("CREDIT", 1), ("CREDIT", 2)]


def test_gathered_frames_leave_before_a_large_body() -> None:
    """A large body sends what was gathered first, then is fed in slices, and what follows waits behind it."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    conn, writer, sock = connection(reactor, turn=turn)
    body = b"\x07" * (writer.threshold + 10)
    writer.write_sequence(credit(1))
    writer.write_sequence(msg.Func(job=1, fn=5, body=body).encode())
    writer.write_sequence(credit(2))
    reactor.advance(0)
    assert frames(sock.sends[0]) == [("CREDIT", 1)]
    while conn.producer is not None or twisted_holds(conn):
        conn.doWrite()
    decoded = FrameDecoder(max_body=1 << 30).feed(sock.received)
    assert [f.verb for f in decoded] == ["CREDIT", "FUNC", "CREDIT"]
    assert decoded[1].body == body


def test_a_writer_sends_early_past_the_gather_limit() -> None:
    """One iteration's frames to one connection are held up to GATHER_LIMIT bytes, then sent at once."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    _, writer, sock = connection(reactor, turn=turn)
    entry = (1, 1, 0, b"x" * (GATHER_LIMIT // 4))
    for _ in range(4):
        writer.write_sequence(msg.Tasks(job=1, entries=[entry]).encode())
    assert len(sock.sends) == 1  # the fourth frame reached the limit
    writer.write_sequence(credit(1))
    reactor.advance(0)
    assert len(sock.sends) == 2
    assert [f.verb for f in FrameDecoder(max_body=1 << 30).feed(sock.received)] == ["TASK"] * 4 + ["CREDIT"]


def test_an_aborted_connection_sends_nothing_it_had_gathered() -> None:
    """abortConnection before the iteration ends drops the gathered frames, as it drops Twisted's buffer."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    conn, writer, sock = connection(reactor, turn=turn)
    writer.write_sequence(credit(1))
    conn.abortConnection()
    reactor.advance(0)
    assert sock.sends == []


def test_frames_gathered_before_a_close_still_leave() -> None:
    """flush() before loseConnection sends the gathered frames now; Twisted then closes an empty buffer."""
    reactor, turn = MemoryReactorClock(), SendTurn()
    conn, writer, sock = connection(reactor, turn=turn)
    writer.write_sequence(credit(1))
    writer.flush()
    conn.loseConnection()
    assert frames(sock.received) == [("CREDIT", 1)]
    reactor.advance(0)
    assert len(sock.sends) == 1
