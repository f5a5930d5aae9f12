"""A session's inbox: read by its session thread, or by a caller waiting on its own result.

The connection's reactor thread puts routed frames here
(``ClientProtocol._route``), the session's own helpers put wake-ups, and the
connection puts its loss. Whoever reads the inbox handles its events under
the session's driving lock, taking them from here only while holding it, so
events are handled in the order they came whichever thread handles them.

**Who is woken.** A caller blocked on the result of its own call
(``Pool.apply``, ``AsyncResult.get``, ``Future.result``, the next result of a
``Pool.imap``) registers a :class:`Waiter` and is woken for frames ahead of
the session thread: it handles them itself (its result is usually among them),
so a round trip wakes the reactor thread once and the caller once, and the
session thread not at all, where a stdlib ``Pool`` wakes its result-handler
thread too. Anything else (a wake-up, the connection's loss, a large result
still streaming in) goes to the session thread, and so do frames when no
caller waits. A woken waiter that leaves without taking what it was woken for
passes the wake-up on (:meth:`SessionInbox.leave`), so no event is ever left
with nobody to read it.

**RUNNING notices.** An executor's job hears ``RUNNING`` once per call,
when a worker takes it, a moment before that call's result; alone, each
would wake a reader to mark one future running. A batch made only of
``RUNNING`` frames is held and goes out in front of the next batch (a
``RESULT`` or ``CREDIT``, which wakes the reader anyway), or on its own
after :data:`RUNNING_DELAY`. So ``running()`` turns true at most that much
later; order is kept (a held notice goes before anything routed after it).
Only the reactor thread touches what is held: frames and the loss are put
there, and the timer runs there.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from achilles_like.client.connection import Lost
from achilles_like.protocol import Frame
from achilles_like.protocol import messages as msg

#: The longest a ``RUNNING`` notice waits for company before it is delivered alone (seconds).
RUNNING_DELAY = 0.005

_RUNNING = msg.Running.VERB

CallLater = Callable[[float, Callable[[], None]], object]


def _reactor_call_later(delay: float, fn: Callable[[], None]) -> object:
    from achilles_like.client import reactor_thread

    return reactor_thread.reactor().callLater(delay, fn)


class Waiter:
    """One thread's wait on an inbox; woken by what is put there, or by :meth:`wake` from anywhere.

    A result a caller waits on wakes it through this when it is set by
    another thread, so the caller's one wait covers both.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wake(self) -> None:
        """Let the waiting thread go on (a second wake before it waits again is harmless)."""
        try:
            self._lock.release()
        except RuntimeError:
            pass  # woken already

    def sleep(self, timeout: float | None) -> None:
        """Wait until woken (or ``timeout`` seconds)."""
        self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class SessionInbox:
    """The session's events, in order, and who is woken for them (see the module docstring)."""

    def __init__(self, call_later: CallLater = _reactor_call_later) -> None:
        self._mutex = threading.Lock()
        self._items: deque[Any] = deque()
        self._callers: deque[Waiter] = deque()  # callers waiting on their results, first come first woken
        self._session: Waiter | None = None  # the session thread, when it waits
        self._call_later = call_later
        self._held: list[Frame] = []
        self._timer_armed = False

    # -- putting (the reactor thread, and wake-ups from any thread) -----------------

    def put(self, item: Any) -> None:
        """Queue ``item``; a list of only ``RUNNING`` frames is held back (reactor thread)."""
        if type(item) is list:
            if item and all(frame.verb == _RUNNING for frame in item):
                self._hold(item)
                return
            if self._held:
                item, self._held = self._held + item, []
        elif isinstance(item, Lost) and self._held:
            self._append(self._take_held())  # what was held goes before the connection's loss
        self._append(item)

    def _append(self, item: Any) -> None:
        with self._mutex:
            self._items.append(item)
            waiter = self._reader_for(item)
        if waiter is not None:
            waiter.wake()

    def _reader_for(self, item: Any) -> Waiter | None:
        """Who to wake for ``item`` (hold the mutex): a waiting caller if it may take it, else the session."""
        if self._callers and _for_callers(item):
            return self._callers.popleft()
        waiter, self._session = self._session, None
        return waiter

    def _hold(self, frames: list[Frame]) -> None:
        self._held += frames
        if not self._timer_armed:
            self._timer_armed = True
            self._call_later(RUNNING_DELAY, self._release)

    def _release(self) -> None:
        """The delay ran out: deliver what is held, if the next batch has not taken it already."""
        self._timer_armed = False
        if self._held:
            self._append(self._take_held())

    def _take_held(self) -> list[Frame]:
        held, self._held = self._held, []
        return held

    # -- waiting (the session thread, or a caller) ------------------------------------

    def wait(self, waiter: Waiter, timeout: float | None, *, caller: bool) -> bool:
        """Wait for events (at once if there are some), or a wake-up, or ``timeout``; whether any are here.

        A ``caller`` is woken for frames before the session thread is, and
        counts only frames first in line as events for it. The events are
        not taken: take them with :meth:`take` while holding the session's
        driving lock.
        """
        with self._mutex:
            if self._ready(caller):
                return True
            if caller:
                self._callers.append(waiter)
            else:
                self._session = waiter
        try:
            waiter.sleep(timeout)
        finally:  # Ctrl-C in the sleep must not leave a dead waiter to be woken for frames
            with self._mutex:
                if caller:
                    if waiter in self._callers:
                        self._callers.remove(waiter)
                elif self._session is waiter:
                    self._session = None
        with self._mutex:
            return self._ready(caller)

    def _ready(self, caller: bool) -> bool:
        """Events this reader may take: for a caller, frames first in line (hold the mutex)."""
        items = self._items
        return bool(items) and (not caller or _for_callers(items[0]))

    def leave(self) -> None:
        """A caller stops reading: if events wait, wake the next reader (it may have been woken for them)."""
        with self._mutex:
            if not self._items:
                return
            waiter = self._reader_for(self._items[0])
        if waiter is not None:
            waiter.wake()

    def take(self, limit: int, *, frames_only: bool = False) -> list[Any]:
        """Up to ``limit`` events, in order (hold the session's driving lock).

        With ``frames_only`` (a caller), stop at the first event that is not
        a caller's (:func:`_for_callers`).
        """
        taken: list[Any] = []
        with self._mutex:
            items = self._items
            while items and len(taken) < limit:
                if frames_only and not _for_callers(items[0]):
                    break
                taken.append(items.popleft())
        return taken

    def empty(self) -> bool:
        """Whether no event waits."""
        return not self._items


def _for_callers(item: Any) -> bool:
    """Whether a waiting caller may handle ``item``: a list of frames with no large result streaming in.

    Wake-ups, handed-over calls and the connection's loss are the session
    thread's; so is a large result, whose body may take a while to arrive: a
    caller handles frames with Ctrl-C held off, and would hold it that long.
    """
    return type(item) is list and all(frame.stream is None for frame in item)
