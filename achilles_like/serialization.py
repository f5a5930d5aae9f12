"""Turning functions, items, results and remote errors into bytes and back.

Data goes through the C ``pickle`` first and falls back to ``dill`` only for
what ``pickle`` refuses (lambdas, closures, ``__main__`` objects): ``dill`` is
several times slower on plain data, and tiny items are where a distributed
pool wins or loses against a local one. ``pickle.loads`` reads both, because
a dill stream only refers to dill's own importable helpers.

Functions are always serialized with ``dill``: it pickles functions from
importable modules by reference and those defined in ``__main__`` (or
interactively) by value, with the globals they use (``recurse=True``). That
is once per job, so its cost does not matter.

A failure in the user's function travels as a pickled :class:`RemoteFailure`:
the exception itself when it pickles, always its type name, message,
formatted traceback and the index of the item that raised.
"""

from __future__ import annotations

import io
import multiprocessing.pool as mp_pool
import pickle
import traceback
import types
from dataclasses import dataclass
from typing import Any

import dill

PROTOCOL = pickle.HIGHEST_PROTOCOL


class _RemotePickler(pickle.Pickler):
    """The C pickler, refusing what would only load in this process.

    Plain pickle stores functions and classes by reference, and a reference
    to ``__main__`` (a script's or a notebook's own code) cannot be loaded on
    a node. Refusing those sends the object through dill, by value. Builtin
    containers and scalars never reach ``reducer_override``, so plain data
    keeps the C pickler's speed.
    """

    def reducer_override(self, obj: object) -> Any:
        module = getattr(obj, "__module__", None) if isinstance(obj, type | types.FunctionType) else None
        if module is None:
            module = getattr(type(obj), "__module__", None)
        if module == "__main__":
            raise pickle.PicklingError("defined in __main__: needs dill")
        return NotImplemented


def dumps(obj: object) -> bytes:
    """Serialize data with pickle, or dill where pickle cannot (or where only dill can travel)."""
    buffer = io.BytesIO()
    try:
        _RemotePickler(buffer, PROTOCOL).dump(obj)
        return buffer.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError):
        return bytes(dill.dumps(obj, PROTOCOL, recurse=True))


class _Pieces(list[bytes]):
    """A pickler's output file that keeps what it is given: large ``bytes`` payloads by reference."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # The C pickler hands a large bytes payload over as the object itself (no copy); other
        # payloads come as views that live only for this call, so those are copied.
        self.append(data if type(data) is bytes else bytes(data))
        return len(data)


class PieceDumper:
    """:func:`dumps` as pieces to write in order, without a buffer holding them all (one thread only).

    A large ``bytes`` object inside what is dumped is one of the pieces
    itself, so writing a 64 MiB result costs no second 64 MiB. One pickler is
    kept for every call (its memo cleared each time): a worker dumps a result
    per task, and making a pickler costs more than dumping a small list.
    """

    def __init__(self) -> None:
        self._pieces = _Pieces()
        self._pickler = _RemotePickler(self._pieces, PROTOCOL)

    def __call__(self, obj: object) -> list[bytes]:
        pieces = self._pieces
        try:
            self._pickler.dump(obj)
            return list(pieces)
        except (pickle.PicklingError, TypeError, AttributeError):
            return [bytes(dill.dumps(obj, PROTOCOL, recurse=True))]
        finally:
            pieces.clear()
            self._pickler.clear_memo()


def loads(blob: bytes) -> Any:
    """Deserialize what :func:`dumps` or :func:`dumps_function` produced."""
    return pickle.loads(blob)


def dumps_function(func: object) -> bytes:
    """Serialize a job's function (and callback) with dill, by value where needed."""
    return bytes(dill.dumps(func, PROTOCOL, recurse=True))


@dataclass
class RemoteFailure:
    """An exception raised by user code on a node, ready to travel to the caller."""

    type_name: str
    message: str
    traceback_text: str
    item_index: int | None
    exception_blob: bytes | None  # the pickled exception, when it pickles
    whole_job: bool = False  # the job's setup failed (its initializer raised): nothing of it can run
    # For a result that could not be pickled back: the pickling error itself, which an
    # executor raises (as concurrent.futures does) where a Pool raises MaybeEncodingError.
    original_blob: bytes | None = None

    @classmethod
    def capture(
        cls, error: BaseException, item_index: int | None, *, whole_job: bool = False
    ) -> RemoteFailure:
        """Record ``error`` (being handled now) with its formatted traceback."""
        text = "".join(traceback.format_exception(error))
        blob: bytes | None
        try:
            blob = dumps(error)
            loads(blob)  # some exceptions pickle but cannot be rebuilt
        except Exception:
            blob = None
        name = f"{type(error).__module__}.{type(error).__qualname__}"
        return cls(name, str(error), text, item_index, blob, whole_job)

    def to_exception(self) -> BaseException:
        """Rebuild the user's exception, with the remote traceback as its cause."""
        error: BaseException | None = None
        if self.exception_blob is not None:
            try:
                error = loads(self.exception_blob)
            except Exception:
                error = None
        if not isinstance(error, BaseException):
            error = RemoteError(self.type_name, self.message)
        where = "" if self.item_index is None else f" (input item {self.item_index})"
        error.__cause__ = mp_pool.RemoteTraceback(  # type: ignore[attr-defined]
            f'\n"""\n{self.traceback_text}"""{where}'
        )
        if self.original_blob is not None:
            try:
                error.original = loads(self.original_blob)  # type: ignore[attr-defined]
            except Exception:
                pass  # the MaybeEncodingError alone still says what happened
        return error


class RemoteError(Exception):
    """Stands in for a remote exception that could not be pickled back."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
