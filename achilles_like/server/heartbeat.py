"""Which peers to ping and which to drop, at a cost that does not grow with busy peers.

Any frame from a peer is a sign of life (the glue records ``last_seen`` as
bytes arrive) and any frame to it tells it the server is alive (``last_sent``),
so a peer is pinged only when one of the two directions has been quiet for
``ping_after`` seconds, at most once per ``ping_after``; one that has sent
nothing for ``timeout`` seconds is dropped. A busy connection (tasks out,
results back) is never pinged at all.

Two sets of limits: a peer that holds work (a node with tasks, a controller
with a running job) gets the short ones, because its loss stalls a job; a
peer with nothing in flight gets the long ``idle`` ones, because losing it
late costs nothing (and TCP keepalive is on too). Idle pings are most of
what a server of many idle nodes does, so they are spaced several times
wider. The glue calls :meth:`Heartbeat.work_assigned` when it hands a peer
work: from then on the short limits hold, counted from that moment (a
healthy idle peer may have been quiet for longer than the short timeout,
and pinging every newly busy peer at once would be a burst at dispatch).
Whether a peer holds work is also asked (``holds_work``) whenever it is
looked at, never per frame: a peer whose work is done goes back to the idle
limits, and one given work by a path that did not say so is held to the
short limits from that look on (within an idle interval) instead of never.

Peers wait in buckets by the whole second at which something could next be
due for them. A tick opens only the buckets whose second has come, and a
peer found there that was active meanwhile is filed again further on, so
each peer costs a few comparisons once per ``ping_after`` seconds, not per
tick, and recording activity costs one assignment per frame. A peer filed
again earlier (it became busy) leaves its later entry behind: an entry whose
second is not the peer's current one is skipped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Watched(Protocol):
    """A connection as the heartbeat sees it: when it last heard, wrote and pinged (seconds)."""

    last_seen: float
    last_sent: float
    last_ping: float


P = TypeVar("P", bound=Watched)


def _never(_peer: object) -> bool:
    return False  # no holds_work given: no peer stays busy (the idle limits then default to the busy ones)


class Heartbeat(Generic[P]):
    """Peers filed by when they next need a look; ``due`` says whom to ping and whom to drop."""

    def __init__(
        self,
        ping_after: float,
        timeout: float,
        idle_ping_after: float | None = None,
        idle_timeout: float | None = None,
        holds_work: Callable[[P], bool] = _never,
    ) -> None:
        idle_ping_after = ping_after if idle_ping_after is None else idle_ping_after
        idle_timeout = timeout if idle_timeout is None else idle_timeout
        if not 0 < ping_after <= timeout:
            raise ValueError(f"ping_after must be in (0, timeout], got {ping_after} (timeout {timeout})")
        if not ping_after <= idle_ping_after <= idle_timeout or idle_timeout < timeout:
            raise ValueError(
                f"idle limits ({idle_ping_after}, {idle_timeout}) must be at least the busy ones"
                f" ({ping_after}, {timeout}), with idle_ping_after <= idle_timeout"
            )
        self.ping_after = ping_after
        self.timeout = timeout
        self.idle_ping_after = idle_ping_after
        self.idle_timeout = idle_timeout
        self._holds_work = holds_work
        self._buckets: dict[int, list[P]] = {}  # whole second -> peers to look at then
        self._seconds: list[int] = []  # the buckets' keys, as a heap
        self._filed: dict[int, int] = {}  # id of each watched peer -> the second it is filed at
        self._busy_since: dict[int, float] = {}  # ids of peers holding work -> when they got it
        self.looks = 0  # peers examined by ticks so far (the work a tick does)

    def __len__(self) -> int:
        return len(self._filed)

    def watch(self, peer: P, now: float) -> None:
        """Start watching ``peer`` (it just authenticated); it holds no work yet."""
        self._file(peer, _second(self._next_look(peer, None), now))

    def forget(self, peer: P) -> None:
        """Stop watching ``peer`` (its connection is gone); its bucket entries are skipped later."""
        self._filed.pop(id(peer), None)
        self._busy_since.pop(id(peer), None)

    def is_busy(self, peer: P) -> bool:
        """Whether ``peer`` is held to the short limits (given work, and holding it when last looked at)."""
        return id(peer) in self._busy_since

    def work_assigned(self, peer: P, now: float) -> None:
        """``peer`` was just given work: hold it to the short limits from now on (cheap if it already is)."""
        key = id(peer)
        if key in self._busy_since or key not in self._filed:
            return
        self._busy_since[key] = now
        second = _second(self._next_look(peer, now), now)
        if second < self._filed[key]:
            self._file(peer, second)

    def due(self, now: float) -> tuple[list[P], list[P]]:
        """The peers to ping now (their ``last_ping`` and ``last_sent`` set to ``now``) and to drop."""
        ping: list[P] = []
        drop: list[P] = []
        while self._seconds and self._seconds[0] <= now:
            second = heapq.heappop(self._seconds)
            for peer in self._buckets.pop(second):
                if self._filed.get(id(peer)) != second:
                    continue  # forgotten, or filed again elsewhere
                self.looks += 1
                busy_since = self._busy_since.get(id(peer))
                holds_work = self._holds_work(peer)
                if busy_since is not None and not holds_work:
                    del self._busy_since[id(peer)]
                    busy_since = None
                elif busy_since is None and holds_work:
                    busy_since = self._busy_since[id(peer)] = now
                heard = self._heard(peer, busy_since)
                ping_after, timeout = self._limits(busy_since)
                if now - heard >= timeout:
                    self.forget(peer)
                    drop.append(peer)
                    continue
                if self._wants_ping(peer, now, ping_after, heard):
                    peer.last_ping = peer.last_sent = now
                    ping.append(peer)
                self._file(peer, _second(self._next_look(peer, busy_since), now))
        return ping, drop

    def _limits(self, busy_since: float | None) -> tuple[float, float]:
        """``(ping_after, timeout)`` for a busy peer (``busy_since`` set) or an idle one."""
        if busy_since is None:
            return self.idle_ping_after, self.idle_timeout
        return self.ping_after, self.timeout

    @staticmethod
    def _heard(peer: P, busy_since: float | None) -> float:
        # A peer that just got work is counted as heard from then: it gets the whole short
        # timeout, and its first PING comes a short interval later, not in a burst at dispatch.
        return peer.last_seen if busy_since is None else max(peer.last_seen, busy_since)

    @staticmethod
    def _wants_ping(peer: P, now: float, ping_after: float, heard: float) -> bool:
        if now - peer.last_sent >= ping_after:
            return True  # it has heard nothing from us: it must, or it will give up on us
        return now - heard >= ping_after and now - peer.last_ping >= ping_after

    def _next_look(self, peer: P, busy_since: float | None) -> float:
        """The earliest time a ping or a drop could be due, from what is known now."""
        ping_after, timeout = self._limits(busy_since)
        heard = self._heard(peer, busy_since)
        ping_at = min(peer.last_sent, max(heard, peer.last_ping)) + ping_after
        return min(ping_at, heard + timeout)

    def _file(self, peer: P, second: int) -> None:
        self._filed[id(peer)] = second
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(peer)


def _second(when: float, now: float) -> int:
    """The bucket for a look due at ``when``: never one already opened, so a tick always ends."""
    return max(math.ceil(when), math.floor(now) + 1)
