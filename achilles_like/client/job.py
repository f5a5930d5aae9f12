"""Running one job from the caller's thread: feed tasks on credit, yield results.

::

    caller's thread                               reactor thread
    ───────────────                               ──────────────
    next(input) ─ pickle chunk ─ TASK ──send──▶   transport ──▶ server
    yield results ◀─ reorder ◀─ unpickle ◀─queue─ decoder ◀── server

The input iterable is consumed lazily in the caller's own thread, one chunk
of ``chunksize`` items per task, and only as far as the server's credit
allows; so an endless generator runs in bounded memory. Pickling and
unpickling also happen here, never on the reactor thread.

For ordered results (``map``/``imap``) a :class:`ReorderBuffer` holds results
that arrive ahead of the next expected task; the controller stops sending new
tasks when it holds ``max_ahead`` tasks it could not yet yield, so one slow
task cannot make the buffer grow without bound.

Leaving the loop early for any reason (an exception in the user's function,
Ctrl-C, an abandoned ``imap`` generator) cancels the job on the server in
``finally``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from achilles_like.client.connection import Connection, Lost
from achilles_like.config import Settings
from achilles_like.errors import ClusterConnectionError, JobFailedError
from achilles_like.protocol import Frame, encode_frame, encode_header
from achilles_like.scheduling.reorder import ReorderBuffer
from achilles_like.serialization import RemoteFailure, dumps, dumps_function, loads

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
    callback: Callable[..., Any] | None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
) -> bytes:
    """Serialize the job's function, callback and initializer, or say clearly why not."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, not {type(callback).__name__}")
    return pickle_callable(func, payload=(func, callback, initializer, tuple(initargs)))


def pickle_callable(func: Callable[..., Any], what: str = "func", payload: object = None) -> bytes:
    """Serialize ``func`` (or a ``payload`` built around it) with dill, or explain why it cannot travel."""
    if not callable(func):
        raise TypeError(f"{what} must be callable, not {type(func).__name__}")
    try:
        return dumps_function(func if payload is None else payload)
    except Exception as error:
        raise TypeError(
            f"cannot send {getattr(func, '__qualname__', func)!r} to the cluster: it does not"
            f" pickle ({type(error).__name__}: {error}). Make sure the function, its default"
            " arguments and the globals it uses can be pickled by dill."
        ) from error


@dataclass
class _Progress:
    """What the caller's loop knows about its job."""

    job_id: int | None = None
    credit: int = 0
    sent: int = 0
    received: int = 0
    input_done: bool = False
    finished: bool = False
    # task id -> (first item index, item count), for tasks not yet yielded
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)


class JobRunner:
    """Drives one job over one connection; iterate it to get results."""

    def __init__(
        self,
        settings: Settings,
        func_blob: bytes,
        items: Iterator[Any],
        chunksize: int,
        *,
        ordered: bool,
        label: str = "",
        max_ahead: int = DEFAULT_MAX_AHEAD,
        timeout: float | None = None,
        max_tasks: int | None = None,
    ) -> None:
        self.settings = settings
        self.func_blob = func_blob
        self.chunks = _chunked(items, chunksize)
        self.ordered = ordered
        self.label = label
        self.max_ahead = max_ahead
        self.progress = _Progress()
        self.reorder: ReorderBuffer[list[Any]] = ReorderBuffer()
        self.next_item = 0
        self.options: dict[str, object] = {"label": label}
        if timeout is not None:
            self.options["timeout"] = timeout
        if max_tasks is not None:
            self.options["maxtasks"] = max_tasks

    def results(self) -> Iterator[Any]:
        """Yield every result (flat, one per input item)."""
        connection = Connection.open(self.settings)
        try:
            connection.send(encode_header("SUBMIT", len(self.func_blob), **self.options), self.func_blob)
            while not self.progress.finished:
                self._feed(connection)
                if self.progress.finished:
                    break
                event = connection.next_event()
                if isinstance(event, Lost):
                    raise ClusterConnectionError(event.message)
                for frame in event:
                    yield from self._handle(frame)
        finally:
            if not self.progress.finished and self.progress.job_id is not None:
                connection.send(encode_frame("CANCEL", job=self.progress.job_id))
            connection.close()

    def _feed(self, connection: Connection) -> None:
        progress = self.progress
        if progress.job_id is None or progress.input_done:
            self._check_finished()
            return
        parts: list[bytes] = []
        while progress.credit > 0 and self._ahead() < self.max_ahead:
            chunk = next(self.chunks, None)
            if chunk is None:
                progress.input_done = True
                parts.append(encode_frame("END", job=progress.job_id, tasks=progress.sent))
                break
            body = self._pickle_chunk(chunk)
            parts += [encode_header("TASK", len(body), job=progress.job_id, task=progress.sent), body]
            progress.spans[progress.sent] = (self.next_item, len(chunk))
            self.next_item += len(chunk)
            progress.sent += 1
            progress.credit -= 1
        if parts:
            connection.send(*parts)
        self._check_finished()

    def _ahead(self) -> int:
        done = self.reorder.next_index if self.ordered else self.progress.received
        return self.progress.sent - done

    def _check_finished(self) -> None:
        progress = self.progress
        if progress.input_done and progress.received == progress.sent:
            progress.finished = True

    def _pickle_chunk(self, chunk: list[Any]) -> bytes:
        try:
            return dumps(chunk)
        except Exception as error:
            first = self.next_item
            raise TypeError(
                f"input items {first}..{first + len(chunk) - 1} cannot be pickled"
                f" ({type(error).__name__}: {error}); every item must be picklable by dill"
            ) from error

    def _handle(self, frame: Frame) -> Iterator[Any]:
        progress = self.progress
        verb = frame.verb
        if verb == "RESULT":
            yield from self._result(frame)
        elif verb == "CREDIT":
            progress.credit += frame.integer("n")
        elif verb in ("STARTED", "QUEUED"):
            progress.job_id = frame.integer("job")
        elif verb == "ENDED":
            outcome = frame.text("outcome")
            if outcome != "done" or progress.received != progress.sent or not progress.input_done:
                progress.finished = True  # nothing to cancel: the server ended it
                raise JobFailedError(self._ended_message(frame, outcome))
        elif verb == "ERROR":
            raise ClusterConnectionError(f"the server refused the job: {frame.text('msg', '')}")

    def _ended_message(self, frame: Frame, outcome: str) -> str:
        message = f"the cluster ended job {self.progress.job_id}: {frame.text('reason', outcome)}"
        span = self.progress.spans.get(frame.integer("task", 0)) if "task" in frame.fields else None
        if span is not None:
            first, count = span
            items = f"input item {first}" if count == 1 else f"input items {first}..{first + count - 1}"
            message += f" ({items})"
        return message

    def _result(self, frame: Frame) -> Iterator[Any]:
        task_id = frame.integer("task")
        span = self.progress.spans.pop(task_id, None)
        if span is None:
            return  # a duplicate would be a server bug; never yield twice
        start = span[0]
        if not frame.flag("ok"):
            failure: RemoteFailure = loads(frame.body)
            if failure.item_index is not None:
                failure.item_index += start
            elif span[1] == 1:
                failure.item_index = start  # a one-item task: that item failed
            raise failure.to_exception()
        self.progress.received += 1
        values: list[Any] = loads(frame.body)
        if not self.ordered:
            yield from values
            return
        self.reorder.add(task_id, values)
        for ready in self.reorder.pop_ready():
            yield from ready


def _chunked(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk
