"""One Twisted reactor in a daemon thread for the whole process, and a blocking way in.

The reactor is started once, lazily, in a thread named ``achilles-reactor``
with ``installSignalHandlers=False`` (so Ctrl-C stays with the user's main
thread), and lives until the interpreter exits. Every call goes in through
``callFromThread``; a blocking :func:`call` waits on a
``concurrent.futures.Future``. Waiting on the reactor thread itself would
deadlock, so it raises at once instead. The client never starts a
subprocess per call and never restarts a reactor, so it works the same in a
script, a REPL and a notebook.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from achilles_like import at_exit

T = TypeVar("T")
THREAD_NAME = "achilles-reactor"
_lock = threading.Lock()
_thread: threading.Thread | None = None


def reactor() -> Any:
    """Return the global reactor, running in its thread."""
    global _thread
    from twisted.internet import reactor as the_reactor

    with _lock:
        if _thread is None:
            started = threading.Event()
            the_reactor.callWhenRunning(started.set)
            _thread = threading.Thread(
                target=the_reactor.run,
                kwargs={"installSignalHandlers": False},
                name=THREAD_NAME,
                daemon=True,
            )
            _thread.start()
            started.wait()
            at_exit.register(_stop)
    return the_reactor


def in_reactor_thread() -> bool:
    """Whether the caller is the reactor thread."""
    return threading.current_thread() is _thread


def call(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """Run ``fn(*args)`` in the reactor thread and wait for its (Deferred) result."""
    if in_reactor_thread():
        raise RuntimeError("achilles_like blocking calls cannot be made from the reactor thread")
    the_reactor = reactor()
    future: Future[Any] = Future()

    def failed(failure: Failure) -> None:
        future.set_exception(failure.value)

    def run() -> None:
        deferred = defer.maybeDeferred(fn, *args)
        deferred.addCallbacks(future.set_result, failed)

    the_reactor.callFromThread(run)
    return future.result(timeout)


def call_soon(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in the reactor thread without waiting."""
    reactor().callFromThread(fn, *args)


def _stop() -> None:
    from twisted.internet import reactor as the_reactor

    if _thread is not None and _thread.is_alive():
        the_reactor.callFromThread(_stop_in_reactor, the_reactor)  # type: ignore[attr-defined]
        _thread.join(timeout=5)


def _stop_in_reactor(the_reactor: Any) -> None:
    from twisted.internet.error import ReactorNotRunning

    try:
        the_reactor.stop()
    except ReactorNotRunning:
        pass  # already stopping
