"""What the scheduler asks its shell to do: one small dataclass per action.

The scheduler is sans-I/O. Every call on it returns a list of these actions in
the order they must be carried out; the Twisted glue in ``server/cluster.py`` turns
each one into a wire message on the right connection. Nothing here touches a
socket, so a test can assert the exact list.

Actions are frozen, except the three made for every task (``AssignTask``,
``ForwardResult``, ``GrantCredit``): a frozen dataclass sets each field through
``object.__setattr__``, which made its ``__init__`` several times the cost of a
plain slotted one, and the largest single item of the server's CPU per task.
Nothing changes an action once made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class JobOutcome(Enum):
    """How a job left the server."""

    DONE = "done"  # every task completed once
    FAILED = "failed"  # a task raised, or ran out of attempts, or no node came
    CANCELLED = "cancelled"  # its controller cancelled it or went away


@dataclass(frozen=True)
class SendJob:
    """Send a job's setup blob (initializer, its arguments) to a node, before its first task of that job."""

    node_id: str
    job_id: int
    blob: bytes = field(repr=False)


@dataclass(frozen=True)
class SendFunction:
    """Send one of a job's functions to a node, before the node's first task that calls it."""

    node_id: str
    job_id: int
    fn: int
    blob: bytes = field(repr=False)


@dataclass(slots=True)
class AssignTask:
    """Send one task (attempt ``attempt``) of the running job to a node."""

    node_id: str
    job_id: int
    task_id: int
    attempt: int
    blob: bytes = field(repr=False)
    fn: int | None = None  # the job function the task calls (None: a bare task, in tests)


@dataclass(slots=True)
class ForwardResult:
    """Pass a task's result blob (or error blob when ``ok`` is false) to its controller."""

    controller_id: str
    job_id: int
    task_id: int
    ok: bool
    blob: bytes = field(repr=False)


@dataclass(slots=True)
class GrantCredit:
    """Allow a controller to send ``count`` more tasks of its job."""

    controller_id: str
    job_id: int
    count: int


@dataclass(frozen=True)
class JobQueued:
    """A submitted job is waiting; ``position`` jobs are ahead of it (the running one counts)."""

    controller_id: str
    job_id: int
    position: int


@dataclass(frozen=True)
class JobStarted:
    """A job became the running job: its tasks are now dispatched to nodes."""

    controller_id: str
    job_id: int


@dataclass(frozen=True)
class JobEnded:
    """A job left the server; ``reason`` (and the failed ``task_id``) say why when it failed."""

    controller_id: str
    job_id: int
    outcome: JobOutcome
    reason: str = ""
    task_id: int | None = None


@dataclass(frozen=True)
class CancelOnNode:
    """Tell a node to drop every task of a job it still holds and discard its results."""

    node_id: str
    job_id: int


@dataclass(frozen=True)
class ReleaseOnNode:
    """A job finished: a node that got its setup may forget it and its functions."""

    node_id: str
    job_id: int


@dataclass(frozen=True)
class WithdrawOnNode:
    """Ask a node to drop a task it holds, if no worker has started it (attempt ``attempt``)."""

    node_id: str
    job_id: int
    task_id: int
    attempt: int


@dataclass(frozen=True)
class TaskWithdrawn:
    """Tell a controller its task was dropped before any worker started it: no result will come."""

    controller_id: str
    job_id: int
    task_id: int


Action = (
    SendJob
    | SendFunction
    | AssignTask
    | ForwardResult
    | GrantCredit
    | JobQueued
    | JobStarted
    | JobEnded
    | CancelOnNode
    | ReleaseOnNode
    | WithdrawOnNode
    | TaskWithdrawn
)
