"""The task function that ``benchmarks/soak.py`` sends to the nodes.

It lives in a module of its own so that nodes import it by name: the soak
runs as ``python benchmarks/soak.py``, which puts ``benchmarks/`` first on
``sys.path``, and LocalCluster hands the caller's ``sys.path`` to its nodes.

Every call appends one line to a file of its own process under the directory
named by ``$SOAK_EXEC_LOG`` (when set): job, item, pid, process group and
start time. The soak reads these to count re-executions and to find which
items were running on a node (or a worker) when it was hit.
"""

from __future__ import annotations

import os
import random
import time

#: The environment variable naming the directory of the execution logs.
EXEC_LOG_ENV = "SOAK_EXEC_LOG"

#: The longest sleep of a task, in seconds.
MAX_SLEEP = 0.020


def record_start(job: int, x: int) -> None:
    """Append ``job x pid pgid time`` to this process's execution log."""
    directory = os.environ.get(EXEC_LOG_ENV)
    if not directory:
        return
    pid = os.getpid()
    with open(os.path.join(directory, f"{pid}.log"), "a", encoding="ascii") as log:
        log.write(f"{job} {x} {pid} {os.getpgrp()} {time.time():.6f}\n")


def square(item: tuple[int, int]) -> tuple[int, int, int]:
    """``(job, x, x * x)`` after a short sleep (0–20 ms) that depends on ``x`` only."""
    job, x = item
    record_start(job, x)
    time.sleep(random.Random(x).uniform(0.0, MAX_SLEEP))
    return job, x, x * x
