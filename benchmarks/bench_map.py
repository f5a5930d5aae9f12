"""Throughput, latency, CPU and memory of achilles_like next to the standard library, in one run.

Run: ``python benchmarks/bench_map.py [--processes N] [--repeat R] [--quick] [--only NAME[,NAME]]``

Both sides get the same number of worker processes on this machine: the
stdlib a ``multiprocessing.Pool(N)`` (or a
``concurrent.futures.ProcessPoolExecutor(N)``), achilles_like a LocalCluster
with one node of N processes (server and node as separate processes on
127.0.0.1, every item crossing two TCP hops each way), reached through the
module functions, ``achilles_like.Pool(N, host=...)`` or
``achilles_like.ProcessPoolExecutor(N, host=...)``. Each throughput figure is
the best of ``--repeat`` runs, each latency the median of many calls, to damp
the noise of a shared machine, and the two sides take turns (a round each for
throughput, 20 calls each for latency) so that a spell of load falls on both.
Nothing here is asserted: it prints a table.

Cases (``--only`` takes these names, comma-separated):

- ``latency``: one-item ``map(f, [x])``, ``imap``, ``Pool.apply`` and
  ``Pool.apply_async`` round trips (module functions reuse whatever the
  library keeps across calls);
- ``startup``: ``LocalCluster(nodes=2, processes=1)`` from start to usable,
  against ``multiprocessing.Pool(2)`` started and running one task (twice
  when the package has no bytecode: compiled from source in each process,
  and byte-compiled as an installed package is);
- ``map``: module ``map`` on tiny items (chunksize 1 and 100) and on 1 ms
  tasks (chunksize 1 and 10);
- ``pool``: ``Pool.map`` on tiny items and on 1 ms tasks, default chunksize;
- ``unordered``: ``Pool.imap_unordered`` and module ``imap_unordered`` on
  tiny items, and the ratio between the two (the median of at least five
  rounds' own ratios, with each side's median rate);
- ``executor``: ``Executor.submit`` of 2000 one-millisecond tasks;
- ``payload``: 10 MB arguments in, 10 MB results out (MB/s);
- ``cpu``: CPU per chunksize=1 task summed over every process on each side
  (Linux ``/proc``), with the per-process split for achilles_like;
- ``memory``: peak RSS growth of each process (controller, server, node,
  worker) for one 64 MiB argument, one 64 MiB result, and both in one task,
  as a multiple of the body, on a fresh cluster each (Linux ``/proc``). A hop
  that must hold two bodies at once (the server keeps a task's argument for a
  retry until its result is in) also shows its growth per body held.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import multiprocessing
import os
import py_compile
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _measure

import achilles_like
from achilles_like import LocalCluster

Row = tuple[str, str, str, str]

#: Items of the throughput cases on 1 ms tasks, and ``submit`` calls of the executor case.
ONE_MS_ITEMS = 2_000
MB = 1_000_000
MIB = 1 << 20
PAYLOAD_BYTES = 10 * MB
#: Calls of one side in a row when the latency cases take turns.
LATENCY_BLOCK = 20
HOP_BODY_BYTES = 64 * MIB


def tiny(x: int) -> int:
    """A task that does almost nothing: measures per-item overhead."""
    return x + 1


def one_ms(x: int) -> int:
    """A task that keeps a CPU busy for about one millisecond."""
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return x


def size_of(blob: bytes) -> int:
    """Take a large argument, return a small result."""
    return len(blob)


def make_payload(_: int) -> bytes:
    """Take a small argument, return a 10 MB result."""
    return b"\x01" * PAYLOAD_BYTES


def echo(blob: bytes) -> bytes:
    """Return the argument: as many bytes out as in."""
    return blob


@dataclass
class Bench:
    """What every case shares: both pools, the cluster and the run's settings."""

    n: int
    repeat: int
    quick: bool
    pool: Any = None
    cluster: LocalCluster | None = None
    stack: ExitStack = field(default_factory=ExitStack)
    _remote_pool: Any = None

    @property
    def target(self) -> dict[str, Any]:
        """Keyword arguments that send a module-level call to the cluster."""
        assert self.cluster is not None
        return {"host": self.cluster.host, "port": self.cluster.port, "secret_key": self.cluster.secret_key}

    def remote_pool(self) -> Any:
        """One ``achilles_like.Pool`` for every Pool case, warmed up once."""
        if self._remote_pool is None:
            self._remote_pool = self.stack.enter_context(achilles_like.Pool(self.n, **self.target))
            self._remote_pool.map(tiny, range(100))  # the session's connection and the workers
        return self._remote_pool

    def scaled(self, count: int) -> int:
        """``count`` items, or a fifth of them with ``--quick``."""
        return max(count // 5, 1) if self.quick else count


def times_each(repeat: int, *runs: Callable[[], Any]) -> list[list[float]]:
    """The wall times of each of ``runs`` over ``repeat`` rounds, the runs taking turns.

    Taking turns (stdlib, achilles_like, stdlib, ...) rather than one side's
    repeats and then the other's puts both sides under the same spells of a
    shared machine's load, so their ratio moves less from run to run.
    """
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeat):
        for run, taken in zip(runs, times, strict=True):
            started = time.perf_counter()
            run()
            taken.append(time.perf_counter() - started)
    return times


def best_each(repeat: int, *runs: Callable[[], Any]) -> list[float]:
    """The shortest wall time of each of ``runs`` over ``repeat`` rounds, the runs taking turns."""
    return [min(taken) for taken in times_each(repeat, *runs)]


def median_time(samples: int, run: Callable[[], Any]) -> float:
    """Median wall time of ``samples`` runs of ``run``, in seconds."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def latencies(repeat: int, *runs: Callable[[], Any]) -> list[float]:
    """Median wall time of a one-item round trip of each of ``runs``, in milliseconds.

    The runs take turns in blocks of :data:`LATENCY_BLOCK` calls, so a spell
    of load on the shared machine falls on both sides alike.
    """
    # Enough calls for a steady median on a shared machine (30 moved it by half between runs).
    samples = max(repeat * 60, 100)
    times: list[list[float]] = [[] for _ in runs]
    while len(times[0]) < samples:
        for run, taken in zip(runs, times, strict=True):
            for _ in range(min(LATENCY_BLOCK, samples - len(taken))):
                started = time.perf_counter()
                run()
                taken.append(time.perf_counter() - started)
    return [statistics.median(taken) * 1000 for taken in times]


def ratio(local: float, remote: float) -> str:
    """``local / remote`` as a table cell (> 1: achilles_like is faster or leaner)."""
    return f"{local / remote:.2f}" if remote else "-"


def throughput_row(name: str, count: int, local: float, remote: float) -> Row:
    """A row of ``count`` items done in ``local`` and ``remote`` seconds."""
    return name, f"{count / local:,.0f} items/s", f"{count / remote:,.0f} items/s", ratio(local, remote)


def latency_row(name: str, local_ms: float, remote_ms: float) -> Row:
    """A row of two median round trips, in milliseconds."""
    return name, f"{local_ms:.2f} ms", f"{remote_ms:.2f} ms", ratio(local_ms, remote_ms)


def latency_rows(bench: Bench) -> list[Row]:
    """One-item round trips: module ``map`` and ``imap``, ``Pool.apply`` and ``apply_async``."""
    pool, target, repeat = bench.pool, bench.target, bench.repeat
    remote_pool = bench.remote_pool()
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (
            "map(f, [x]) one-item round trip (median)",
            lambda: pool.map(tiny, [1]),
            lambda: achilles_like.map(tiny, [1], **target),
        ),
        (
            "imap one-item round trip (median)",
            lambda: next(pool.imap(tiny, [1])),
            lambda: next(iter(achilles_like.imap(tiny, [1], **target))),
        ),
        (
            "Pool.apply round trip (median)",
            lambda: pool.apply(tiny, (1,)),
            lambda: remote_pool.apply(tiny, (1,)),
        ),
        (
            "Pool.apply_async round trip (median)",
            lambda: pool.apply_async(tiny, (1,)).get(),
            lambda: remote_pool.apply_async(tiny, (1,)).get(),
        ),
    ]
    return [latency_row(name, *latencies(repeat, local, remote)) for name, local, remote in cases]


def startup_rows(bench: Bench) -> list[Row]:
    """``LocalCluster(nodes=2, processes=1)`` start to ready, against ``multiprocessing.Pool(2)`` + a task.

    Each server and node process imports the package. Where its bytecode is
    missing and may not be written (an editable install under
    ``PYTHONDONTWRITEBYTECODE``), each of them compiles it from source, which
    ``pip install .`` does once, at install time: the row is then measured
    both ways, byte-compiled for the second, with bytecode written to the
    package's ``__pycache__`` for that row only and removed after it.
    """
    samples = 2 if bench.quick else 5

    def start_stdlib() -> None:
        with multiprocessing.Pool(2) as pool:
            pool.apply(tiny, (1,))

    def start_cluster() -> float:
        started = time.perf_counter()
        cluster = LocalCluster(nodes=2, processes=1).start()
        ready = time.perf_counter() - started
        cluster.shutdown()  # not timed: only start → usable is
        return ready

    def row(label: str) -> Row:
        local = median_time(samples, start_stdlib)
        remote = statistics.median(start_cluster() for _ in range(samples))
        name = f"LocalCluster(nodes=2, processes=1) ready{label} (median of {samples})"
        return name, f"{local * 1000:.0f} ms", f"{remote * 1000:.0f} ms", ratio(local, remote)

    package = Path(achilles_like.__file__).parent
    sources = sorted(package.rglob("*.py"))
    missing = [path for path in sources if not Path(importlib.util.cache_from_source(str(path))).exists()]
    if not missing or not sys.dont_write_bytecode:  # else the first child writes it for the rest
        return [row("")]
    rows = [row(", compiled from source in each process")]
    try:
        for path in missing:
            py_compile.compile(str(path), doraise=True)
        rows.append(row(", byte-compiled (as pip installs it)"))
    except (OSError, py_compile.PyCompileError) as error:  # a read-only install: the one row stands
        print(f"(no byte-compiled start-up row: {error})")
    finally:
        for path in missing:
            compiled = Path(importlib.util.cache_from_source(str(path)))
            compiled.unlink(missing_ok=True)
            if compiled.parent.exists() and not any(compiled.parent.iterdir()):
                compiled.parent.rmdir()
    return rows


def map_rows(bench: Bench) -> list[Row]:
    """``multiprocessing.Pool.map`` against module ``achilles_like.map`` (explicit chunksizes)."""
    cases: list[tuple[str, int, Callable[..., Any], int]] = [
        ("map tiny items, chunksize=1", bench.scaled(5_000), tiny, 1),
        ("map tiny items, chunksize=100", bench.scaled(100_000), tiny, 100),
        ("map 1 ms tasks, chunksize=1", bench.scaled(ONE_MS_ITEMS), one_ms, 1),
        ("map 1 ms tasks, chunksize=10", bench.scaled(ONE_MS_ITEMS), one_ms, 10),
    ]
    rows: list[Row] = []
    for name, count, func, chunksize in cases:
        items = range(count)
        local, remote = best_each(
            bench.repeat,
            lambda: bench.pool.map(func, items, chunksize),  # noqa: B023
            lambda: achilles_like.map(func, items, chunksize=chunksize, **bench.target),  # noqa: B023
        )
        rows.append(throughput_row(name, count, local, remote))
    return rows


def pool_rows(bench: Bench) -> list[Row]:
    """``multiprocessing.Pool.map`` against ``achilles_like.Pool.map``, both at their default chunksize."""
    remote_pool = bench.remote_pool()
    rows: list[Row] = []
    cases: list[tuple[str, int, Callable[..., Any]]] = [
        ("Pool.map tiny items, default chunksize", bench.scaled(1_000_000), tiny),
        ("Pool.map 1 ms tasks, default chunksize", bench.scaled(ONE_MS_ITEMS), one_ms),
    ]
    for name, count, func in cases:
        items = range(count)
        local, remote = best_each(
            bench.repeat,
            lambda: bench.pool.map(func, items),  # noqa: B023
            lambda: remote_pool.map(func, items),  # noqa: B023
        )
        rows.append(throughput_row(name, count, local, remote))
    return rows


def unordered_rows(bench: Bench) -> list[Row]:
    """``imap_unordered`` on tiny items: stdlib, ``achilles_like.Pool`` and the module function.

    Pool against module is a ratio of two achilles_like figures that a
    spell of load moves apart by a quarter between runs: it is the median of
    the rounds' own ratios (each round runs all three back to back), over at
    least five rounds, not the ratio of each side's best.
    """
    remote_pool = bench.remote_pool()
    rows: list[Row] = []
    rounds = max(bench.repeat, 5)
    # Runs of about half a second: shorter ones moved the ratio by a third between runs.
    for count, chunksize in ((bench.scaled(20_000), 1), (bench.scaled(1_000_000), 100)):
        items = range(count)
        local, pooled, module = times_each(
            rounds,
            lambda: sum(bench.pool.imap_unordered(tiny, items, chunksize)),  # noqa: B023
            lambda: sum(remote_pool.imap_unordered(tiny, items, chunksize)),  # noqa: B023
            lambda: sum(achilles_like.imap_unordered(tiny, items, chunksize=chunksize, **bench.target)),  # noqa: B023
        )
        paired = statistics.median(m / p for m, p in zip(module, pooled, strict=True))
        suffix = f"tiny items, chunksize={chunksize}"
        rows += [
            throughput_row(f"Pool.imap_unordered {suffix}", count, min(local), min(pooled)),
            throughput_row(f"module imap_unordered {suffix}", count, min(local), min(module)),
            (
                f"  Pool / module imap_unordered, chunksize={chunksize} (median of {rounds} rounds)",
                f"(module) {count / statistics.median(module):,.0f} items/s",
                f"(Pool) {count / statistics.median(pooled):,.0f} items/s",
                f"{paired:.2f}",
            ),
        ]
    return rows


def submit_all(executor: concurrent.futures.Executor, count: int) -> None:
    """``count`` submits of a 1 ms task, then wait for every future."""
    futures = [executor.submit(one_ms, i) for i in range(count)]
    concurrent.futures.wait(futures)


def executor_rows(bench: Bench) -> list[Row]:
    """``concurrent.futures.ProcessPoolExecutor`` against ``achilles_like.ProcessPoolExecutor``."""
    count = bench.scaled(ONE_MS_ITEMS)
    with (
        concurrent.futures.ProcessPoolExecutor(bench.n) as local_executor,
        achilles_like.ProcessPoolExecutor(bench.n, **bench.target) as remote_executor,
    ):
        submit_all(local_executor, 100)  # warm up both sides
        submit_all(remote_executor, 100)
        local, remote = best_each(
            bench.repeat,
            lambda: submit_all(local_executor, count),
            lambda: submit_all(remote_executor, count),
        )
    return [throughput_row(f"Executor.submit {count} × 1 ms tasks", count, local, remote)]


def payload_rows(bench: Bench) -> list[Row]:
    """10 MB arguments in and 10 MB results out, chunksize=1, in MB/s."""
    count = max(bench.n * 4, 8) if not bench.quick else max(bench.n * 2, 4)
    blob = b"\x01" * PAYLOAD_BYTES
    blobs = [blob] * count
    megabytes = count * PAYLOAD_BYTES / MB

    def row(name: str, local: float, remote: float) -> Row:
        return name, f"{megabytes / local:,.0f} MB/s", f"{megabytes / remote:,.0f} MB/s", ratio(local, remote)

    local_in, remote_in = best_each(
        bench.repeat,
        lambda: bench.pool.map(size_of, blobs, 1),
        lambda: achilles_like.map(size_of, blobs, chunksize=1, **bench.target),
    )
    local_out, remote_out = best_each(
        bench.repeat,
        lambda: bench.pool.map(make_payload, range(count), 1),
        lambda: achilles_like.map(make_payload, range(count), chunksize=1, **bench.target),
    )
    return [
        row(f"10 MB arguments in ({count} items)", local_in, remote_in),
        row(f"10 MB results out ({count} items)", local_out, remote_out),
    ]


def _cpu_of(pids: dict[str, list[int]], own: str | None) -> dict[str, float]:
    """CPU seconds used so far by each named group of processes (``own``: this process)."""
    used = {name: sum(_measure.cpu_seconds(pid) for pid in group) for name, group in pids.items()}
    if own is not None:
        used[own] = _measure.own_cpu_seconds()
    return used


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


def cpu_rows(bench: Bench) -> list[Row]:
    """CPU per chunksize=1 tiny task, summed over every process of each side, in µs."""
    if not _measure.proc_available():
        return [("framework CPU per chunksize=1 task", "needs /proc", "needs /proc", "-")]
    assert bench.cluster is not None and bench.cluster.server is not None
    count = bench.scaled(5_000)
    items = range(count)
    # The user's own share: the same calls in this process (workers run exactly these).
    (user,) = best_each(3, lambda: [tiny(x) for x in items])

    workers = [getattr(process, "pid", 0) for process in bench.pool._pool]
    before = _cpu_of({"workers": workers}, "controller")
    bench.pool.map(tiny, items, 1)
    local = _delta(before, _cpu_of({"workers": workers}, "controller"))

    node = bench.cluster.nodes[0].pid
    groups = {
        "server": [bench.cluster.server.pid],
        "node": [node],
        "workers": _measure.children_of(node),
    }
    before = _cpu_of(groups, "controller")
    achilles_like.map(tiny, items, chunksize=1, **bench.target)
    remote = _delta(before, _cpu_of(groups, "controller"))

    local_total = sum(local.values()) - user
    remote_total = sum(remote.values()) - user
    split = ", ".join(f"{name} {seconds / count * 1e6:.0f}" for name, seconds in remote.items())
    per_task = f"{local_total / count * 1e6:.0f} µs", f"{remote_total / count * 1e6:.0f} µs"
    return [
        (f"framework CPU per chunksize=1 task ({count} tasks)", *per_task, ratio(local_total, remote_total)),
        ("  achilles_like split, µs per task", "", split, ""),
    ]


def make_hop_body(_: int) -> bytes:
    """Take a small argument, return a 64 MiB result."""
    return b"\x01" * HOP_BODY_BYTES


def memory_rows(bench: Bench) -> list[Row]:
    """Peak RSS growth of each process for a 64 MiB argument, a 64 MiB result, and both at once."""
    if not _measure.proc_available() or not _measure.reset_peak(os.getpid()):
        return [("peak RSS per hop, 64 MiB body", "", "needs /proc/<pid>/clear_refs", "-")]
    body = b"\x01" * HOP_BODY_BYTES
    return [
        ("peak RSS growth per hop, 64 MiB in", "", _hop_growth(size_of, body), ""),
        ("peak RSS growth per hop, 64 MiB out", "", _hop_growth(make_hop_body, 0), ""),
        # The server keeps the argument (for a retry) until the result is in: two bodies by contract.
        ("peak RSS growth per hop, 64 MiB in + 64 MiB out", "", _hop_growth(echo, body, {"server": 2}), ""),
    ]


def _hop_growth(function: Callable[[Any], Any], argument: Any, holds: dict[str, int] | None = None) -> str:
    """Each process's peak RSS growth over one ``map(function, [argument])``, as a multiple of 64 MiB.

    ``holds`` names the processes that must hold more than one body at once, and how many:
    their growth is also given per body held.
    """
    # A fresh cluster: earlier cases' large bodies must not have warmed its allocators.
    with LocalCluster(nodes=1, processes=1) as cluster:
        assert cluster.server is not None
        target = {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}
        achilles_like.map(tiny, range(10), **target)  # the worker exists and has run a task
        node = cluster.nodes[0].pid
        pids = {
            "controller": os.getpid(),
            "server": cluster.server.pid,
            "node": node,
            "worker": _measure.children_of(node)[0],
        }
        start = {}
        for name, pid in pids.items():
            _measure.reset_peak(pid)
            start[name] = _measure.status_kib(pid, "VmRSS")
        result = achilles_like.map(function, [argument], **target)
        peak = {name: _measure.status_kib(pid, "VmHWM") for name, pid in pids.items()}
        growth = {name: (peak[name] - start[name]) * 1024 for name in pids}
        del result
    held = holds or {}

    def cell(name: str, grown: float) -> str:
        text = f"{name} {grown / HOP_BODY_BYTES:.2f}×"
        if held.get(name, 1) > 1:
            text += f" (holds {held[name]} bodies: {grown / HOP_BODY_BYTES / held[name]:.2f}× per body)"
        return text

    return ", ".join(cell(name, grown) for name, grown in growth.items())


CASES: dict[str, Callable[[Bench], list[Row]]] = {
    # memory first: this process's allocator has not yet held a large body.
    "memory": memory_rows,
    "startup": startup_rows,
    "latency": latency_rows,
    "map": map_rows,
    "pool": pool_rows,
    "unordered": unordered_rows,
    "executor": executor_rows,
    "payload": payload_rows,
    "cpu": cpu_rows,
}


def print_table(rows: list[Row], bench: Bench) -> None:
    """The table, columns padded to their widest cell."""
    headers: Row = ("case", "stdlib", "achilles_like", "ratio")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(4)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"processes: {bench.n} (one node), best of {bench.repeat} runs (latency: median),"
        f" cpus: {os.cpu_count()}, load at end: {load}"
    )
    print("stdlib: multiprocessing.Pool, or concurrent.futures.ProcessPoolExecutor for Executor rows")
    print("ratio = stdlib time / achilles_like time: > 1 means achilles_like is faster or leaner")
    for row in [headers, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def run(bench: Bench, names: list[str]) -> Iterator[Row]:
    """The rows of each named case, in ``CASES`` order."""
    for name in CASES:
        if name in names:
            yield from CASES[name](bench)


def main() -> None:
    """Measure each case on both sides and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=multiprocessing.cpu_count())
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput figure (default 3)")
    parser.add_argument("--quick", action="store_true", help="one run per figure and a fifth of the items")
    parser.add_argument("--only", help=f"comma-separated cases: {', '.join(CASES)}")
    args = parser.parse_args()
    names = list(CASES) if args.only is None else [name.strip() for name in args.only.split(",")]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    bench = Bench(args.processes, 1 if args.quick else args.repeat, args.quick)

    rows: list[Row] = []
    with bench.stack:
        if "memory" in names:  # before any other cluster or pool exists in this process
            rows += memory_rows(bench)
            names.remove("memory")
        bench.pool = bench.stack.enter_context(multiprocessing.Pool(bench.n))
        bench.cluster = bench.stack.enter_context(LocalCluster(nodes=1, processes=bench.n))
        achilles_like.map(tiny, range(100), **bench.target)  # warm up the node's workers
        rows += run(bench, names)
    print_table(rows, bench)


if __name__ == "__main__":
    main()
