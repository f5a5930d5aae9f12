"""A controller's small sends leave from the caller's thread: no hop to the reactor thread per call."""

from __future__ import annotations

from typing import Any

import pytest
import tasks
from conftest import target

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.client import connection


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of Connection.send calls and of the reactor-thread flushes they needed."""
    counts = {"sends": 0, "flushes": 0}
    send, flush = connection.Connection.send, connection.Connection._flush

    def counting_send(self: connection.Connection, *parts: bytes) -> None:
        counts["sends"] += 1
        send(self, *parts)

    def counting_flush(self: connection.Connection) -> None:
        counts["flushes"] += 1
        flush(self)

    monkeypatch.setattr(connection.Connection, "send", counting_send)
    monkeypatch.setattr(connection.Connection, "_flush", counting_flush)
    return counts


def _run(call: Any, hops: dict[str, int]) -> None:
    call(0)  # the first call may open the connection
    hops.update(sends=0, flushes=0)
    for x in range(1, 21):
        assert call(x) == tasks.square(x)


def test_pool_apply_sends_without_waking_the_reactor(cluster: LocalCluster, hops: dict[str, int]) -> None:
    """Twenty Pool.apply calls send their tasks from the caller's side, with no reactor flush."""
    with al.Pool(2, **target(cluster)) as pool:
        _run(lambda x: pool.apply(tasks.square, (x,)), hops)
    assert hops["sends"] >= 20 and hops["flushes"] == 0


def test_module_map_sends_without_waking_the_reactor(cluster: LocalCluster, hops: dict[str, int]) -> None:
    """Twenty one-item maps each send their job in one write from the caller's thread."""
    _run(lambda x: al.map(tasks.square, [x], **target(cluster))[0], hops)
    assert hops["sends"] == 20 and hops["flushes"] == 0
