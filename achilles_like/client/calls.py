"""What a call is checked and turned into before anything is sent: input, chunksize, time limit, function.

Arguments are checked (callable, picklable, iterable, ``chunksize``,
``timeout``) before anything is sent, and before any cluster is started. A
function travels once per job as ``(func, mode, callback)`` pickled with dill;
:class:`FunctionBlobs` keeps the blob of the functions a Pool or an executor
uses, so a function is pickled once, not at every call.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from achilles_like.client.function_inputs import frozen_inputs, importable
from achilles_like.serialization import dumps_function

#: The most results a lazy ``imap`` holds that arrived and its caller has not consumed yet.
DEFAULT_MAX_AHEAD = 1024


def prepare_input(args: Any) -> Iterator[Any]:
    """An iterator over ``args``; a generator function is called first, as in achilles."""
    if inspect.isgeneratorfunction(args):
        args = args()
    try:
        return iter(args)
    except TypeError:
        raise TypeError(
            f"args must be an iterable (a list, range, generator...), not {type(args).__name__}"
        ) from None


def label_of(func: Callable[..., Any]) -> str:
    """A job's label (shown by status and the dashboard): the function's qualified name."""
    return str(getattr(func, "__qualname__", type(func).__name__))


def check_chunksize(chunksize: object) -> int:
    """Validate ``chunksize``: a whole number of at least 1."""
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be a whole number of at least 1, not {chunksize!r}")
    return chunksize


def check_timeout(timeout: float | None) -> None:
    """A per-task time limit must be a positive number of seconds (or None)."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds per task, not {timeout!r}")


def pickle_function(
    func: Callable[..., Any],
    callback: Callable[..., Any] | None = None,
    mode: str = "map",
    what: str = "func",
) -> bytes:
    """Serialize ``(func, mode, callback)`` with dill, or explain clearly why it cannot travel."""
    if not callable(func):
        raise TypeError(f"{what} must be callable, not {type(func).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, not {type(callback).__name__}")
    return pickle_or_explain(func, (func, mode, callback))


def pickle_setup(
    initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = (), token: str = ""
) -> bytes:
    """Serialize a job's setup: this process's ``multiprocessing`` authkey, then (dill) the
    initializer each worker runs once, its arguments and the session token.

    The authkey lets a worker use the ``multiprocessing.Manager()`` proxies passed
    to it (a proxy authenticates to its manager with it); it travels only over
    connections whose peers proved the cluster secret, and is never logged. It is
    unpickled before the rest, so proxies in ``initargs`` find it already set.
    """
    inner = b""
    if initializer is not None or initargs:
        inner = pickle_or_explain(initializer, (initializer, tuple(initargs), token), "initializer")
    elif token:
        inner = pickle_or_explain(None, (None, (), token))
    authkey = bytes(multiprocessing.current_process().authkey)
    return pickle.dumps((authkey, inner), pickle.HIGHEST_PROTOCOL)


def warm_up() -> None:
    """Does nothing: a Pool sends it at start so that its initializer runs in its workers then."""


def pickle_or_explain(func: object, payload: object, what: str = "function") -> bytes:
    """dill-pickle ``payload`` (built around ``func``), or raise a TypeError that says why not."""
    try:
        return dumps_function(payload)
    except Exception as error:
        raise TypeError(
            f"cannot send the {what} {getattr(func, '__qualname__', func)!r} to the cluster: it does not"
            f" pickle ({type(error).__name__}: {error}). Make sure the function, its default"
            " arguments and the globals it uses can be pickled by dill."
        ) from error


class FunctionBlobs:
    """The pickled form of the functions a Pool or an executor calls, made once per function and mode."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._lock = threading.Lock()
        # id(func), mode -> (func, blob); holding func keeps its id from being reused
        self._blobs: OrderedDict[tuple[int, str], tuple[Callable[..., Any], bytes]] = OrderedDict()

    def blob(self, func: Callable[..., Any], mode: str, what: str = "func") -> bytes:
        """The blob of ``(func, mode, None)``, pickled on first use."""
        key = (id(func), mode)
        with self._lock:
            cached = self._blobs.get(key)
            if cached is not None and cached[0] is func:
                self._blobs.move_to_end(key)
                return cached[1]
        blob = pickle_function(func, None, mode, what)
        with self._lock:
            self._blobs[key] = (func, blob)
            while len(self._blobs) > self._size:
                self._blobs.popitem(last=False)
        return blob


class ReferenceBlobs:
    """The module functions' ``(func, "map", callback)`` blobs, reused while they are surely exact.

    A function sent by name (:func:`~achilles_like.client.function_inputs.importable`)
    has a pickle that cannot go stale. One sent by value is reused only while
    every object its pickle was made of is the very same, immutable object
    (:func:`~achilles_like.client.function_inputs.frozen_inputs`): a rebound
    global, a new default or a refilled closure cell is pickled afresh, and a
    function naming anything mutable is pickled at every call.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._lock = threading.Lock()
        # (id(func), id(callback)) -> (what the pickle was made of, blob); the tuple holds func,
        # callback and every object it names, so none of their ids can be reused meanwhile.
        self._blobs: OrderedDict[tuple[int, int], tuple[tuple[object, ...], bytes]] = OrderedDict()

    def blob(self, func: Callable[..., Any], callback: Callable[..., Any] | None) -> bytes:
        """What :func:`pickle_function` gives, from the cache while it is surely the same."""
        inputs = _inputs(func, callback)
        key = (id(func), id(callback))
        if inputs is not None:
            with self._lock:
                cached = self._blobs.get(key)
                if cached is not None and _same(cached[0], inputs):
                    self._blobs.move_to_end(key)
                    return cached[1]
        blob = pickle_function(func, callback)
        if inputs is not None:
            with self._lock:
                self._blobs[key] = (inputs, blob)
                while len(self._blobs) > self._size:
                    self._blobs.popitem(last=False)
        return blob


def _inputs(func: object, callback: object) -> tuple[object, ...] | None:
    """What the pickle of ``(func, callback)`` is made of, or None if it may not be reused."""
    parts: list[object] = []
    for obj in (func, callback):
        if obj is None or importable(obj):
            parts.append(obj)
            continue
        inputs = frozen_inputs(obj)
        if inputs is None:
            return None
        parts += [obj, inputs]
    return tuple(parts)


def _same(old: tuple[object, ...], new: tuple[object, ...]) -> bool:
    """The same objects in the same places (identity, not equality: a list equal today may change)."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if a is not b and not (type(a) is tuple and type(b) is tuple and _same(a, b)):
            return False
    return True


#: The blobs of the module functions' calls, shared by every thread of the process.
module_blobs = ReferenceBlobs()
