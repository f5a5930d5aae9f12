"""``achilles status`` as text: one snapshot, or ``--watch`` redrawing it every second.

The snapshot is the server's status dict (``getClusterStatus``) rendered as a
few lines: nodes with busy processes, the running job's progress, the queue.
``--watch`` asks again every second and redraws in place on a terminal (a
plain stream, a pipe or a log, gets one snapshot after another); Ctrl-C ends
it with exit status 0, because stopping a watch is how it is meant to end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

CLEAR_SCREEN = "\x1b[H\x1b[2J"


def format_status(status: dict[str, Any]) -> str:
    """The status dict as a few human-readable lines."""
    lines = [f"nodes: {len(status['nodes'])}"]
    for node in status["nodes"]:
        processes = node.get("processes") or node.get("slots", 0)
        busy = min(node["busy"], processes)
        name = node.get("name") or node["node_id"]
        lines.append(
            f"  {node['node_id']:>5}  {name:<20} {node.get('address', '?'):<22} processes={processes}"
            f" busy={busy} tasks_done={node['tasks_done']} {_bar(busy, processes, 10)}"
        )
    lines.append(_job_line(status["job"]))
    lines.append(f"queue: {len(status['queue'])} waiting job(s)")
    return "\n".join(lines)


def _job_line(job: dict[str, Any] | None) -> str:
    if job is None:
        return "job: none"
    total = job.get("tasks_total")
    done = job["tasks_done"]
    progress = f"{done}/{total} tasks {_bar(done, total, 20)}" if total else f"{done} tasks done"
    extra = ""
    if "rate" in job:
        extra = f" {job['rate']:.1f} tasks/s retries={job['retries']} failures={job['failures']}"
    return f"job: {job['job_id']} {job['label']} {progress}{extra}"


def _bar(done: int, total: int | None, width: int) -> str:
    if not total:
        return ""
    filled = round(width * min(done, total) / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def watch_status(
    fetch: Callable[[], dict[str, Any]], interval: float = 1.0, out: TextIO | None = None
) -> int:
    """Print ``fetch()`` every ``interval`` seconds until Ctrl-C; return the exit status."""
    stream = out or sys.stdout
    redraw = stream.isatty()
    try:
        while True:
            text = format_status(fetch())
            stamp = time.strftime("%H:%M:%S")
            stream.write((CLEAR_SCREEN if redraw else "\n") + f"{stamp}  (Ctrl-C to stop)\n{text}\n")
            stream.flush()
            time.sleep(interval)  # the redraw period itself, not a wait for a condition
    except KeyboardInterrupt:
        stream.write("\n")
        return 0
