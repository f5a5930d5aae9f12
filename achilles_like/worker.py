"""What runs inside a node's pool worker processes: one task, from blobs to blobs.

A task arrives as the job's function blob and one chunk blob. The worker
unpickles the function once per job (a small cache keyed by the job), runs it
on every item of the chunk, applies the job's callback to each result (the
original achilles meaning of ``callback``), and pickles the list of results.
A failure becomes a pickled :class:`RemoteFailure` naming the item's offset
in the chunk; the controller adds the chunk's start to name the input item.

Nothing here touches the network: the node agent forwards the returned blob
untouched, so results are pickled once, in the worker.
"""

from __future__ import annotations

import ctypes
import multiprocessing.pool as mp_pool
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from achilles_like.serialization import RemoteFailure, dumps, loads

_CACHE_SIZE = 4
# Set by init_worker: a shared "every task key up to here is cancelled" mark.
_cancelled_mark: Any = None
_functions: OrderedDict[str, tuple[Callable[[Any], Any], Callable[[Any], Any] | None]] = OrderedDict()


def task_key(generation: int, job_id: int) -> int:
    """Order tasks by connection generation, then job: the cancel mark compares these."""
    return (generation << 32) | job_id


def init_worker(cancelled_mark: Any = None) -> None:
    """Make the worker die with its node and leave Ctrl-C to the node agent.

    ``cancelled_mark`` is a shared integer: a task whose key is at or below it
    belongs to a cancelled job or a lost connection, and is skipped unrun.
    """
    global _cancelled_mark
    _cancelled_mark = cancelled_mark
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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


def _function_for(job_key: str, func_blob: bytes) -> tuple[Callable[[Any], Any], Callable[[Any], Any] | None]:
    cached = _functions.get(job_key)
    if cached is None:
        cached = loads(func_blob)
        _functions[job_key] = cached
        while len(_functions) > _CACHE_SIZE:
            _functions.popitem(last=False)
    return cached


def run_task(key: int, func_blob: bytes, chunk_blob: bytes) -> tuple[bool, bytes]:
    """Run one chunk; return ``(True, results blob)`` or ``(False, failure blob)``.

    A task already cancelled when a worker picks it up returns ``(False, b"")``
    without running; the node discards it.
    """
    if _cancelled_mark is not None and key <= _cancelled_mark.value:
        return False, b""
    job_key = f"{os.getpid()}:{key}"
    index: int | None = None
    try:
        func, callback = _function_for(job_key, func_blob)
        items = loads(chunk_blob)
        results = []
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
