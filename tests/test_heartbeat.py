"""Which peers the server pings and drops, on a clock that is just a number."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

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


def idle_and_busy(holding: set[int]) -> Heartbeat[Peer]:
    """A heartbeat of 2 s / 10 s for peers that hold work and 10 s / 30 s for idle ones."""
    return Heartbeat(2.0, 10.0, 10.0, 30.0, holds_work=lambda peer: id(peer) in holding)


def test_an_idle_peer_is_pinged_and_dropped_on_the_long_limits() -> None:
    """A silent peer with no work is pinged every idle interval and dropped at the idle timeout."""
    beat = idle_and_busy(set())
    peer = Peer()
    beat.watch(peer, 0.0)
    events = run(beat, 0.5, 60.0, 0.5)
    assert [(t, what) for t, what, _ in events] == [(10.0, "ping"), (20.0, "ping"), (30.0, "drop")]


def test_an_idle_peer_that_answers_is_pinged_once_per_idle_interval_and_kept() -> None:
    """An idle peer answering each PING within a second costs one PING per 10 s and is never dropped."""
    beat = idle_and_busy(set())
    peer = Peer()
    beat.watch(peer, 0.0)
    pings = []
    now = 0.0
    while now < 3600.0:
        now += 0.5
        if peer.last_ping == now - 0.5 and now > 0.5:
            peer.last_seen = now  # the PONG
        ping, drop = beat.due(now)
        assert drop == []
        pings += [now for _ in ping]
    assert len(pings) == 360
    assert all(b - a <= 11.0 for a, b in zip([0.0, *pings], pings, strict=False))
    assert beat.looks <= 2 * 360 + 1


def test_work_switches_a_quiet_idle_peer_to_the_short_limits_from_that_moment() -> None:
    """Given work after 25 s of quiet, a peer is pinged 2 s later and dropped 10 s later, not before."""
    holding: set[int] = set()
    beat = idle_and_busy(holding)
    peer = Peer()
    beat.watch(peer, 0.0)
    assert [what for _, what, _ in run(beat, 0.5, 25.0, 0.5)] == ["ping", "ping"]  # at 10 and 20
    holding.add(id(peer))
    peer.last_sent = 25.0  # the TASK
    beat.work_assigned(peer, 25.0)
    assert beat.is_busy(peer)
    events = run(beat, 25.5, 60.0, 0.5)
    assert [(t, what) for t, what, _ in events] == [
        (27.0, "ping"),
        (29.0, "ping"),
        (31.0, "ping"),
        (33.0, "ping"),
        (35.0, "drop"),
    ]


def test_a_peer_that_no_longer_holds_work_goes_back_to_the_idle_limits() -> None:
    """Once its work is done a peer is pinged on the idle interval again, asked only when looked at."""
    holding: set[int] = set()
    asked: list[float] = []
    beat: Heartbeat[Peer] = Heartbeat(
        2.0, 10.0, 10.0, 30.0, holds_work=lambda peer: asked.append(peer.last_seen) or id(peer) in holding
    )
    peer = Peer()
    beat.watch(peer, 0.0)
    holding.add(id(peer))
    beat.work_assigned(peer, 0.0)
    beat.work_assigned(peer, 0.0)  # again: nothing changes
    now, pings = 0.0, []
    while now < 60.0:
        now += 1.0
        peer.last_seen = now  # it answers, and talks
        if now == 21.0:
            holding.clear()
        ping, drop = beat.due(now)
        assert drop == []
        pings += [now for _ in ping]
    assert pings[:10] == [2.0 * n for n in range(1, 11)]  # busy: heard nothing from us for 2 s
    assert pings[10:] == [30.0, 40.0, 50.0, 60.0]  # idle from the look at 22 s
    assert not beat.is_busy(peer)
    assert len(asked) == beat.looks == 15  # one question per look (11 busy, 4 idle), none per frame


def test_work_the_heartbeat_was_not_told_of_is_found_at_the_next_look() -> None:
    """A quiet peer that holds work without work_assigned is held to the short limits from its next look."""
    holding: set[int] = set()
    beat = idle_and_busy(holding)
    peer = Peer()
    beat.watch(peer, 0.0)
    holding.add(id(peer))  # given work at 0 s, and nobody told the heartbeat
    events = run(beat, 0.5, 60.0, 0.5)
    assert [(t, what) for t, what, _ in events] == [
        (10.0, "ping"),  # the idle look finds it busy: from now on every 2 s
        (12.0, "ping"),
        (14.0, "ping"),
        (16.0, "ping"),
        (18.0, "ping"),
        (20.0, "drop"),
    ]


def test_idle_limits_below_the_busy_ones_are_refused() -> None:
    """An idle interval shorter than the busy one, or an idle timeout below it, is a ValueError."""
    with pytest.raises(ValueError, match="idle limits"):
        Heartbeat(2.0, 10.0, 1.0, 30.0)
    with pytest.raises(ValueError, match="idle limits"):
        Heartbeat(2.0, 10.0, 10.0, 5.0)
