"""Which peers the server pings and drops, on a clock that is just a number."""

from __future__ import annotations

from dataclasses import dataclass

from achilles_like.server.heartbeat import Heartbeat


@dataclass(eq=False)
class Peer:
    last_seen: float = 0.0
    last_sent: float = 0.0
    last_ping: float = 0.0


def run(beat: Heartbeat[Peer], start: float, end: float, step: float) -> list[tuple[float, str, Peer]]:
    """Tick from ``start`` to ``end``; what was pinged and dropped, with the time."""
    events: list[tuple[float, str, Peer]] = []
    now = start
    while now <= end:
        ping, drop = beat.due(now)
        events += [(now, "ping", p) for p in ping] + [(now, "drop", p) for p in drop]
        now += step
    return events


def test_a_busy_peer_is_never_pinged_and_costs_one_look_per_interval() -> None:
    """1,000 peers talking both ways every second get no PING; 0.25 s ticks look at each once per 2 s."""
    beat: Heartbeat[Peer] = Heartbeat(ping_after=2.0, timeout=10.0)
    peers = [Peer() for _ in range(1000)]
    for peer in peers:
        beat.watch(peer, 0.0)
    now = 0.0
    pinged = 0
    while now < 100.0:
        now += 0.25
        if now == int(now):  # traffic both ways once a second
            for peer in peers:
                peer.last_seen = peer.last_sent = now
        ping, drop = beat.due(now)
        pinged += len(ping) + len(drop)
    assert pinged == 0
    assert beat.looks <= 1000 * (100 // 2 + 1)


def test_a_peer_we_never_write_to_is_pinged_though_it_talks() -> None:
    """A peer that sends every second but hears nothing is pinged once per interval, so it hears from us."""
    beat: Heartbeat[Peer] = Heartbeat(ping_after=2.0, timeout=10.0)
    peer = Peer()
    beat.watch(peer, 0.0)
    now = 0.0
    pings = []
    while now < 20.0:
        now += 1.0
        peer.last_seen = now
        ping, drop = beat.due(now)
        assert drop == []
        pings += [now for _ in ping]
    assert pings == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0]


def test_a_silent_peer_is_pinged_then_dropped_at_the_timeout() -> None:
    """A peer that says nothing is pinged every interval and dropped once silent for the timeout."""
    beat: Heartbeat[Peer] = Heartbeat(ping_after=2.0, timeout=10.0)
    peer = Peer()
    beat.watch(peer, 0.0)
    events = run(beat, 0.5, 30.0, 0.5)
    assert [(t, what) for t, what, _ in events] == [
        (2.0, "ping"),
        (4.0, "ping"),
        (6.0, "ping"),
        (8.0, "ping"),
        (10.0, "drop"),
    ]
    assert len(beat) == 0


def test_a_forgotten_peer_is_neither_pinged_nor_dropped() -> None:
    """Once its connection is gone a peer leaves the heartbeat for good."""
    beat: Heartbeat[Peer] = Heartbeat(ping_after=1.0, timeout=3.0)
    gone, kept = Peer(), Peer()
    beat.watch(gone, 0.0)
    beat.watch(kept, 0.0)
    beat.forget(gone)
    assert {id(p) for _, _, p in run(beat, 0.0, 10.0, 1.0)} == {id(kept)}
