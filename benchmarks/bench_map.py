"""Throughput and latency of achilles_like next to the standard library, in one run.

Run: ``python benchmarks/bench_map.py [--processes N] [--repeat R]``

Both sides get the same number of worker processes on this machine: the
stdlib a ``multiprocessing.Pool(N)`` (or a
``concurrent.futures.ProcessPoolExecutor(N)``), achilles_like a LocalCluster
with one node of N processes (server and node as separate processes on
127.0.0.1, every item crossing two TCP hops each way), reached through the
module functions, ``achilles_like.Pool(N, host=...)`` or
``achilles_like.ProcessPoolExecutor(N, host=...)``. Each figure is the best of
``--repeat`` runs (latencies: the median of many calls), to damp the noise of
a shared machine. Nothing here is asserted: it prints a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import achilles_like
from achilles_like import LocalCluster

Row = tuple[str, str, str, str]

#: Items of the throughput cases on 1 ms tasks, and ``submit`` calls of the executor case.
ONE_MS_ITEMS = 2_000


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


def throughput_row(name: str, count: int, local: float, remote: float) -> Row:
    """A row of ``count`` items done in ``local`` and ``remote`` seconds."""
    return name, f"{count / local:,.0f} items/s", f"{count / remote:,.0f} items/s", f"{local / remote:.2f}"


def latency_row(name: str, local_ms: float, remote_ms: float) -> Row:
    """A row of two median round trips, in milliseconds."""
    return name, f"{local_ms:.2f} ms", f"{remote_ms:.2f} ms", f"{local_ms / remote_ms:.2f}"


def module_map_rows(pool: Any, target: dict[str, Any], repeat: int) -> list[Row]:
    """``multiprocessing.Pool.map`` against ``achilles_like.map`` (explicit chunksizes), imap latency."""
    cases: list[tuple[str, int, Callable[..., Any], int]] = [
        ("map tiny items, chunksize=1", 5_000, tiny, 1),
        ("map tiny items, chunksize=100", 100_000, tiny, 100),
        ("map 1 ms tasks, chunksize=1", ONE_MS_ITEMS, one_ms, 1),
        ("map 1 ms tasks, chunksize=10", ONE_MS_ITEMS, one_ms, 10),
    ]
    rows: list[Row] = []
    for name, count, func, chunksize in cases:
        items = range(count)
        local = best(repeat, lambda: pool.map(func, items, chunksize))  # noqa: B023
        remote = best(repeat, lambda: achilles_like.map(func, items, chunksize=chunksize, **target))  # noqa: B023
        rows.append(throughput_row(name, count, local, remote))
    local_ms = latency(repeat, lambda: next(pool.imap(tiny, [1])))
    remote_ms = latency(repeat, lambda: next(iter(achilles_like.imap(tiny, [1], **target))))
    rows.append(latency_row("imap one-item round trip (median)", local_ms, remote_ms))
    return rows


def pool_class_rows(pool: Any, n: int, target: dict[str, Any], repeat: int) -> list[Row]:
    """``multiprocessing.Pool`` against ``achilles_like.Pool``: default-chunksize map, apply_async latency."""
    items = range(ONE_MS_ITEMS)
    with achilles_like.Pool(n, **target) as remote_pool:
        remote_pool.map(tiny, range(100))  # warm up: the session's connection and the workers
        local = best(repeat, lambda: pool.map(one_ms, items))
        remote = best(repeat, lambda: remote_pool.map(one_ms, items))
        local_ms = latency(repeat, lambda: pool.apply_async(tiny, (1,)).get())
        remote_ms = latency(repeat, lambda: remote_pool.apply_async(tiny, (1,)).get())
    return [
        throughput_row("Pool.map 1 ms tasks, default chunksize", ONE_MS_ITEMS, local, remote),
        latency_row("Pool.apply_async round trip (median)", local_ms, remote_ms),
    ]


def submit_all(executor: concurrent.futures.Executor, count: int) -> None:
    """``count`` submits of a 1 ms task, then wait for every future."""
    futures = [executor.submit(one_ms, i) for i in range(count)]
    concurrent.futures.wait(futures)


def executor_rows(n: int, target: dict[str, Any], repeat: int) -> list[Row]:
    """``concurrent.futures.ProcessPoolExecutor`` against ``achilles_like.ProcessPoolExecutor``."""
    with (
        concurrent.futures.ProcessPoolExecutor(n) as local_executor,
        achilles_like.ProcessPoolExecutor(n, **target) as remote_executor,
    ):
        submit_all(local_executor, 100)  # warm up both sides
        submit_all(remote_executor, 100)
        local = best(repeat, lambda: submit_all(local_executor, ONE_MS_ITEMS))
        remote = best(repeat, lambda: submit_all(remote_executor, ONE_MS_ITEMS))
    return [throughput_row(f"Executor.submit {ONE_MS_ITEMS} × 1 ms tasks", ONE_MS_ITEMS, local, remote)]


def print_table(rows: list[Row], n: int, repeat: int) -> None:
    """The table, columns padded to their widest cell."""
    headers: Row = ("case", "stdlib", "achilles_like", "ratio")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(4)]
    print(f"processes: {n}, best of {repeat} runs (latency: median); ratio > 1 means achilles_like is faster")
    print("stdlib: multiprocessing.Pool, or concurrent.futures.ProcessPoolExecutor for Executor rows")
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    """Measure each case on both sides and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.processes, args.repeat

    with multiprocessing.Pool(n) as pool, LocalCluster(nodes=1, processes=n) as cluster:
        target: dict[str, Any] = {
            "host": cluster.host,
            "port": cluster.port,
            "secret_key": cluster.secret_key,
        }
        achilles_like.map(tiny, range(100), **target)  # warm up the node's workers
        rows = module_map_rows(pool, target, repeat)
        rows += pool_class_rows(pool, n, target, repeat)
        rows += executor_rows(n, target, repeat)
    print_table(rows, n, repeat)


if __name__ == "__main__":
    main()
