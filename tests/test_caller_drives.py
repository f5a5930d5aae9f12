"""A caller waiting on its result handles the session's frames itself: a fake server in memory.

The test plays the server and the reactor thread: it answers what the
session sends by putting frames in the session's inbox, once the threads
it means to test are waiting there.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import TimeoutError as MpTimeoutError
from typing import Any

import pytest
from conftest import wait_until

from achilles_like import Pool
from achilles_like.client import pool as pool_module
from achilles_like.client import session as session_module
from achilles_like.client.connection import Lost
from achilles_like.client.driver import Batch, JobDriver
from achilles_like.client.executor import ClusterFuture, _future_sink
from achilles_like.client.results import AsyncResult, IMapIterator, MapResult
from achilles_like.client.session import Session
from achilles_like.client.sources import ApplySource, IMapSource, MapSource
from achilles_like.config import Settings
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg
from achilles_like.serialization import dumps

RESULT_TIMEOUT = 60.0

# Signals (Ctrl-C) reach only the main thread.
main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)


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


def _results(session: Session, results: list[tuple[int, Any]], *more: msg.Message) -> None:
    """The tasks' results, in one batch (with ``more`` frames after them)."""
    entries = [(task, 0, 1, dumps([value])) for task, value in results]
    _put(session, msg.Results(job=1, entries=entries), *more)


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


def _as_caller(session: Session, wait: Callable[[], object], answer: Callable[[], None]) -> None:
    """Run ``wait`` in a thread named "the-caller"; once it and the session thread wait, ``answer``."""
    caller = threading.Thread(target=wait, name="the-caller")
    caller.start()
    _both_waiting(session)
    answer()
    caller.join(RESULT_TIMEOUT)


def test_the_caller_handles_its_own_result_and_the_session_thread_sleeps(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wake-up of the waiting caller, none of the session thread: the caller handles the frames."""
    session, connection = fake
    result = _apply(session)
    _start(session, connection, 1)
    handlers = _handlers(monkeypatch)
    got: list[Any] = []
    _as_caller(session, lambda: got.append(result.get(RESULT_TIMEOUT)), lambda: _results(session, [(0, 42)]))
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
    _as_caller(session, lambda: plain.get(RESULT_TIMEOUT), lambda: _results(session, [(0, 1), (1, 2)]))
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


@main_thread_only
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


def test_a_handed_over_result_is_set_even_if_the_connection_is_lost_meanwhile(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss comes while a caller handles a result it hands over: the session breaks, the result is set."""
    session, connection = fake
    with_callback = _apply(session, lambda value: None)
    plain = _apply(session)
    _start(session, connection, 2)
    handle = JobDriver.handle

    def losing(self: JobDriver, event: Any) -> None:
        if threading.current_thread().name == "the-caller":
            session.inbox.put(Lost("the connection was lost"))  # the reactor thread, meanwhile
        handle(self, event)

    monkeypatch.setattr(JobDriver, "handle", losing)
    _as_caller(session, lambda: plain.get(RESULT_TIMEOUT), lambda: _results(session, [(0, 1), (1, 2)]))
    session.join(RESULT_TIMEOUT)
    assert (with_callback.get(RESULT_TIMEOUT), plain.get(RESULT_TIMEOUT)) == (1, 2)


def test_a_handed_over_success_stands_when_the_session_breaks_before_it_is_set(
    fake: tuple[Session, _FakeConnection],
) -> None:
    """A map's last chunk and the server's ERROR in one batch: the map succeeds and its callback runs."""
    session, connection = fake
    called: list[Any] = []
    plain = _apply(session)
    mapped = MapResult(1, callback=called.append)
    mapped._session = session
    session.add(MapSource(b"blob", [1], 1, mapped))
    _start(session, connection, 2)
    last_chunk = msg.Results(job=1, entries=[(1, 0, 1, dumps([5]))])
    last_chunk_then_error = (last_chunk, msg.Error(code="refused", msg="no"))
    _as_caller(session, lambda: plain.wait(RESULT_TIMEOUT), lambda: _put(session, *last_chunk_then_error))
    session.join(RESULT_TIMEOUT)
    assert mapped.get(RESULT_TIMEOUT) == [5]
    assert called == [[5]]


def test_a_pool_collected_as_its_caller_sets_the_last_result_shuts_down_elsewhere(
    fake: tuple[Session, _FakeConnection],
) -> None:
    """``Pool(2).apply_async(f).get()``: the result held the pool's last reference.

    Setting it runs the pool's finalizer in the caller, inside a driving step;
    the shutdown, which waits for the session thread, goes to a thread of its
    own, or get() would wait out the session's 30 s join.
    """
    session, connection = fake

    class Owner:
        pass

    result = _apply(session)
    owner = Owner()
    weakref.finalize(owner, pool_module._shutdown, session, None, True)  # as Pool.__init__ does
    result._owner = owner
    del owner
    _start(session, connection, 1)
    got: list[Any] = []
    caller = threading.Thread(target=lambda: got.append(result.get(RESULT_TIMEOUT)), name="the-caller")
    caller.start()
    _both_waiting(session)
    _results(session, [(0, 3)])
    caller.join(20)  # far below the 30 s the caller would otherwise be stuck
    assert got == [3]
    session.join(RESULT_TIMEOUT)
    assert session.broken is not None  # the finalizer terminated it


@main_thread_only
def test_ctrl_c_while_the_caller_handles_an_ended_job_still_wakes_the_session(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job fails (ENDED) in frames the main thread handles as Ctrl-C lands: queued work gets a new job."""
    session, connection = fake
    first = _apply(session)
    _start(session, connection, 1)
    second = _apply(session)  # no credit left: it waits in the session's sources
    handle = JobDriver.handle

    def interrupted(self: JobDriver, event: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGINT)
        handle(self, event)

    monkeypatch.setattr(JobDriver, "handle", interrupted)
    ended = msg.Ended(job=1, outcome="failed", reason="a test")
    answer = threading.Thread(target=lambda: (_both_waiting(session), _put(session, ended)))
    answer.start()
    with pytest.raises(KeyboardInterrupt):
        first.get(RESULT_TIMEOUT)
    answer.join(RESULT_TIMEOUT)
    assert not first.successful()
    wait_until(lambda: sum(isinstance(m, msg.Submit) for m in connection.sent) == 2, what="a second job")
    assert not second.ready()


@main_thread_only
def test_ctrl_c_while_the_caller_waits_leaves_no_waiter_behind(fake: tuple[Session, _FakeConnection]) -> None:
    """Ctrl-C in get() unregisters the caller from the inbox: later frames wake a live reader."""
    session, connection = fake
    result = _apply(session)
    _start(session, connection, 1)
    killer = threading.Thread(target=lambda: (_both_waiting(session), os.kill(os.getpid(), signal.SIGINT)))
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        result.get(RESULT_TIMEOUT)
    killer.join(RESULT_TIMEOUT)
    assert not session.inbox._callers
    _results(session, [(0, 4)])
    assert result.get(RESULT_TIMEOUT) == 4


def test_a_future_s_result_returns_before_its_done_callbacks_run(
    fake: tuple[Session, _FakeConnection],
) -> None:
    """As in concurrent.futures: result() goes on while a done-callback still runs (it may wait for it)."""
    session, connection = fake
    future = ClusterFuture(session)
    session.add(ApplySource(Batch(b"blob", [((), {})], _future_sink(future))))
    _start(session, connection, 1)
    returned = threading.Event()
    seen: list[bool] = []
    future.add_done_callback(lambda done: seen.append(returned.wait(RESULT_TIMEOUT)))
    answer = threading.Thread(target=lambda: (_both_waiting(session), _results(session, [(0, 9)])))
    answer.start()
    assert future.result(2 * RESULT_TIMEOUT) == 9  # longer than the callback waits for it
    returned.set()
    answer.join(RESULT_TIMEOUT)
    wait_until(lambda: bool(seen))
    assert seen == [True]


def _imap(session: Session, items: list[int], max_ahead: int) -> IMapIterator:
    """A Pool's ``imap_unordered`` on the fake session, as ``Pool._imap`` builds it."""
    iterator = IMapIterator(False, on_consumed=session.feed_soon)
    iterator._session = session
    session.add(IMapSource(b"blob", items, 1, iterator, max_ahead, wake=session.wake))
    return iterator


def _senders(connection: _FakeConnection, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that send tasks, one per write that carries any."""
    names: list[str] = []
    send = connection.send

    def recording(*parts: bytes) -> None:
        before = connection.tasks()
        send(*parts)
        if connection.tasks() > before:
            names.append(threading.current_thread().name)

    monkeypatch.setattr(connection, "send", recording)
    return names


def test_an_imap_consumer_handles_its_results_and_sends_what_it_made_room_for(
    fake: tuple[Session, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer with nothing ready handles the frames; consuming past the bound feeds from its thread.

    Two results fill the bound of two; taking them lets the held-back input
    go, and the consumer sends it itself: the session thread is woken for
    neither the results nor the feed.
    """
    session, connection = fake
    iterator = _imap(session, [0, 1, 2, 3], max_ahead=2)
    _start(session, connection, 2)
    handlers, senders = _handlers(monkeypatch), _senders(connection, monkeypatch)
    got: list[int] = []
    consumer = threading.Thread(target=lambda: got.extend(iterator), name="the-caller")
    consumer.start()
    _both_waiting(session)
    _results(session, [(0, 10), (1, 11)], msg.Credit(job=1, n=2))
    wait_until(lambda: connection.tasks() == 4, what="the held-back tasks")
    _both_waiting(session)
    _results(session, [(2, 12), (3, 13)], msg.Credit(job=1, n=2))  # the source sees its end at a feed
    consumer.join(RESULT_TIMEOUT)
    assert not consumer.is_alive()
    assert sorted(got) == [10, 11, 12, 13]
    assert set(handlers) == {"the-caller"}
    assert senders == ["the-caller"]


@pytest.fixture
def fake_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Pool, _FakeConnection]]:
    """A real Pool whose session talks to a fake connection; lazy sources bounded at 2 results."""
    connection = _FakeConnection()
    monkeypatch.setattr(session_module.Connection, "open", lambda settings, events=None: connection)
    monkeypatch.setattr(pool_module, "pool_cluster", lambda *args: (Settings(), None))
    monkeypatch.setattr(pool_module, "IMapSource", functools.partial(IMapSource, max_ahead=2))
    pool = Pool(2)
    try:
        yield pool, connection
    finally:
        pool.terminate()


def _interrupted_as_the_consumer_feeds(
    pool: Pool, connection: _FakeConnection, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[int]]:
    """Two results fill the bound; the main thread consumes them, and Ctrl-C lands as it sends input.

    Returns the iterator and what the main thread got, retrying ``next()``
    after a KeyboardInterrupt as a user at a prompt would.
    """
    session = pool._session
    results = pool.imap(abs, [0, 1, 2, 3])
    _start(session, connection, 2)
    _results(session, [(0, 10), (1, 11)], msg.Credit(job=1, n=2))  # no consumer waits: the session thread
    wait_until(
        lambda: (
            results.received == 2
            and session.inbox.empty()
            and session.inbox._session is not None  # the session thread sleeps: the bound held the input back
            and session._driver is not None
            and session._driver.credit == 2
        ),
        what="the results, and the session thread asleep",
    )
    task = JobDriver._task
    fired: list[bool] = []

    def interrupted(self: JobDriver, *args: Any) -> None:
        if threading.current_thread() is threading.main_thread() and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the main thread pickles the input
        task(self, *args)

    monkeypatch.setattr(JobDriver, "_task", interrupted)
    got: list[int] = []
    attempts = 0
    while len(got) < 2 and attempts < 3:
        attempts += 1
        try:
            got.append(results.next(timeout=0))
        except KeyboardInterrupt:
            continue
        except MpTimeoutError:
            break
    return results, got


@main_thread_only
def test_ctrl_c_while_an_imap_consumer_sends_input_loses_no_result(
    fake_pool: tuple[Pool, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing as next()'s feed (on_consumed -> feed_soon) sends input loses neither result."""
    pool, connection = fake_pool
    _, got = _interrupted_as_the_consumer_feeds(pool, connection, monkeypatch)
    assert got == [10, 11]


@main_thread_only
def test_ctrl_c_while_an_imap_consumer_sends_input_leaves_the_input_to_be_sent(
    fake_pool: tuple[Pool, _FakeConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input taken from the source by a feed that Ctrl-C lands in is still sent, and its results come."""
    pool, connection = fake_pool
    results, _ = _interrupted_as_the_consumer_feeds(pool, connection, monkeypatch)
    wait_until(lambda: connection.tasks() == 4, timeout=10, what="the input the consumer made room for")
    _results(pool._session, [(2, 12), (3, 13)])
    assert [results.next(timeout=RESULT_TIMEOUT) for _ in range(2)] == [12, 13]
