"""PlainHistogram exposes exactly what prometheus_client's Histogram does for the same observations."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from achilles_like.server.plain_histogram import PlainHistogram

BUCKETS = (0.001, 0.01, 0.5, 1.0, float("inf"))
VALUES = [0.0, 0.001, 0.0011, 0.01, 0.3, 1.0, 2.0, 7200.0]


def exposition(registry: CollectorRegistry) -> list[str]:
    """The sample lines of a registry, without the creation timestamp only the library's keeps."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_the_same_observations_give_the_same_exposition() -> None:
    """Buckets (a value on a bound counts in that bucket), count and sum match the library's histogram."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = PlainHistogram("t_seconds", "doc", BUCKETS)
    ours.register(plain)
    library = Histogram("t_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for value in VALUES:
        plain.observe(value)
        library.observe(value)
    assert exposition(ours) == exposition(theirs)
    assert plain.count == len(VALUES)


@pytest.mark.parametrize("buckets", [(), (1.0, 0.5, float("inf")), (0.5, 1.0)])
def test_buckets_must_ascend_to_infinity(buckets: tuple[float, ...]) -> None:
    """Bounds out of order, or without a last +Inf bucket, are refused with the bounds named."""
    with pytest.raises(ValueError, match="buckets must ascend"):
        PlainHistogram("t", "doc", buckets)
