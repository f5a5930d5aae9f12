"""Functions the end-to-end tests send to nodes.

They live in an importable module (not in the test files) so nodes import
them by reference, the way a user's own module would be; LocalCluster gives
its nodes the caller's ``sys.path``, which includes this directory.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from typing import Any


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def identity(x: Any) -> Any:
    """Return the item unchanged (round-trips data through the cluster)."""
    return x


def length(x: bytes) -> int:
    """Return ``len(x)``."""
    return len(x)


def negate(x: int) -> int:
    """Return ``-x`` (used as a callback)."""
    return -x


def pid_of(_: object) -> int:
    """Return the pid of the worker process that ran the item."""
    return os.getpid()


def slow_square(x: int, delay: float = 0.05) -> int:
    """Square ``x`` after ``delay`` seconds of simulated work."""
    time.sleep(delay)
    return x * x


class CustomError(Exception):
    """An exception type of the user's own."""


def fail_on_three(x: int) -> int:
    """Raise CustomError for the item 3, square every other item."""
    if x == 3:
        raise CustomError(f"item {x} is unlucky")
    return x * x


def slow_pid_of(_: object, delay: float = 0.05) -> int:
    """Return the worker's pid after ``delay`` seconds, so a job's items spread over workers."""
    time.sleep(delay)
    return os.getpid()


def gated(item: tuple[str, str, int]) -> int:
    """Return the item's value; ``("wait", path, v)`` first waits (30 s at most) for ``path`` to exist.

    ``("open", path, v)`` creates ``path``; ``("plain", path, v)`` just returns ``v``.
    With one "wait" item among "open" items the
    waiting item is guaranteed to finish after another item did, with no timing guess.
    """
    kind, path, value = item
    if kind == "plain":
        return value
    if kind == "open":
        with open(path, "a"):
            pass
        return value
    deadline = time.monotonic() + 30.0
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return value


def exit_on_three(x: int) -> int:
    """Kill the worker process (os._exit) on item 3, every time; square the rest."""
    if x == 3:
        os._exit(7)
    return x * x


def segfault_on_three(x: int) -> int:
    """Crash the worker with a segmentation fault on item 3, every time."""
    if x == 3:
        import ctypes

        ctypes.string_at(0)
    return x * x


def exit_once_on_three(marker: str, x: int) -> int:
    """Kill the worker on item 3 the first time only (``marker`` file remembers); square items."""
    if x == 3 and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(9)
    return x * x


def report_pid_then_wait(directory: str, x: int) -> int:
    """On item 0, write this worker's pid to ``directory/pid`` and wait for ``directory/go``."""
    if x == 0:
        with open(os.path.join(directory, "pid.tmp"), "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(os.path.join(directory, "pid.tmp"), os.path.join(directory, "pid"))
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(directory, "go")) and time.monotonic() < deadline:
            time.sleep(0.01)
    return x * x


def hang_on_three(x: int) -> int:
    """Never finish on item 3 (until killed); square the rest."""
    if x == 3:
        time.sleep(3600)
    return x * x


def allocate_in_cgroup(cgroup: str, megabytes: int, x: int) -> int:
    """Join the memory cgroup ``cgroup`` and touch ``megabytes`` of memory (past its limit); square x.

    With ``cgroup`` empty (no cgroup could be made) the worker delivers itself
    SIGKILL halfway through the allocation instead, as the OOM killer would.
    """
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    block = bytearray(megabytes << 20)
    for offset in range(0, len(block), 4096):  # touch every page: that is what gets charged
        block[offset] = 1
        if not cgroup and offset >= len(block) // 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def shout(x: int) -> int:
    """Print ``out x`` on stdout and ``err x`` on stderr, then return ``x``."""
    import sys

    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x


def where_unpickled(payload: Any) -> tuple[str, Any]:
    """What a :class:`ThreadTag` unpickles to: the name of the thread that unpickled it, and its payload."""
    return threading.current_thread().name, payload


class ThreadTag:
    """A value that says, once unpickled, which thread of the caller's process unpickled it."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return where_unpickled, (self.payload,)


def tagged(size: int) -> ThreadTag:
    """A ``size``-byte payload (and a bytearray and a str beside it) in a :class:`ThreadTag`."""
    return ThreadTag([bytes(range(256)) * (size // 256), bytearray(b"\x05" * 300_000), "é" * 200_000])


def refuse_to_load(size: int) -> None:
    """Raise: what unpickling a :class:`LoadFails` calls."""
    raise ValueError(f"a {size}-byte result refuses to be unpickled")


class LoadFails:
    """A value that pickles on a node and raises when the caller unpickles it."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return refuse_to_load, (self.size,)


def fails_to_load(size: int) -> list[Any]:
    """A ``size``-byte result whose last part cannot be unpickled by the caller."""
    return [b"\x01" * size, LoadFails(size)]


def module_file(name: str) -> str:
    """Import ``name`` in the worker and say where it came from."""
    module = importlib.import_module(name)
    return str(module.__file__)
