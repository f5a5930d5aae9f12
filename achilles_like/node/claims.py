"""Which queued tasks a worker may still start: one small board in memory shared by a worker and its node.

A worker may hold several tasks the node wrote to it in one ``writev``
(``worker_pool.py``), and runs them in order. Each task written to a worker
gets the next sequence number of that worker (1, 2, ...). Before running a
task the worker *claims* it; the node may *take back* every task the worker
has not claimed yet (to give it to an idle worker, or because it was
withdrawn), and the worker then skips those when it reaches them::

    worker: claim(seq)                     node: take_back(next_seq) -> first
      under the lock:                        under the lock (never waiting for it):
        skip_from <= seq < skip_below?         first = started + 1
          -> False: skip the task              skip_from, skip_below = first, next_seq
        started = seq -> True: run it          -> tasks first .. next_seq - 1 are the node's again

The lock makes claim and take-back exclusive, so a task is either run by
this worker or taken back, never both: no task runs twice because of a
steal. The node only tries the lock (a worker holds it for a few
instructions); if it is busy the node tries again later. A new take-back
always starts at ``started + 1``, so it covers any earlier range the worker
has not reached yet. After a worker's death :attr:`started` tells the node
which of its tasks were never begun (those go to another worker, not back
to the server as lost).

The board is three 64-bit integers in an anonymous shared ``mmap`` and a
``multiprocess`` lock, both made before the worker is forked.
"""

from __future__ import annotations

import mmap
from typing import Any

import multiprocess

_STARTED, _SKIP_FROM, _SKIP_BELOW = 0, 1, 2


class ClaimBoard:
    """The shared claim state of one worker (make it in the node, before forking the worker)."""

    def __init__(self, context: Any = None) -> None:
        self._memory = mmap.mmap(-1, 3 * 8)  # MAP_SHARED: the forked worker sees the same page
        self._cells = memoryview(self._memory).cast("q")
        self._lock = (context or multiprocess).Lock()

    @property
    def started(self) -> int:
        """The sequence number of the last task the worker claimed (read without the lock)."""
        return int(self._cells[_STARTED])

    def claim(self, seq: int) -> bool:
        """Worker side: may the worker run task ``seq``? If so it is recorded as started."""
        cells = self._cells
        with self._lock:
            if cells[_SKIP_FROM] <= seq < cells[_SKIP_BELOW]:
                return False
            cells[_STARTED] = seq
            return True

    def take_back(self, next_seq: int) -> int | None:
        """Node side: take back every unclaimed task below ``next_seq``; the first one taken, or None.

        None means the worker holds the lock this instant: nothing was taken, try again later.
        Tasks from the returned number up to ``next_seq - 1`` will be skipped by the worker.
        """
        if not self._lock.acquire(False):
            return None
        try:
            first = int(self._cells[_STARTED]) + 1
            self._cells[_SKIP_FROM] = first
            self._cells[_SKIP_BELOW] = next_seq
            return first
        finally:
            self._lock.release()
