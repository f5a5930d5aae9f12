"""Random event sequences against the scheduler, checked against a model of what peers saw."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

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
    SendJob,
)

MAX_ATTEMPTS = 3
PICK = st.integers(min_value=0, max_value=1_000)
NODE_IDS = ("n1", "n2", "n3", "n4")


def task_blob(job_id: int, task_id: int) -> bytes:
    return b"task:%d:%d" % (job_id, task_id)


def result_blob(job_id: int, task_id: int, attempt: int) -> bytes:
    return b"result:%d:%d:%d" % (job_id, task_id, attempt)


@dataclass
class JobModel:
    """What the controller of one job has sent and seen."""

    controller_id: str
    total: int
    unsent: list[int]
    credit: int = 0
    input_ended: bool = False
    outcome: JobOutcome | None = None
    forwarded: Counter[int] = field(default_factory=Counter)
    attempts: dict[int, int] = field(default_factory=dict)
    open: set[int] = field(default_factory=set)  # received and not finished
    fresh: bool = True  # started, and nothing sent since
    stop_on_failure: bool = True


class SchedulerMachine(RuleBasedStateMachine):
    """Drives one Scheduler with nodes, controllers and late frames, checking every action."""

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(max_attempts=MAX_ATTEMPTS, min_window=3, window_per_slot=1)
        self.nodes: dict[str, int] = {}  # node id -> slots, in join order
        self.jobs: dict[int, JobModel] = {}
        self.started: list[int] = []  # in submission order
        self.queued: list[int] = []
        self.current: dict[tuple[int, int], tuple[str, int]] = {}  # (job, task) -> (node, attempt)
        self.history: list[AssignTask] = []
        self.has_function: set[tuple[str, int]] = set()
        self.taken_back: set[tuple[int, int]] = set()  # lost with a node, not yet reassigned

    # -- applying the scheduler's actions to the model -----------------------

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, JobStarted):
                self.on_started(action)
            elif isinstance(action, JobQueued):
                self.on_queued(action)
            elif isinstance(action, GrantCredit):
                self.on_credit(action)
            elif isinstance(action, SendJob):
                self.on_function(action)
            elif isinstance(action, AssignTask):
                self.on_assign(action)
            elif isinstance(action, ForwardResult):
                self.on_forward(action)
            elif isinstance(action, JobEnded):
                self.on_ended(action)
            elif isinstance(action, ReleaseOnNode):
                assert action.node_id in self.nodes
                assert (action.node_id, action.job_id) in self.has_function
                assert self.jobs[action.job_id].outcome is JobOutcome.DONE
            else:
                self.on_cancel_on_node(action)

    def on_started(self, action: JobStarted) -> None:
        busy = [j for j in self.started if self.jobs[j].open or self.jobs[j].fresh]
        assert busy == [], "a job started while another had work (or had just started)"
        assert self.queued == [] or self.queued[0] == action.job_id, "jobs must start in FIFO order"
        if self.queued:
            self.queued.pop(0)
        assert self.jobs[action.job_id].controller_id == action.controller_id
        self.started.append(action.job_id)

    def on_queued(self, action: JobQueued) -> None:
        assert action.position == len(self.queued) + len(self.started)  # started jobs count
        self.queued.append(action.job_id)

    def on_credit(self, action: GrantCredit) -> None:
        job = self.jobs[action.job_id]
        assert action.job_id in self.started and action.count > 0 and not job.input_ended
        job.credit += action.count

    def on_function(self, action: SendJob) -> None:
        assert action.node_id in self.nodes and action.job_id in self.started
        assert (action.node_id, action.job_id) not in self.has_function, "function sent twice"
        self.has_function.add((action.node_id, action.job_id))

    def on_assign(self, action: AssignTask) -> None:
        key = (action.job_id, action.task_id)
        job = self.jobs[action.job_id]
        assert action.node_id in self.nodes, "task assigned to a node that is gone"
        assert (action.node_id, action.job_id) in self.has_function, "task before its function"
        assert action.job_id in self.started and key not in self.current
        older = self.started[: self.started.index(action.job_id)]
        assert not any(self.waiting(j) for j in older), "an older job's pending task must go first"
        assert action.attempt == job.attempts.get(action.task_id, 0) + 1 <= MAX_ATTEMPTS
        assert action.blob == task_blob(*key) and job.forwarded[action.task_id] == 0
        if action.attempt == 1:
            waiting = [key for key in self.taken_back if key[0] == action.job_id]
            assert waiting == [], "re-queued work must go first"
        self.taken_back.discard(key)
        job.attempts[action.task_id] = action.attempt
        self.current[key] = (action.node_id, action.attempt)
        self.history.append(action)

    def on_forward(self, action: ForwardResult) -> None:
        key = (action.job_id, action.task_id)
        job = self.jobs[action.job_id]
        assert key in self.current, "a result was forwarded for a task not assigned"
        assert job.forwarded[action.task_id] == 0, "a result was forwarded twice"
        _node_id, attempt = self.current.pop(key)
        assert action.blob == result_blob(*key, attempt)
        assert action.controller_id == job.controller_id
        job.forwarded[action.task_id] += 1
        job.open.discard(action.task_id)

    def on_ended(self, action: JobEnded) -> None:
        job = self.jobs[action.job_id]
        assert job.outcome is None, "a job ended twice"
        job.outcome = action.outcome
        if action.outcome is JobOutcome.DONE:
            assert job.input_ended
            assert job.forwarded == Counter(range(job.total)), "DONE without every result once"
        job.open.clear()
        if action.job_id in self.started:
            self.started.remove(action.job_id)
        else:
            assert action.outcome is JobOutcome.CANCELLED
            self.queued.remove(action.job_id)
        for key in [key for key in self.current if key[0] == action.job_id]:
            del self.current[key]
        self.taken_back = {key for key in self.taken_back if key[0] != action.job_id}

    def on_cancel_on_node(self, action: CancelOnNode) -> None:
        assert action.node_id in self.nodes
        assert (action.node_id, action.job_id) in self.has_function
        assert self.jobs[action.job_id].outcome in (JobOutcome.FAILED, JobOutcome.CANCELLED)

    # -- rules ---------------------------------------------------------------

    @initialize(total=st.integers(min_value=0, max_value=12))
    def first_job(self, total: int) -> None:
        self.submit(total, "a")

    @precondition(lambda self: len(self.jobs) < 5)
    @rule(
        total=st.integers(min_value=0, max_value=12),
        controller=st.sampled_from("ab"),
        stop=st.booleans(),
    )
    def submit(self, total: int, controller: str, stop: bool = True) -> None:
        job_id, actions = self.s.submit_job(controller, b"func", stop_on_failure=stop)
        assert job_id == len(self.jobs) + 1
        self.jobs[job_id] = JobModel(controller, total, list(range(total)), stop_on_failure=stop)
        self.apply(actions)

    @precondition(lambda self: len(self.nodes) < len(NODE_IDS))
    @rule(pick=PICK, slots=st.integers(min_value=1, max_value=3))
    def join_node(self, pick: int, slots: int) -> None:
        """A node joins, possibly under the id of one lost earlier (a reconnect)."""
        free_ids = [node_id for node_id in NODE_IDS if node_id not in self.nodes]
        node_id = free_ids[pick % len(free_ids)]
        self.nodes[node_id] = slots
        self.apply(self.s.node_joined(node_id, slots))

    @precondition(lambda self: self.nodes)
    @rule(pick=PICK)
    def lose_node(self, pick: int) -> None:
        node_id = list(self.nodes)[pick % len(self.nodes)]
        del self.nodes[node_id]
        self.has_function = {(n, j) for n, j in self.has_function if n != node_id}
        # The scheduler takes the node's tasks back; a new attempt must be assigned for each.
        for key in [key for key, (node, _) in self.current.items() if node == node_id]:
            del self.current[key]
            self.taken_back.add(key)
        self.apply(self.s.node_lost(node_id))

    def status(self) -> Any:
        """The scheduler's status, typed loosely for reading in assertions."""
        return self.s.status()

    def waiting(self, job_id: int) -> bool:
        """Whether a started job has a task received but not on a node."""
        job = self.jobs[job_id]
        return any((job_id, t) not in self.current for t in job.open)

    def owner(self) -> int | None:
        """The job that owns the cluster: the oldest started one with work, else the oldest."""
        busy = [j for j in self.started if self.jobs[j].open]
        return (busy or self.started or [None])[0]

    def senders(self) -> list[int]:
        return [j for j in self.started if self.jobs[j].credit > 0 and self.jobs[j].unsent]

    @precondition(lambda self: self.senders())
    @rule(pick=PICK, which=PICK)
    def send_task(self, pick: int, which: int) -> None:
        senders = self.senders()
        job_id = senders[which % len(senders)]
        job = self.jobs[job_id]
        task_id = job.unsent.pop(pick % len(job.unsent))
        job.credit -= 1
        job.fresh = False
        job.open.add(task_id)
        self.apply(self.s.task_received(job_id, task_id, task_blob(job_id, task_id)))

    @precondition(lambda self: self.started)
    @rule(pick=PICK, which=PICK)
    def send_bad_task(self, pick: int, which: int) -> None:
        """A duplicate or negative task id is a violation that changes nothing."""
        job_id = self.started[which % len(self.started)]
        job = self.jobs[job_id]
        candidates = [*sorted(set(range(job.total)) - set(job.unsent)), -1]
        before = self.s.status()
        with pytest.raises(ProtocolViolationError):
            self.s.task_received(job_id, candidates[pick % len(candidates)], b"")
        assert self.s.status() == before

    def enders(self) -> list[int]:
        return [j for j in self.started if not self.jobs[j].unsent and not self.jobs[j].input_ended]

    @precondition(lambda self: self.enders())
    @rule(which=PICK)
    def end_input(self, which: int) -> None:
        enders = self.enders()
        job_id = enders[which % len(enders)]
        job = self.jobs[job_id]
        job.input_ended = True
        job.fresh = False
        self.apply(self.s.input_ended(job_id, job.total))

    @precondition(lambda self: self.current)
    @rule(pick=PICK, ok=st.sampled_from([True, True, True, False]))
    def report_result(self, pick: int, ok: bool) -> None:
        (job_id, task_id), (node_id, attempt) = list(self.current.items())[pick % len(self.current)]
        blob = result_blob(job_id, task_id, attempt)
        actions = self.s.result_received(node_id, job_id, task_id, attempt, ok, blob)
        controller_id = self.jobs[job_id].controller_id
        assert actions[0] == ForwardResult(controller_id, job_id, task_id, ok, blob)
        if not ok and self.jobs[job_id].stop_on_failure:
            assert isinstance(actions[1], JobEnded) and actions[1].outcome is JobOutcome.FAILED
        elif not ok:
            assert not any(
                isinstance(a, JobEnded) and a.job_id == job_id and a.outcome is not JobOutcome.DONE
                for a in actions
            ), "a failure ended a job that goes on after failures"
        self.apply(actions)

    @precondition(lambda self: self.history)
    @rule(pick=PICK, ok=st.booleans())
    def report_old_result(self, pick: int, ok: bool) -> None:
        """A result for any assignment that is no longer current changes nothing."""
        old = self.history[pick % len(self.history)]
        if self.current.get((old.job_id, old.task_id)) == (old.node_id, old.attempt):
            return
        stale = self.status()["stale_results"]
        late = self.s.result_received(old.node_id, old.job_id, old.task_id, old.attempt, ok, b"x")
        assert late == []
        assert self.status()["stale_results"] == stale + 1

    @precondition(lambda self: self.current)
    @rule(pick=PICK, other=PICK, ok=st.booleans())
    def report_from_wrong_node(self, pick: int, other: int, ok: bool) -> None:
        """The current attempt reported by a node that does not hold it changes nothing."""
        (job_id, task_id), (node_id, attempt) = list(self.current.items())[pick % len(self.current)]
        impostors = [n for n in NODE_IDS if n != node_id]
        impostor = impostors[other % len(impostors)]
        assert self.s.result_received(impostor, job_id, task_id, attempt, ok, b"wrong") == []

    @precondition(lambda self: self.jobs)
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        job_id = pick % len(self.jobs) + 1
        live = self.jobs[job_id].outcome is None
        actions = self.s.cancel_job(job_id)
        assert bool(actions) == live
        self.apply(actions)

    @rule(controller=st.sampled_from("ab"))
    def lose_controller(self, controller: str) -> None:
        self.apply(self.s.controller_lost(controller))
        theirs = [job for job in self.jobs.values() if job.controller_id == controller]
        assert all(job.outcome is not None for job in theirs)

    # -- invariants ----------------------------------------------------------

    @invariant()
    def no_assignment_on_a_gone_node(self) -> None:
        assert all(node in self.nodes for node, _ in self.current.values())
        assert all(attempt <= MAX_ATTEMPTS for _, attempt in self.current.values())

    @invariant()
    def status_matches_the_model(self) -> None:
        status = self.status()
        nodes = status["nodes"]
        assert [n["node_id"] for n in nodes] == list(self.nodes)
        assert sum(n["busy"] for n in nodes) == len(self.current)
        assert all(0 <= n["busy"] <= n["slots"] for n in nodes)
        assert self.s.running_job_id == self.owner()
        assert [q["job_id"] for q in status["queue"]] == self.queued

    @invariant()
    def running_slot_totals_match_a_recount(self) -> None:
        total = sum(self.nodes.values())
        assert self.s.slot_totals() == (total, total - len(self.current))

    @invariant()
    def no_slot_idles_while_work_waits(self) -> None:
        if any(self.waiting(job_id) for job_id in self.started):
            assert sum(self.nodes.values()) == len(self.current)


SchedulerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler_state_machine = SchedulerMachine.TestCase
test_scheduler_state_machine.__doc__ = (
    "Under any sequence of joins, losses, tasks, results and cancels, every result is "
    "forwarded at most once and a DONE job forwarded each task exactly once."
)
