"""What runs inside a node's worker processes: one task, from blobs to blobs.

A worker receives tasks on its own socket (see ``worker_pool.py``) in the
``pipe_format`` layout: a struct header (job key, function id, which blobs
follow and their lengths), then the blobs as the node received them. The setup
blob, ``(initializer, initargs, session token)``, comes with the first task of
a job the worker sees; a function blob, ``(func, mode, callback)``, with the
first task that calls it. The worker unpickles each once, makes the job's
by-value functions share one globals dict (so globals set by the initializer
are visible to the tasks: dill gives each function sent by value a dict of its
own), runs the initializer once per worker and session, and caches all of it
for the job's later tasks.

For each task it calls the function on every item (``map``: ``f(x)``,
``star``: ``f(*x)``, ``apply``: ``f(*args, **kwargs)``), applies the
function's callback to each value (the original achilles meaning of
``callback``), and returns one of:

- ``(True, values)``: every item succeeded; the pickled list of values;
- ``(False, outcomes)``: some item failed; a pickled list with one
  ``(True, value)`` or ``(False, RemoteFailure)`` per item, so a failure is
  named by its offset in the task and the others' values still arrive;
- ``(False, failure)``: the task as a whole failed (its items or function
  did not load, or the job's initializer raised): one pickled
  :class:`RemoteFailure` for all of its items.

Whether a failure ends the job is the server's and the controller's business,
not the worker's. Nothing here touches the network: the node forwards the
returned blob untouched. The worker writes it behind a ``pipe_format`` result
header (``os.writev``: header and blob are not joined).

The loop reads every byte the node has written in one ``read`` (several
tasks' headers and blobs), claims each task before running it (the node may
have taken it back: ``claims.py``), and keeps the results in an ``Outbox``
while the tasks already received run back to back: they leave in one
``writev`` before the next read that may block, once the oldest of them
waited for over :data:`HOLD` seconds of work, or past :data:`READ_SIZE`
bytes. So a batch of tiny tasks costs one read and one write, and a long
task's result is never held behind the next task. The
pickler, the output capture's writers and the caller's authkey are set up
once, not per task. A large argument or result is held once: items over
:data:`STREAM_OVER` bytes are unpickled from the socket (``pickle`` reads a
large ``bytes`` payload with ``readinto`` into the object it builds), and a
result is pickled into pieces whose large payloads are the result's own
``bytes`` objects (``PieceDumper``), written with ``writev``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.pool as mp_pool
import os
import pickle
import signal
import sys
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import multiprocess

from achilles_like import task_output
from achilles_like.node import pipe_format
from achilles_like.node.claims import ClaimBoard
from achilles_like.protocol.body_buffer import BodyBuffer
from achilles_like.serialization import PieceDumper, RemoteFailure, dumps, loads
from achilles_like.tls import allow_tls_stack

_CACHE_SIZE = 4
READ_SIZE = 256 << 10  # bytes asked of the socket per read: every small task the node has queued
HOLD = 0.001  # seconds a finished result may wait for the tasks after it to share its write
STREAM_OVER = 1 << 20  # items blobs larger than this are unpickled from the socket, not from a copy
_IOV_MAX = 1024  # Linux's limit on buffers per writev
_UNKNOWN = object()
JOB_CACHE_SIZE = _CACHE_SIZE  # the worker pool tracks which jobs a worker has by the same bound


@dataclass
class JobCode:
    """A job's setup and functions, ready to run in this worker."""

    init_failure: bytes | None = None  # a pickled RemoteFailure if the initializer raised
    authkey: bytes | None = None  # the caller's multiprocessing authkey, for its Manager proxies
    shared: dict[str, Any] = field(default_factory=dict)  # globals of by-value functions
    functions: dict[int, Function | bytes] = field(default_factory=dict)  # fn id -> ready, or its failure

    def add_function(self, fn: int, blob: bytes) -> None:
        """Unpickle one of the job's functions, sharing the job's globals (or keep why it failed)."""
        try:
            func, mode, callback = loads(blob)
            func, callback = share_globals([func, callback], self.shared)
            self.functions[fn] = Function(func, mode, callback)
        except BaseException as error:  # noqa: BLE001 - reported with every task that calls it
            self.functions[fn] = dumps(RemoteFailure.capture(error, None))


@dataclass
class Function:
    """One job function: what to call, how to pass it each item, and what to apply to each value."""

    func: Callable[..., Any]
    mode: str  # "map": f(x), "star": f(*x), "apply": f(*args, **kwargs) for x = (args, kwargs)
    callback: Callable[[Any], Any] | None = None

    def __call__(self, item: Any) -> Any:
        if self.mode == "map":
            value = self.func(item)
        elif self.mode == "star":
            value = self.func(*item)
        else:
            value = self.func(*item[0], **item[1])
        return value if self.callback is None else self.callback(value)


def init_worker() -> None:
    """Make the worker die with its node and leave Ctrl-C to the node agent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Forked from the node's reactor thread: a signal here must not wake the node's reactor.
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass  # forked from a thread other than the main one: no wakeup fd was set there
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


def load_job(setup_blob: bytes) -> JobCode:
    """Unpickle a job's ``(initializer, initargs, session token)`` and run the initializer once.

    An empty blob is a job with no setup. If either step raises (a module
    missing on this node, an initializer that fails), every task of the job
    reports that failure.
    """
    if not setup_blob:
        return JobCode()
    try:
        authkey, inner = loads(setup_blob)
        use_authkey(authkey)  # before initargs are unpickled: they may hold Manager proxies
        if not inner:
            return JobCode(authkey=authkey)
        initializer, initargs, token = loads(inner)
        shared = _sessions.get(token)
        first = shared is None
        shared = {} if shared is None else shared
        (initializer,) = share_globals([initializer], shared)
        if initializer is not None and first:
            initializer(*initargs)
        _sessions[token] = shared
        while len(_sessions) > _CACHE_SIZE:
            _sessions.popitem(last=False)
    except BaseException as error:  # noqa: BLE001 - reported with every task of the job
        return JobCode(dumps(RemoteFailure.capture(error, None, whole_job=True)))
    return JobCode(shared=shared, authkey=authkey)


def use_authkey(authkey: bytes | None) -> None:
    """Let this worker's Manager proxies authenticate as the caller's (both multiprocessing flavours)."""
    if authkey:
        multiprocessing.current_process().authkey = authkey
        multiprocess.current_process().authkey = authkey


def task_failure(code: JobCode, fn: int) -> bytes | None:
    """Why every task of ``fn`` fails before its items are even loaded (a pickled failure), or None."""
    if code.init_failure is not None:
        return code.init_failure
    function = code.functions.get(fn)
    if function is None:
        return _missing(fn)
    return function if isinstance(function, bytes) else None


def run_items(
    function: Function, items: list[Any], dump: Callable[[object], list[bytes]]
) -> tuple[bool, list[bytes]]:
    """Call ``function`` on every item; see the module docstring for the shapes of what comes back."""
    # The common case, a plain map without a callback, calls the user's function directly.
    call = function.func if function.mode == "map" and function.callback is None else function
    values: list[Any] = []
    failed = False
    for index, item in enumerate(items):
        try:
            values.append(call(item))
        except BaseException as error:  # noqa: BLE001 - this item's caller gets it
            if not failed:  # the values so far become outcomes
                failed = True
                values = [(True, value) for value in values]
            values.append((False, RemoteFailure.capture(error, index)))
            continue
        if failed:
            values[-1] = (True, values[-1])
    try:
        return not failed, dump(values)
    except Exception:  # noqa: BLE001 - find the values that cannot travel back
        outcomes = values if failed else [(True, value) for value in values]
        return False, [dumps([_encodable(outcome, index) for index, outcome in enumerate(outcomes)])]


def _missing(fn: int) -> bytes:
    try:
        raise RuntimeError(f"function {fn} of the job never reached this worker (a node bug)")
    except RuntimeError as error:
        return dumps(RemoteFailure.capture(error, None))


def _encodable(outcome: tuple[bool, Any], index: int) -> tuple[bool, Any]:
    try:
        dumps(outcome)
        return outcome
    except Exception as error:  # noqa: BLE001 - MaybeEncodingError, as in multiprocessing
        wrapped = mp_pool.MaybeEncodingError(error, outcome[1])  # type: ignore[attr-defined]
        failure = RemoteFailure.capture(wrapped, index)
        original = RemoteFailure.capture(error, index)
        failure.original_blob = original.exception_blob  # the executor raises this one
        return False, failure


def worker_main(fd: int, board: ClaimBoard | None = None) -> None:
    """A worker process's loop: read the tasks the node wrote, claim and run each, write the outcomes.

    Results wait in an :class:`Outbox` while tasks already received run back
    to back, and leave together in one ``writev``: before any read that may
    block, and before a task starts once the oldest waiting result's task
    began over :data:`HOLD` seconds ago (so a long task's result is never
    held behind the next task). A task the node took back (``board``) is
    skipped: its setup and function are still loaded, since the node counts
    them as sent.
    """
    allow_tls_stack()  # the node kept pyOpenSSL out of its own imports; the user's code may want it
    init_worker()
    os.set_blocking(fd, True)
    outbox = Outbox(fd)
    reader = TaskReader(fd, outbox.flush)
    dump = PieceDumper()
    capturing = task_output.Capturing()
    jobs: OrderedDict[int, JobCode] = OrderedDict()
    authkey: object = None  # the key this process has now (as far as the tasks' jobs go)
    seq = 0  # the number of the task being read: the node numbers the tasks it writes the same way
    while True:
        try:
            header = reader.header()
            setup_blob = None if header.setup_length is None else reader.take(header.setup_length)
            func_blob = None if header.function_length is None else reader.take(header.function_length)
        except (EOFError, OSError):
            return  # the node closed the socket: it is shutting down
        seq += 1
        if setup_blob is not None:
            jobs[header.key] = load_job(setup_blob)
            authkey = _UNKNOWN  # loading the job set its key
            while len(jobs) > _CACHE_SIZE:
                jobs.popitem(last=False)
        code = jobs.get(header.key)
        if code is None:  # the pool sends the setup first; this is a node bug
            code = JobCode(_missing(-1))
        if func_blob is not None:
            code.add_function(header.fn, func_blob)
        try:
            if board is not None and not board.claim(seq):
                reader.skip(header.items_length)  # the node took it back
                continue
            outbox.before_task()
            if code.authkey is not authkey:  # the jobs of several callers share this worker
                authkey = code.authkey
                use_authkey(code.authkey)
            if header.capture:
                capturing.start()
            try:
                ok, pieces = _run(reader, code, header, dump)
            finally:
                output = capturing.stop() if header.capture else b""
            if output:
                outbox.add([pipe_format.encode_output(len(output)), output])
            outbox.add([pipe_format.encode_result(ok, sum(map(len, pieces))), *pieces])
            del pieces
        except (EOFError, OSError):
            return  # the node closed the socket (in the middle of the task's items), or is gone


class Outbox:
    """A worker's results not written yet: they leave together, but never wait for long."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.parts: list[bytes] = []
        self.size = 0
        self.since = 0.0  # when the task of the oldest waiting result started (time.monotonic)

    def before_task(self) -> None:
        """A task is about to start: write what waits if its oldest task began over HOLD seconds ago."""
        now = time.monotonic()
        if self.parts and now - self.since > HOLD:
            self.flush()
        if not self.parts:
            self.since = now

    def add(self, parts: list[bytes]) -> None:
        """Queue one message; a large one (over READ_SIZE waiting) leaves at once."""
        self.parts += parts
        self.size += sum(map(len, parts))
        if self.size > READ_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write every waiting message, in order, in as few ``writev`` calls as the kernel allows."""
        if self.parts:
            parts, self.parts, self.size = self.parts, [], 0
            write_all(self.fd, parts)


def _run(
    reader: TaskReader, code: JobCode, header: pipe_format.TaskHeader, dump: Callable[[object], list[bytes]]
) -> tuple[bool, list[bytes]]:
    """Load one task's items from the socket and run it (EOFError: the node closed the socket)."""
    failure = task_failure(code, header.fn)
    if failure is not None:
        reader.skip(header.items_length)
        return False, [failure]
    try:
        items = reader.load(header.items_length)
    except EOFError:
        raise
    except BaseException as error:  # noqa: BLE001 - the task's items did not load here
        return False, [dumps(RemoteFailure.capture(error, None))]
    function = code.functions[header.fn]
    assert isinstance(function, Function)
    return run_items(function, items, dump)


class TaskReader:
    """The worker's end of its socket: tasks in as few reads as possible.

    One ``read`` takes whatever the node has written (a task's header and
    blobs together), so a small task costs one read. A large items blob is unpickled straight from the socket
    (:meth:`load`): ``pickle`` reads a large ``bytes`` payload with
    ``readinto`` into the object it makes, so a 64 MiB argument is held once,
    not once as a blob and again as the unpickled value.
    """

    def __init__(self, fd: int, before_block: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.before_block = before_block or _nothing  # called before any read that may wait (flush results)
        self._data = b""  # bytes received and not consumed yet, from ``_pos`` on
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._data) - self._pos

    def _fill(self, need: int) -> None:
        """Receive until at least ``need`` bytes are buffered (EOFError if the socket closes first)."""
        while self.buffered < need:
            self.before_block()
            try:
                chunk = os.read(self.fd, max(READ_SIZE, need - self.buffered))
            except OSError as error:
                raise EOFError(str(error)) from error
            if not chunk:
                raise EOFError(f"the node closed the socket {need - self.buffered} bytes short")
            self._data = self._data[self._pos :] + chunk if self.buffered else chunk
            self._pos = 0

    def header(self) -> pipe_format.TaskHeader:
        """The next task's header."""
        self._fill(pipe_format.TASK_HEADER_SIZE)
        header = pipe_format.task_at(self._data, self._pos)
        self._pos += pipe_format.TASK_HEADER_SIZE
        return header

    def take(self, length: int) -> bytes:
        """The next ``length`` bytes, in one buffer."""
        if length <= self.buffered or length <= READ_SIZE:
            self._fill(length)
            blob = self._data[self._pos : self._pos + length]
            self._pos += length
            return blob
        buffer = BodyBuffer(length)  # large: read into its own buffer, not through ours
        buffer.write(memoryview(self._data)[self._pos :])
        self._data, self._pos = b"", 0
        while buffer.missing:
            self.before_block()
            view = buffer.view()
            try:
                count = os.readv(self.fd, [view])
            except OSError as error:
                raise EOFError(str(error)) from error
            finally:
                view.release()
            if count == 0:
                raise EOFError(f"the node closed the socket {buffer.missing} bytes short")
            buffer.advance(count)
        return buffer.value()

    def skip(self, length: int) -> None:
        """Consume ``length`` bytes without keeping them."""
        while length:
            self._fill(min(length, READ_SIZE))
            step = min(length, self.buffered)
            self._pos += step
            length -= step

    def load(self, length: int) -> Any:
        """Unpickle the next ``length`` bytes; they are consumed even if unpickling raises."""
        if length <= STREAM_OVER:
            return loads(self.take(length))
        stream = _BlobStream(self, length)
        try:
            return pickle.Unpickler(stream).load()
        finally:
            stream.drain()


class _BlobStream:
    """``length`` bytes of a reader as a file for ``pickle.Unpickler`` (read, readinto, readline)."""

    def __init__(self, reader: TaskReader, length: int) -> None:
        self._reader = reader
        self.left = length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        blob = self._reader.take(size)
        self.left -= size
        return blob

    def readinto(self, target: memoryview) -> int:
        with memoryview(target).cast("B") as view:
            size = min(len(view), self.left)
            reader = self._reader
            done = min(size, reader.buffered)
            view[:done] = memoryview(reader._data)[reader._pos : reader._pos + done]
            reader._pos += done
            while done < size:
                reader.before_block()
                try:
                    count = os.readv(reader.fd, [view[done:size]])
                except OSError as error:
                    raise EOFError(str(error)) from error
                if count == 0:
                    raise EOFError(f"the node closed the socket {size - done} bytes short")
                done += count
        self.left -= size
        return size

    def readline(self) -> bytes:
        line = bytearray()
        while self.left and not line.endswith(b"\n"):
            line += self.read(1)
        return bytes(line)

    def drain(self) -> None:
        """Consume what unpickling left unread (after an error, or trailing bytes)."""
        self._reader.skip(self.left)
        self.left = 0


def _nothing() -> None:
    pass


def write_all(fd: int, parts: list[bytes]) -> None:
    """Write ``parts`` in order to a blocking descriptor, without joining them."""
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = os.writev(fd, views[:_IOV_MAX])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0
