"""The server's guards against connection floods: process limits and defaults."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from achilles_like.server.cluster import ServerOptions
from achilles_like.server.guard import raise_open_file_limit


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
