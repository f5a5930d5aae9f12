"""Keeping the server up under a flood of connections: process limits and pending caps.

A server that runs out of file descriptors refuses everyone, the
legitimate controller included. With the usual soft limit of 1,024 open
files, about a thousand stalled connections were enough, so the server
raises its soft limit to the hard limit at start (:func:`raise_open_file_limit`).

Raising the limit only moves the wall, so unauthenticated connections are
also capped, in total and per address (:class:`PendingConnections`). When a
cap is reached the *oldest* pending connection is closed to admit the new
one: a connection that has stalled for seconds loses to one that will
authenticate in a millisecond, so a legitimate peer gets in even from the
attacker's own address, and an attacker cannot hold the door shut however
many sockets it opens.
"""

from __future__ import annotations

import logging
import resource
from collections import OrderedDict
from typing import Generic, TypeVar

log = logging.getLogger("achilles_like.server")


def raise_open_file_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d: %s", soft, error)
    return soft


Conn = TypeVar("Conn")


class PendingConnections(Generic[Conn]):
    """Unauthenticated connections in arrival order, capped in total and per address.

    Pure bookkeeping: :meth:`admit` says which connections to close, the
    caller closes them. A connection leaves with :meth:`settle` (it
    authenticated or closed); settling one that already left is harmless.
    """

    def __init__(self, max_total: int, max_per_address: int) -> None:
        if max_total < 1 or max_per_address < 1:
            raise ValueError(f"pending caps must be at least 1, got {max_total} and {max_per_address}")
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._all: OrderedDict[Conn, str] = OrderedDict()  # connection -> address, oldest first
        self._by_address: dict[str, OrderedDict[Conn, None]] = {}
        self.evicted = 0  # connections closed to make room, since start

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, conn: object) -> bool:
        return conn in self._all

    def from_address(self, address: str) -> int:
        """How many pending connections ``address`` holds."""
        return len(self._by_address.get(address, ()))

    def admit(self, conn: Conn, address: str) -> list[Conn]:
        """Track a new connection from ``address``; return the older ones to close to make room."""
        evict: list[Conn] = []
        same = self._by_address.get(address)
        if same is not None and len(same) >= self.max_per_address:
            evict.append(next(iter(same)))
            self.settle(evict[-1])
        if len(self._all) >= self.max_total:
            evict.append(next(iter(self._all)))
            self.settle(evict[-1])
        self._all[conn] = address
        self._by_address.setdefault(address, OrderedDict())[conn] = None
        self.evicted += len(evict)
        return evict

    def settle(self, conn: Conn) -> None:
        """``conn`` is no longer pending (it authenticated, or its connection closed)."""
        address = self._all.pop(conn, None)
        if address is None:
            return
        same = self._by_address[address]
        del same[conn]
        if not same:
            del self._by_address[address]
