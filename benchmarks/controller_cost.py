"""The controller's cost per call, and whether the cluster ever waits on it (Linux ``/proc``).

Run: ``python benchmarks/controller_cost.py [--calls N]``

On a LocalCluster of one node with 2 processes, for ``Executor.submit`` of
``N`` 1 ms tasks, ``Pool.apply`` round trips and one-item module ``map``
calls, it prints this process's CPU per call and the voluntary context
switches (wake-ups, GIL hand-offs included) per call of each of its
threads. During the executor run a second thread samples the server's
status: while the node's slots are all busy and the server holds more of
the job's tasks for it, the cluster is not waiting on the controller.
Nothing is asserted; the machine is shared, so compare runs made together.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _measure
from bench_map import one_ms, tiny

import achilles_like
from achilles_like import LocalCluster

Snapshot = tuple[dict[str, int], float]


def snapshot() -> Snapshot:
    """Voluntary context switches of each named thread of this process, and its CPU seconds."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    switches: dict[str, int] = collections.Counter()
    for task in Path("/proc/self/task").iterdir():
        name = names.get(int(task.name))
        if name is None or not (name == "MainThread" or name.startswith("achilles-")):
            continue
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended while we looked
        switches[name] += int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return switches, _measure.own_cpu_seconds()


def per_call(before: Snapshot, after: Snapshot, calls: int) -> str:
    """CPU µs and wake-ups per call between two snapshots, as one line."""
    woken = ", ".join(
        f"{name.removeprefix('achilles-')} {(count - before[0].get(name, 0)) / calls:.2f}"
        for name, count in sorted(after[0].items())
        if count > before[0].get(name, 0)
    )
    return f"CPU {(after[1] - before[1]) / calls * 1e6:.0f} µs/call; wake-ups/call: {woken}"


def timed(calls: int, run: Callable[[], Any]) -> tuple[float, str]:
    """Median seconds of ``calls`` runs of ``run``, and the cost line over all of them."""
    times = []
    before = snapshot()
    for _ in range(calls):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), per_call(before, snapshot(), calls)


def sample_status(target: dict[str, Any], stop: threading.Event, into: list[dict[str, Any]]) -> None:
    """Poll the server's status every 30 ms until ``stop`` is set."""
    while not stop.is_set():
        into.append(achilles_like.getClusterStatus(**target))
        time.sleep(0.03)


def executor_case(target: dict[str, Any], calls: int) -> None:
    """``calls`` submits of a 1 ms task; then as many again with the server's status sampled meanwhile.

    The sampling connects once per sample from this process, so the costs
    are measured on the first run only.
    """
    with achilles_like.ProcessPoolExecutor(2, **target) as executor:
        concurrent.futures.wait([executor.submit(one_ms, i) for i in range(100)])
        before, started = snapshot(), time.perf_counter()
        concurrent.futures.wait([executor.submit(one_ms, i) for i in range(calls)])
        elapsed, after = time.perf_counter() - started, snapshot()
        samples: list[dict[str, Any]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_status, args=(target, stop, samples))
        sampler.start()
        concurrent.futures.wait([executor.submit(one_ms, i) for i in range(calls)])
        stop.set()
        sampler.join()
    print(f"Executor.submit {calls} × 1 ms: {calls / elapsed:,.0f} calls/s; {per_call(before, after, calls)}")
    running = [status for status in samples[1:-1] if status.get("job")]
    full = sum(all(node["busy"] >= node["slots"] for node in status["nodes"]) for status in running)
    waiting = collections.Counter(status["job"]["tasks_pending"] for status in running)
    print(f"  {len(running)} status samples: node slots all busy in {full}; tasks waiting at the server:")
    print("  " + ", ".join(f"{pending}: {count}×" for pending, count in sorted(waiting.items())))


def main() -> None:
    """Measure each case once and print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="submits of the executor case")
    args = parser.parse_args()
    with LocalCluster(nodes=1, processes=2) as cluster:
        target = {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}
        achilles_like.map(tiny, range(100), **target)  # the node's workers are up
        executor_case(target, args.calls)
        with achilles_like.Pool(2, **target) as pool:
            pool.map(tiny, range(100))
            median, cost = timed(500, lambda: pool.apply(tiny, (1,)))
            print(f"Pool.apply: median {median * 1000:.2f} ms; {cost}")
        median, cost = timed(300, lambda: achilles_like.map(tiny, [1], **target))
        print(f"map(f, [x]): median {median * 1000:.2f} ms; {cost}")


if __name__ == "__main__":
    main()
