"""Nodes by free slot count: the freest node in O(log L), ties taken in turn.

The scheduler asks "which node has the most free slots?" once per task. A
scan of every node made the server's CPU per task grow with the cluster (at
1,000 nodes it was most of the server's work), so the nodes with free slots
are kept in buckets by their free count, with a heap of the counts that have
a bucket (``L`` distinct counts, at most the largest node's slots and in
practice a handful). Within a bucket nodes wait in the order they reached
that count, so equal nodes take turns instead of the first-joined node
getting every tie. Full nodes are in no bucket. The cluster's total slots,
total free slots and the number of nodes with a free slot are running sums.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict


class FreeSlots:
    """Every connected node's slots and free slots, and the freest node on demand."""

    def __init__(self) -> None:
        self._slots: dict[str, int] = {}
        self._free: dict[str, int] = {}
        self._buckets: dict[int, OrderedDict[str, None]] = {}  # free count -> nodes, oldest first
        self._levels: list[int] = []  # negated free counts, each at most once (a max-heap)
        self._in_heap: set[int] = set()  # the counts in _levels; their buckets may have emptied since
        self.total_slots = 0
        self.total_free = 0
        self.free_nodes = 0  # nodes with at least one free slot

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._slots

    def add(self, node_id: str, slots: int) -> None:
        """A node joined with ``slots`` free slots; it waits behind nodes already as free."""
        if node_id in self._slots:
            raise KeyError(f"node {node_id!r} is already counted")
        self._slots[node_id] = slots
        self._free[node_id] = 0
        self.total_slots += slots
        self._set_free(node_id, slots)

    def remove(self, node_id: str) -> None:
        """A node is gone; its slots leave the totals."""
        self._set_free(node_id, 0)
        del self._free[node_id]
        self.total_slots -= self._slots.pop(node_id)

    def free(self, node_id: str) -> int:
        """A node's free slots now (none while it holds more than a resize left it)."""
        return max(0, self._free[node_id])

    def change(self, node_id: str, delta: int) -> None:
        """A node's free slots go up (tasks finished) or down (tasks assigned) by ``delta``."""
        free = self._free[node_id] + delta
        if free > self._slots[node_id] or (delta < 0 and free < 0):
            raise RuntimeError(
                f"internal error: node {node_id!r} would have {free} free of {self._slots[node_id]} slots"
            )
        self._set_free(node_id, free)

    def resize(self, node_id: str, slots: int) -> None:
        """A node now offers ``slots``; below what it holds, it gets nothing until enough finish.

        Internally its free count may then be negative (slots minus tasks held); it
        counts as 0 everywhere outside.
        """
        held = self._slots[node_id] - self._free[node_id]
        self.total_slots += slots - self._slots[node_id]
        self._slots[node_id] = slots
        self._set_free(node_id, slots - held)

    def freest(self) -> str | None:
        """The node with the most free slots (the longest waiting among equals), or None when all are full."""
        while self._levels:
            bucket = self._buckets.get(-self._levels[0])
            if bucket:
                return next(iter(bucket))
            self._in_heap.discard(-heapq.heappop(self._levels))  # emptied since it was pushed
        return None

    def recount(self) -> tuple[int, int, int]:
        """Total slots, free slots and nodes with a free slot, counted afresh (for tests)."""
        free = [max(0, count) for count in self._free.values()]
        return sum(self._slots.values()), sum(free), sum(1 for count in free if count)

    def _set_free(self, node_id: str, free: int) -> None:
        old = self._free[node_id]
        if old == free:
            return
        if old > 0:
            del self._buckets[old][node_id]
        self.free_nodes += (free > 0) - (old > 0)
        self.total_free += max(0, free) - max(0, old)
        if free > 0:
            bucket = self._buckets.get(free)
            if bucket is None:
                bucket = self._buckets[free] = OrderedDict()
            if free not in self._in_heap:
                self._in_heap.add(free)
                heapq.heappush(self._levels, -free)
            bucket[node_id] = None
        self._free[node_id] = free
