"""Throughput and latency of achilles_like next to multiprocessing.Pool, in one run.

Run: ``python benchmarks/bench_map.py [--processes N] [--repeat R]``

Both sides get the same number of worker processes on this machine: the
stdlib a ``multiprocessing.Pool(N)``, achilles_like a LocalCluster with one
node of N processes (server and node as separate processes on 127.0.0.1,
every item crossing two TCP hops each way). Each figure is the best of
``--repeat`` runs, to damp the noise of a shared machine. Nothing here is
asserted: it prints a table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import achilles_like
from achilles_like import LocalCluster


def tiny(x: int) -> int:
    """A task that does almost nothing: measures per-item overhead."""
    return x + 1


def one_ms(x: int) -> int:
    """A task that keeps a CPU busy for about one millisecond."""
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


def best(repeat: int, run: Callable[[], Any]) -> float:
    """The shortest wall time of ``repeat`` runs of ``run``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def latency(repeat: int, run_one: Callable[[], Any]) -> float:
    """Median wall time of a one-item round trip, in milliseconds."""
    samples = []
    for _ in range(max(repeat * 10, 20)):
        started = time.perf_counter()
        run_one()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def main() -> None:
    """Measure each case on both pools and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.processes, args.repeat

    cases: list[tuple[str, int, Callable[..., Any], int]] = [
        ("map tiny items, chunksize=1", 5_000, tiny, 1),
        ("map tiny items, chunksize=100", 100_000, tiny, 100),
        ("map 1 ms tasks, chunksize=1", 2_000, one_ms, 1),
        ("map 1 ms tasks, chunksize=10", 2_000, one_ms, 10),
    ]
    rows: list[tuple[str, str, str, str]] = []
    with multiprocessing.Pool(n) as pool, LocalCluster(nodes=1, processes=n) as cluster:
        target = {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}
        achilles_like.map(tiny, range(100), **target)  # warm up the node's workers
        for name, count, func, chunksize in cases:
            items = range(count)
            local = best(repeat, lambda: pool.map(func, items, chunksize))  # noqa: B023
            remote = best(repeat, lambda: achilles_like.map(func, items, chunksize=chunksize, **target))  # noqa: B023
            rows.append(
                (
                    name,
                    f"{count / local:,.0f} items/s",
                    f"{count / remote:,.0f} items/s",
                    f"{local / remote:.2f}",
                )
            )

        local_ms = latency(repeat, lambda: next(pool.imap(tiny, [1])))
        remote_ms = latency(repeat, lambda: next(iter(achilles_like.imap(tiny, [1], **target))))
        rows.append(
            (
                "imap one-item round trip (median)",
                f"{local_ms:.2f} ms",
                f"{remote_ms:.2f} ms",
                f"{local_ms / remote_ms:.2f}",
            )
        )

    headers = ("case", "multiprocessing.Pool", "achilles_like", "ratio")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(4)]
    print(f"processes: {n}, best of {repeat} runs (latency: median); ratio > 1 means achilles_like is faster")
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
