"""The scheduler's CPU per task as the cluster grows: pure Python, no sockets, no processes.

Run: ``python benchmarks/bench_scheduler.py [--nodes 1,100,1000,2000] [--tasks N] [--slots S]``

One job on N nodes of S slots each, in steady state: the controller keeps
every granted credit in use (one task per credit), and nodes answer their
tasks in the order they got them, each result freeing a slot that the
scheduler fills again. The figure is process CPU time over the whole run
(scheduler and this small driver) divided by the tasks finished, so it shows
how the cost of one task's dispatch, result and credit grows with N. Run the
same script on an older commit for the before figures (``git archive <commit>
achilles_like | tar -x -C DIR``, then ``PYTHONPATH=DIR:<site-packages> python
-S benchmarks/bench_scheduler.py``: ``-S`` keeps an editable install from
shadowing DIR). Nothing is asserted.

Measured on the 2-core shared machine, 10,000 tasks, 4 slots per node:

======  ===========  ==========
nodes   before       after
======  ===========  ==========
1       13.7 µs      13.7 µs
100     42.7 µs      15.2 µs
1,000   321.6 µs     21.4 µs
2,000   642.1 µs     16.5 µs
======  ===========  ==========
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from achilles_like.scheduling import AssignTask, GrantCredit, Scheduler


def run(nodes: int, slots: int, tasks: int) -> tuple[float, int]:
    """CPU seconds per finished task, and the most tasks that were on nodes at once."""
    s = Scheduler()
    credit = 0
    next_task = 0
    queue: deque[AssignTask] = deque()
    busy = most_busy = 0

    def absorb(actions: list[object]) -> None:
        nonlocal credit, busy
        for action in actions:
            if isinstance(action, GrantCredit):
                credit += action.count
            elif isinstance(action, AssignTask):
                queue.append(action)
                busy += 1

    start = time.process_time()
    absorb(list(s.submit_job("c", b"setup")[1]))
    for n in range(nodes):
        absorb(list(s.node_joined(f"node-{n}", slots)))
    done = 0
    while done < tasks:
        while credit and next_task < tasks:
            credit -= 1
            absorb(list(s.task_received(1, next_task, b"t")))
            next_task += 1
        most_busy = max(most_busy, busy)
        assign = queue.popleft()
        busy -= 1
        absorb(list(s.result_received(assign.node_id, 1, assign.task_id, assign.attempt, True, b"r")))
        done += 1
    return (time.process_time() - start) / tasks, most_busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,100,1000,2000", help="comma-separated node counts")
    parser.add_argument("--slots", type=int, default=4, help="slots (processes) per node")
    parser.add_argument("--tasks", type=int, default=30_000, help="tasks per run")
    args = parser.parse_args()
    print(f"{'nodes':>6} {'slots':>6} {'tasks':>7} {'CPU/task':>10} {'most busy':>10}")
    for nodes in (int(n) for n in args.nodes.split(",")):
        per_task, most_busy = run(nodes, args.slots, args.tasks)
        print(f"{nodes:>6} {nodes * args.slots:>6} {args.tasks:>7} {per_task * 1e6:>8.1f}µs {most_busy:>10}")


if __name__ == "__main__":
    main()
