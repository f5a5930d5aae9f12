"""The server's guards against connection floods: process limits, defaults and pending caps."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from achilles_like.server.cluster import ServerOptions
from achilles_like.server.guard import PendingConnections, raise_open_file_limit


@pytest.fixture
def low_open_file_limit() -> Iterator[int]:
    """The soft open-file limit lowered to 256 for the test, restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard open-file limit is already 256 or less")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_open_file_soft_limit_is_raised_to_the_hard_limit(low_open_file_limit: int) -> None:
    """At start the server lifts its soft open-file limit as far as the hard limit allows."""
    raised = raise_open_file_limit()
    assert raised > 256
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised


def test_the_default_auth_timeout_is_a_few_seconds() -> None:
    """A stalled unauthenticated connection holds a socket for at most a few seconds by default."""
    assert ServerOptions().auth_timeout <= 5.0


# -- the pending-connection caps -------------------------------------------------------------


def test_pending_connections_under_the_caps_evict_nothing() -> None:
    """Connections below both caps are all kept, each counted under its address."""
    pending: PendingConnections[str] = PendingConnections(max_total=4, max_per_address=2)
    assert pending.admit("a1", "10.0.0.1") == []
    assert pending.admit("b1", "10.0.0.2") == []
    assert pending.admit("a2", "10.0.0.1") == []
    assert (len(pending), pending.from_address("10.0.0.1"), pending.evicted) == (3, 2, 0)


def test_the_total_cap_closes_the_oldest_pending_connection() -> None:
    """At the total cap a new connection evicts the oldest one, whatever its address."""
    pending: PendingConnections[str] = PendingConnections(max_total=3, max_per_address=3)
    for conn, address in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")]:
        pending.admit(conn, address)
    assert pending.admit("d", "10.0.0.4") == ["a"]
    assert pending.admit("e", "10.0.0.4") == ["b"]
    assert "a" not in pending and "e" in pending
    assert (len(pending), pending.evicted) == (3, 2)


def test_the_per_address_cap_closes_that_addresses_oldest_connection() -> None:
    """At its own cap an address loses its oldest connection; older ones of other addresses stay."""
    pending: PendingConnections[str] = PendingConnections(max_total=10, max_per_address=2)
    pending.admit("other", "10.0.0.9")
    pending.admit("x1", "10.0.0.1")
    pending.admit("x2", "10.0.0.1")
    assert pending.admit("x3", "10.0.0.1") == ["x1"]
    assert "other" in pending and pending.from_address("10.0.0.1") == 2


def test_a_settled_connection_no_longer_counts() -> None:
    """Authenticating (or closing) frees a connection's place; settling twice is harmless."""
    pending: PendingConnections[str] = PendingConnections(max_total=1, max_per_address=1)
    pending.admit("a", "10.0.0.1")
    pending.settle("a")
    pending.settle("a")
    assert pending.admit("b", "10.0.0.1") == []
    assert (len(pending), pending.from_address("10.0.0.1"), pending.evicted) == (1, 1, 0)


def test_pending_caps_below_one_are_refused() -> None:
    """A cap of zero would refuse every peer, so it is a configuration error."""
    with pytest.raises(ValueError, match="at least 1"):
        PendingConnections(max_total=0, max_per_address=1)
