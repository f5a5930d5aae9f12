"""The wire format: one ASCII header line, then exactly ``len`` raw body bytes.

::

    TASK job=3 task=17 attempt=1 len=42\\r\\n<42 raw bytes>

A header is a verb (``[A-Z_]+``) and ``key=value`` fields separated by single
spaces; values are percent-encoded so they never hold a space or a line
break. Blank lines between frames are ignored. ``len`` is the body length;
without it the body is empty. Bodies are raw bytes, so a pickle that
happens to contain ``\\r\\n`` is carried intact.

:class:`FrameDecoder` is sans-I/O: bytes go in through :meth:`FrameDecoder.feed`
in chunks of any size, whole frames come out. Both limits are checked before
anything is buffered for a body: a header line longer than ``max_line`` or a
declared body larger than ``max_body`` raises :class:`FrameTooLargeError` at
once, so a peer cannot make us reserve memory by announcing a huge frame.
A server's decoder also limits bodies per verb and role (:func:`body_limits`):
only task, function and result frames may be large, every control and admin
frame is held to :data:`CONTROL_BODY_LIMIT`.

A receiver may take a body as it arrives instead of whole: its
:attr:`FrameDecoder.stream_body` hook, asked at each header, returns a
:class:`BodySink` for the bodies it wants streamed. Such a frame comes out of
``feed`` as soon as its header is read, empty, with the sink as its
``stream``, and the sink is then given the body's bytes in order, by
reference, as they arrive; the decoder never holds that body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote, unquote

from achilles_like.errors import FrameTooLargeError, ProtocolError, ProtocolViolationError
from achilles_like.protocol.body_buffer import BodyBuffer

DEFAULT_MAX_LINE = 4096
DEFAULT_MAX_BODY = 1 << 30  # 1 GiB: one task's items or one chunk's results
CONTROL_BODY_LIMIT = 64 * 1024  # every other verb: control and admin messages are small

# The verbs each role may send with a large body (up to max_body); any other
# verb, including one added later and not listed here, gets CONTROL_BODY_LIMIT.
LARGE_BODY_VERBS: dict[str, frozenset[str]] = {
    "controller": frozenset({"SUBMIT", "FUNC", "TASK"}),
    "node": frozenset({"RESULT"}),
    "admin": frozenset(),
}
# For a peer whose role is not known: the verbs that carry user data.
DATA_VERBS = frozenset({"TASK", "RESULT", "FUNC", "SUBMIT"})


def body_limits(role: str, max_body: int) -> Callable[[str], int]:
    """The body limit per verb for frames from a peer of ``role`` (what a server's decoder checks)."""
    large = LARGE_BODY_VERBS.get(role, DATA_VERBS)
    small = min(max_body, CONTROL_BODY_LIMIT)

    def limit(verb: str) -> int:
        return max_body if verb in large else small

    return limit


_VERB = re.compile(r"[A-Z][A-Z_]{0,31}")
_KEY = re.compile(r"[a-z][a-z_]{0,31}")
_SAFE = "-._~:/@+,"  # characters a value may keep unescaped
_PLAIN = re.compile(r"[A-Za-z0-9\-._~:/@+,]*")  # a value made only of those: sent as it is
# Keys on every task and result frame, known to be well formed: no regex for them.
_COMMON_KEYS = frozenset({"job", "task", "fn", "attempt", "ok", "len", "n", "ref"})
# Verbs already seen well formed: the regex runs once per verb, not once per frame.
_KNOWN_VERBS: set[str] = set()
_MAX_KNOWN_VERBS = 256


class BodySink(Protocol):
    """Where a streamed body's bytes go, in order, as they arrive (see ``FrameDecoder.stream_body``)."""

    def feed(self, data: bytes | memoryview) -> None:
        """Take the next piece of the body (it may be kept: the bytes are not reused)."""


@dataclass(slots=True)
class Frame:
    """One decoded message: a verb, its header fields and its raw body (or, streamed, its body's sink)."""

    verb: str
    fields: dict[str, str] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)
    stream: BodySink | None = field(default=None, compare=False, repr=False)

    def text(self, key: str, default: str | None = None) -> str:
        """Return field ``key``, or ``default``; a missing field with no default is a violation."""
        value = self.fields.get(key, default)
        if value is None:
            raise ProtocolViolationError(f"{self.verb} frame is missing the field {key!r}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        """Return field ``key`` as a non-negative integer, or ``default`` when absent."""
        raw = self.fields.get(key)
        if raw is None:
            if default is None:
                raise ProtocolViolationError(f"{self.verb} frame is missing the field {key!r}")
            return default
        if not is_number(raw):
            raise ProtocolViolationError(f"{self.verb} field {key}={raw!r} is not a non-negative integer")
        return int(raw)

    def flag(self, key: str) -> bool:
        """Return field ``key`` read as a boolean ``1``/``0`` (absent is false)."""
        return self.fields.get(key, "0") == "1"


def field_text(value: object) -> str:
    """A header value as sent: booleans become ``1``/``0``, everything else ``str()``, escaped if need be."""
    if type(value) is int:
        return str(value)  # digits and "-": nothing to escape (the common case: ids, counts)
    if value is True or value is False:
        return "1" if value else "0"
    text = str(value)
    return text if _PLAIN.fullmatch(text) else quote(text, safe=_SAFE)


def header_line(verb: str, body_length: int, fields: Iterable[tuple[str, object]]) -> bytes:
    """Build a header line from ``(key, value)`` pairs (see :func:`field_text`)."""
    parts = [verb]
    for key, value in fields:
        parts.append(f"{key}={field_text(value)}")
    if body_length:
        parts.append(f"len={body_length}")
    return (" ".join(parts) + "\r\n").encode("ascii")


def encode_header(verb: str, body_length: int = 0, /, **fields: object) -> bytes:
    """Build a header line; booleans become ``1``/``0``, everything else ``str()``."""
    return header_line(verb, body_length, fields.items())


def encode_frame(verb: str, body: bytes = b"", /, **fields: object) -> bytes:
    """Return a whole frame as one bytes object (copies the body: for small frames)."""
    return encode_header(verb, len(body), **fields) + body


def parse_header(line: bytes, max_body: int) -> tuple[str, dict[str, str], int]:
    """Split a header line (without its line break) into verb, fields and body length."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("header line is not ASCII: is this an achilles_like peer?") from None
    verb, *pairs = text.split(" ")
    if verb not in _KNOWN_VERBS:
        if not _VERB.fullmatch(verb):
            raise ProtocolError(f"malformed header verb {verb[:40]!r}: is this an achilles_like peer?")
        if len(_KNOWN_VERBS) < _MAX_KNOWN_VERBS:  # bounded: a peer cannot grow it with made-up verbs
            _KNOWN_VERBS.add(verb)
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key in fields or (key not in _COMMON_KEYS and not _KEY.fullmatch(key)):
            raise ProtocolError(f"malformed header field {pair[:40]!r} in {verb} frame")
        fields[key] = unquote(value) if "%" in value else value
    length = 0
    raw_length = fields.pop("len", None)
    if raw_length is not None:
        if not is_number(raw_length):
            raise ProtocolError(f"{verb} frame has a malformed body length {raw_length[:40]!r}")
        length = int(raw_length)
    if length > max_body:
        raise FrameTooLargeError(
            f"{verb} frame announces a {length}-byte body, over the {max_body}-byte limit"
            " (raise ACHILLES_MAX_BODY on both sides, or use a smaller chunksize)"
        )
    return verb, fields, length


def is_number(raw: str) -> bool:
    """Whether ``raw`` is 1 to 19 ASCII digits (``str.isdigit`` alone also accepts "²")."""
    return raw.isdigit() and raw.isascii() and len(raw) <= 19


def _first_byte_problem(byte: int) -> str:
    if byte in (0x15, 0x16):  # a TLS alert or handshake record
        return (
            "the other side speaks TLS and this side does not: set TLS_CA (or ACHILLES_TLS=1) on the"
            " node or controller, or TLS_CERT and TLS_KEY on the server, so both sides agree"
        )
    return f"a frame cannot start with byte 0x{byte:02x}: is this an achilles_like peer?"


class FrameDecoder:
    """Turn a byte stream into frames; raise on the first malformed or oversize one.

    After an error the decoder stays broken (every later call raises again):
    the stream position is lost, so the only safe thing is to disconnect.
    Frames completed before the bad one in the same chunk are still returned,
    and the error is kept in :attr:`error` (raised by the next ``feed``): a
    peer's AUTH is answered even if garbage follows it in the same packet.

    One copy per body: a body that lies whole inside one received chunk is
    sliced out of it once (or is the chunk itself); a body spread over
    chunks goes into one :class:`BodyBuffer` of its announced length, handed
    on without another copy. Only a partial header line (at most ``max_line``
    bytes) is kept between calls, so nothing large is ever moved to the
    front of a buffer.
    """

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        max_body: int = DEFAULT_MAX_BODY,
        body_limit: Callable[[str], int] | None = None,
    ) -> None:
        self.max_line = max_line
        self.max_body = max_body
        # Per-verb limits under max_body (see body_limits); None: max_body for every verb.
        self.body_limit = body_limit
        self._line = bytearray()  # the start of a header line that has no newline yet
        # Header of the frame whose body we are waiting for, or None in line mode.
        self._pending: tuple[str, dict[str, str], int] | None = None
        self._body: BodyBuffer | None = None
        self._error: ProtocolError | None = None
        # Asked at each header announcing a body: a sink to stream it to, or None to hold it whole.
        self.stream_body: Callable[[str, dict[str, str], int], BodySink | None] | None = None
        self._sink: BodySink | None = None  # the sink of the body now arriving, if it is streamed
        self._sink_missing = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Consume ``data`` and return the frames it completed, in order."""
        if self._error is not None:
            raise self._error
        frames: list[Frame] = []
        if self._body is not None and not self._body.missing:  # completed by body_advance
            frames.append(self._finish_body())
        position = 0
        try:
            size = len(data)
            while position < size:
                position, frame = self._step(data, position)
                if frame is not None:
                    frames.append(frame)
        except ProtocolError as error:
            self._error = error
            self._line.clear()
            self._pending = self._body = self._sink = None
            if not frames:
                raise
        return frames

    @property
    def error(self) -> ProtocolError | None:
        """The error that broke the stream, once one has."""
        return self._error

    @property
    def body_missing(self) -> int:
        """Bytes of the body now arriving that have not come yet (0 between frames).

        A reader may read this much at once: the peer has announced it, within the limits.
        """
        if self._sink is not None:
            return self._sink_missing
        if self._body is not None:
            return self._body.missing
        return 0 if self._pending is None else self._pending[2]

    @property
    def streaming(self) -> bool:
        """Whether the body now arriving goes to a sink (no :meth:`body_view` for it)."""
        return self._sink is not None

    @property
    def between_frames(self) -> bool:
        """Whether the next byte starts a new frame (nothing partial held, no body awaited, not broken)."""
        return self._pending is None and not self._line and self._error is None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned frame."""
        return len(self._line) + (0 if self._body is None else self._body.filled)

    def _step(self, data: bytes, position: int) -> tuple[int, Frame | None]:
        """Consume what one step can from ``data[position:]``: a header line, or body bytes."""
        if self._pending is None:
            return self._header(data, position)
        if self._sink is not None:
            return self._stream(data, position), None
        verb, fields, length = self._pending
        if self._body is None:
            end = position + length
            if end <= len(data):  # the whole body is in this chunk: one slice, or the chunk itself
                self._pending = None
                body = data if position == 0 and end == len(data) else data[position:end]
                return end, Frame(verb, fields, body)
            self._body = BodyBuffer(length)
        position += self._body.write(memoryview(data)[position:])
        if self._body.missing:
            return position, None
        return position, self._finish_body()

    def _stream(self, data: bytes, position: int) -> int:
        """Hand the streamed body's bytes in ``data[position:]`` to its sink; return where they end."""
        assert self._sink is not None
        take = min(len(data) - position, self._sink_missing)
        self._sink.feed(data if take == len(data) else memoryview(data)[position : position + take])
        self._sink_missing -= take
        if not self._sink_missing:
            self._sink = self._pending = None
        return position + take

    def _finish_body(self) -> Frame:
        assert self._body is not None and self._pending is not None
        verb, fields, _ = self._pending
        body, self._body, self._pending = self._body.value(), None, None
        return Frame(verb, fields, body)

    def body_view(self) -> memoryview:
        """A writable view of the body still missing, to read into straight from a socket.

        Release it, then call :meth:`body_advance`; the next :meth:`feed` (even
        of ``b""``) returns the frame once its body is complete.
        """
        if self._pending is None or self._sink is not None:
            raise ValueError("no body is arriving into a buffer")
        if self._body is None:
            self._body = BodyBuffer(self._pending[2])
        return self._body.view()

    def body_advance(self, count: int) -> None:
        """Record that ``count`` bytes were read into a :meth:`body_view`."""
        if self._body is None:
            raise ValueError("no body is arriving")
        self._body.advance(count)

    def _header(self, data: bytes, position: int) -> tuple[int, Frame | None]:
        """Consume a header line (or the part of one that has arrived) from ``data[position:]``."""
        if not self._line:
            while position < len(data) and data[position] in (0x0D, 0x0A):
                position += 1  # blank lines between frames are ignored (a client's preamble)
            if position == len(data):
                return position, None
            if not 0x41 <= data[position] <= 0x5A:
                # Every header starts with an uppercase verb: refuse a TLS hello or
                # binary noise at its first byte instead of waiting for a newline.
                raise ProtocolError(_first_byte_problem(data[position]))
        room = self.max_line + 1 - len(self._line)  # the newline may be at most max_line bytes in
        end = data.find(b"\n", position, position + room)
        if end < 0:
            self._line += data[position : position + room]
            if len(self._line) > self.max_line:
                raise FrameTooLargeError(
                    f"header line is over the {self.max_line}-byte limit (is this an achilles_like peer?)"
                )
            return len(data), None
        if self._line:
            self._line += data[position:end]
            line = bytes(self._line).rstrip(b"\r")
            self._line.clear()
        else:
            line = data[position:end].rstrip(b"\r")
        verb, fields, length = parse_header(line, self.max_body)
        if self.body_limit is not None and length > (limit := self.body_limit(verb)):
            raise FrameTooLargeError(
                f"{verb} frame announces a {length}-byte body, over the {limit}-byte limit"
                f" for {verb} (only task, function and result frames may be large)"
            )
        if length == 0:
            return end + 1, Frame(verb, fields)
        if self.stream_body is not None and (sink := self.stream_body(verb, fields, length)) is not None:
            self._pending = (verb, fields, length)
            self._sink, self._sink_missing = sink, length
            return end + 1, Frame(verb, fields, stream=sink)
        start, stop = end + 1, end + 1 + length
        if stop <= len(data):  # the whole body is in this chunk (the common case): one slice
            return stop, Frame(verb, fields, data[start:stop])
        self._pending = (verb, fields, length)
        return start, None
