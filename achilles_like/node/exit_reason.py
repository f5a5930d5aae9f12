"""Why a worker process died, in words a user can act on.

A worker that dies mid-task costs that task one attempt (the node reports
it LOST and the server retries it). The exit code alone ("-9") says little;
this module turns it into the likely cause. The node kills workers itself
only for a time limit, a cancelled job or shutdown, and reports those as
such, never as a loss, so a SIGKILL behind a lost task came from outside
the node: on Linux that is most often the kernel's out-of-memory killer.
"""

from __future__ import annotations

import signal

OOM_HINT = (
    "most likely the kernel's out-of-memory killer: the task needed more memory than the machine"
    " or its cgroup allows; use less memory per task or fewer processes per node"
)


def describe_exit(exitcode: int | None) -> str:
    """Why a worker the node did not stop itself died, from its exit code (negative: a signal)."""
    if exitcode is None:
        return "its worker process died (exit code unknown)"
    if exitcode >= 0:
        return f"its worker process died (exit code {exitcode})"
    number = -exitcode
    if number == signal.SIGKILL:
        why = f"SIGKILL, which the node did not send; {OOM_HINT}"
    elif number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
        why = f"{signal.Signals(number).name}, a crash in native code"
    else:
        try:
            why = signal.Signals(number).name
        except ValueError:
            why = f"signal {number}"
    return f"its worker process died (exit code {exitcode}: {why})"
