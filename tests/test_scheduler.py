"""Tests for the pure scheduler: every event in, the exact list of actions out."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from achilles_like.errors import ProtocolViolationError
from achilles_like.scheduling import (
    Action,
    AssignTask,
    CancelOnNode,
    ForwardResult,
    GrantCredit,
    JobEnded,
    JobOutcome,
    JobQueued,
    JobStarted,
    ReleaseOnNode,
    Scheduler,
    SendFunction,
    SendJob,
    TaskWithdrawn,
    WithdrawOnNode,
)

FUNC = b"func"
CANCELLED = "cancelled by its controller"


def task_blob(task_id: int) -> bytes:
    return b"task-%d" % task_id


def result_blob(task_id: int) -> bytes:
    return b"result-%d" % task_id


def send_tasks(s: Scheduler, job_id: int, task_ids: Iterable[int]) -> list[Action]:
    """Send tasks as the controller would, collecting every action."""
    actions: list[Action] = []
    for task_id in task_ids:
        actions += s.task_received(job_id, task_id, task_blob(task_id))
    return actions


def assigns(actions: Iterable[Action]) -> list[AssignTask]:
    return [a for a in actions if isinstance(a, AssignTask)]


def succeed(s: Scheduler, assign: AssignTask) -> list[Action]:
    """Report a successful result for an assignment."""
    return s.result_received(
        assign.node_id,
        assign.job_id,
        assign.task_id,
        assign.attempt,
        True,
        result_blob(assign.task_id),
    )


def forwarded(actions: Iterable[Action]) -> list[int]:
    return [a.task_id for a in actions if isinstance(a, ForwardResult)]


def fa(task_id: int, job_id: int = 1, controller: str = "c") -> ForwardResult:
    return ForwardResult(controller, job_id, task_id, True, result_blob(task_id))


def at(node: str, task_id: int, attempt: int = 1, job_id: int = 1) -> AssignTask:
    return AssignTask(node, job_id, task_id, attempt, task_blob(task_id))


def status(s: Scheduler) -> Any:
    """The scheduler's status after a JSON round trip, as the admin verb would send it."""
    return json.loads(json.dumps(s.status()))


def run_to_completion(s: Scheduler, actions: Sequence[Action]) -> list[Action]:
    """Complete every outstanding assignment until none is left, in FIFO order."""
    log: list[Action] = []
    todo = assigns(actions)
    while todo:
        out = succeed(s, todo.pop(0))
        log += out
        todo += assigns(out)
    return log


# -- jobs: start, FIFO, end ------------------------------------------------


def test_first_job_starts_and_gets_the_window() -> None:
    """A job submitted to an idle scheduler starts at once and is granted the whole window."""
    s = Scheduler()
    job_id, actions = s.submit_job("c", FUNC)
    assert job_id == 1
    assert actions == [JobStarted("c", 1), GrantCredit("c", 1, 16)]
    assert s.running_job_id == 1


def test_three_jobs_run_in_fifo_order() -> None:
    """Jobs get ids 1, 2, 3, wait in submission order and each starts when the one before ends."""
    s = Scheduler()
    s.node_joined("n1", 1)
    assert s.submit_job("a", FUNC)[0] == 1
    assert s.submit_job("b", b"g") == (2, [JobQueued("b", 2, 1)])
    assert s.submit_job("c", b"h") == (3, [JobQueued("c", 3, 2)])
    actions = send_tasks(s, 1, [0])
    assert s.input_ended(1, 1) == []
    assert succeed(s, assigns(actions)[0]) == [
        fa(0, 1, "a"),
        JobEnded("a", 1, JobOutcome.DONE),
        ReleaseOnNode("n1", 1),
        JobStarted("b", 2),
        GrantCredit("b", 2, 16),
    ]
    assert s.input_ended(2, 0) == [
        JobEnded("b", 2, JobOutcome.DONE),
        JobStarted("c", 3),
        GrantCredit("c", 3, 16),
    ]
    assert s.running_job_id == 3
    assert status(s)["jobs_done"] == 2


def test_job_ends_when_last_result_arrives_after_input_ended() -> None:
    """With the input ended, the result that completes the last task ends the job DONE."""
    s = Scheduler()
    s.node_joined("n1", 2)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, [1, 0])
    assert s.input_ended(1, 2) == []
    first, second = assigns(actions)
    assert succeed(s, first) == [fa(1)]
    done = [JobEnded("c", 1, JobOutcome.DONE), ReleaseOnNode("n1", 1)]  # the node may forget the job
    assert succeed(s, second) == [fa(0), *done]
    assert s.running_job_id is None


def test_next_job_sends_the_function_again() -> None:
    """SendJob goes once per node per job, so a node sees each job's function once."""
    s = Scheduler()
    s.node_joined("n1", 2)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    actions = send_tasks(s, 1, [0, 1])
    assert actions == [SendJob("n1", 1, FUNC), at("n1", 0), at("n1", 1)]
    run_to_completion(s, actions)
    s.input_ended(1, 2)
    assert send_tasks(s, 2, [0]) == [SendJob("n1", 2, b"g"), at("n1", 0, job_id=2)]


# -- credit window -------------------------------------------------------------


def test_window_grows_with_the_cluster_slots() -> None:
    """The window is max(min_window, window_per_slot * total slots)."""
    s = Scheduler(min_window=4, window_per_slot=2)
    assert s.node_joined("n1", 1) == []
    assert s.node_joined("n2", 2) == []
    assert s.submit_job("c", FUNC)[1] == [JobStarted("c", 1), GrantCredit("c", 1, 6)]


def test_node_joining_tops_up_the_credit() -> None:
    """A node joining a running job raises the window and grants the difference."""
    s = Scheduler(min_window=4, window_per_slot=2)
    s.submit_job("c", FUNC)
    assert s.node_joined("n1", 4) == [GrantCredit("c", 1, 4)]
    assert s.node_joined("n2", 1) == [GrantCredit("c", 1, 2)]


def test_each_finished_task_is_granted_back() -> None:
    """When a held task finishes, the controller gets one more credit to replace it."""
    s = Scheduler(min_window=3, window_per_slot=1)
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, [0, 1, 2])
    assert actions == [SendJob("n1", 1, FUNC), at("n1", 0)]
    assert succeed(s, assigns(actions)[0]) == [fa(0), at("n1", 1), GrantCredit("c", 1, 1)]


def test_unused_credit_is_not_granted_twice() -> None:
    """Credit granted but not yet used counts against the window, so no grant exceeds it."""
    s = Scheduler(min_window=4, window_per_slot=1)
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, [0])
    # held 1, outstanding 3: finishing task 0 leaves held 0, so one credit is owed.
    assert succeed(s, assigns(actions)[0]) == [fa(0), GrantCredit("c", 1, 1)]


def test_task_beyond_credit_is_refused() -> None:
    """A task sent with no credit left is a protocol violation and is not taken."""
    s = Scheduler(min_window=2, window_per_slot=0)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0, 1])
    before = s.status()
    with pytest.raises(ProtocolViolationError, match="without credit"):
        s.task_received(1, 2, b"x")
    assert s.status() == before


def test_no_credit_after_input_ended() -> None:
    """Once the input ended, finished tasks are not granted back."""
    s = Scheduler(min_window=2, window_per_slot=1)
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, [0, 1])
    s.input_ended(1, 2)
    assert succeed(s, assigns(actions)[0]) == [fa(0), at("n1", 1)]


def test_lost_slots_shrink_the_window_without_negative_credit() -> None:
    """After a node leaves, no credit is granted until the held tasks fall under the new window."""
    s = Scheduler(min_window=2, window_per_slot=2)
    s.node_joined("n1", 1)
    s.node_joined("n2", 1)
    s.submit_job("c", FUNC)  # window 4
    actions = send_tasks(s, 1, [0, 1, 2, 3])
    assert s.node_lost("n2") == []  # task 1 back to pending, n1 busy; window now 2
    done_0 = succeed(s, assigns(actions)[0])
    assert done_0 == [fa(0), at("n1", 1, attempt=2)]  # held 3 > window 2: no grant
    done_1 = succeed(s, assigns(done_0)[0])
    assert done_1 == [fa(1), at("n1", 2)]  # held 2 == window: still none
    assert succeed(s, assigns(done_1)[0]) == [fa(2), at("n1", 3), GrantCredit("c", 1, 1)]


# -- dispatch ------------------------------------------------------------------


def test_dispatch_spreads_tasks_across_nodes() -> None:
    """Each task goes to the node with the most free slots, ties to the one that waited longest."""
    s = Scheduler()
    s.node_joined("n1", 2)
    s.node_joined("n2", 3)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, range(6))
    assert [(a.node_id, a.task_id) for a in assigns(actions)] == [
        ("n2", 0),
        ("n1", 1),
        ("n2", 2),
        ("n1", 3),
        ("n2", 4),
    ]
    assert s.status()["job"] == {
        "job_id": 1,
        "controller_id": "c",
        "label": "",
        "tasks_received": 6,
        "tasks_done": 0,
        "tasks_failed": 0,
        "tasks_pending": 1,
        "tasks_assigned": 5,
        "input_ended": False,
        "submitted_at": 0.0,
    }


def test_send_function_once_per_node_per_job() -> None:
    """A node receives a job's function once, right before its first task of that job."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.node_joined("n2", 1)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, range(4))
    actions += run_to_completion(s, actions)
    sends = [a for a in actions if isinstance(a, SendJob)]
    assert sends == [SendJob("n1", 1, FUNC), SendJob("n2", 1, FUNC)]
    assert actions.index(sends[1]) < actions.index(at("n2", 1))


def test_node_joining_mid_job_gets_work_at_once() -> None:
    """A node that joins while tasks are pending receives the function and tasks immediately."""
    s = Scheduler(min_window=4, window_per_slot=1)
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, range(4))
    assert s.node_joined("n2", 2) == [
        SendJob("n2", 1, FUNC),
        at("n2", 1),
        at("n2", 2),
    ]


def test_tasks_wait_for_a_node() -> None:
    """With no node connected, tasks stay pending and the first node takes them."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    assert send_tasks(s, 1, [0, 1]) == []
    assert s.node_joined("n1", 8) == [
        SendJob("n1", 1, FUNC),
        at("n1", 0),
        at("n1", 1),
    ]


def test_ties_spread_over_thousands_of_nodes() -> None:
    """With 2,000 equal nodes, 2,000 tasks sent one by one land on 2,000 different nodes."""
    s = Scheduler()
    for n in range(2000):
        s.node_joined(f"n{n}", 4)
    s.submit_job("c", FUNC)
    placed = assigns(send_tasks(s, 1, range(2000)))
    assert len({a.node_id for a in placed}) == 2000
    assert s.slot_totals() == (8000, 6000)


def test_a_freed_slot_gets_the_next_task_among_thousands_of_full_nodes() -> None:
    """When every node is full, the one node whose task finished receives the next task."""
    s = Scheduler(window_per_slot=3)
    for n in range(1000):
        s.node_joined(f"n{n}", 4)
    s.submit_job("c", FUNC)
    placed = assigns(send_tasks(s, 1, range(4001)))  # the pending 4,001st fills every node in turns
    assert len(placed) == 4000 and s.slot_totals() == (4000, 0)
    assert all(status(s)["nodes"][n]["busy"] == 4 for n in (0, 517, 999))
    freed = placed[1234]
    assert assigns(succeed(s, freed)) == [at(freed.node_id, 4000)]
    assert s.slot_totals() == (4000, 0)


def test_a_batch_fills_the_freest_node_when_work_exceeds_free_slots() -> None:
    """A node joining while more tasks wait than it has slots gets them all in one go, oldest first."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    s.node_joined("n1", 1)
    s.node_joined("n2", 1)
    send_tasks(s, 1, range(16))  # 2 run, 14 wait
    assert [(a.node_id, a.task_id) for a in assigns(s.node_joined("n3", 5))] == [
        ("n3", task_id) for task_id in range(2, 7)
    ]


# -- node loss -----------------------------------------------------------------


def test_node_loss_requeues_to_the_front_with_the_next_attempt() -> None:
    """A lost node's tasks go back before older pending ones and carry attempt + 1."""
    s = Scheduler()
    s.node_joined("n1", 2)
    s.node_joined("n2", 1)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, range(5))
    assert [(a.node_id, a.task_id) for a in assigns(actions)] == [
        ("n1", 0),
        ("n2", 1),  # a tie (one free slot each): n2 has waited longer at one free slot
        ("n1", 2),
    ]
    assert s.node_lost("n1") == []  # n2 is busy; tasks 0 and 2 wait in front of 3 and 4
    assert s.node_joined("n3", 3) == [
        SendJob("n3", 1, FUNC),
        at("n3", 0, attempt=2),
        at("n3", 2, attempt=2),
        at("n3", 3),
    ]


def test_results_survive_node_loss_exactly_once() -> None:
    """Losing nodes mid-job neither loses nor duplicates a single result."""
    s = Scheduler()
    for node in ("n1", "n2", "n3"):
        s.node_joined(node, 2)
    s.submit_job("c", FUNC)
    actions = send_tasks(s, 1, range(10))
    s.input_ended(1, 10)
    first = assigns(actions)
    log = succeed(s, first[0]) + succeed(s, first[1])
    lost = s.node_lost("n2") + s.node_joined("n4", 1)
    assert succeed(s, first[4]) == []  # n2's late result for task 4 is stale
    outstanding = [a for a in first[2:] + assigns(log) + assigns(lost) if a.node_id != "n2"]
    log += run_to_completion(s, outstanding)
    log += s.node_lost("n3")  # a late loss after everything finished changes nothing
    assert sorted(forwarded(log)) == list(range(10))
    assert log.count(JobEnded("c", 1, JobOutcome.DONE)) == 1


def test_late_result_from_a_lost_node_is_stale() -> None:
    """The result of an attempt that was taken back is ignored and counted as stale."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.node_joined("n2", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    assert s.node_lost("n1") == [SendJob("n2", 1, FUNC), at("n2", 0, attempt=2)]
    assert s.result_received("n1", 1, 0, 1, True, b"late") == []
    assert s.result_received("n2", 1, 0, 1, True, b"wrong attempt") == []
    assert s.result_received("n2", 1, 0, 2, True, result_blob(0)) == [fa(0), GrantCredit("c", 1, 1)]
    assert s.result_received("n2", 1, 0, 2, True, b"duplicate") == []
    assert s.status()["stale_results"] == 3


def test_retry_budget_exhaustion_fails_the_job_naming_task_and_nodes() -> None:
    """A task lost with its node max_attempts times fails its job with a reason naming both."""
    s = Scheduler(max_attempts=3)
    s.node_joined("n0", 1)
    s.submit_job("c", FUNC)
    s.submit_job("d", b"g")
    send_tasks(s, 1, [0, 1])  # n0 keeps task 0 busy; task 1 bounces between nodes
    for node in ("n1", "n2", "n3"):
        assert assigns(s.node_joined(node, 1))[0].task_id == 1
        if node != "n3":
            s.node_lost(node)
    reason = "task 1 was lost with its node 3 times (nodes: n1, n2, n3); giving up"
    assert s.node_lost("n3") == [
        JobEnded("c", 1, JobOutcome.FAILED, reason, task_id=1),
        CancelOnNode("n0", 1),
        JobStarted("d", 2),
        GrantCredit("d", 2, 16),
    ]
    assert status(s)["nodes"] == [{"node_id": "n0", "slots": 1, "busy": 0, "tasks_done": 0}]


def test_task_lost_by_a_dead_worker_is_retried_on_the_same_node() -> None:
    """A task whose worker process died goes back to the front and runs again as a new attempt."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0, 1])
    assert s.task_lost("n1", 1, 0, 1, "its worker process died (exit code -9)") == [at("n1", 0, attempt=2)]
    assert s.result_received("n1", 1, 0, 1, True, b"late") == []
    assert s.result_received("n1", 1, 0, 2, True, result_blob(0))[0] == fa(0)


def test_task_that_kills_its_worker_every_time_fails_the_job_naming_task_and_nodes() -> None:
    """A task lost max_attempts times by dying workers fails its job; the reason names the task and nodes."""
    s = Scheduler(max_attempts=2)
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    s.task_lost("n1", 1, 0, 1, "its worker process died (exit code -11)")
    ended = s.task_lost("n1", 1, 0, 2, "its worker process died (exit code -11)")
    reason = "task 0 was lost (its worker process died (exit code -11)) 2 times (nodes: n1, n1); giving up"
    assert ended[0] == JobEnded("c", 1, JobOutcome.FAILED, reason, task_id=0)
    assert s.status()["nodes"] == [{"node_id": "n1", "slots": 1, "busy": 0, "tasks_done": 0}]


def test_stale_task_lost_report_is_ignored() -> None:
    """A LOST report for an attempt that is no longer current changes nothing."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    assert s.task_lost("n1", 1, 0, 7, "died") == []
    assert s.task_lost("n2", 1, 0, 1, "died") == []
    assert s.status()["stale_results"] == 2


def test_node_lost_twice_or_unknown_is_ignored() -> None:
    """node_lost is idempotent, because the glue may notice one loss twice."""
    s = Scheduler()
    s.node_joined("n1", 1)
    assert s.node_lost("n1") == []
    assert s.node_lost("n1") == []
    assert s.node_ids() == []


def test_a_lost_node_may_join_again_and_gets_the_function_again() -> None:
    """A node that reconnects under its old id is a fresh node that needs the function again."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    s.node_lost("n1")
    assert s.node_joined("n1", 1) == [SendJob("n1", 1, FUNC), at("n1", 0, attempt=2)]


# -- withdrawing one task ------------------------------------------------------


def one_slot_with_three_tasks() -> Scheduler:
    """One node of one slot running task 0 of job 1; tasks 1 and 2 wait at the server."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0, 1, 2])
    return s


def test_a_pending_task_is_withdrawn_at_once_and_never_dispatched() -> None:
    """Withdrawing a task the server still holds drops it, says so, and returns its credit."""
    s = one_slot_with_three_tasks()
    assert s.withdraw(1, 1) == [TaskWithdrawn("c", 1, 1), GrantCredit("c", 1, 1)]
    assert s.withdraw(1, 1) == []  # already gone
    assert succeed(s, at("n1", 0)) == [fa(0), at("n1", 2), GrantCredit("c", 1, 1)]


def test_an_assigned_task_is_asked_of_its_node_once() -> None:
    """Withdrawing a task on a node asks that node; its answer frees the slot for the next task."""
    s = one_slot_with_three_tasks()
    assert s.withdraw(1, 0) == [WithdrawOnNode("n1", 1, 0, 1)]
    assert s.withdraw(1, 0) == []
    assert s.task_withdrawn("n1", 1, 0, 1) == [TaskWithdrawn("c", 1, 0), GrantCredit("c", 1, 1), at("n1", 1)]
    assert s.task_withdrawn("n1", 1, 0, 1) == []  # stale: counted, ignored
    assert status(s)["stale_results"] == 1


def test_a_task_a_worker_had_started_still_delivers_its_result() -> None:
    """If the node answers with the result instead (a worker had the task), it is forwarded as usual."""
    s = one_slot_with_three_tasks()
    s.withdraw(1, 0)
    assert succeed(s, at("n1", 0)) == [fa(0), at("n1", 1), GrantCredit("c", 1, 1)]
    assert s.task_withdrawn("n1", 1, 0, 1) == []


def test_a_withdrawn_task_lost_with_its_node_is_dropped_not_retried() -> None:
    """A task being withdrawn whose node dies is not run again elsewhere."""
    s = one_slot_with_three_tasks()
    s.node_joined("n2", 1)  # takes task 1
    s.withdraw(1, 0)
    assert s.node_lost("n1") == [TaskWithdrawn("c", 1, 0), GrantCredit("c", 1, 1)]
    assert status(s)["jobs"][0]["tasks_pending"] == 1  # task 2 only: task 0 is not queued again


def test_withdrawing_the_last_task_ends_the_job() -> None:
    """Once the input has ended, withdrawing the only unfinished task ends the job as done."""
    s = one_slot_with_three_tasks()
    succeed(s, at("n1", 0))
    succeed(s, at("n1", 1))
    s.input_ended(1, 3)
    assert s.withdraw(1, 2) == [WithdrawOnNode("n1", 1, 2, 1)]
    assert s.task_withdrawn("n1", 1, 2, 1) == [
        TaskWithdrawn("c", 1, 2),
        JobEnded("c", 1, JobOutcome.DONE),
        ReleaseOnNode("n1", 1),
    ]


# -- errors and cancellation ---------------------------------------------------


def test_error_result_is_forwarded_then_fails_the_job_and_cancels_on_nodes() -> None:
    """An error result is forwarded, then the job fails and its nodes are told to drop it."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.node_joined("n2", 1)
    s.node_joined("idle", 1)
    s.submit_job("c", FUNC)
    s.submit_job("d", b"g")
    send_tasks(s, 1, [0, 1])
    assert s.result_received("n2", 1, 1, 1, False, b"boom") == [
        ForwardResult("c", 1, 1, False, b"boom"),
        JobEnded("c", 1, JobOutcome.FAILED, "task 1 raised an exception on node n2", task_id=1),
        CancelOnNode("n1", 1),
        CancelOnNode("n2", 1),
        JobStarted("d", 2),
        GrantCredit("d", 2, 16),
    ]
    assert [n["busy"] for n in status(s)["nodes"]] == [0, 0, 0]
    assert s.result_received("n1", 1, 0, 1, True, b"straggler") == []


def test_cancel_queued_job() -> None:
    """Cancelling a queued job ends it at once without touching the running job."""
    s = Scheduler()
    s.submit_job("a", FUNC)
    s.submit_job("b", FUNC)
    s.submit_job("c", FUNC)
    assert s.cancel_job(2) == [JobEnded("b", 2, JobOutcome.CANCELLED, CANCELLED)]
    assert s.running_job_id == 1
    assert [j["job_id"] for j in status(s)["queue"]] == [3]
    assert s.cancel_job(1, "user pressed Ctrl-C") == [
        JobEnded("a", 1, JobOutcome.CANCELLED, "user pressed Ctrl-C"),
        JobStarted("c", 3),
        GrantCredit("c", 3, 16),
    ]


def test_cancel_running_job_cancels_on_its_nodes() -> None:
    """Cancelling the running job tells the nodes that hold it to drop it, then starts the next."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.node_joined("n2", 1)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    send_tasks(s, 1, [0])
    assert s.cancel_job(1) == [
        JobEnded("a", 1, JobOutcome.CANCELLED, CANCELLED),
        CancelOnNode("n1", 1),
        JobStarted("b", 2),
        GrantCredit("b", 2, 16),
    ]


def test_cancel_unknown_or_ended_job_is_ignored() -> None:
    """Cancelling a job that ended or never existed does nothing."""
    s = Scheduler()
    s.submit_job("a", FUNC)
    s.cancel_job(1)
    assert s.cancel_job(1) == []
    assert s.cancel_job(99) == []


def test_controller_lost_cancels_all_its_jobs() -> None:
    """A lost controller's queued and running jobs all end, and another controller's job starts."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    s.submit_job("a", FUNC)
    send_tasks(s, 1, [0])
    reason = "its controller a went away"
    assert s.controller_lost("a") == [
        JobEnded("a", 3, JobOutcome.CANCELLED, reason),
        JobEnded("a", 1, JobOutcome.CANCELLED, reason),
        CancelOnNode("n1", 1),
        JobStarted("b", 2),
        GrantCredit("b", 2, 16),
    ]
    assert s.controller_lost("a") == []
    assert s.job_controller(2) == "b"


def test_frames_for_an_ended_job_are_stale() -> None:
    """Tasks, end of input and results that race in after a job ended are dropped silently."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    s.cancel_job(1)
    before_stale = status(s)["stale_results"]
    assert s.task_received(1, 1, b"x") == []
    assert s.input_ended(1, 2) == []
    assert s.result_received("n1", 1, 0, 1, True, b"r") == []
    assert status(s)["stale_results"] == before_stale + 1


def test_result_from_an_unknown_node_is_stale() -> None:
    """A result from a node the scheduler does not know cannot complete a task."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    assert s.result_received("ghost", 1, 0, 1, True, b"r") == []
    assert s.status()["stale_results"] == 1


def test_zero_task_job_ends_at_end_of_input() -> None:
    """A job whose input is empty ends DONE as soon as its input ends."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    assert s.input_ended(1, 0) == [JobEnded("c", 1, JobOutcome.DONE)]
    assert s.status()["job"] is None


def test_input_ended_after_all_results_ends_the_job() -> None:
    """When every task is already done, the end of input itself ends the job."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    run_to_completion(s, send_tasks(s, 1, [0]))
    assert s.input_ended(1, 1) == [JobEnded("c", 1, JobOutcome.DONE), ReleaseOnNode("n1", 1)]


# -- protocol violations ---------------------------------------------------------


def _scenario() -> Scheduler:
    """Job 1 running with tasks 0 and 1 received (0 done), job 2 queued, node n1 joined."""
    s = Scheduler(min_window=3, window_per_slot=0)
    s.node_joined("n1", 1)
    s.submit_job("a", FUNC)
    s.submit_job("b", FUNC)
    # Task 0 done and its credit granted back; task 1 on n1 keeps job 1 busy, so job 2 waits.
    succeed(s, assigns(send_tasks(s, 1, [0, 1]))[0])
    return s


VIOLATIONS: list[tuple[str, Callable[[Scheduler], object], str]] = [
    ("task for queued job", lambda s: s.task_received(2, 0, b"x"), "queued and not started"),
    ("task for unknown job", lambda s: s.task_received(7, 0, b"x"), "never submitted"),
    ("task for job id 0", lambda s: s.task_received(0, 0, b"x"), "never submitted"),
    ("duplicate pending task", lambda s: s.task_received(1, 1, b"x"), "already received"),
    ("duplicate done task", lambda s: s.task_received(1, 0, b"x"), "already received"),
    ("negative task id", lambda s: s.task_received(1, -1, b"x"), "negative id"),
    ("input ended short", lambda s: s.input_ended(1, 1), "2 were received"),
    ("input ended long", lambda s: s.input_ended(1, 3), "2 were received"),
    ("input ended for queued job", lambda s: s.input_ended(2, 0), "queued"),
    ("input ended for unknown job", lambda s: s.input_ended(9, 0), "never submitted"),
    ("result for queued job", lambda s: s.result_received("n1", 2, 0, 1, True, b""), "queued"),
    ("result for unknown job", lambda s: s.result_received("n1", 9, 0, 1, True, b""), "never"),
    ("node joins twice", lambda s: s.node_joined("n1", 4), "joined twice"),
    ("node with no slots", lambda s: s.node_joined("n2", 0), "at least 1"),
]


@pytest.mark.parametrize(
    ("call", "message"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
def test_protocol_violation_leaves_state_intact(
    call: Callable[[Scheduler], object],
    message: str,
) -> None:
    """An illegal call raises ProtocolViolationError naming the problem and changes nothing."""
    s = _scenario()
    before = s.status()
    with pytest.raises(ProtocolViolationError, match=message):
        call(s)
    assert s.status() == before
    # Still fully working afterwards: the job can finish normally.
    assert s.result_received("n1", 1, 1, 1, True, b"r")[0] == ForwardResult("a", 1, 1, True, b"r")
    assert s.input_ended(1, 2)[0] == JobEnded("a", 1, JobOutcome.DONE)


def test_task_ids_must_cover_zero_to_total() -> None:
    """An end of input is refused when the received task ids are not exactly 0..N-1."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0, 5])
    with pytest.raises(ProtocolViolationError, match="task 5 was received"):
        s.input_ended(1, 2)


def test_task_after_input_ended_is_refused() -> None:
    """Once the input ended, a further task is a violation."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    s.input_ended(1, 1)
    with pytest.raises(ProtocolViolationError, match="after the job's input ended"):
        s.task_received(1, 1, b"x")
    with pytest.raises(ProtocolViolationError, match="ended its input twice"):
        s.input_ended(1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"min_window": 0}, {"window_per_slot": -1}],
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    """Nonsensical scheduler settings raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Scheduler(**kwargs)


# -- status and helpers ----------------------------------------------------------


def test_status_is_json_serialisable() -> None:
    """status() round-trips through json with nodes, the running job and the queue."""
    s = Scheduler()
    s.node_joined("n1", 2)
    s.submit_job("a", FUNC, label="squares", now=100.5)
    s.submit_job("b", FUNC, label="cubes", now=101.0)
    actions = send_tasks(s, 1, range(3))
    succeed(s, assigns(actions)[0])
    status = s.status()
    assert json.loads(json.dumps(status)) == status
    running = {
        "job_id": 1,
        "controller_id": "a",
        "label": "squares",
        "tasks_received": 3,
        "tasks_done": 1,
        "tasks_failed": 0,
        "tasks_pending": 0,
        "tasks_assigned": 2,
        "input_ended": False,
        "submitted_at": 100.5,
    }
    assert status == {
        "nodes": [{"node_id": "n1", "slots": 2, "busy": 2, "tasks_done": 1}],
        "job": running,
        "jobs": [running],
        "queue": [{"job_id": 2, "controller_id": "b", "label": "cubes", "submitted_at": 101.0}],
        "stale_results": 0,
        "jobs_done": 0,
    }


def test_read_only_helpers() -> None:
    """running_job_id, job_controller and node_ids report live jobs and nodes only."""
    s = Scheduler()
    assert s.running_job_id is None
    s.node_joined("n2", 1)
    s.node_joined("n1", 1)
    s.submit_job("a", FUNC)
    s.submit_job("b", FUNC)
    assert s.node_ids() == ["n2", "n1"]
    assert (s.job_controller(1), s.job_controller(2), s.job_controller(3)) == ("a", "b", None)
    s.cancel_job(1)
    assert s.job_controller(1) is None


def test_task_blob_is_dropped_once_done() -> None:
    """The scheduler lets go of a task's blob as soon as the task is DONE."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("c", FUNC)
    blob = bytes(bytearray(b"a unique task blob"))
    assign = assigns(s.task_received(1, 0, blob))[0]
    del assign  # the action list holds a reference too
    held = sys.getrefcount(blob)
    s.result_received("n1", 1, 0, 1, True, b"r")
    assert sys.getrefcount(blob) == held - 1


def test_a_job_without_nodes_fails_after_the_no_node_timeout() -> None:
    """A running job with no node fails once no node has joined for no_node_timeout seconds."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    s.submit_job("d", b"g")
    send_tasks(s, 1, [0])
    assert s.tick(100.0, 60.0) == []
    assert s.tick(150.0, 60.0) == []
    ended = s.tick(160.0, 60.0)
    reason = "no node has been connected for 60s; start a node (achilles node) and resubmit"
    assert ended[:2] == [JobEnded("c", 1, JobOutcome.FAILED, reason), JobStarted("d", 2)]
    assert s.tick(161.0, 60.0) == []  # the next job's wait starts afresh


def test_a_node_joining_in_time_resets_the_no_node_wait() -> None:
    """A node that joins before the timeout keeps the job alive, and its wait starts over when it leaves."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    send_tasks(s, 1, [0])
    s.tick(0.0, 60.0)
    s.node_joined("n1", 1)
    assert s.tick(59.0, 60.0) == []
    s.node_lost("n1")
    assert s.tick(100.0, 60.0) == []
    assert s.tick(159.0, 60.0) == []
    assert s.tick(160.0, 60.0)[0].outcome is JobOutcome.FAILED


def test_tick_without_a_running_job_does_nothing() -> None:
    """With no job running, tick never acts, however long there are no nodes."""
    assert Scheduler().tick(1e9, 1.0) == []


def test_tick_leaves_an_idle_job_alone() -> None:
    """A started job with nothing pending (an idle Pool) does not fail for want of nodes."""
    s = Scheduler()
    s.submit_job("c", FUNC)
    assert s.tick(0.0, 1.0) == []
    assert s.tick(1e9, 1.0) == []


# -- idle jobs yield the cluster; functions once per node; failures that do not stop a job ----


def test_an_idle_job_lets_the_next_one_start_and_resumes_first() -> None:
    """A started job with nothing pending or assigned lets a queued job start; its new work goes first."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("pool", FUNC, stop_on_failure=False)
    assert s.submit_job("map", b"g")[1] == [JobQueued("map", 2, 1)]  # job 1 just started: it goes first
    run_to_completion(s, send_tasks(s, 1, [0]))  # job 1 did some work and is idle now
    assert s.running_job_id == 1
    # The idle job does not hold the cluster: a second job starts at once.
    job_id, actions = s.submit_job("late", b"h")
    assert (job_id, actions) == (3, [JobQueued("late", 3, 2)])  # job 2 is fresh: it goes next
    assert s.status()["queue"] == [{"job_id": 3, "controller_id": "late", "label": "", "submitted_at": 0.0}]
    busy = s.task_received(2, 0, task_blob(0))
    assert assigns(busy) == [at("n1", 0, job_id=2)]
    # Job 1 sends work again: it is older, so it goes before job 2's next task.
    assert s.task_received(1, 1, task_blob(1)) == []  # the one slot is busy
    s.task_received(2, 1, task_blob(1))
    after = succeed(s, assigns(busy)[0])
    assert assigns(after) == [at("n1", 1, job_id=1)]


def test_a_queued_job_starts_when_the_running_one_goes_idle() -> None:
    """The queued job gets STARTED and credit as soon as the started job has nothing in flight."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    [assign] = assigns(send_tasks(s, 1, [0]))
    assert succeed(s, assign) == [
        fa(0, 1, "a"),
        GrantCredit("a", 1, 1),
        JobStarted("b", 2),
        GrantCredit("b", 2, 16),
    ]


def test_functions_go_to_a_node_once_before_the_first_task_that_calls_them() -> None:
    """FUNC is forwarded once per node and function, right before the first task that needs it."""
    s = Scheduler()
    s.node_joined("n1", 2)
    s.submit_job("c", FUNC)
    assert s.function_received(1, 0, b"f0") == []
    assert s.function_received(1, 1, b"f1") == []
    actions = s.task_received(1, 0, b"t0", fn=1) + s.task_received(1, 1, b"t1", fn=1)
    assert actions == [
        SendJob("n1", 1, FUNC),
        SendFunction("n1", 1, 1, b"f1"),
        AssignTask("n1", 1, 0, 1, b"t0", 1),
        AssignTask("n1", 1, 1, 1, b"t1", 1),
    ]
    with pytest.raises(ProtocolViolationError, match="was already sent"):
        s.function_received(1, 1, b"again")
    with pytest.raises(ProtocolViolationError, match="calls function 5, which was not sent"):
        s.task_received(1, 2, b"t2", fn=5)


def test_a_failing_task_of_a_job_that_goes_on_is_done_not_fatal() -> None:
    """Without stop_on_failure, a failed result is forwarded and counted, and the job goes on."""
    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("pool", FUNC, stop_on_failure=False)
    send_tasks(s, 1, [0])
    assert s.result_received("n1", 1, 0, 1, False, b"boom") == [
        ForwardResult("pool", 1, 0, False, b"boom"),
        GrantCredit("pool", 1, 1),
    ]
    assert status(s)["job"]["tasks_failed"] == 1
    assert s.running_job_id == 1


# -- a bounded queue ---------------------------------------------------------


QUEUE_FULL = "the server's queue is full (2 jobs waiting, the limit is 2)"


def test_a_job_past_the_queue_cap_is_refused_and_the_queue_is_kept() -> None:
    """With max_queued_jobs waiting, a new job ends failed at once, naming the cap; the queued ones stay."""
    s = Scheduler(max_queued_jobs=2)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    s.submit_job("c", b"h")
    job_id, actions = s.submit_job("d", b"i")
    assert job_id == 4
    assert [type(a) for a in actions] == [JobEnded]
    assert (actions[0].controller_id, actions[0].job_id, actions[0].outcome) == ("d", 4, JobOutcome.FAILED)
    assert actions[0].reason.startswith(QUEUE_FULL)
    assert "--max-queued-jobs" in actions[0].reason
    assert [job["job_id"] for job in status(s)["queue"]] == [2, 3]
    assert s.job_controller(4) is None


def test_a_refused_jobs_late_frames_are_ignored() -> None:
    """FUNC for a refused job, sent before the refusal was read, is a late frame, not a violation."""
    s = Scheduler(max_queued_jobs=1)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    job_id, _ = s.submit_job("c", b"h")
    assert s.function_received(job_id, 0, FUNC) == []


def test_the_queue_takes_jobs_again_once_one_has_started() -> None:
    """The cap counts waiting jobs: when the running job ends and a queued one starts, a new job is queued."""
    s = Scheduler(max_queued_jobs=1)
    s.submit_job("a", FUNC)
    s.submit_job("b", b"g")
    s.cancel_job(1)
    assert s.submit_job("c", b"h") == (3, [JobQueued("c", 3, 1)])


def test_a_job_past_the_byte_cap_is_refused() -> None:
    """Setups, functions and undone tasks of live jobs count; a setup past max_held_bytes is refused."""
    s = Scheduler(max_held_bytes=100)
    s.submit_job("a", b"s" * 10)
    s.function_received(1, 0, b"f" * 20)
    s.task_received(1, 0, b"t" * 30, 0)
    assert s.held_bytes() == 60
    assert s.submit_job("b", b"x" * 40)[1] == [JobQueued("b", 2, 1)]
    _, actions = s.submit_job("c", b"y")
    assert [type(a) for a in actions] == [JobEnded]
    assert actions[0].reason.startswith(
        "the server already holds 100 bytes for queued and running jobs, and this job's 1-byte setup"
        " would pass the limit of 100 bytes"
    )
    assert s.held_bytes() == 100


def test_bytes_of_finished_tasks_and_ended_jobs_are_released() -> None:
    """A done task's blob and an ended job's setup and functions no longer count against the byte cap."""
    s = Scheduler(max_held_bytes=100)
    s.node_joined("n1", 1)
    s.submit_job("a", b"s" * 10)
    s.function_received(1, 0, b"f" * 20)
    [assign] = assigns(s.task_received(1, 0, b"t" * 30, 0))
    succeed(s, assign)
    assert s.held_bytes() == 30
    s.input_ended(1, 1)
    assert s.held_bytes() == 0


# -- batches: one frame of tasks in, one frame of results in ------------------------------


def batch_of(task_ids: Iterable[int]) -> list[tuple[int, bytes, int | None]]:
    """Tasks as one controller frame carries them."""
    return [(task_id, task_blob(task_id), None) for task_id in task_ids]


def test_a_frame_of_tasks_gives_each_of_thousands_of_nodes_one_batch() -> None:
    """8,000 tasks in one frame over 1,000 nodes of 8 slots: one contiguous run of 8 per node."""
    s = Scheduler()
    for n in range(1000):
        s.node_joined(f"n{n}", 8)
    s.submit_job("c", FUNC)
    placed = assigns(s.tasks_received(1, batch_of(range(8000))))
    runs = [
        placed[i].node_id for i in range(len(placed)) if i == 0 or placed[i].node_id != placed[i - 1].node_id
    ]
    assert len(placed) == 8000 and len(runs) == 1000 == len(set(runs))
    assert [a.task_id for a in placed] == list(range(8000))  # oldest first
    assert s.slot_totals() == (8000, 0)


def test_a_small_frame_of_tasks_still_spreads_over_thousands_of_nodes() -> None:
    """500 tasks in one frame over 2,000 equal nodes land on 500 different nodes, not a few full ones."""
    s = Scheduler()
    for n in range(2000):
        s.node_joined(f"n{n}", 8)
    s.submit_job("c", FUNC)
    placed = assigns(s.tasks_received(1, batch_of(range(500))))
    assert len({a.node_id for a in placed}) == 500


def test_a_frame_of_results_is_checked_result_by_result_and_refilled_once() -> None:
    """Current results complete their tasks, a stale one is dropped; the freed slots refill in one batch."""
    s = Scheduler(min_window=8, window_per_slot=0)
    s.node_joined("n1", 4)
    s.submit_job("c", FUNC)
    placed = assigns(s.tasks_received(1, batch_of(range(8))))
    assert [a.task_id for a in placed] == [0, 1, 2, 3]
    results = [(a.task_id, a.attempt, True, result_blob(a.task_id)) for a in placed[:3]]
    results.append((3, 2, True, b"late"))  # not the current attempt of task 3
    actions = s.results_received("n1", 1, results)
    assert forwarded(actions) == [0, 1, 2]
    assert [(a.node_id, a.task_id) for a in assigns(actions)] == [("n1", 4), ("n1", 5), ("n1", 6)]
    assert [a for a in actions if isinstance(a, GrantCredit)] == [GrantCredit("c", 1, 3)]
    assert status(s)["stale_results"] == 1


def test_a_failure_in_a_frame_ends_a_stopping_job_and_the_rest_are_stale() -> None:
    """With stop_on_failure, results after the failing one in the same frame are not forwarded."""
    s = Scheduler()
    s.node_joined("n1", 4)
    s.submit_job("c", FUNC, stop_on_failure=True)
    placed = assigns(s.tasks_received(1, batch_of(range(3))))
    results = [(a.task_id, a.attempt, a.task_id != 1, result_blob(a.task_id)) for a in placed]
    actions = s.results_received("n1", 1, results)
    assert [(a.task_id, a.ok) for a in actions if isinstance(a, ForwardResult)] == [(0, True), (1, False)]
    ended = [a for a in actions if isinstance(a, JobEnded)]
    assert [(e.outcome, e.task_id) for e in ended] == [(JobOutcome.FAILED, 1)]
    assert status(s)["stale_results"] == 1


def test_a_node_that_offers_more_slots_gets_more_work_and_credit() -> None:
    """Growing a node fills its new slots and widens the window; shrinking it below what it holds waits."""
    s = Scheduler(min_window=1, window_per_slot=2)
    s.node_joined("n1", 2)
    s.submit_job("c", FUNC)
    assert len(assigns(s.tasks_received(1, batch_of(range(4))))) == 2
    grown = s.node_resized("n1", 8)
    assert [a.task_id for a in assigns(grown)] == [2, 3]
    assert [a for a in grown if isinstance(a, GrantCredit)] == [GrantCredit("c", 1, 12)]
    held = assigns(s.tasks_received(1, batch_of(range(4, 8))))
    assert s.slot_totals() == (8, 0) and len(held) == 4
    assert s.node_resized("n1", 2) == []
    assert assigns(s.tasks_received(1, batch_of([8, 9]))) == []  # 8 held on 2 slots: they wait
    assert assigns(succeed(s, at("n1", 0))) == []  # still 7 held
    assert s.slot_totals() == (2, 0)
    for task_id in range(1, 7):
        placed = assigns(succeed(s, at("n1", task_id)))
    assert [a.task_id for a in placed] == [8]  # 1 held: one slot free again
