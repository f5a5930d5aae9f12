"""Every wire verb after the handshake as a typed message: parsed and validated in one place.

A message is a slotted dataclass whose fields are the header fields (``int``,
``str``, ``bool``, ``float``, or one of those or ``None`` when optional) and,
for verbs that carry one, a ``body``; nothing changes one once made (not
frozen only because a frozen dataclass takes about eight times as long to
build, and several are built per task on every hop). :func:`decode` turns a :class:`Frame`
into its message, checking every field, so the glue matches on classes
(``case Tasks(job=job, entries=entries)``) instead of verb strings::

    match decode(frame):
        case Results(job=job, entries=entries): ...

:meth:`Message.encode` returns the header line and the body as separate parts,
so a large body is written without being copied into one buffer. The
``TASK`` and ``RESULT`` carry one task or a batch of them (``batch.py``). The
handshake's own verbs (``HELLO``, ``AUTH``, ``WELCOME``) live in
``handshake.py``. ``docs/protocol.md`` says who sends what.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from achilles_like.errors import ProtocolViolationError
from achilles_like.protocol import batch
from achilles_like.protocol.frames import Frame, header_line, is_number

M = TypeVar("M", bound="Message")

_REGISTRY: dict[str, type[Message]] = {}


@dataclass(slots=True)
class Message:
    """Base of every typed message; ``VERB`` names it on the wire."""

    VERB: ClassVar[str] = ""

    def encode(self) -> list[bytes]:
        """The header line and, if there is one, the body (not copied)."""
        plan = _PLANS.get(type(self)) or _plan(type(self))
        fields = [(name, value) for name, *_ in plan.fields if (value := getattr(self, name)) is not None]
        body: bytes = self.body if plan.body else b""  # type: ignore[attr-defined]
        header = header_line(self.VERB, len(body), fields)
        return [header, body] if body else [header]

    def to_bytes(self) -> bytes:
        """The whole message as one bytes object (for small messages)."""
        return b"".join(self.encode())


def message(verb: str) -> Callable[[type[M]], type[M]]:
    """Register a message class under its wire verb."""

    def register(cls: type[M]) -> type[M]:
        cls.VERB = verb
        _REGISTRY[verb] = cls
        return cls

    return register


def decode(frame: Frame) -> Message:
    """The typed message a frame carries; ProtocolViolationError for an unknown verb or a bad field."""
    cls = _REGISTRY.get(frame.verb)
    if cls is None:
        raise ProtocolViolationError(f"unknown verb {frame.verb}")
    if cls is Tasks or cls is Results or cls is Running:  # their own layout (batch.py), not a field per key
        return cls.from_frame(frame)
    fields = frame.fields
    plan = _PLANS.get(cls) or _plan(cls)
    values: list[Any] = []
    for name, kind, optional, default in plan.fields:
        raw = fields.get(name)
        if raw is None:
            if optional:
                values.append(None)
            elif default is not dataclasses.MISSING:
                values.append(default)
            else:
                raise ProtocolViolationError(f"{frame.verb} frame is missing the field {name!r}")
        elif kind == "int":  # the hot path: ids and counts
            if not is_number(raw):
                raise ProtocolViolationError(
                    f"{frame.verb} field {name}={raw!r} is not a non-negative integer"
                )
            values.append(int(raw))
        elif kind == "str":
            values.append(raw)
        elif kind == "bool":
            values.append(raw == "1")
        else:
            values.append(_number(frame, name))
    if plan.body:
        values.append(frame.body)
    return cls(*values)


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a message class goes on the wire: its header fields, in order, and whether a body follows."""

    fields: tuple[tuple[str, str, bool, Any], ...]  # name, kind (int, str, bool, float), optional, default
    body: bool


_PLANS: dict[type[Message], _Plan] = {}


def _plan(cls: type[Message]) -> _Plan:
    fields = []
    body = False
    for item in dataclasses.fields(cls):
        if item.name == "body":
            body = True
            continue
        annotation = str(item.type).replace(" ", "")
        fields.append(
            (item.name, annotation.removesuffix("|None"), annotation.endswith("|None"), item.default)
        )
    if body and dataclasses.fields(cls)[-1].name != "body":
        raise TypeError(f"{cls.__name__}: body must be the last field")  # decode passes it last
    plan = _PLANS[cls] = _Plan(tuple(fields), body)
    return plan


def _number(frame: Frame, key: str) -> float:
    raw = frame.fields[key]
    try:
        value = float(raw)
    except ValueError:
        raise ProtocolViolationError(f"{frame.verb} field {key}={raw[:40]!r} is not a number") from None
    if not 0 < value < 10**9:
        raise ProtocolViolationError(f"{frame.verb} field {key}={raw[:40]!r} is out of range")
    return value


# -- any peer -------------------------------------------------------------------


@message("ERROR")
@dataclass(slots=True)
class Error(Message):
    """Fatal: the sender closes the connection next."""

    code: str
    msg: str = ""


@message("PING")
@dataclass(slots=True)
class Ping(Message):
    """Heartbeat: answer with PONG."""


@message("PONG")
@dataclass(slots=True)
class Pong(Message):
    """Heartbeat answer."""


# -- node <-> server ------------------------------------------------------------


@message("REGISTER")
@dataclass(slots=True)
class Register(Message):
    """A node's capacity and identity."""

    slots: int
    processes: int | None = None
    name: str = ""
    pid: int | None = None


@message("SLOTS")
@dataclass(slots=True)
class Slots(Message):
    """A registered node now offers ``slots`` (deeper while its tasks are short, ``node/agent.py``)."""

    slots: int


@message("REGISTERED")
@dataclass(slots=True)
class Registered(Message):
    """The node id the server assigned."""

    node: str


@message("JOB")
@dataclass(slots=True)
class Job(Message):
    """A job's setup (initializer and its arguments) and options, once per node before its first task."""

    job: int
    timeout: float | None = None
    maxtasks: int | None = None
    output: bool = False  # workers capture what tasks print and send it back (OUTPUT)
    running: bool = False  # the node says when a worker starts each task (RUNNING)
    body: bytes = field(default=b"", repr=False)


@message("FUNC")
@dataclass(slots=True)
class Func(Message):
    """One of a job's functions, ``(func, mode, callback)`` pickled; sent once per job (and node)."""

    job: int
    fn: int
    ref: int | None = None  # from a controller that does not know the job id yet (job=0)
    body: bytes = field(default=b"", repr=False)


@message("TASK")
@dataclass(slots=True)
class Tasks(Message):
    """Tasks of one job: ``entries`` of ``(task, attempt, fn, items blob)``; see ``protocol/batch.py``.

    ``attempt`` is 0 from a controller and the server's attempt number (1, 2, ...) to a node.
    One entry travels in the single form (``task=``, ``fn=``, ``attempt=`` in the header, the
    blob as the body), several in the batch form (``n=``, a table, then the blobs).
    """

    job: int
    entries: list[batch.Entry] = field(default_factory=list, repr=False)
    ref: int | None = None  # from a controller that does not know the job id yet (job=0)
    # Not on the wire: the receiver's body limit, which a batch frame must stay within.
    limit: int = field(default=batch.ALONE_BYTES, compare=False, repr=False)

    def encode(self) -> list[bytes]:
        """The frames (several when large blobs travel alone), each header then body parts."""
        parts: list[bytes] = []
        ref: tuple[tuple[str, object], ...] = () if self.ref is None else (("ref", self.ref),)
        for run in batch.runs(self.entries, self.limit):
            if len(run) == 1:
                task, attempt, fn, blob = run[0]
                fields = [("job", self.job), ("task", task), ("fn", fn)]
                if attempt:
                    fields.append(("attempt", attempt))
                parts.append(header_line(self.VERB, len(blob), [*fields, *ref]))
                if blob:
                    parts.append(blob)
            else:
                body = batch.pack(run)
                header = header_line(
                    self.VERB, sum(map(len, body)), [("job", self.job), ("n", len(run)), *ref]
                )
                parts.append(header)
                parts += body
        return parts

    @classmethod
    def from_frame(cls, frame: Frame) -> Tasks:
        """Read either form; a single task must name its function."""
        ref = frame.integer("ref") if "ref" in frame.fields else None
        return cls(frame.integer("job"), _entries(frame, "fn"), ref)


@message("RESULT")
@dataclass(slots=True)
class Results(Message):
    """Results of one job's tasks: ``entries`` of ``(task, attempt, ok, blob)``; see ``protocol/batch.py``.

    A blob is the values (``ok`` 1), or a failure record or list of outcomes (``ok`` 0).
    ``attempt`` is the attempt that ran the task (0 when unknown, to a controller).
    """

    job: int
    entries: list[batch.Entry] = field(default_factory=list, repr=False)
    # Not on the wire: the receiver's body limit, which a batch frame must stay within.
    limit: int = field(default=batch.ALONE_BYTES, compare=False, repr=False)

    def encode(self) -> list[bytes]:
        """The frames (several when large blobs travel alone), each header then body parts."""
        parts: list[bytes] = []
        for run in batch.runs(self.entries, self.limit):
            if len(run) == 1:
                task, attempt, ok, blob = run[0]
                fields = [("job", self.job), ("task", task), ("ok", bool(ok))]
                if attempt:
                    fields.append(("attempt", attempt))
                parts.append(header_line(self.VERB, len(blob), fields))
                if blob:
                    parts.append(blob)
            else:
                body = batch.pack(run)
                parts.append(
                    header_line(self.VERB, sum(map(len, body)), [("job", self.job), ("n", len(run))])
                )
                parts += body
        return parts

    @classmethod
    def from_frame(cls, frame: Frame) -> Results:
        """Read either form; ``ok`` is 0 or 1."""
        entries = _entries(frame, "ok")
        for entry in entries:
            if entry[2] > 1:
                raise ProtocolViolationError(f"RESULT of task {entry[0]} has ok={entry[2]}; 0 or 1 only")
        return cls(frame.integer("job"), entries)


def _entries(frame: Frame, small: str) -> list[batch.Entry]:
    """A TASK or RESULT frame's entries, from its batch table or from its single-form header."""
    fields = frame.fields
    if "n" in fields:
        if "task" in fields:
            raise ProtocolViolationError(f"{frame.verb} frame has both n= (a batch) and task= (one)")
        return batch.unpack(frame.body, frame.integer("n"), frame.verb)
    value = (1 if frame.text("ok") == "1" else 0) if small == "ok" else frame.integer(small)
    return [(frame.integer("task"), frame.integer("attempt", 0), value, frame.body)]


@message("LOST")
@dataclass(slots=True)
class Lost(Message):
    """The worker running a task died; the server retries it."""

    job: int
    task: int
    attempt: int
    reason: str = ""


@message("OUTPUT")
@dataclass(slots=True)
class Output(Message):
    """What a task printed, as JSON ``{"out": [[stream, text], ...], "dropped": n}``.

    From a node to the server, which passes it to the job's controller only.
    """

    job: int
    task: int
    attempt: int | None = None
    body: bytes = field(default=b"", repr=False)


@message("RUNNING")
@dataclass(slots=True)
class Running(Message):
    """Workers have started these tasks (jobs submitted with ``running``): ``entries`` of ``(task, attempt)``.

    From a node to the server (with each attempt), which passes on to the
    job's controller, in one frame, those of the tasks that node holds
    (attempt 0). One entry travels in the single form (``task=`` and
    ``attempt=`` in the header), several in the batch form (``n=``, then a
    table of ``protocol/batch.py`` entries with empty blobs): a node under an
    executor's load reports a few tasks a turn, and a frame per task cost
    every hop a header to write, one to parse and a dispatch.
    """

    job: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    def encode(self) -> list[bytes]:
        """The frames: one per :data:`RUNNING_PER_FRAME` entries (a control frame's body stays small)."""
        parts: list[bytes] = []
        for start in range(0, len(self.entries), RUNNING_PER_FRAME):
            run = self.entries[start : start + RUNNING_PER_FRAME]
            if len(run) == 1:
                task, attempt = run[0]
                fields: list[tuple[str, object]] = [("job", self.job), ("task", task)]
                if attempt:
                    fields.append(("attempt", attempt))
                parts.append(header_line(self.VERB, 0, fields))
            else:
                table = batch.pack([(task, attempt, 0, b"") for task, attempt in run])[0]  # no blobs
                parts += [header_line(self.VERB, len(table), [("job", self.job), ("n", len(run))]), table]
        return parts

    @classmethod
    def from_frame(cls, frame: Frame) -> Running:
        """Read either form."""
        if "n" in frame.fields:
            if "task" in frame.fields:
                raise ProtocolViolationError("RUNNING frame has both n= (a batch) and task= (one)")
            table = batch.unpack(frame.body, frame.integer("n"), frame.verb)
            if any(small or blob for _, _, small, blob in table):
                raise ProtocolViolationError("a RUNNING frame's entries carry only a task and an attempt")
            return cls(frame.integer("job"), [(task, attempt) for task, attempt, _, _ in table])
        return cls(frame.integer("job"), [(frame.integer("task"), frame.integer("attempt", 0))])


#: The most entries one RUNNING frame carries: its table (20 bytes each) stays well under
#: the 64 KiB a control frame's body may be (``frames.CONTROL_BODY_LIMIT``).
RUNNING_PER_FRAME = 1024


@message("WITHDRAW")
@dataclass(slots=True)
class Withdraw(Message):
    """Drop one task that no worker has started (controller to server, server to node).

    The server drops a task it still holds and answers WITHDRAWN; it passes
    the request on to the node that holds it, with ``attempt``. A task a
    worker has started is not withdrawn: its RESULT comes as usual.
    """

    job: int
    task: int
    attempt: int | None = None
    ref: int | None = None  # from a controller that does not know the job id yet (job=0)


@message("WITHDRAWN")
@dataclass(slots=True)
class Withdrawn(Message):
    """The task was dropped before any worker started it; no RESULT will come."""

    job: int
    task: int
    attempt: int | None = None


@message("CANCEL")
@dataclass(slots=True)
class Cancel(Message):
    """Abandon a job (controller to server) or drop its tasks (server to node)."""

    job: int
    ref: int | None = None  # from a controller that does not know the job id yet (job=0)


@message("RELEASE")
@dataclass(slots=True)
class Release(Message):
    """The job is over: the node may forget its setup and functions."""

    job: int


@message("SHUTDOWN")
@dataclass(slots=True)
class Shutdown(Message):
    """The node exits (``killCluster``)."""


# -- controller <-> server ------------------------------------------------------


@message("SUBMIT")
@dataclass(slots=True)
class Submit(Message):
    """A new job; ``ref`` is echoed in its QUEUED/STARTED so the controller can tell its jobs apart."""

    ref: int | None = None
    label: str = ""
    timeout: float | None = None
    maxtasks: int | None = None
    stop: bool = False  # the job fails at its first failing task (module map); else it goes on
    output: bool = False  # what tasks print reaches this controller (OUTPUT)
    running: bool = False  # this controller hears RUNNING when a worker starts a task
    # The job's whole input (at most its first task, and END) follows in this write: it needs
    # no CREDIT, and its STARTED may wait to go with its first result.
    whole: bool = False
    body: bytes = field(default=b"", repr=False)


@message("QUEUED")
@dataclass(slots=True)
class Queued(Message):
    """The job waits behind ``position`` others."""

    job: int
    position: int
    ref: int | None = None


@message("STARTED")
@dataclass(slots=True)
class Started(Message):
    """The job may now send tasks (against credit)."""

    job: int
    ref: int | None = None


@message("CREDIT")
@dataclass(slots=True)
class Credit(Message):
    """The controller may send ``n`` more tasks of the job."""

    job: int
    n: int


@message("END")
@dataclass(slots=True)
class End(Message):
    """The job's input is exhausted after ``tasks`` tasks."""

    job: int
    tasks: int
    ref: int | None = None  # from a controller that does not know the job id yet (job=0)


@message("ENDED")
@dataclass(slots=True)
class Ended(Message):
    """The job is over: ``done``, ``failed`` or ``cancelled``; ``task`` names the task that failed it.

    ``ref`` echoes the SUBMIT's, so a job refused at once (queue full) reaches its caller.
    """

    job: int
    outcome: str
    reason: str = ""
    task: int | None = None
    ref: int | None = None


# -- admin ----------------------------------------------------------------------


@message("STATUS")
@dataclass(slots=True)
class Status(Message):
    """Ask for the cluster's state (no body), or the answer (a JSON body)."""

    body: bytes = field(default=b"", repr=False)


@message("KILL")
@dataclass(slots=True)
class Kill(Message):
    """Stop every node, and the server too with ``server``."""

    server: bool = False


@message("KILLED")
@dataclass(slots=True)
class Killed(Message):
    """How many nodes were told to stop."""

    nodes: int
