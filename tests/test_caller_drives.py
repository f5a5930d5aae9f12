"""A caller waiting on its result handles the session's frames itself: a fake server in memory.

The test plays the server and the reactor thread: it answers what the
session sends by putting frames in the session's inbox, once the threads
it means to test are waiting there.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing import TimeoutError as MpTimeoutError
from typing import Any

import pytest
from conftest import wait_until

from achilles_like.client import session as session_module
from achilles_like.client.driver import JobDriver
from achilles_like.client.results import AsyncResult
from achilles_like.client.session import Session
from achilles_like.client.sources import ApplySource
from achilles_like.config import Settings
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg
from achilles_like.serialization import dumps

RESULT_TIMEOUT = 60.0


class _FakeConnection:
    """What the session sends, decoded; the test answers through the session's inbox."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.closed = False
        self.sent: list[msg.Message] = []
        self._decoder = FrameDecoder()
        self._lock = threading.Lock()

    def send(self, *parts: bytes) -> None:
        with self._lock:
            self.sent += [msg.decode(frame) for frame in self._decoder.feed(b"".join(parts))]

    def route(self, ref: int, inbox: Any) -> None:
        pass

    def unroute(self, ref: int, job_id: int | None) -> None:
        pass

    def check_heard(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def tasks(self) -> int:
        with self._lock:
            return sum(len(m.entries) for m in self.sent if isinstance(m, msg.Tasks))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Session, _FakeConnection]]:
    """A session whose connection is a fake; stopped at the end."""
    connection = _FakeConnection()
    monkeypatch.setattr(session_module.Connection, "open", lambda settings, events=None: connection)
    session = Session(Settings(), b"", label="test")
    yield session, connection
    session.terminate()
    session.join(RESULT_TIMEOUT)


def _put(session: Session, *messages: msg.Message) -> None:
    """Frames from the server, as the reactor thread puts them."""
    session.inbox.put(FrameDecoder().feed(b"".join(part for m in messages for part in m.encode())))


def _start(session: Session, connection: _FakeConnection, tasks: int) -> None:
    """The server starts the job with credit for ``tasks`` tasks; wait until all are sent."""
    wait_until(lambda: connection.tasks() >= 1)  # the SUBMIT went with the first task
    submit = next(m for m in connection.sent if isinstance(m, msg.Submit))
    _put(session, msg.Started(job=1, ref=submit.ref), msg.Credit(job=1, n=tasks))
    wait_until(
        lambda: connection.tasks() == tasks and session._driver is not None and session._driver.started
    )


def _results(session: Session, results: list[tuple[int, Any]]) -> None:
    """The tasks' results, in one batch."""
    _put(session, msg.Results(job=1, entries=[(task, 0, 1, dumps([value])) for task, value in results]))


def _handlers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that hand frames to the job driver."""
    names: list[str] = []
    handle = JobDriver.handle

    def recording(self: JobDriver, event: Any) -> None:
        names.append(threading.current_thread().name)
        handle(self, event)

    monkeypatch.setattr(JobDriver, "handle", recording)
    return names


def _apply(session: Session, callback: Any = None) -> AsyncResult:
    result = AsyncResult(callback)
    result._session = session
    session.add(ApplySource.call(b"blob", (), {}, result._sink))
    return result


def _both_waiting(session: Session) -> None:
    """The session thread and one caller wait in the inbox (what the test means to wake)."""
    wait_until(lambda: session.inbox._session is not None and len(session.inbox._callers) == 1)


def test_the_caller_handles_its_own_result_and_the_session_thread_sleeps(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wake-up of the waiting caller, none of the session thread: the caller handles the frames."""
    session, connection = fake
    result = _apply(session)
    _start(session, connection, 1)
    handlers = _handlers(monkeypatch)
    got: list[Any] = []
    caller = threading.Thread(target=lambda: got.append(result.get(RESULT_TIMEOUT)), name="the-caller")
    caller.start()
    _both_waiting(session)
    _results(session, [(0, 42)])
    caller.join(RESULT_TIMEOUT)
    assert got == [42]
    assert handlers == ["the-caller"]


def test_a_result_with_a_callback_is_set_in_the_session_thread(
    fake: tuple[Session, _FakeConnection],
) -> None:
    """A result with a user's callback is handed to the session thread, where the stdlib runs callbacks."""
    session, connection = fake
    ran_in: list[str] = []
    with_callback = _apply(session, lambda value: ran_in.append(threading.current_thread().name))
    plain = _apply(session)
    _start(session, connection, 2)
    caller = threading.Thread(target=lambda: plain.get(RESULT_TIMEOUT), name="the-caller")
    caller.start()
    _both_waiting(session)
    _results(session, [(0, 1), (1, 2)])
    caller.join(RESULT_TIMEOUT)
    assert (with_callback.get(RESULT_TIMEOUT), plain.get(RESULT_TIMEOUT)) == (1, 2)
    assert ran_in == ["achilles-session"]


def test_frames_the_caller_leaves_behind_reach_the_session_thread(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that gave up waiting (a timeout) takes nothing more: the session thread handles the result."""
    session, connection = fake
    result = _apply(session)
    _start(session, connection, 1)
    handlers = _handlers(monkeypatch)
    with pytest.raises(MpTimeoutError):
        result.get(0.01)
    wait_until(lambda: session.inbox._session is not None)
    _results(session, [(0, 7)])
    wait_until(result.ready)  # not get(): a caller finding the frames in the inbox would take them
    assert result.get(RESULT_TIMEOUT) == 7
    assert handlers == ["achilles-session"]


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_ctrl_c_while_the_caller_handles_frames_is_raised_after_them(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing mid-handling loses no result: the frames are handled, then KeyboardInterrupt raised."""
    session, connection = fake
    first, second = _apply(session), _apply(session)
    _start(session, connection, 2)
    handle = JobDriver.handle

    def interrupted(self: JobDriver, event: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGINT)  # Python runs its handler in this thread at once
        handle(self, event)

    monkeypatch.setattr(JobDriver, "handle", interrupted)
    answer = threading.Thread(target=lambda: (_both_waiting(session), _results(session, [(0, 1), (1, 2)])))
    answer.start()
    with pytest.raises(KeyboardInterrupt):
        first.get(RESULT_TIMEOUT)
    answer.join(RESULT_TIMEOUT)
    assert (first.get(RESULT_TIMEOUT), second.get(RESULT_TIMEOUT)) == (1, 2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_two_threads_waiting_on_one_result_both_get_it(fake: tuple[Session, _FakeConnection]) -> None:
    """One of them drives (it alone hangs its waiter on the result), the other waits; both return."""
    session, connection = fake
    result = _apply(session)
    _start(session, connection, 1)
    got: list[Any] = []
    callers = [threading.Thread(target=lambda: got.append(result.get(RESULT_TIMEOUT))) for _ in range(2)]
    for caller in callers:
        caller.start()
    wait_until(lambda: result.driver_waiter is not None and len(session.inbox._callers) == 1)
    _results(session, [(0, 5)])
    for caller in callers:
        caller.join(RESULT_TIMEOUT)
    assert got == [5, 5]
