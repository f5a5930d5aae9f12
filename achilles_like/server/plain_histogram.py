"""A Prometheus histogram kept as plain numbers, for an observation made on every task.

``prometheus_client.Histogram.observe`` takes a lock and increments a
lock-guarded value per call: a few microseconds, once per task on the
server's hot path. The server observes only on the reactor thread, so this
one keeps a list of bucket counts and a sum, and turns them into the same
exposition (``_bucket``, ``_count``, ``_sum``) when Prometheus scrapes. It
reads them without a lock: a scrape from another thread may see an
observation half counted, never a wrong total afterwards.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class PlainHistogram(Collector):
    """Values counted into ``buckets`` (ascending upper bounds, the last ``inf``), scraped as a histogram."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        bounds = [float(bound) for bound in buckets]
        if not bounds or bounds != sorted(bounds) or bounds[-1] != float("inf"):
            raise ValueError(f"buckets must ascend and end with inf, got {list(buckets)}")
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a value on a bound falls in that bound's bucket, as ``le`` says)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    def collect(self) -> Iterator[Metric]:
        """The histogram in Prometheus' form: cumulative buckets and the sum."""
        cumulative, buckets = 0, []
        for bound, count in zip(self._bounds, self._counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), float(cumulative)))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)
