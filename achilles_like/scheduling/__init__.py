"""The pure scheduling core: which node runs which task, and the order results come back in.

Nothing here does I/O or reads a clock; the server and the controller feed it
events and carry out the actions it returns.
"""

from __future__ import annotations

from achilles_like.scheduling.actions import (
    Action,
    AssignTask,
    CancelOnNode,
    ForwardResult,
    GrantCredit,
    JobEnded,
    JobOutcome,
    JobQueued,
    JobStarted,
    ReleaseOnNode,
    SendFunction,
    SendJob,
    TaskWithdrawn,
    WithdrawOnNode,
)
from achilles_like.scheduling.reorder import ReorderBuffer
from achilles_like.scheduling.scheduler import Scheduler, TaskState

__all__ = [
    "Action",
    "AssignTask",
    "CancelOnNode",
    "ForwardResult",
    "GrantCredit",
    "JobEnded",
    "JobOutcome",
    "JobQueued",
    "JobStarted",
    "ReleaseOnNode",
    "ReorderBuffer",
    "Scheduler",
    "SendFunction",
    "SendJob",
    "TaskState",
    "TaskWithdrawn",
    "WithdrawOnNode",
]
