"""Functions the Pool and Executor conformance tests send to worker processes.

They live in an importable module (not in the test files) so that both the
stdlib pools (fork: by reference) and achilles nodes (by import, LocalCluster
gives its nodes the caller's ``sys.path``) run the very same code.

Nothing here synchronises by sleeping: a "slow" task waits for a *gate* file
that the test creates when it wants the task to finish (with a generous upper
bound, so a broken implementation fails instead of hanging), and a task that
must be seen running first creates a *started* marker file. ``time.sleep`` is
only used as a short poll interval inside those waits, or as simulated work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

GATE_TIMEOUT = 30.0  # seconds a gated task waits at most for its gate file
RENDEZVOUS_TIMEOUT = 15.0  # seconds a rendezvous task waits at most for its peers
POLL = 0.005

# Set by the initializers below in each worker process; read by tasks.
STATE: Any = None


class TaskError(Exception):
    """An exception type of the user's own, raised inside a task."""


class Unpicklable:
    """A result that cannot be sent back: pickling it (with pickle or dill) raises TypeError."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")

    def __repr__(self) -> str:
        return "<Unpicklable>"


def put_in(queue: Any, value: Any) -> Any:
    """Put ``value`` on a (Manager) queue proxy and return it."""
    queue.put(value)
    return value


def set_in(mapping: Any, key: Any, value: Any) -> Any:
    """Set ``mapping[key] = value`` on a (Manager) dict proxy."""
    mapping[key] = value
    return key


class Payload:
    """An argument that can be weakly referenced (to see that nobody keeps it)."""

    def __init__(self, value: int) -> None:
        self.value = value


def exit_abruptly(_: object = None) -> None:
    """Kill the worker process running this call (``os._exit``, no cleanup)."""
    os._exit(3)


class ReduceRaises:
    """An argument whose pickling raises RuntimeError (its ``__reduce__`` refuses)."""

    def __reduce__(self) -> Any:
        raise RuntimeError("ReduceRaises will not be pickled")


class UnpicklesBadly:
    """An argument that pickles, but whose unpickling in the worker raises ValueError."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())


def _refuse_to_load() -> Any:
    raise ValueError("UnpicklesBadly cannot be rebuilt here")


def _wait_for_file(path: str, timeout: float = GATE_TIMEOUT) -> bool:
    """Wait until ``path`` exists; return whether it appeared before ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def _touch(path: str) -> None:
    with open(path, "a", encoding="utf-8"):
        pass


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def negate(x: int) -> int:
    """Return ``-x``."""
    return -x


def add(a: int, b: int) -> int:
    """Return ``a + b`` (a two-argument function for starmap and Executor.map)."""
    return a + b


def scaled(x: int, factor: int = 1, offset: int = 0) -> int:
    """Return ``x * factor + offset`` (checks that positional args and kwds both arrive)."""
    return x * factor + offset


def pid_of(_: object = None) -> int:
    """Return the pid of the worker process that ran the task."""
    return os.getpid()


def slow_square(x: int, delay: float = 0.2) -> int:
    """Square ``x`` after ``delay`` seconds of simulated work."""
    time.sleep(delay)
    return x * x


def fail_on_three(x: int) -> int:
    """Raise TaskError("item 3 is unlucky") for 3, square every other item."""
    if x == 3:
        raise TaskError(f"item {x} is unlucky")
    return x * x


def wait_for(gate: str, value: Any) -> Any:
    """Return ``value`` once the file ``gate`` exists (after GATE_TIMEOUT seconds at most)."""
    _wait_for_file(gate)
    return value


def wait_for_item(item: tuple[str, Any]) -> Any:
    """``wait_for`` taking one ``(gate, value)`` item, for map and imap."""
    gate, value = item
    return wait_for(gate, value)


def start_and_wait(started: str, gate: str, value: Any) -> Any:
    """Create the file ``started``, then return ``value`` once ``gate`` exists."""
    _touch(started)
    return wait_for(gate, value)


def touch_and_return(marker: str, value: Any) -> Any:
    """Create the file ``marker`` (proof the task ran) and return ``value``."""
    _touch(marker)
    return value


def rendezvous(directory: str, name: str, parties: int) -> bool:
    """Check in as ``name`` in ``directory`` and wait for ``parties`` check-ins in all.

    Returns True only if all parties were running at the same time: proof of
    real parallelism without guessing at timings. Gives up (False) after
    RENDEZVOUS_TIMEOUT seconds, so a pool that runs the tasks one after
    another fails the test instead of hanging it.
    """
    os.makedirs(directory, exist_ok=True)
    _touch(os.path.join(directory, name))
    deadline = time.monotonic() + RENDEZVOUS_TIMEOUT
    while len(os.listdir(directory)) < parties:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def rendezvous_item(item: tuple[str, str, int]) -> bool:
    """``rendezvous`` taking one ``(directory, name, parties)`` item, for map and imap."""
    return rendezvous(*item)


def chunk_probe(item: tuple[int, str, int]) -> tuple[int, bool]:
    """Return ``(pid, ok)``; item 0 waits for ``gate``, the item ``last`` creates it.

    With items ``(i, gate, last)`` for ``i`` in ``range(last + 1)``, the worker
    that runs item 0 is stuck until every other chunk ran elsewhere, so the
    items reported with item 0's pid are exactly item 0's chunk. ``ok`` is
    False only if item 0 gave up waiting.
    """
    index, gate, last = item
    ok = True
    if index == 0:
        ok = _wait_for_file(gate)
    if index == last:
        _touch(gate)
    return os.getpid(), ok


def make_unpicklable(_: object = None) -> Unpicklable:
    """Return a result that cannot be pickled back to the caller."""
    return Unpicklable()


def make_generator(_: object = None) -> Iterator[int]:
    """Return a generator object (neither pickle nor dill can pickle one)."""
    return (i for i in range(3))


def init_state(value: Any) -> None:
    """Initializer: set this worker's module global ``STATE``."""
    global STATE
    STATE = value


def read_state(_: object = None) -> Any:
    """Return this worker's module global ``STATE`` (set by ``init_state``)."""
    return STATE


def log_init(path: str, value: Any = None) -> None:
    """Initializer: append this worker's pid to the file ``path``, then set ``STATE`` to ``value``.

    One short ``O_APPEND`` write per call, so concurrent workers never interleave lines.
    """
    global STATE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    STATE = value


def failing_init() -> None:
    """Initializer that always raises: the worker can never run a task."""
    raise RuntimeError("initializer failed on purpose")


def _refuse_here() -> None:
    """Unpickling hook: fails in a process where REFUSE_RESULTS is set (the caller's, in a test)."""
    if os.environ.get("ACHILLES_TEST_REFUSE_RESULTS") == "1":
        raise ValueError("cannot rebuild this result here")


class RefusedInCaller:
    """Pickles anywhere; unpickling raises only in a process with the refusing flag set."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_here, ())


def make_refused(_: object = None) -> RefusedInCaller:
    """Return an object the caller will fail to unpickle."""
    return RefusedInCaller()
