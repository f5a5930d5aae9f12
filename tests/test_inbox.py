"""A session's inbox: RUNNING notices wait for the next batch, or a short timer; order is kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from achilles_like.client.connection import Lost
from achilles_like.client.inbox import RUNNING_DELAY, HoldingInbox
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


def test_running_notices_ride_with_the_next_batch() -> None:
    """RUNNING frames that arrive alone wake nobody; they come first in the next batch, in order."""
    timers = _Timers()
    inbox = HoldingInbox(timers)
    inbox.put(_frames(msg.Running(job=1, entries=[(0, 0)])))
    inbox.put(_frames(msg.Running(job=1, entries=[(1, 0)])))
    assert inbox.empty()
    inbox.put(_frames(msg.Results(job=1, entries=[(0, 0, 1, b"x")]), msg.Credit(job=1, n=1)))
    event = inbox.get_nowait()
    assert _verbs(event) == ["RUNNING", "RUNNING", "RESULT", "CREDIT"]
    assert [frame.fields["task"] for frame in event[:2]] == ["0", "1"]
    assert inbox.empty()
    timers.fire()  # the timer finds nothing left to deliver
    assert inbox.empty()


def test_a_lone_running_notice_is_delivered_when_the_delay_runs_out() -> None:
    """With nothing else coming, held notices go out on their own after RUNNING_DELAY, one timer for all."""
    timers = _Timers()
    inbox = HoldingInbox(timers)
    inbox.put(_frames(msg.Running(job=1, entries=[(0, 0)])))
    inbox.put(_frames(msg.Running(job=1, entries=[(1, 0)])))
    assert [delay for delay, _ in timers.pending] == [RUNNING_DELAY]
    timers.fire()
    assert _verbs(inbox.get_nowait()) == ["RUNNING", "RUNNING"]
    inbox.put(_frames(msg.Running(job=1, entries=[(2, 0)])))  # a new notice arms the timer again
    assert len(timers.pending) == 1


def test_wake_ups_pass_and_a_loss_comes_after_what_was_held() -> None:
    """Other events are not held: a wake-up passes at once, the connection's loss follows held notices."""
    inbox = HoldingInbox(_Timers())
    inbox.put(_frames(msg.Running(job=1, entries=[(0, 0)])))
    inbox.put("wake")
    assert inbox.get_nowait() == "wake"
    lost = Lost("gone")
    inbox.put(lost)
    assert _verbs(inbox.get_nowait()) == ["RUNNING"]
    assert inbox.get_nowait() is lost
