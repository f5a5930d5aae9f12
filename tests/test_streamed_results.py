"""Large results unpickled while they arrive: the chunk-fed reader, and the controller's streamed path."""

from __future__ import annotations

import itertools
import pickle
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tasks
from conftest import target
from hypothesis import given, settings
from hypothesis import strategies as st

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.chunk_reader import ChunkReader
from achilles_like.client import streamed_results
from achilles_like.errors import ClusterConnectionError
from achilles_like.protocol import FrameDecoder, ServerHandshake
from achilles_like.protocol import messages as msg

VALUE = [b"\x01" * 300_000, bytearray(b"\x02" * 200_000), "é" * 50_000, list(range(1000)), {"k": 1.5}]
BLOB = pickle.dumps(VALUE, pickle.HIGHEST_PROTOCOL)
TEXT_BLOB = pickle.dumps({"a": [1, "two", 3.0]}, 0)  # protocol 0: readline opcodes


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    """``blob`` cut at the given offsets (taken modulo its length)."""
    points = sorted({cut % len(blob) for cut in cuts} | {0, len(blob)})
    return [blob[start:end] for start, end in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10**7), max_size=40), text=st.booleans())
def test_a_value_fed_in_any_split_unpickles_intact(cuts: list[int], text: bool) -> None:
    """However the body is split into chunks, the unpickler gets the value pickle.loads gets."""
    blob = TEXT_BLOB if text else BLOB
    reader = ChunkReader(len(blob), window=len(blob) + 1)
    for chunk in split(blob, cuts):
        reader.feed(chunk)
    assert pickle.Unpickler(reader).load() == pickle.loads(blob)


def test_chunks_in_flight_stay_within_the_window() -> None:
    """The feeder is paused once a window's worth waits, and resumed once half of it is read."""
    events: list[str] = []
    reader = ChunkReader(10_000, window=4_000, pause=lambda: events.append("pause"))
    reader._resume = lambda: events.append(f"resume at {reader.held}")
    for _ in range(3):
        reader.feed(b"x" * 1_000)
    assert (events, reader.held) == ([], 3_000)
    reader.feed(b"x" * 1_000)
    assert (events, reader.held) == (["pause"], 4_000)
    assert len(reader.read(1_500)) == 1_500
    assert events == ["pause"]  # 2,500 still wait: over half the window
    assert len(reader.read(500)) == 500
    assert events == ["pause", "resume at 2000"]


def test_a_large_payload_is_read_into_its_value_not_copied_whole() -> None:
    """The unpickler reads a large bytes payload by readinto, in pieces no larger than the chunks fed."""
    blob = pickle.dumps(b"\x03" * 3_000_000, pickle.HIGHEST_PROTOCOL)
    reader = ChunkReader(len(blob), window=1 << 30)
    for start in range(0, len(blob), 100_000):
        reader.feed(blob[start : start + 100_000])
    sizes: list[int] = []
    original = reader._take

    def take(most: int) -> memoryview:
        piece = original(most)
        sizes.append(len(piece))
        return piece

    reader._take = take  # type: ignore[method-assign]
    assert pickle.Unpickler(reader).load() == b"\x03" * 3_000_000
    assert max(sizes) <= 100_000  # no piece larger than a chunk: the body was never joined


def test_the_end_of_the_body_mid_object_is_a_truncated_pickle() -> None:
    """A body that ends inside the pickle raises the unpickler's error, as pickle.loads does."""
    short = BLOB[: len(BLOB) // 2]
    reader = ChunkReader(len(short), window=1 << 30)
    reader.feed(short)
    with pytest.raises((pickle.UnpicklingError, EOFError)):
        pickle.Unpickler(reader).load()


def test_a_failure_mid_object_raises_that_failure_in_the_reader() -> None:
    """A body cut short (connection lost) makes the waiting unpickler raise the feeder's error, not hang."""
    reader = ChunkReader(len(BLOB), window=1 << 30)
    outcome: list[BaseException] = []

    def unpickle() -> None:
        try:
            pickle.Unpickler(reader).load()
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=unpickle)
    thread.start()
    reader.feed(BLOB[:1000])
    reader.fail(ClusterConnectionError("lost"))
    thread.join(30)
    assert not thread.is_alive()
    assert [type(error) for error in outcome] == [ClusterConnectionError]


def test_a_closed_reader_lets_the_rest_of_the_body_go_by() -> None:
    """After close, what is fed is dropped and a paused feeder is resumed."""
    events: list[str] = []
    reader = ChunkReader(3_000, window=1_000, pause=lambda: events.append("pause"))
    reader._resume = lambda: events.append("resume")
    reader.feed(b"x" * 1_000)
    reader.close()
    reader.feed(b"x" * 2_000)
    assert (events, reader.held, reader.fed) == (["pause", "resume"], 0, 3_000)


@pytest.mark.parametrize(
    ("verb", "fields", "length", "streamed"),
    [
        ("RESULT", {"job": "1", "task": "0", "ok": "1"}, streamed_results.STREAM_BYTES, True),
        ("RESULT", {"job": "1", "task": "0", "ok": "1"}, streamed_results.STREAM_BYTES - 1, False),
        ("RESULT", {"job": "1", "n": "2"}, streamed_results.STREAM_BYTES, False),
        ("TASK", {"job": "1", "task": "0", "fn": "0"}, streamed_results.STREAM_BYTES, False),
    ],
)
def test_only_a_large_single_result_is_streamed(
    verb: str, fields: dict[str, str], length: int, streamed: bool
) -> None:
    """The routing rule: a RESULT of one task, 1 MiB or more; everything else keeps the whole-body path."""
    assert streamed_results.wanted(verb, fields, length) is streamed


def test_a_streamed_body_goes_to_its_sink_and_the_decoder_holds_none_of_it() -> None:
    """With a stream_body hook, the frame comes out at its header and the body's bytes go to the sink."""
    received: list[bytes] = []

    class Sink:
        def feed(self, data: bytes | memoryview) -> None:
            received.append(bytes(data))

    sink = Sink()
    decoder = FrameDecoder()
    decoder.stream_body = lambda verb, fields, length: sink if verb == "RESULT" else None
    stream = b"RESULT job=1 task=0 ok=1 len=10\r\n01234" + b"56789PING\r\n"
    frames = [frame for byte in range(len(stream)) for frame in decoder.feed(stream[byte : byte + 1])]
    assert [(frame.verb, frame.stream is sink, frame.body) for frame in frames] == [
        ("RESULT", True, b""),
        ("PING", False, b""),
    ]
    assert b"".join(received) == b"0123456789"
    assert decoder.buffered == 0 and not decoder.streaming


# -- through a real cluster ----------------------------------------------------------------


@pytest.mark.parametrize("size", [100_000, 3_000_000])
def test_a_large_result_arrives_intact_unpickled_as_it_came(cluster: LocalCluster, size: int) -> None:
    """A result of 1 MiB or more is unpickled on a result thread and equals what the node returned."""
    expected = tasks.tagged(size).payload
    results = al.map(tasks.tagged, [size, size], **target(cluster))
    unpickled_on = {thread for thread, _ in results}
    assert unpickled_on == ({"achilles-result"} if size >= streamed_results.STREAM_BYTES else {"MainThread"})
    assert [payload for _, payload in results] == [expected, expected]


@pytest.mark.parametrize("size", [100_000, 3_000_000])
def test_a_result_that_fails_to_unpickle_raises_its_error(cluster: LocalCluster, size: int) -> None:
    """A result the caller cannot unpickle raises that error whether it was streamed or read whole."""
    with pytest.raises(ValueError, match=f"a {size}-byte result refuses to be unpickled"):
        al.map(tasks.fails_to_load, [size], **target(cluster))
    assert al.map(tasks.square, [7], **target(cluster)) == [49]  # the connection is still good


@pytest.fixture
def cutting_server() -> Iterator[tuple[int, str, list[int]]]:
    """A fake server that runs the handshake, takes a map's task, then sends part of a RESULT and hangs up.

    Yields its port, its secret, and a list whose one number is the result body length to announce.
    """
    secret = secrets.token_urlsafe(16)
    announce: list[int] = [0]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(30)
                _cut_mid_result(connection, secret, announce[0])

        serving = threading.Thread(target=serve, daemon=True)
        serving.start()
        yield listener.getsockname()[1], secret, announce
        serving.join(30)


def _cut_mid_result(connection: socket.socket, secret: str, length: int) -> None:
    """Play the server up to the first task, then send half of a ``length``-byte result and close."""
    handshake = ServerHandshake(secret.encode(), secrets.token_bytes(32))
    connection.sendall(handshake.hello())
    decoder = FrameDecoder(max_body=1 << 30)
    frames: list[Any] = []
    while not any(frame.verb == "TASK" for frame in frames):
        data = connection.recv(65536)
        assert data, "the controller hung up before sending its task"
        for frame in decoder.feed(data):
            if not handshake.authenticated:
                connection.sendall(handshake.receive(frame) or b"")
            else:
                frames.append(frame)
    ref = next(frame for frame in frames if frame.verb == "SUBMIT").integer("ref")
    connection.sendall(msg.Started(job=1, ref=ref).to_bytes())
    body = pickle.dumps(b"\x01" * length)[:length]
    header, *_ = msg.Results(job=1, entries=[(0, 1, 1, body)], limit=1 << 30).encode()
    connection.sendall(header + body[: length // 2])


@pytest.mark.parametrize("length", [200_000, 5_000_000])
def test_a_connection_lost_mid_result_raises_as_it_always_did(
    cutting_server: tuple[int, str, list[int]], length: int
) -> None:
    """Cut mid-body, a streamed result (5 MB) raises the same error as a result read whole (200 kB)."""
    port, secret, announce = cutting_server
    announce[0] = length
    with pytest.raises(ClusterConnectionError) as raised:
        al.map(tasks.identity, [1], host="127.0.0.1", port=port, secret_key=secret)
    assert str(raised.value) == f"the connection to the server at 127.0.0.1:{port} was lost"
