"""What runs inside a node's worker processes: one task, from blobs to blobs.

A worker receives ``(job key, function blob or None, chunk blob)`` messages
on its own pipe (see ``worker_pool.py``). The function blob comes with the first
task of a job the worker sees: ``(func, callback, initializer, initargs)``.
The worker unpickles it once, makes the job's by-value functions share one
globals dict (so globals set by the initializer are visible to the tasks:
dill gives each function sent by value a dict of its own), runs the
initializer, and caches the result for the job's later tasks.

For each task it runs the function on every item of the chunk, applies the
job's callback to each result (the original achilles meaning of
``callback``), and pickles the list of results. A failure becomes a pickled
:class:`RemoteFailure` naming the item's offset in the chunk; the controller
adds the chunk's start to name the input item. Nothing here touches the
network: the node forwards the returned blob untouched.
"""

from __future__ import annotations

import ctypes
import multiprocessing.pool as mp_pool
import os
import pickle
import signal
import sys
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from achilles_like.serialization import RemoteFailure, dumps, loads

_CACHE_SIZE = 4
JOB_CACHE_SIZE = _CACHE_SIZE  # the manager tracks which jobs a worker has by the same bound
_FUNCTION_CACHE = 64


@dataclass
class JobCode:
    """A job's functions, ready to run in this worker.

    ``func`` is None for a *call job* (``Pool`` and the executor): each task
    then carries its own function blob, a mode and a list of payloads, and
    every payload gets its own outcome, so one failing ``apply_async`` fails
    only its own result, not the job.
    """

    func: Callable[[Any], Any] | None
    callback: Callable[[Any], Any] | None
    init_failure: bytes | None = None  # a pickled RemoteFailure if the initializer raised
    shared: dict[str, Any] = field(default_factory=dict)  # globals of by-value functions
    functions: OrderedDict[bytes, Any] = field(default_factory=OrderedDict)  # call jobs: blob -> function

    def function(self, blob: bytes) -> Any:
        """The function a call-job task names, unpickled once and sharing the job's globals."""
        func = self.functions.get(blob)
        if func is None:
            func = share_globals([loads(blob)], self.shared)[0]
            self.functions[blob] = func
            while len(self.functions) > _FUNCTION_CACHE:
                self.functions.popitem(last=False)
        return func


def init_worker() -> None:
    """Make the worker die with its node and leave Ctrl-C to the node agent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        # PR_SET_PDEATHSIG: if the node agent is killed (even SIGKILL), the
        # kernel kills this worker too, so no orphan keeps computing.
        pr_set_pdeathsig = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def share_globals(functions: list[Any], shared: dict[str, Any] | None = None) -> list[Any]:
    """Rebind functions sent by value onto one globals dict; others are returned as they are.

    A function imported by reference keeps its module's real globals, which
    are shared already. One sent by value (from ``__main__``, a notebook, a
    lambda) got a private dict from dill; giving them all the same dict, and
    rebinding the by-value functions found in it too, makes ``global x`` in
    the initializer visible to the task, as it is in ``multiprocessing``.
    """
    shared = {} if shared is None else shared

    def by_value(fn: Any) -> bool:
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        return isinstance(fn, types.FunctionType) and fn.__globals__ is not getattr(module, "__dict__", None)

    for fn in functions:
        if by_value(fn):
            # Values already in the shared dict win: the initializer may have set them.
            shared.update({k: v for k, v in fn.__globals__.items() if k not in shared})
    for name, value in list(shared.items()):
        if by_value(value):
            shared[name] = _rebind(value, shared)
    return [_rebind(fn, shared) if by_value(fn) else fn for fn in functions]


def _rebind(fn: types.FunctionType, shared: dict[str, Any]) -> types.FunctionType:
    clone = types.FunctionType(fn.__code__, shared, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__qualname__ = fn.__qualname__
    clone.__dict__.update(fn.__dict__)
    clone.__module__ = fn.__module__
    return clone


# A Pool's (or executor's) jobs come one after another: its token maps to the
# globals dict its initializer filled in this worker, so the initializer runs
# once per worker process, as in multiprocessing, not once per job.
_sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()


def load_job(func_blob: bytes) -> JobCode:
    """Unpickle a job's ``(func, callback, initializer, initargs[, session token])``; initialize once.

    If either step raises (a module missing on this node, an initializer
    that fails), every task of the job reports that failure.
    """
    try:
        func, callback, initializer, initargs, *token = loads(func_blob)
        shared = _sessions.get(token[0]) if token else None
        first = shared is None
        shared = {} if shared is None else shared
        func, callback, initializer = share_globals([func, callback, initializer], shared)
        if initializer is not None and first:
            initializer(*initargs)
        if token:
            _sessions[token[0]] = shared
            while len(_sessions) > _CACHE_SIZE:
                _sessions.popitem(last=False)
    except BaseException as error:  # noqa: BLE001 - reported with every task of the job
        return JobCode(_unavailable, None, dumps(RemoteFailure.capture(error, None)))
    return JobCode(func, callback, shared=shared)


def _unavailable(item: Any) -> Any:
    raise RuntimeError("the job's function could not be loaded on this node")


def run_chunk(code: JobCode, chunk_blob: bytes) -> tuple[bool, bytes]:
    """Run one chunk; return ``(True, results blob)`` or ``(False, failure blob)``."""
    if code.init_failure is not None:
        return False, code.init_failure
    if code.func is None:
        return True, run_calls(code, chunk_blob)
    index: int | None = None
    try:
        items = loads(chunk_blob)
        results = []
        func, callback = code.func, code.callback
        for index, item in enumerate(items):  # noqa: B007 - index names the failing item
            value = func(item)
            results.append(value if callback is None else callback(value))
        index = None
    except BaseException as error:  # noqa: BLE001 - every failure must reach the caller
        return False, dumps(RemoteFailure.capture(error, index))
    try:
        return True, dumps(results)
    except Exception as error:  # noqa: BLE001 - a result that cannot travel back
        wrapped = mp_pool.MaybeEncodingError(error, results)  # type: ignore[attr-defined]
        return False, dumps(RemoteFailure.capture(wrapped, None))


def run_calls(code: JobCode, chunk_blob: bytes) -> bytes:
    """Run a call-job task ``(function blob, mode, payloads)``; one outcome per payload.

    Modes: ``map`` calls ``f(x)``, ``star`` calls ``f(*x)``, ``apply`` calls
    ``f(*args, **kwargs)`` for ``x = (args, kwargs)``. An outcome is
    ``(True, value)`` or ``(False, RemoteFailure)``.
    """
    outcomes: list[tuple[bool, Any]] = []
    try:
        func_blob, mode, payloads = loads(chunk_blob)
        func = code.function(func_blob)
    except BaseException as error:  # noqa: BLE001 - the whole task failed to load
        return dumps([(False, RemoteFailure.capture(error, None))])
    for payload in payloads:
        try:
            if mode == "map":
                value = func(payload)
            elif mode == "star":
                value = func(*payload)
            else:
                value = func(*payload[0], **payload[1])
            outcomes.append((True, value))
        except BaseException as error:  # noqa: BLE001 - this payload's caller gets it
            outcomes.append((False, RemoteFailure.capture(error, None)))
    try:
        return dumps(outcomes)
    except Exception:  # noqa: BLE001 - find the results that cannot travel back
        return dumps([_encodable(outcome) for outcome in outcomes])


def _encodable(outcome: tuple[bool, Any]) -> tuple[bool, Any]:
    try:
        dumps(outcome)
        return outcome
    except Exception as error:  # noqa: BLE001 - MaybeEncodingError, as in multiprocessing
        wrapped = mp_pool.MaybeEncodingError(error, outcome[1])  # type: ignore[attr-defined]
        return False, RemoteFailure.capture(wrapped, None)


def worker_main(conn: Any) -> None:
    """A worker process's loop: read a task from the pipe, run it, write the outcome."""
    init_worker()
    jobs: OrderedDict[int, JobCode] = OrderedDict()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the node closed the pipe: it is shutting down
        key, func_blob, chunk_blob = pickle.loads(data)
        if func_blob is not None:
            jobs[key] = load_job(func_blob)
            while len(jobs) > _CACHE_SIZE:
                jobs.popitem(last=False)
        code = jobs.get(key) or JobCode(_unavailable, None)  # the pool sends the blob first
        outcome = run_chunk(code, chunk_blob)
        conn.send_bytes(pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL))
