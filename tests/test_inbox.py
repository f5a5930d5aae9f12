"""A session's inbox: who is woken for what, and RUNNING notices held for the next batch; order is kept."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from achilles_like.client.connection import Lost
from achilles_like.client.inbox import RUNNING_DELAY, SessionInbox, Waiter
from achilles_like.protocol import Frame, FrameDecoder
from achilles_like.protocol import messages as msg


class _Timers:
    """Stands in for the reactor's callLater: records what would run, runs it on demand."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> object:
        self.pending.append((delay, fn))
        return None

    def fire(self) -> None:
        pending, self.pending = self.pending, []
        for _, fn in pending:
            fn()


def _frames(*messages: msg.Message) -> list[Frame]:
    return FrameDecoder().feed(b"".join(part for m in messages for part in m.encode()))


def _verbs(event: Any) -> list[str]:
    return [frame.verb for frame in event]


def _next(inbox: SessionInbox) -> Any:
    (event,) = inbox.take(1)
    return event


class _Recorder(Waiter):
    """A waiter that records its wake-ups instead of releasing a thread."""

    def __init__(self) -> None:
        super().__init__()
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1
        super().wake()


def _waiting(inbox: SessionInbox, waiter: Waiter, *, caller: bool) -> None:
    """Register ``waiter`` as waiting, as a thread blocked in ``inbox.wait`` would be."""
    with inbox._mutex:
        if caller:
            inbox._callers.append(waiter)
        else:
            inbox._session = waiter


def test_running_notices_ride_with_the_next_batch() -> None:
    """RUNNING frames that arrive alone wake nobody; they come first in the next batch, in order."""
    timers = _Timers()
    inbox = SessionInbox(timers)
    inbox.put(_frames(msg.Running(job=1, entries=[(0, 0)])))
    inbox.put(_frames(msg.Running(job=1, entries=[(1, 0)])))
    assert inbox.empty()
    inbox.put(_frames(msg.Results(job=1, entries=[(0, 0, 1, b"x")]), msg.Credit(job=1, n=1)))
    event = _next(inbox)
    assert _verbs(event) == ["RUNNING", "RUNNING", "RESULT", "CREDIT"]
    assert [frame.fields["task"] for frame in event[:2]] == ["0", "1"]
    assert inbox.empty()
    timers.fire()  # the timer finds nothing left to deliver
    assert inbox.empty()


def test_a_lone_running_notice_is_delivered_when_the_delay_runs_out() -> None:
    """With nothing else coming, held notices go out on their own after RUNNING_DELAY, one timer for all."""
    timers = _Timers()
    inbox = SessionInbox(timers)
    inbox.put(_frames(msg.Running(job=1, entries=[(0, 0)])))
    inbox.put(_frames(msg.Running(job=1, entries=[(1, 0)])))
    assert [delay for delay, _ in timers.pending] == [RUNNING_DELAY]
    timers.fire()
    assert _verbs(_next(inbox)) == ["RUNNING", "RUNNING"]
    inbox.put(_frames(msg.Running(job=1, entries=[(2, 0)])))  # a new notice arms the timer again
    assert len(timers.pending) == 1


def test_wake_ups_pass_and_a_loss_comes_after_what_was_held() -> None:
    """Other events are not held: a wake-up passes at once, the connection's loss follows held notices."""
    inbox = SessionInbox(_Timers())
    inbox.put(_frames(msg.Running(job=1, entries=[(0, 0)])))
    inbox.put("wake")
    assert _next(inbox) == "wake"
    lost = Lost("gone")
    inbox.put(lost)
    assert _verbs(_next(inbox)) == ["RUNNING"]
    assert _next(inbox) is lost


def test_frames_wake_a_waiting_caller_before_the_session_thread() -> None:
    """A caller waiting on its result is woken for frames; the session thread sleeps on."""
    inbox = SessionInbox(_Timers())
    session, caller = _Recorder(), _Recorder()
    _waiting(inbox, session, caller=False)
    _waiting(inbox, caller, caller=True)
    inbox.put(_frames(msg.Results(job=1, entries=[(0, 0, 1, b"x")])))
    assert (caller.woken, session.woken) == (1, 0)
    inbox.put(_frames(msg.Credit(job=1, n=1)))  # no caller waits any more: the session thread reads
    assert (caller.woken, session.woken) == (1, 1)


def test_wake_ups_and_the_loss_go_to_the_session_thread_even_with_a_caller_waiting() -> None:
    """What only the session thread acts on wakes it, never a caller."""
    for item in ("wake", Lost("gone")):
        inbox = SessionInbox(_Timers())
        session, caller = _Recorder(), _Recorder()
        _waiting(inbox, session, caller=False)
        _waiting(inbox, caller, caller=True)
        inbox.put(item)
        assert (caller.woken, session.woken) == (0, 1)


def test_a_caller_waits_past_events_that_are_not_frames() -> None:
    """For a caller, only frames first in line count: a wake-up ahead of them is the session thread's."""
    inbox = SessionInbox(_Timers())
    inbox.put("wake")
    inbox.put(_frames(msg.Credit(job=1, n=1)))
    assert not inbox.wait(Waiter(), 0.0, caller=True)
    assert inbox.take(8, frames_only=True) == []
    assert inbox.wait(Waiter(), 0.0, caller=False)
    assert _next(inbox) == "wake"
    assert inbox.wait(Waiter(), 0.0, caller=True)
    assert _verbs(inbox.take(8, frames_only=True)[0]) == ["CREDIT"]


def test_a_caller_that_leaves_passes_on_what_it_was_woken_for() -> None:
    """Events a caller leaves behind wake the next reader: another caller first, else the session thread."""
    inbox = SessionInbox(_Timers())
    session, first, second = _Recorder(), _Recorder(), _Recorder()
    _waiting(inbox, session, caller=False)
    _waiting(inbox, first, caller=True)
    _waiting(inbox, second, caller=True)
    inbox.put(_frames(msg.Credit(job=1, n=1)))
    assert (first.woken, second.woken, session.woken) == (1, 0, 0)
    inbox.leave()  # the first caller's result was ready: it goes without taking the frames
    assert (first.woken, second.woken, session.woken) == (1, 1, 0)
    inbox.leave()
    assert session.woken == 1
    inbox.take(8)
    inbox.leave()  # nothing left: nobody is woken
    assert session.woken == 1


def test_a_waiting_thread_is_released_by_a_frame() -> None:
    """A real wait: a caller blocked in the inbox returns once a frame is put from another thread."""
    inbox = SessionInbox(_Timers())
    waiter = Waiter()
    put = threading.Timer(0.01, inbox.put, [_frames(msg.Credit(job=1, n=1))])
    put.start()
    try:
        assert inbox.wait(waiter, 60.0, caller=True)
    finally:
        put.join()
    assert _verbs(_next(inbox)) == ["CREDIT"]


class _Stream:
    """Stands in for a large result's body, still arriving."""

    def feed(self, data: bytes) -> None:
        pass

    def end(self) -> None:
        pass


def test_a_large_result_streaming_in_is_the_session_thread_s() -> None:
    """A batch with a streamed body wakes the session thread: a caller would hold Ctrl-C off till it is in."""
    inbox = SessionInbox(_Timers())
    session, caller = _Recorder(), _Recorder()
    _waiting(inbox, session, caller=False)
    _waiting(inbox, caller, caller=True)
    frames = _frames(msg.Results(job=1, entries=[(0, 0, 1, b"x")]))
    frames[0] = Frame(frames[0].verb, frames[0].fields, stream=_Stream())  # type: ignore[arg-type]
    inbox.put(frames)
    assert (caller.woken, session.woken) == (0, 1)
    assert not inbox.wait(Waiter(), 0.0, caller=True)
    assert inbox.take(8, frames_only=True) == []


def test_an_interrupted_wait_leaves_no_waiter_behind() -> None:
    """Ctrl-C (any exception) out of a caller's sleep unregisters it: frames then go to a live reader."""
    inbox = SessionInbox(_Timers())

    class Interrupted(Waiter):
        def sleep(self, timeout: float | None) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inbox.wait(Interrupted(), None, caller=True)
    session = _Recorder()
    _waiting(inbox, session, caller=False)
    inbox.put(_frames(msg.Credit(job=1, n=1)))
    assert session.woken == 1
