"""Faults inside a node: worker processes that die or overrun, with real processes.

``multiprocessing.Pool`` hangs forever when a worker dies; here the node
watches each worker, a death costs one task attempt (retried, within a
budget of 4), and a task over its time limit has only its own worker killed.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import signal
from pathlib import Path

import pytest
import tasks
from conftest import target, wait_until

import achilles_like as al
from achilles_like import JobFailedError, LocalCluster, TaskTimeoutError

SQUARES = [x * x for x in range(8)]


def test_worker_that_dies_once_costs_one_retry(cluster: LocalCluster, tmp_path: Path) -> None:
    """A worker that exits while running item 3 once: the task is retried and results are exact."""
    func = functools.partial(tasks.exit_once_on_three, str(tmp_path / "died"))
    assert al.map(func, range(8), **target(cluster)) == SQUARES
    assert (tmp_path / "died").exists()


def test_worker_killed_from_outside_mid_task(cluster: LocalCluster, tmp_path: Path) -> None:
    """SIGKILL of the worker running item 0 makes the node retry it; every result arrives once."""
    func = functools.partial(tasks.report_pid_then_wait, str(tmp_path))
    with concurrent.futures.ThreadPoolExecutor(1) as caller:
        job = caller.submit(al.map, func, range(8), **target(cluster))
        pid_file = tmp_path / "pid"
        wait_until(pid_file.exists, what="the worker running item 0 to report its pid")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)  # it is waiting for "go": mid-task
        (tmp_path / "go").touch()  # the retried attempt must not wait
        assert job.result(timeout=60) == SQUARES


@pytest.mark.parametrize("func", [tasks.exit_on_three, tasks.segfault_on_three], ids=["os._exit", "segfault"])
def test_task_that_kills_its_worker_every_time_fails_after_four_attempts(
    cluster: LocalCluster, func: object
) -> None:
    """A task that kills its worker on every attempt fails the job, naming the item and the nodes."""
    with pytest.raises(JobFailedError) as caught:
        al.map(func, range(8), **target(cluster))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "4 times" in message
    assert "(input item 3)" in message
    assert "worker process died" in message
    assert "nodes: n" in message
    assert al.map(tasks.square, range(8), **target(cluster)) == SQUARES


def test_task_over_its_time_limit_is_stopped_alone(cluster: LocalCluster) -> None:
    """timeout= stops only the over-time task's worker and raises TaskTimeoutError for that item."""
    with pytest.raises(TaskTimeoutError, match="time limit") as caught:
        al.map(tasks.hang_on_three, range(8), timeout=1.0, **target(cluster))
    assert isinstance(caught.value, TimeoutError)
    assert "input item 3" in str(caught.value.__cause__)
    assert al.map(tasks.square, range(8), timeout=5.0, **target(cluster)) == SQUARES


def test_time_limit_must_be_positive() -> None:
    """A timeout of zero or less is refused before anything is sent."""
    with pytest.raises(ValueError, match="timeout"):
        al.map(tasks.square, range(3), timeout=0, host="127.0.0.1", port=1)


def test_workers_of_a_killed_node_exit_by_themselves(tmp_path: Path) -> None:
    """When a node agent is SIGKILLed (alone, not its group), its worker processes exit too."""
    with LocalCluster(nodes=1, processes=2) as own:
        worker_pids = set(al.map(tasks.slow_pid_of, range(8), **target(own)))
        assert len(worker_pids) == 2
        os.kill(own.nodes[0].pid, signal.SIGKILL)
        own.nodes[0].wait(10)

        def all_gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in worker_pids)

        wait_until(all_gone, what="orphaned workers to exit")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pool_timeout_fails_only_the_over_time_call(cluster: LocalCluster) -> None:
    """Pool(timeout=) stops an over-time call with TaskTimeoutError; the pool's other calls succeed."""
    with al.Pool(2, timeout=1.0, **target(cluster)) as pool:
        stuck = pool.apply_async(tasks.hang_on_three, (3,))
        fine = [pool.apply_async(tasks.square, (x,)) for x in range(8)]
        with pytest.raises(TaskTimeoutError, match="time limit"):
            stuck.get(timeout=60)
        assert [result.get(timeout=60) for result in fine] == SQUARES
        assert pool.map(tasks.square, range(8)) == SQUARES


def test_executor_timeout_fails_only_that_future(cluster: LocalCluster) -> None:
    """ProcessPoolExecutor(timeout=) fails the over-time future; later submits still run."""
    with al.ProcessPoolExecutor(2, timeout=1.0, **target(cluster)) as executor:
        stuck = executor.submit(tasks.hang_on_three, 3)
        with pytest.raises(TaskTimeoutError):
            stuck.result(timeout=60)
        assert executor.submit(tasks.square, 4).result(timeout=60) == 16
