"""The controller's reorder buffer: results arrive in any order, ``imap`` yields them in order.

A result is held only until every result before it has arrived. Because the
server re-queues a lost node's tasks at the front of its queue, the gap that
blocks the buffer is filled first, so the buffer stays small in practice; the
controller bounds it further by the credit the server grants.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class ReorderBuffer(Generic[T]):
    """Holds values by index and releases them as one contiguous run from ``next_index``."""

    def __init__(self, start: int = 0) -> None:
        self._next = start
        self._held: dict[int, T] = {}

    @property
    def next_index(self) -> int:
        """The index the next released value will have."""
        return self._next

    def __len__(self) -> int:
        return len(self._held)

    def add(self, index: int, value: T) -> None:
        """Hold ``value`` at ``index``; an index seen before is a bug upstream, so it raises."""
        if index < self._next:
            raise ValueError(f"index {index} was already released (next expected: {self._next})")
        if index in self._held:
            raise ValueError(f"index {index} was added twice")
        self._held[index] = value

    def pop_ready(self) -> list[T]:
        """Release the values from ``next_index`` onward that have no gap before them, in order."""
        ready: list[T] = []
        while self._next in self._held:
            ready.append(self._held.pop(self._next))
            self._next += 1
        return ready
