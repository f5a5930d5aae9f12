"""Tests for the sans-I/O wire format in ``achilles_like.protocol.frames``.

Everything here is pure: bytes go into a :class:`FrameDecoder`, frames come out.
No sockets, no reactor, no clock.
"""

from __future__ import annotations

import pickle
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from achilles_like import tcp
from achilles_like.errors import FrameTooLargeError, ProtocolError, ProtocolViolationError
from achilles_like.protocol import frames
from achilles_like.protocol.frames import (
    CONTROL_BODY_LIMIT,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_LINE,
    Frame,
    FrameDecoder,
    body_limits,
    encode_frame,
    encode_header,
    parse_header,
)

DELIMITER_PICKLE = pickle.dumps({"ARG": [2573]})

SAMPLE_FRAMES = [
    Frame("HELLO", {"proto": "1", "nonce": "ab" * 32}),
    Frame("TASK", {"job": "3", "task": "17", "attempt": "1"}, b"\x00\x01\r\n\x02"),
    Frame("PING"),
    Frame("RESULT", {"job": "3", "task": "17", "attempt": "1", "ok": "1"}, DELIMITER_PICKLE),
    Frame("ERROR", {"code": "auth", "msg": "authentication failed: check SECRET_KEY"}),
    Frame("END", {"job": "3", "tasks": "18"}, b"\n" * 7),
]


def encode(frame: Frame) -> bytes:
    """Encode a :class:`Frame` with :func:`encode_frame`."""
    return encode_frame(frame.verb, frame.body, **frame.fields)


def stream_of(frames: list[Frame]) -> bytes:
    """Encode several frames back to back, as they would travel on one connection."""
    return b"".join(encode(frame) for frame in frames)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed ``data`` split at the sorted offsets ``cuts`` and collect every frame."""
    frames: list[Frame] = []
    start = 0
    for cut in [*cuts, len(data)]:
        frames += decoder.feed(data[start:cut])
        start = cut
    return frames


# --- round trips -----------------------------------------------------------------------------


def test_single_frames_round_trip() -> None:
    """Each sample frame encoded and fed whole decodes to an equal frame."""
    for frame in SAMPLE_FRAMES:
        decoder = FrameDecoder()
        assert decoder.feed(encode(frame)) == [frame]
        assert decoder.buffered == 0


def test_stream_of_frames_round_trips_in_one_chunk() -> None:
    """Several frames in a single chunk come out in order."""
    assert FrameDecoder().feed(stream_of(SAMPLE_FRAMES)) == SAMPLE_FRAMES


def test_stream_fed_one_byte_at_a_time() -> None:
    """Feeding a stream one byte at a time yields the same frames in the same order."""
    data = stream_of(SAMPLE_FRAMES)
    decoder = FrameDecoder()
    frames = [frame for i in range(len(data)) for frame in decoder.feed(data[i : i + 1])]
    assert frames == SAMPLE_FRAMES
    assert decoder.buffered == 0


def test_stream_split_at_every_offset() -> None:
    """Splitting a stream into two chunks at any offset yields the same frames."""
    data = stream_of(SAMPLE_FRAMES)
    for cut in range(len(data) + 1):
        assert feed_in_chunks(FrameDecoder(), data, [cut]) == SAMPLE_FRAMES, cut


def test_empty_feed_yields_nothing() -> None:
    """Feeding no bytes returns no frames and changes nothing."""
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_partial_frame_is_buffered_until_complete() -> None:
    """A frame whose body has not fully arrived is held back and counted in ``buffered``."""
    data = encode_frame("TASK", b"0123456789", job=1)
    decoder = FrameDecoder()
    assert decoder.feed(data[:-3]) == []
    assert decoder.buffered == 7
    assert decoder.feed(data[-3:]) == [Frame("TASK", {"job": "1"}, b"0123456789")]
    assert decoder.buffered == 0


def test_body_with_crlf_survives() -> None:
    """A body made of line breaks is carried intact, not read as header lines."""
    body = b"\r\n\r\nPING\r\n\n\r"
    assert FrameDecoder().feed(encode_frame("TASK", body, job=1)) == [Frame("TASK", {"job": "1"}, body)]


def test_pickle_containing_the_delimiter_survives() -> None:
    """``pickle.dumps({'ARG': [2573]})`` holds ``\\r\\n`` and still round-trips byte for byte."""
    assert b"\r\n" in DELIMITER_PICKLE
    (frame,) = FrameDecoder().feed(encode_frame("RESULT", DELIMITER_PICKLE, job=1, ok=True))
    assert frame.body == DELIMITER_PICKLE
    assert pickle.loads(frame.body) == {"ARG": [2573]}


def test_ten_megabyte_body() -> None:
    """A 10 MB body split into uneven chunks decodes to the same bytes."""
    body = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    data = encode_frame("TASK", body, job=9, task=0, attempt=1)
    frames = feed_in_chunks(FrameDecoder(), data, [5, 40, 65_536, 3_000_001])
    assert len(frames) == 1
    assert frames[0].body == body
    assert frames[0].fields == {"job": "9", "task": "0", "attempt": "1"}


def _peak_while_feeding(decoder: FrameDecoder, pieces: list[bytes]) -> tuple[list[Frame], int]:
    """Feed ``pieces`` and return the frames and the peak of memory allocated meanwhile."""
    tracemalloc.start()
    try:
        frames = [frame for piece in pieces for frame in decoder.feed(piece)]
        return frames, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_body_in_socket_sized_pieces_is_held_once() -> None:
    """A 16 MiB body fed in 64 KiB pieces peaks at one body (plus a piece), not two or three."""
    size = 16 << 20
    data = encode_frame("TASK", b"\x07" * size, job=1, task=2, attempt=1)
    pieces = [data[i : i + 65_536] for i in range(0, len(data), 65_536)]
    del data
    decoder = FrameDecoder()
    frames, peak = _peak_while_feeding(decoder, pieces)
    assert [len(frame.body) for frame in frames] == [size]
    assert frames[0].body.count(b"\x07") == size
    assert peak <= 1.05 * size
    assert decoder.buffered == 0


def test_body_arriving_whole_in_one_chunk_is_that_chunk() -> None:
    """A chunk that is exactly one body is handed on as it is, without a copy."""
    decoder = FrameDecoder()
    assert decoder.feed(encode_header("TASK", 100_000, job=1)) == []
    body = bytes(range(256)) * 390 + b"x" * 160
    (frame,) = decoder.feed(body)
    assert frame.body is body


def test_buffered_counts_the_partial_body() -> None:
    """While a body is incomplete, ``buffered`` counts its bytes received so far, and only those."""
    decoder = FrameDecoder()
    decoder.feed(encode_header("TASK", 1_000, job=1) + b"a" * 300)
    assert decoder.buffered == 300
    decoder.feed(b"b" * 600)
    assert decoder.buffered == 900
    frame, ping = decoder.feed(b"c" * 100 + b"PING\r\nPO")
    assert ping.verb == "PING"
    assert frame.body == b"a" * 300 + b"b" * 600 + b"c" * 100
    assert decoder.buffered == 2  # "PO", the start of the next header


@given(
    body=st.binary(min_size=1, max_size=2_000),
    cuts=st.lists(st.integers(min_value=0, max_value=2_100), max_size=12),
)
def test_property_body_split_anywhere_comes_out_intact(body: bytes, cuts: list[int]) -> None:
    """A body between two frames, cut at any offsets, comes out byte for byte with its neighbours."""
    data = encode_frame("PING") + encode_frame("RESULT", body, job=1, task=2) + encode_frame("PONG")
    frames = feed_in_chunks(FrameDecoder(), data, sorted({min(cut, len(data)) for cut in cuts}))
    assert [frame.verb for frame in frames] == ["PING", "RESULT", "PONG"]
    assert frames[1].body == body


@pytest.mark.parametrize(
    "value",
    [
        "two words",
        "a=b=c",
        "100%",
        "%41 is not A",
        "naïve — ünïcødé ✓ 日本語",
        "line\nbreak\r\nand\ttab",
        "",
        "+plus+",
        "ends with space ",
        "len=5",
    ],
)
def test_awkward_values_round_trip(value: str) -> None:
    """Values with spaces, '=', '%', unicode and line breaks survive percent-encoding."""
    header = encode_header("ERROR", msg=value)
    assert header.endswith(b"\r\n")
    assert header.count(b"\n") == 1
    assert header.count(b" ") == 1
    assert FrameDecoder().feed(header) == [Frame("ERROR", {"msg": value})]


def test_encode_header_spells_booleans_and_len() -> None:
    """Booleans become 1/0, other values ``str()``, and ``len`` is added only for a body."""
    assert encode_header("RESULT", 0, job=3, ok=False) == b"RESULT job=3 ok=0\r\n"
    assert encode_header("RESULT", 12, job=3, ok=True) == b"RESULT job=3 ok=1 len=12\r\n"
    assert encode_frame("PING") == b"PING\r\n"


def test_parse_header_returns_verb_fields_and_length() -> None:
    """``parse_header`` splits a line and removes ``len`` from the fields."""
    assert parse_header(b"TASK job=3 task=17 len=42", DEFAULT_MAX_BODY) == (
        "TASK",
        {"job": "3", "task": "17"},
        42,
    )
    assert parse_header(b"PING", DEFAULT_MAX_BODY) == ("PING", {}, 0)


def test_bare_newline_and_explicit_zero_length_are_accepted() -> None:
    """A header ending in a bare ``\\n`` and one with ``len=0`` both decode to bodiless frames."""
    assert FrameDecoder().feed(b"PING\nPONG len=0\r\n") == [Frame("PING"), Frame("PONG")]


# --- limits ----------------------------------------------------------------------------------


def test_header_line_at_the_limit_is_accepted() -> None:
    """A header line of exactly ``max_line`` bytes before its ``\\n`` is accepted."""
    decoder = FrameDecoder(max_line=64)
    line = b"ERROR msg=" + b"x" * (64 - len(b"ERROR msg=") - 1) + b"\r"
    assert len(line) == 64
    assert decoder.feed(line + b"\n") == [Frame("ERROR", {"msg": "x" * 53})]


def test_oversize_header_line_fails_before_any_newline() -> None:
    """A header line raises FrameTooLargeError once it passes ``max_line``, before any newline."""
    decoder = FrameDecoder(max_line=64)
    assert decoder.feed(b"A" * 64) == []
    with pytest.raises(FrameTooLargeError, match="64-byte limit"):
        decoder.feed(b"A")
    assert decoder.buffered == 0


def test_oversize_header_line_fails_with_the_default_limit() -> None:
    """With the default limit, byte ``DEFAULT_MAX_LINE + 1`` without a newline is refused."""
    decoder = FrameDecoder()
    assert decoder.feed(b"X" * DEFAULT_MAX_LINE) == []
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"X")


def test_oversize_header_line_after_a_body_is_still_caught() -> None:
    """The line limit applies to a header that follows a body in the same chunk."""
    decoder = FrameDecoder(max_line=32)
    frames = decoder.feed(encode_frame("TASK", b"\n" * 100, job=1) + b"Z" * 40)
    assert [frame.verb for frame in frames] == ["TASK"]  # the good frame before it still counts
    assert isinstance(decoder.error, FrameTooLargeError)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"")


def test_announced_body_over_limit_fails_before_the_body_arrives() -> None:
    """A header announcing a body over ``max_body`` raises at once, without buffering anything."""
    decoder = FrameDecoder(max_body=1000)
    with pytest.raises(FrameTooLargeError, match="1001-byte body"):
        decoder.feed(encode_header("TASK", 1001, job=1))
    assert decoder.buffered == 0


def test_announced_body_over_the_default_limit_fails() -> None:
    """A header announcing more than 1 GiB is refused by a default decoder before any body."""
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLargeError, match="ACHILLES_MAX_BODY"):
        decoder.feed(encode_header("TASK", DEFAULT_MAX_BODY + 1, job=1) + b"x" * 100)
    assert decoder.buffered == 0


def test_body_at_the_limit_is_accepted() -> None:
    """A body of exactly ``max_body`` bytes is allowed."""
    decoder = FrameDecoder(max_body=10)
    assert decoder.feed(encode_frame("TASK", b"0123456789")) == [Frame("TASK", {}, b"0123456789")]


# --- garbage and malformed headers -----------------------------------------------------------

TLS_CLIENT_HELLO_PREFIX = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        TLS_CLIENT_HELLO_PREFIX,  # holds a \n (byte 10 of the random) after non-ASCII bytes
        b"\x00\xff\xfe\x80garbage\n",
        b"\r\n\r\nping\r\n",  # blank lines are skipped, the garbage after them is not
        b"ping\r\n",
        b"PING  job=1\r\n",
        b"PING job=1 \r\n",
        b"9LIVES\r\n",
        b"P\xc3\xa9NG\r\n",
        b"TOO_LONG_A_VERB_FOR_ANYONE_TO_TYPE\r\n",
    ],
)
def test_garbage_raises_protocol_error(garbage: bytes) -> None:
    """Bytes that are not a frame header raise ProtocolError."""
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(garbage)


def test_blank_lines_between_frames_are_ignored() -> None:
    """A client's blank-line preamble, and blank lines between frames, yield no frame and no error."""
    decoder = FrameDecoder()
    assert decoder.feed(b"\r\n\r\n\r\n") == []
    frames = decoder.feed(b"PING\r\n\n\r\nPONG\r\n")
    assert [frame.verb for frame in frames] == ["PING", "PONG"]
    assert decoder.buffered == 0


def test_tls_client_hello_is_refused_at_its_first_byte() -> None:
    """A TLS ClientHello (first byte 0x16, no newline) is refused at once, not at the line limit."""
    record = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x42" * 506
    with pytest.raises(ProtocolError, match="the other side speaks TLS"):
        FrameDecoder(max_line=256).feed(record[:1])


@pytest.mark.parametrize(
    "line",
    [
        b"TASK job=1 job=2",
        b"TASK len=1 len=1",
        b"TASK Job=1",
        b"TASK 1job=1",
        b"TASK job-id=1",
        b"TASK job",
        b"TASK =1",
        b"TASK len=-1",
        b"TASK len=1.5",
        b"TASK len=0x10",
        b"TASK len=",
        b"TASK len=12345678901234567890",
        b"TASK len=%20",
    ],
)
def test_malformed_fields_raise(line: bytes) -> None:
    """A duplicate key, a bad key or a bad ``len`` raises ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_header(line, DEFAULT_MAX_BODY)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(line + b"\r\n")


def test_non_ascii_digit_length_raises_protocol_error() -> None:
    """A ``len`` spelled with a Unicode digit ('%C2%B2' is '²') raises ProtocolError."""
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"TASK len=%C2%B2\r\n")


def test_non_ascii_decimal_length_is_refused() -> None:
    """A ``len`` spelled with non-ASCII decimal digits is refused like any malformed length."""
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"TASK len=%D9%A1\r\nx")


def test_decoder_stays_broken_after_an_error() -> None:
    """After one error every later feed raises again, even with valid bytes."""
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as first:
        decoder.feed(b"GET / HTTP/1.1\r\n")
    for _ in range(3):
        with pytest.raises(ProtocolError) as again:
            decoder.feed(b"PING\r\n")
        assert again.value is first.value
    assert decoder.buffered == 0


def test_frames_before_an_error_in_a_later_feed_are_kept() -> None:
    """Frames returned by earlier feeds are unaffected by a later error."""
    decoder = FrameDecoder()
    assert decoder.feed(b"PING\r\n") == [Frame("PING")]
    with pytest.raises(ProtocolError):
        decoder.feed(b"bad\r\n")


# --- Frame accessors -------------------------------------------------------------------------


def test_frame_integer_reads_non_negative_integers() -> None:
    """``integer`` parses digits and falls back to its default only when the field is absent."""
    frame = Frame("TASK", {"job": "3", "zero": "0", "big": "9" * 19})
    assert frame.integer("job") == 3
    assert frame.integer("zero") == 0
    assert frame.integer("big") == int("9" * 19)
    assert frame.integer("missing", 7) == 7
    assert frame.integer("job", 7) == 3


@pytest.mark.parametrize("raw", ["", "-1", "+1", "1.0", " 1", "0x1", "one", "9" * 20])
def test_frame_integer_rejects_malformed_values(raw: str) -> None:
    """``integer`` raises ProtocolViolationError naming the field when the value is not digits."""
    with pytest.raises(ProtocolViolationError, match="job"):
        Frame("TASK", {"job": raw}).integer("job")


def test_frame_integer_rejects_unicode_digits() -> None:
    """``integer`` raises ProtocolViolationError for a value like '²' that only looks like a digit."""
    with pytest.raises(ProtocolViolationError):
        Frame("TASK", {"job": "²"}).integer("job")


def test_frame_integer_missing_without_default_is_a_violation() -> None:
    """A missing integer field with no default raises ProtocolViolationError naming verb and field."""
    with pytest.raises(ProtocolViolationError, match="TASK frame is missing the field 'job'"):
        Frame("TASK").integer("job")


def test_frame_text_reads_fields_and_defaults() -> None:
    """``text`` returns the field, or the default when absent, even an empty default."""
    frame = Frame("ERROR", {"msg": "boom", "empty": ""})
    assert frame.text("msg") == "boom"
    assert frame.text("empty") == ""
    assert frame.text("code", "unknown") == "unknown"
    assert frame.text("code", "") == ""


def test_frame_text_missing_without_default_is_a_violation() -> None:
    """A missing text field with no default raises ProtocolViolationError."""
    with pytest.raises(ProtocolViolationError, match="'code'"):
        Frame("ERROR").text("code")


def test_frame_flag_reads_one_as_true() -> None:
    """``flag`` is true only for '1'; absent and anything else are false."""
    frame = Frame("RESULT", {"ok": "1", "no": "0", "odd": "yes"})
    assert frame.flag("ok") is True
    assert frame.flag("no") is False
    assert frame.flag("odd") is False
    assert frame.flag("missing") is False


def test_frame_flag_round_trips_booleans() -> None:
    """A boolean encoded by ``encode_frame`` reads back through ``flag``."""
    (frame,) = FrameDecoder().feed(encode_frame("RESULT", ok=True, bad=False))
    assert frame.flag("ok") and not frame.flag("bad")


def test_frame_repr_hides_the_body() -> None:
    """A frame's repr shows verb and fields but not the (possibly huge) body."""
    text = repr(Frame("TASK", {"job": "1"}, b"secret-pickle"))
    assert "TASK" in text and "secret-pickle" not in text


# --- property tests --------------------------------------------------------------------------

verbs = st.from_regex(r"[A-Z][A-Z_]{0,31}", fullmatch=True)
keys = st.from_regex(r"[a-z][a-z_]{0,31}", fullmatch=True).filter(lambda key: key != "len")
values = st.text(max_size=40)
frames_strategy = st.builds(
    Frame,
    verb=verbs,
    fields=st.dictionaries(keys, values, max_size=5),
    body=st.binary(max_size=200),
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(frames=st.lists(frames_strategy, max_size=6), data=st.data())
def test_property_frames_round_trip_under_any_chunking(frames: list[Frame], data: st.DataObject) -> None:
    """Any list of frames, encoded and fed in arbitrary chunks, decodes back identically."""
    stream = stream_of(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    decoder = FrameDecoder()
    assert feed_in_chunks(decoder, stream, cuts) == frames
    assert decoder.buffered == 0


def _feed_expecting_only_protocol_errors(decoder: FrameDecoder, chunks: list[bytes]) -> None:
    """Feed chunks; frames are fine, ProtocolError ends the stream, anything else fails."""
    for chunk in chunks:
        try:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, Frame)
        except ProtocolError:
            with pytest.raises(ProtocolError):
                decoder.feed(b"PING\r\n")
            return


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=8))
def test_property_arbitrary_bytes_yield_frames_or_protocol_error(chunks: list[bytes]) -> None:
    """Arbitrary bytes either decode to frames or raise ProtocolError, never anything else."""
    _feed_expecting_only_protocol_errors(FrameDecoder(max_line=128, max_body=256), chunks)


@FUZZ
@given(
    frames=st.lists(frames_strategy, min_size=1, max_size=4),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), max_size=4),
    chunk=st.integers(1, 64),
)
def test_property_mutated_frames_yield_frames_or_protocol_error(
    frames: list[Frame], edits: list[tuple[int, bytes]], chunk: int
) -> None:
    """Valid streams with bytes spliced in or overwritten decode or raise ProtocolError only."""
    stream = bytearray(stream_of(frames))
    for position, replacement in edits:
        at = position % (len(stream) + 1)
        stream[at : at + len(replacement) // 2] = replacement
    chunks = [bytes(stream[i : i + chunk]) for i in range(0, len(stream), chunk)]
    _feed_expecting_only_protocol_errors(FrameDecoder(max_line=256, max_body=512), chunks)


def test_frames_before_a_bad_frame_in_the_same_chunk_are_returned() -> None:
    """Frames completed before a bad one in the same chunk come back; the error is kept and raised next."""
    decoder = FrameDecoder(max_body=0)
    frames = decoder.feed(b"AUTH role=node\r\nSUBMIT len=5\r\nhello")
    assert frames == [Frame("AUTH", {"role": "node"})]
    assert isinstance(decoder.error, FrameTooLargeError)
    with pytest.raises(FrameTooLargeError):
        decoder.feed(b"")


# --- body limits by verb and role -------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "verb", "large"),
    [
        ("admin", "STATUS", False),
        ("admin", "KILL", False),
        ("admin", "TASK", False),
        ("controller", "CANCEL", False),
        ("controller", "END", False),
        ("controller", "SUBMIT", True),
        ("controller", "TASK", True),
        ("controller", "FUNC", True),
        ("node", "REGISTER", False),
        ("node", "LOST", False),
        ("node", "RESULT", True),
        ("controller", "SOME_NEW_VERB", False),
    ],
)
def test_only_data_verbs_may_carry_large_bodies(role: str, verb: str, large: bool) -> None:
    """A control or admin frame over 64 KiB is refused before buffering; data frames may be large."""
    decoder = FrameDecoder(max_body=1 << 30, body_limit=body_limits(role, 1 << 30))
    header = encode_header(verb, CONTROL_BODY_LIMIT + 1)
    if large:
        assert decoder.feed(header) == []
        assert decoder.buffered == 0
    else:
        with pytest.raises(FrameTooLargeError, match=f"limit for {verb}"):
            decoder.feed(header)
    small = FrameDecoder(body_limit=body_limits(role, 1 << 30))
    assert small.feed(encode_frame(verb, b"x" * CONTROL_BODY_LIMIT))[0].body == b"x" * CONTROL_BODY_LIMIT


def test_per_verb_limits_never_exceed_max_body() -> None:
    """The large verbs are still held to max_body."""
    limit = body_limits("controller", 1000)
    assert (limit("TASK"), limit("STATUS")) == (1000, 1000)


def test_body_missing_counts_what_the_announced_body_still_lacks() -> None:
    """body_missing is 0 between frames and the announced bytes still to come while a body arrives."""
    decoder = FrameDecoder()
    frame = encode_frame("TASK", b"x" * 1000, job=1, task=0)
    header_end = frame.index(b"\n") + 1
    assert decoder.body_missing == 0
    decoder.feed(frame[:header_end])
    assert decoder.body_missing == 1000
    decoder.feed(frame[header_end : header_end + 300])
    assert decoder.body_missing == 700
    [whole] = decoder.feed(frame[header_end + 300 :])
    assert len(whole.body) == 1000 and decoder.body_missing == 0


def test_reads_grow_only_while_a_large_body_arrives() -> None:
    """A transport reads 64 KiB between frames and up to LARGE_READ while a large announced body arrives."""

    class Transport:
        bufferSize = tcp.SMALL_READ

    transport = Transport()
    tcp.size_reads(transport, 10 << 20)
    assert transport.bufferSize == tcp.LARGE_READ
    tcp.size_reads(transport, 300_000)
    assert transport.bufferSize == 300_000
    tcp.size_reads(transport, 100)
    assert transport.bufferSize == tcp.SMALL_READ


@pytest.mark.parametrize("split", [0, 1, 999])
def test_a_body_read_straight_into_its_view_comes_out_whole(split: int) -> None:
    """Bytes written into body_view() and counted with body_advance() complete the frame on the next feed."""
    decoder = FrameDecoder()
    body = bytes(range(200)) * 5
    frame = encode_frame("RESULT", body, job=1, task=2, ok=1)
    header_end = frame.index(b"\n") + 1
    assert decoder.feed(frame[: header_end + split]) == []
    view = decoder.body_view()
    view[: len(body) - split] = body[split:]
    view.release()
    decoder.body_advance(len(body) - split)
    [whole] = decoder.feed(b"")
    assert (whole.verb, whole.body) == ("RESULT", body)
    with pytest.raises(ValueError, match="no body is arriving"):
        decoder.body_view()


def test_between_frames_is_true_only_at_a_frame_boundary() -> None:
    """A decoder is between frames at the start and after whole frames, not mid-line, mid-body or broken."""
    decoder = FrameDecoder()
    assert decoder.between_frames
    decoder.feed(b"TASK job=1 len=6\r\n")
    assert not decoder.between_frames  # b"PONG\r\n" now would be this body, not a PONG
    assert decoder.feed(b"PONG\r\n") == [Frame("TASK", {"job": "1"}, b"PONG\r\n")]
    assert decoder.between_frames
    decoder.feed(b"PO")
    assert not decoder.between_frames
    decoder.feed(b"NG\r\n")
    assert decoder.between_frames
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00")
    assert not decoder.between_frames


def test_made_up_verbs_are_checked_every_time_and_remembered_only_up_to_a_bound() -> None:
    """Well-formed verbs skip the regex once seen, but a peer inventing verbs cannot grow that memory."""
    for number in range(2_000):
        verb = "X" + "".join(chr(ord("A") + int(digit)) for digit in str(number))
        assert parse_header(verb.encode("ascii"), 10)[0] == verb
    assert len(frames._KNOWN_VERBS) <= frames._MAX_KNOWN_VERBS
    for bad in (b"lower", b"X-Y", b"A" * 40):
        with pytest.raises(ProtocolError, match="malformed header verb"):
            parse_header(bad, 10)
