"""Which peers to ping and which to drop, at a cost that does not grow with busy peers.

Any frame from a peer is a sign of life (the glue records ``last_seen`` as
bytes arrive) and any frame to it tells it the server is alive (``last_sent``),
so a peer is pinged only when one of the two directions has been quiet for
``ping_after`` seconds, at most once per ``ping_after``; one that has sent
nothing for ``timeout`` seconds is dropped. A busy connection (tasks out,
results back) is never pinged at all.

Peers wait in buckets by the whole second at which something could next be
due for them. A tick opens only the buckets whose second has come, and a
peer found there that was active meanwhile is filed again further on, so
each peer costs a few comparisons once per ``ping_after`` seconds, not per
tick, and recording activity costs one assignment per frame.
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, Protocol, TypeVar


class Watched(Protocol):
    """A connection as the heartbeat sees it: when it last heard, wrote and pinged (seconds)."""

    last_seen: float
    last_sent: float
    last_ping: float


P = TypeVar("P", bound=Watched)


class Heartbeat(Generic[P]):
    """Peers filed by when they next need a look; ``due`` says whom to ping and whom to drop."""

    def __init__(self, ping_after: float, timeout: float) -> None:
        if not 0 < ping_after <= timeout:
            raise ValueError(f"ping_after must be in (0, timeout], got {ping_after} (timeout {timeout})")
        self.ping_after = ping_after
        self.timeout = timeout
        self._buckets: dict[int, list[P]] = {}  # whole second -> peers to look at then
        self._seconds: list[int] = []  # the buckets' keys, as a heap
        self._watched: set[int] = set()  # ids of peers still watched; others are dropped when met
        self.looks = 0  # peers examined by ticks so far (the work a tick does)

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, peer: P, now: float) -> None:
        """Start watching ``peer`` (it just authenticated)."""
        self._watched.add(id(peer))
        self._file(peer, self._next_look(peer), now)

    def forget(self, peer: P) -> None:
        """Stop watching ``peer`` (its connection is gone); its bucket entry is skipped later."""
        self._watched.discard(id(peer))

    def due(self, now: float) -> tuple[list[P], list[P]]:
        """The peers to ping now (their ``last_ping`` and ``last_sent`` set to ``now``) and to drop."""
        ping: list[P] = []
        drop: list[P] = []
        while self._seconds and self._seconds[0] <= now:
            for peer in self._buckets.pop(heapq.heappop(self._seconds)):
                if id(peer) not in self._watched:
                    continue
                self.looks += 1
                if now - peer.last_seen >= self.timeout:
                    self._watched.discard(id(peer))
                    drop.append(peer)
                    continue
                if self._wants_ping(peer, now):
                    peer.last_ping = peer.last_sent = now
                    ping.append(peer)
                self._file(peer, self._next_look(peer), now)
        return ping, drop

    def _wants_ping(self, peer: P, now: float) -> bool:
        if now - peer.last_sent >= self.ping_after:
            return True  # it has heard nothing from us: it must, or it will give up on us
        return now - peer.last_seen >= self.ping_after and now - peer.last_ping >= self.ping_after

    def _next_look(self, peer: P) -> float:
        """The earliest time a ping or a drop could be due, from what is known now."""
        ping_at = min(peer.last_sent, max(peer.last_seen, peer.last_ping)) + self.ping_after
        return min(ping_at, peer.last_seen + self.timeout)

    def _file(self, peer: P, when: float, now: float) -> None:
        # Never into a second already opened, so a tick always ends.
        second = max(math.ceil(when), math.floor(now) + 1)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(peer)
