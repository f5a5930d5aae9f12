"""Typed wire messages: every verb round-trips, and bad fields are refused in one place."""

from __future__ import annotations

import pytest

from achilles_like.errors import ProtocolViolationError
from achilles_like.protocol import FrameDecoder, encode_frame
from achilles_like.protocol import messages as msg
from achilles_like.protocol.frames import CONTROL_BODY_LIMIT

EXAMPLES: list[msg.Message] = [
    msg.Error(code="protocol", msg="bad thing: a b\r\nc"),
    msg.Ping(),
    msg.Pong(),
    msg.Register(slots=4, processes=2, name="host-1", pid=77),
    msg.Registered(node="n3"),
    msg.Slots(slots=16),
    msg.Job(job=3, timeout=1.5, maxtasks=2, body=b"setup"),
    msg.Job(job=3),
    msg.Func(job=3, fn=1, body=b"\r\nfunc\r\n"),
    msg.Func(job=0, fn=0, ref=12, body=b"f"),
    msg.Tasks(job=3, entries=[(9, 2, 1, b"items")]),
    msg.Tasks(job=0, entries=[(0, 0, 0, b"items")], ref=5),
    msg.Tasks(job=3, entries=[(9, 1, 0, b"a"), (10, 1, 1, b"\r\nb"), (11, 2, 0, b"")]),
    msg.Results(job=3, entries=[(9, 2, 1, b"values")]),
    msg.Results(job=3, entries=[(9, 0, 0, b"outcomes")]),
    msg.Results(job=3, entries=[(9, 2, 1, b"v"), (4, 1, 0, b"outcomes")]),
    msg.Lost(job=3, task=9, attempt=2, reason="exit code -9"),
    msg.Running(job=3, entries=[(9, 2)]),
    msg.Running(job=3, entries=[(9, 0)]),
    msg.Running(job=3, entries=[(9, 2), (10, 1), (4, 3)]),
    msg.Withdraw(job=3, task=9, attempt=1),
    msg.Withdraw(job=0, task=0, ref=7),
    msg.Withdrawn(job=3, task=9, attempt=1),
    msg.Job(job=3, output=True, running=True, body=b"setup"),
    msg.Submit(ref=2, running=True),
    msg.Cancel(job=3),
    msg.Cancel(job=0, ref=4),
    msg.Release(job=3),
    msg.Shutdown(),
    msg.Submit(ref=1, label="square", timeout=2.0, maxtasks=5, stop=True, body=b"setup"),
    msg.Submit(),
    msg.Queued(job=4, position=2, ref=1),
    msg.Started(job=4, ref=1),
    msg.Credit(job=4, n=16),
    msg.End(job=4, tasks=10),
    msg.End(job=0, tasks=1, ref=3),
    msg.Ended(job=4, outcome="failed", reason="task 2 raised", task=2),
    msg.Status(body=b'{"nodes": []}'),
    msg.Kill(server=True),
    msg.Killed(nodes=2),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_the_wire(message: msg.Message) -> None:
    """Encoding a message and decoding its frame gives the same message back."""
    [frame] = FrameDecoder().feed(message.to_bytes())
    assert frame.verb == message.VERB
    assert msg.decode(frame) == message


def test_running_notices_beyond_a_frame_s_share_go_in_further_frames() -> None:
    """A RUNNING of more entries than RUNNING_PER_FRAME is several frames, each within a control body."""
    entries = [(task, 1) for task in range(msg.RUNNING_PER_FRAME * 2 + 1)]
    frames = FrameDecoder().feed(b"".join(msg.Running(job=3, entries=entries).encode()))
    decoded = [msg.decode(frame) for frame in frames]
    assert [len(message.entries) for message in decoded] == [msg.RUNNING_PER_FRAME, msg.RUNNING_PER_FRAME, 1]
    assert [entry for message in decoded for entry in message.entries] == entries
    assert all(len(frame.body) <= CONTROL_BODY_LIMIT for frame in frames)


def test_a_body_is_encoded_as_its_own_part() -> None:
    """A message with a body encodes to a header and the body object itself (no copy)."""
    body = b"x" * 1000
    header, part = msg.Tasks(job=1, entries=[(0, 0, 0, body)]).encode()
    assert part is body and header.endswith(b"len=1000\r\n")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (encode_frame("TASK", task=1), "TASK frame is missing the field 'job'"),
        (encode_frame("CREDIT", job=1, n="many"), "CREDIT field n='many' is not a non-negative integer"),
        (encode_frame("JOB", job=1, timeout="soon"), "JOB field timeout='soon' is not a number"),
        (encode_frame("JOB", job=1, timeout="0"), "JOB field timeout='0' is out of range"),
        (encode_frame("NOPE"), "unknown verb NOPE"),
        (encode_frame("RUNNING", job=1, task=0, n=2), "both n= .a batch. and task="),
        (encode_frame("RUNNING", b"short", job=1, n=2), "too short for its table"),
    ],
)
def test_bad_fields_are_refused_with_the_reason(raw: bytes, error: str) -> None:
    """A missing or malformed field, or an unknown verb, is a ProtocolViolationError naming it."""
    [frame] = FrameDecoder().feed(raw)
    with pytest.raises(ProtocolViolationError, match=error):
        msg.decode(frame)
