"""The server's scheduler: jobs in submission order, and every task's state.

::

    controller ──task──▶ PENDING ──dispatch──▶ ASSIGNED(node, attempt) ──ok──▶ DONE ──▶ controller
                            ▲                     │
                            └─────node lost───────┤
                                                  └──error*, or lost max_attempts times──▶ FAILED

    (* an error fails the job only when the job stops at its first failure)

The scheduler is a plain object with no I/O and no clock: the Twisted glue in
``server/cluster.py`` calls one method per event it sees (a node joined, a frame
arrived, a connection dropped) and carries out the returned actions in order.
``now`` is passed in where time is recorded, so tests run without waiting.

Jobs. Job ids are handed out 1, 2, 3, ...; the oldest job with work owns the
cluster and the rest wait in submission order. A *started* job that goes idle
(nothing pending, nothing on a node: an idle ``Pool``, an ``imap`` nobody
reads) lets the next queued job start; when the idle job sends work again it
is still older, so its tasks are dispatched first as slots free up. A job is
started only when every started job is idle and has sent work since it
started, so a queue of jobs does not all start at once. Because ids are
sequential, a job id below the next one that is not live has ended: that is
all the scheduler keeps of an ended job, enough to tell a late frame from an
illegal one.

Tasks. The controller names its tasks 0..N-1 and sends each once; a task calls
one of the job's functions by id (sent once per job by the controller, and to
a node once, before its first task that calls it). A task moves PENDING →
ASSIGNED(node, attempt) → DONE or FAILED, and only the result of the matching
(node, attempt) may complete it: that one rule makes a late result from a node
thought dead harmless. A lost node's tasks go back to the front of their job's
queue, so the oldest work finishes first and an ordered ``imap`` never waits
long on a hole; a task lost ``max_attempts`` times fails its job. A task its
controller withdraws (a cancelled future) is dropped while PENDING, or asked
of its node, which gives it back only if no worker has taken it; either way
it becomes DONE without a result.

Bounds. At most ``max_queued_jobs`` jobs wait, and a new job is refused
(ended as failed at once, with the reason) when the queue is full or the
blobs held for live jobs (setups, functions, tasks not yet done) plus its
setup would pass ``max_held_bytes``; no job already queued is touched.

Credit. The controller sends a task only against credit the scheduler granted.
A started job holds at most ``window`` tasks plus unused credit, where the
window grows with the cluster's slots, so memory stays bounded whatever the
length of the user's input. A task's blob is dropped once it is DONE.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from achilles_like.errors import ProtocolViolationError
from achilles_like.scheduling.actions import (
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
    SendFunction,
    SendJob,
    TaskWithdrawn,
    WithdrawOnNode,
)
from achilles_like.scheduling.free_slots import FreeSlots

# How long a started job that has sent nothing may hold queued jobs back.
FRESH_GRACE = 1.0


class TaskState(Enum):
    """Where one task of a started job stands."""

    PENDING = "pending"  # received, waiting for a free slot
    ASSIGNED = "assigned"  # on one node as one attempt; only that attempt may complete it
    DONE = "done"  # its result was forwarded (or it was withdrawn); its blob is gone
    FAILED = "failed"  # it raised or was lost too often; its job ended with it


# Every legal move of a task. Anything else is a bug in this module, not a peer's fault,
# because peers' frames are validated (or classified as stale) before a task is touched.
_NEXT_STATES: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.ASSIGNED, TaskState.DONE}),  # DONE: withdrawn
    TaskState.ASSIGNED: frozenset({TaskState.PENDING, TaskState.DONE, TaskState.FAILED}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
}


@dataclass(eq=False, slots=True)
class _Task:
    """One received, not yet finished task of a started job (one per task: slots, no default factory)."""

    task_id: int
    blob: bytes = field(repr=False)
    fn: int | None = None  # the job function it calls
    state: TaskState = TaskState.PENDING
    attempt: int = 0  # assignments so far; the next AssignTask carries attempt + 1
    node_id: str | None = None  # the node holding the current attempt
    lost_on: tuple[str, ...] = ()  # the nodes it was lost with, in order
    withdrawing: bool = False  # its controller asked to drop it; the node holding it was asked too

    def move_to(self, state: TaskState) -> None:
        """Change state along the table above, or fail loudly."""
        if state not in _NEXT_STATES[self.state]:
            raise RuntimeError(
                f"internal error: task {self.task_id} went {self.state.name} -> {state.name}",
            )
        self.state = state


class _IdSet:
    """A set of non-negative ints that stays tiny when they are added roughly in order.

    Finished task ids must be remembered to refuse a duplicate, but an endless
    ``imap`` would make a plain set grow forever; ids finish nearly in order,
    so a contiguous prefix is kept as one number.
    """

    def __init__(self) -> None:
        self._floor = 0  # every id below this is a member
        self._above: set[int] = set()

    def __contains__(self, item: int) -> bool:
        return item < self._floor or item in self._above

    def __len__(self) -> int:
        return self._floor + len(self._above)

    def add(self, item: int) -> None:
        self._above.add(item)
        while self._floor in self._above:
            self._above.remove(self._floor)
            self._floor += 1


@dataclass(eq=False)
class _Node:
    """A connected node and the (job id, task id) pairs it holds."""

    node_id: str
    slots: int
    joined: int  # join order: nodes are listed (and told of a job's end) in it
    inflight: set[tuple[int, int]] = field(default_factory=set)
    tasks_done: int = 0


@dataclass(eq=False)
class _Job:
    """A queued or started job."""

    job_id: int
    controller_id: str
    setup_blob: bytes = field(repr=False)
    label: str
    submitted_at: float
    stop_on_failure: bool = True  # False: a failing task fails only its own items
    held: dict[int, _Task] = field(default_factory=dict)  # PENDING and ASSIGNED tasks
    pending: deque[int] = field(default_factory=deque)  # task ids, next to dispatch first
    done: _IdSet = field(default_factory=_IdSet)
    credit: int = 0  # granted to the controller and not used yet
    total_tasks: int | None = None  # known once the input ended
    max_task_id: int = -1
    functions: dict[int, bytes] = field(default_factory=dict, repr=False)  # fn id -> blob
    setup_sent_to: set[str] = field(default_factory=set)
    functions_sent: dict[str, set[int]] = field(default_factory=dict)  # node -> fn ids
    fresh: bool = True  # started, and no task received since
    fresh_seen: float | None = None  # when a tick first saw it fresh (a grace, then it counts as idle)
    failed_tasks: int = 0  # tasks whose result reported a failure (jobs that go on)
    ready: bool = False  # its id is in the scheduler's heap of jobs that may have pending tasks

    def received(self) -> int:
        return len(self.held) + len(self.done)

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing on a node."""
        return not self.held


class Scheduler:
    """Decides which node runs which task; returns what to send, never sends it."""

    def __init__(
        self,
        *,
        max_attempts: int = 4,
        min_window: int = 16,
        window_per_slot: int = 2,
        max_queued_jobs: int = 1000,
        max_held_bytes: int = 4 << 30,
    ) -> None:
        _require_at_least("max_attempts", max_attempts, 1)
        _require_at_least("max_queued_jobs", max_queued_jobs, 1)
        _require_at_least("max_held_bytes", max_held_bytes, 1)
        self._max_queued_jobs = max_queued_jobs  # bounded queue: a SUBMIT past either cap is refused
        self._max_held_bytes = max_held_bytes
        _require_at_least("min_window", min_window, 1)
        _require_at_least("window_per_slot", window_per_slot, 0)
        self._max_attempts = max_attempts
        self._min_window = min_window
        self._window_per_slot = window_per_slot
        self._nodes: dict[str, _Node] = {}  # in join order
        self._free = FreeSlots()  # the freest node per task without scanning the cluster
        self._joins = 0
        self._ready: list[int] = []  # heap of started job ids that may have pending tasks
        self._started: dict[int, _Job] = {}  # in submission order: the oldest has priority
        self._queue: deque[_Job] = deque()
        self._next_job_id = 1
        self._stale_results = 0
        self._jobs_done = 0
        self._nodeless_since: float | None = None  # when a job with work was last seen without nodes

    # -- read-only helpers -------------------------------------------------

    @property
    def running_job_id(self) -> int | None:
        """The job that owns the cluster now: the oldest started job with work, else the oldest."""
        job = self._owner()
        return None if job is None else job.job_id

    def task_owner(self, node_id: str, job_id: int, task_id: int) -> str | None:
        """The controller of ``job_id`` if ``node_id`` holds its task ``task_id`` now, else None."""
        job = self._started.get(job_id)
        task = None if job is None else job.held.get(task_id)
        if job is None or task is None or task.node_id != node_id:
            return None
        return job.controller_id

    def is_started(self, job_id: int) -> bool:
        """Whether ``job_id`` is a started (not queued, not ended) job."""
        return job_id in self._started

    def job_label(self, job_id: int) -> str:
        """The label a live job was submitted with ("" once it has ended)."""
        job = self._live_job(job_id)
        return "" if job is None else job.label

    def job_controller(self, job_id: int) -> str | None:
        """The controller of a live (queued or started) job, else None."""
        job = self._live_job(job_id)
        return None if job is None else job.controller_id

    def holds_work(self, peer_id: str) -> bool:
        """Whether a node holds tasks, or a controller has a started job (its loss would stall work)."""
        node = self._nodes.get(peer_id)
        if node is not None:
            return bool(node.inflight)
        return any(job.controller_id == peer_id for job in self._started.values())

    def slot_totals(self) -> tuple[int, int]:
        """The cluster's slots and free slots, as kept by running sums."""
        return self._free.total_slots, self._free.total_free

    def node_ids(self) -> list[str]:
        """Connected nodes, in join order."""
        return list(self._nodes)

    # -- nodes -------------------------------------------------------------

    def node_joined(self, node_id: str, slots: int) -> list[Action]:
        """A node authenticated and offers ``slots`` processes; it gets work at once."""
        if node_id in self._nodes:
            raise ProtocolViolationError(
                f"node {node_id!r} joined twice; it must be lost before it joins again",
            )
        if slots < 1:
            raise ProtocolViolationError(f"node {node_id!r} offered {slots} slots; at least 1 is needed")
        self._joins += 1
        self._nodes[node_id] = _Node(node_id, slots, self._joins)
        self._free.add(node_id, slots)
        return self._dispatch() + self._top_up()

    def node_resized(self, node_id: str, slots: int) -> list[Action]:
        """A node now offers ``slots`` (deeper while its tasks are short); more credit if the window grew.

        Shrinking below what the node holds takes nothing back: it gets no task
        until enough of them finish. An unknown node is ignored (it was just lost).
        """
        node = self._nodes.get(node_id)
        if node is None:
            return []
        if slots < 1:
            raise ProtocolViolationError(f"node {node_id!r} offered {slots} slots; at least 1 is needed")
        node.slots = slots
        self._free.resize(node_id, slots)
        return self._dispatch() + self._top_up()

    def node_lost(self, node_id: str) -> list[Action]:
        """A node is gone: its tasks go back to the front of their queues as a new attempt.

        An unknown node is ignored, because the glue may notice one loss twice
        (a missed heartbeat, then the connection closing).
        """
        node = self._nodes.pop(node_id, None)
        if node is None:
            return []
        self._free.remove(node_id)
        by_job: dict[int, list[int]] = {}
        for job_id, task_id in sorted(node.inflight):
            by_job.setdefault(job_id, []).append(task_id)
        actions: list[Action] = []
        for job in list(self._started.values()):
            job.setup_sent_to.discard(node_id)
            job.functions_sent.pop(node_id, None)
            lost = [job.held[task_id] for task_id in by_job.get(job.job_id, ())]
            if lost and job.job_id in self._started:
                actions += self._requeue(job, lost, node_id, "lost with its node")
        return actions + self._dispatch() + self._top_up()

    def task_lost(self, node_id: str, job_id: int, task_id: int, attempt: int, reason: str) -> list[Action]:
        """A node's worker process died running a task: retry it, within the attempt budget.

        The node stays; a report that does not match the task's current
        assignment is stale and dropped, like a stale result.
        """
        job = self._started_or_ended(job_id, f"loss of task {task_id} on node {node_id!r}")
        task = None if job is None else job.held.get(task_id)
        if job is None or task is None or not _is_current(task, node_id, attempt):
            self._stale_results += 1
            return []
        self._release(self._nodes[node_id], job_id, task_id)
        return self._requeue(job, [task], node_id, f"lost ({reason})") + self._dispatch()

    def _requeue(self, job: _Job, lost: list[_Task], node_id: str, how: str) -> list[Action]:
        """Put lost tasks back at the front of their queue, or fail the job when one is out of attempts."""
        actions: list[Action] = []
        for task in [task for task in lost if task.withdrawing]:
            # Its controller no longer wants it, and no worker finished it: drop it.
            task.move_to(TaskState.PENDING)
            actions += self._drop_withdrawn(job, task)
            if job.job_id not in self._started:
                return actions
        lost = [task for task in lost if not task.withdrawing]
        for task in lost:
            task.lost_on += (node_id,)
        exhausted = [task for task in lost if task.attempt >= self._max_attempts]
        if exhausted:
            exhausted[0].move_to(TaskState.FAILED)
            reason = _lost_reason(exhausted[0], how)
            return actions + self._end_job(job, JobOutcome.FAILED, reason, exhausted[0].task_id)
        for task in reversed(lost):
            task.move_to(TaskState.PENDING)
            task.node_id = None
            job.pending.appendleft(task.task_id)
        if lost:
            self._mark_ready(job)
        return actions

    # -- jobs --------------------------------------------------------------

    def submit_job(
        self,
        controller_id: str,
        setup_blob: bytes,
        *,
        label: str = "",
        now: float = 0.0,
        stop_on_failure: bool = True,
    ) -> tuple[int, list[Action]]:
        """A controller submits a job; it starts now, waits behind the others, or is refused (queue full)."""
        job = _Job(self._next_job_id, controller_id, setup_blob, label, now, stop_on_failure)
        self._next_job_id += 1
        refusal = self._refusal(len(setup_blob))
        if refusal:  # never queued: nothing held for it, and no job already queued is touched
            return job.job_id, [JobEnded(controller_id, job.job_id, JobOutcome.FAILED, refusal)]
        self._queue.append(job)
        actions = self._start_waiting()
        if job.job_id not in self._started:
            actions.append(JobQueued(controller_id, job.job_id, len(self._queue) + len(self._started) - 1))
        return job.job_id, actions

    def function_received(self, job_id: int, fn: int, blob: bytes) -> list[Action]:
        """The controller sent one of its job's functions (once, before the tasks that call it)."""
        job = self._live_job(job_id)
        if job is None:
            if 1 <= job_id < self._next_job_id:
                return []  # the job has ended: a late frame
            raise ProtocolViolationError(f"function {fn} for job {job_id}, which was never submitted")
        if fn in job.functions:
            raise ProtocolViolationError(f"function {fn} of job {job_id} was already sent; send each once")
        job.functions[fn] = blob
        return []

    def task_received(self, job_id: int, task_id: int, blob: bytes, fn: int | None = None) -> list[Action]:
        """The controller sent one task of a started job, against credit."""
        return self.tasks_received(job_id, [(task_id, blob, fn)])

    def tasks_received(self, job_id: int, tasks: Sequence[tuple[int, bytes, int | None]]) -> list[Action]:
        """The controller sent tasks ``(task id, blob, fn)`` of a started job in one frame, against credit.

        They are queued one by one and dispatched in one pass, so a node gets its share
        of the frame as one batch.
        """
        if not tasks:
            return []
        job = self._started_or_ended(job_id, f"task {tasks[0][0]}")
        if job is None:
            return []
        held, pending = job.held, job.pending
        for task_id, blob, fn in tasks:
            self._check_new_task(job, task_id, fn)
            job.credit -= 1
            held[task_id] = _Task(task_id, blob, fn)
            pending.append(task_id)
            if task_id > job.max_task_id:
                job.max_task_id = task_id
        job.fresh = False
        self._mark_ready(job)
        return self._dispatch()

    def input_ended(self, job_id: int, total_tasks: int) -> list[Action]:
        """The controller sent its last task; the job has ``total_tasks`` tasks in all."""
        job = self._started_or_ended(job_id, "end of input")
        if job is None:
            return []
        _check_total(job, total_tasks)
        job.total_tasks = total_tasks
        job.fresh = False
        if len(job.done) == total_tasks:
            return self._end_job(job, JobOutcome.DONE)
        return []

    def result_received(
        self, node_id: str, job_id: int, task_id: int, attempt: int, ok: bool, blob: bytes
    ) -> list[Action]:
        """A node returned a task's result (``ok``) or its failures; stale results are dropped."""
        return self.results_received(node_id, job_id, [(task_id, attempt, ok, blob)])

    def results_received(
        self, node_id: str, job_id: int, results: Sequence[tuple[int, int, bool | int, bytes]]
    ) -> list[Action]:
        """A node returned results ``(task id, attempt, ok, blob)`` of one job in one frame.

        Each is checked on its own (only the current attempt completes a task; the rest
        are stale and dropped), then the freed slots are refilled and the job's credit
        topped up once for the whole frame.
        """
        if not results:
            return []
        job = self._started_or_ended(job_id, f"result of task {results[0][0]} from node {node_id!r}")
        node = self._nodes.get(node_id)
        if job is None or node is None:
            self._stale_results += len(results)
            return []
        actions: list[Action] = []
        started, held = self._started, job.held
        freed = 0  # slots this frame frees on the node, given back at once below
        for task_id, attempt, ok, blob in results:
            task = held.get(task_id)
            if task is None or job_id not in started or not _is_current(task, node_id, attempt):
                self._stale_results += 1
                continue
            actions.append(ForwardResult(job.controller_id, job_id, task_id, bool(ok), blob))
            if ok or not job.stop_on_failure:
                if not ok:
                    job.failed_tasks += 1
                self._finish(job, task, node)
                freed += 1
                if job.total_tasks is not None and len(job.done) == job.total_tasks:
                    self._free.change(node_id, freed)  # _end_job counts the slots it frees itself
                    freed = 0
                    actions += self._end_job(job, JobOutcome.DONE)
                continue
            task.move_to(TaskState.FAILED)
            node.inflight.remove((job_id, task_id))
            self._free.change(node_id, freed + 1)
            freed = 0
            reason = f"task {task_id} raised an exception on node {node_id}"
            actions += self._end_job(job, JobOutcome.FAILED, reason, task_id)
        if freed:
            self._free.change(node_id, freed)
        if job_id in started:
            actions += self._dispatch() + self._top_up([job])
            if job.idle:
                actions += self._start_waiting()
        return actions

    def cancel_job(self, job_id: int, reason: str = "cancelled by its controller") -> list[Action]:
        """End a queued or started job; an unknown or ended job id is ignored."""
        job = self._started.get(job_id)
        if job is not None:
            return self._end_job(job, JobOutcome.CANCELLED, reason)
        for job in self._queue:
            if job.job_id == job_id:
                self._queue.remove(job)
                return [JobEnded(job.controller_id, job_id, JobOutcome.CANCELLED, reason)]
        return []

    def withdraw(self, job_id: int, task_id: int) -> list[Action]:
        """The controller no longer wants a task: drop it unless a worker may have started it.

        A pending task is dropped here and counts as done (the controller is
        told, TaskWithdrawn). An assigned one is asked of its node, which
        drops it only if no worker has started it (``task_withdrawn``);
        otherwise its result comes as usual. A finished or unknown task is
        ignored: withdrawing races with its result.
        """
        job = self._started_or_ended(job_id, f"withdrawal of task {task_id}")
        task = None if job is None else job.held.get(task_id)
        if job is None or task is None or task.withdrawing:
            return []
        if task.state is TaskState.PENDING:
            job.pending.remove(task_id)
            return self._drop_withdrawn(job, task)
        task.withdrawing = True
        assert task.node_id is not None  # ASSIGNED
        return [WithdrawOnNode(task.node_id, job_id, task_id, task.attempt)]

    def task_withdrawn(self, node_id: str, job_id: int, task_id: int, attempt: int) -> list[Action]:
        """A node dropped a task before any worker started it; a stale report is ignored."""
        job = self._started_or_ended(job_id, f"withdrawal of task {task_id} from node {node_id!r}")
        task = None if job is None else job.held.get(task_id)
        if job is None or task is None or not task.withdrawing or not _is_current(task, node_id, attempt):
            self._stale_results += 1
            return []
        self._release(self._nodes[node_id], job_id, task_id)
        return self._drop_withdrawn(job, task) + self._dispatch()

    def _drop_withdrawn(self, job: _Job, task: _Task) -> list[Action]:
        """A task no worker ran leaves its job as done, without a result."""
        task.move_to(TaskState.DONE)
        del job.held[task.task_id]
        job.done.add(task.task_id)
        actions: list[Action] = [TaskWithdrawn(job.controller_id, job.job_id, task.task_id)]
        if len(job.done) == job.total_tasks:
            return actions + self._end_job(job, JobOutcome.DONE)
        actions += self._top_up([job])
        return actions + self._start_waiting() if job.idle else actions

    def controller_lost(self, controller_id: str) -> list[Action]:
        """A controller is gone: every live job of it is cancelled."""
        reason = f"its controller {controller_id} went away"
        # Queued jobs first, so that ending a started one cannot start one of them.
        doomed = [job.job_id for job in self._queue if job.controller_id == controller_id]
        doomed += [job.job_id for job in self._started.values() if job.controller_id == controller_id]
        actions: list[Action] = []
        for job_id in doomed:
            actions += self.cancel_job(job_id, reason)
        return actions

    def tick(self, now: float, no_node_timeout: float) -> list[Action]:
        """Called now and then with the time: fail jobs with work that have had no node for too long.

        A job whose cluster lost every node would otherwise wait forever; it
        waits ``no_node_timeout`` seconds for a node to join, then fails.
        """
        actions = self._expire_fresh(now)
        waiting = [job for job in self._started.values() if job.pending]
        if not waiting or self._nodes:
            self._nodeless_since = None
            return actions
        if self._nodeless_since is None:
            self._nodeless_since = now
            return actions
        waited = now - self._nodeless_since
        if waited < no_node_timeout:
            return actions
        self._nodeless_since = None
        reason = f"no node has been connected for {waited:.0f}s; start a node (achilles node) and resubmit"
        for job in waiting:
            if job.job_id in self._started:
                actions += self._end_job(job, JobOutcome.FAILED, reason)
        return actions

    def _expire_fresh(self, now: float) -> list[Action]:
        """A started job that has sent nothing for FRESH_GRACE seconds stops holding the queue back.

        Its controller may be waiting on its own input (which may wait on another job).
        """
        expired = False
        for job in self._started.values():
            if not job.fresh:
                continue
            if job.fresh_seen is None:
                job.fresh_seen = now
            elif now - job.fresh_seen >= FRESH_GRACE:
                job.fresh = False
                expired = True
        return self._start_waiting() if expired else []

    def status(self) -> dict[str, object]:
        """A JSON-serialisable snapshot for the admin ``status`` verb.

        ``busy`` is a node's tasks in flight; ``jobs_done`` counts jobs that ended DONE;
        ``job`` is the job that owns the cluster now, ``jobs`` every started one.
        """
        owner = self._owner()
        return {
            "nodes": [_node_status(node) for node in self._nodes.values()],
            "job": None if owner is None else _started_status(owner),
            "jobs": [_started_status(job) for job in self._started.values()],
            "queue": [_queued_status(job) for job in self._queue],
            "stale_results": self._stale_results,
            "jobs_done": self._jobs_done,
        }

    def held_bytes(self) -> int:
        """The bytes held for live jobs: setups, functions, and tasks not yet done."""
        jobs = [*self._queue, *self._started.values()]
        held = sum(len(job.setup_blob) + sum(map(len, job.functions.values())) for job in jobs)
        return held + sum(len(task.blob) for job in jobs for task in job.held.values())

    # -- internals ---------------------------------------------------------

    def _refusal(self, setup_bytes: int) -> str:
        """Why a new job cannot be queued (empty if it can): the queue is bounded in jobs and bytes."""
        waiting = len(self._queue)
        if waiting >= self._max_queued_jobs:
            return (
                f"the server's queue is full ({waiting} jobs waiting, the limit is {self._max_queued_jobs});"
                " resubmit when some have finished, or raise the server's --max-queued-jobs"
            )
        held = self.held_bytes()
        if held + setup_bytes > self._max_held_bytes:
            return (
                f"the server already holds {held} bytes for queued and running jobs, and this job's"
                f" {setup_bytes}-byte setup would pass the limit of {self._max_held_bytes} bytes;"
                " resubmit when some have finished, or raise the server's --max-held-bytes"
            )
        return ""

    def _owner(self) -> _Job | None:
        busy = next((job for job in self._started.values() if not job.idle), None)
        return busy or next(iter(self._started.values()), None)

    def _live_job(self, job_id: int) -> _Job | None:
        job = self._started.get(job_id)
        if job is not None:
            return job
        return next((job for job in self._queue if job.job_id == job_id), None)

    def _started_or_ended(self, job_id: int, what: str) -> _Job | None:
        """The started job ``job_id``; None if it ended (a late frame); else a violation."""
        job = self._started.get(job_id)
        if job is not None:
            return job
        if any(queued.job_id == job_id for queued in self._queue):
            raise ProtocolViolationError(f"{what} for job {job_id}, which is queued and not started")
        if 1 <= job_id < self._next_job_id:
            return None  # ids are sequential: a past id that is not live has ended
        raise ProtocolViolationError(f"{what} for job {job_id}, which was never submitted")

    def _window(self) -> int:
        return max(self._min_window, self._window_per_slot * self._free.total_slots)

    def _start_waiting(self) -> list[Action]:
        """Start the next queued job while every started job is idle and none is fresh."""
        actions: list[Action] = []
        started: list[_Job] = []
        while self._queue and all(job.idle and not job.fresh for job in self._started.values()):
            job = self._queue.popleft()
            self._started[job.job_id] = job
            started.append(job)
            actions.append(JobStarted(job.controller_id, job.job_id))
        return actions + self._top_up(started)

    def _top_up(self, jobs: list[_Job] | None = None) -> list[Action]:
        """Grant started jobs credit up to the window; never take any back.

        Only ``jobs`` (default: every started job) are looked at: after any event every
        other job is already topped up unless the window grew (a node joined).
        """
        actions: list[Action] = []
        window = self._window()
        for job in self._started.values() if jobs is None else jobs:
            if job.total_tasks is not None:
                continue
            deficit = window - len(job.held) - job.credit
            if deficit > 0:
                job.credit += deficit
                actions.append(GrantCredit(job.controller_id, job.job_id, deficit))
        return actions

    def _mark_ready(self, job: _Job) -> None:
        """Remember that ``job`` has pending tasks, for ``_dispatch``."""
        if not job.ready:
            job.ready = True
            heapq.heappush(self._ready, job.job_id)

    def _dispatch(self) -> list[Action]:
        """Hand pending tasks, oldest job first, to the nodes with the most free slots.

        Costs O(log) per node batch plus O(1) per task, whatever the number of
        nodes and jobs: jobs with pending tasks wait in a heap by id (ended or
        drained ones are dropped when met), nodes in :class:`FreeSlots`. One
        decision gives the freest node a batch (one frame on the wire): all its
        free slots when the job's pending tasks would fill every free slot
        anyway, else its even share of the pending tasks among the nodes with
        a free slot, so that a few tasks still spread over many nodes.
        """
        actions: list[Action] = []
        free = self._free
        while self._ready and free.total_free:
            job = self._started.get(self._ready[0])
            if job is None or not job.pending:
                heapq.heappop(self._ready)
                if job is not None:
                    job.ready = False
                continue
            node_id = free.freest()
            assert node_id is not None  # total_free > 0
            node = self._nodes[node_id]
            room, waiting = free.free(node_id), len(job.pending)
            count = room if waiting >= free.total_free else min(room, -(-waiting // free.free_nodes))
            for _ in range(count):
                self._assign(job, job.held[job.pending.popleft()], node, actions)
            free.change(node_id, -count)
        return actions

    def _release(self, node: _Node, job_id: int, task_id: int) -> None:
        """A task left ``node`` (done, failed or lost): its slot is free again."""
        node.inflight.remove((job_id, task_id))
        self._free.change(node.node_id, 1)

    def _assign(self, job: _Job, task: _Task, node: _Node, actions: list[Action]) -> None:
        """Put ``task`` on ``node``, adding to ``actions`` (the caller counts the slot in ``FreeSlots``)."""
        if node.node_id not in job.setup_sent_to:
            job.setup_sent_to.add(node.node_id)
            actions.append(SendJob(node.node_id, job.job_id, job.setup_blob))
        if task.fn is not None:
            sent = job.functions_sent.get(node.node_id)
            if sent is None:  # not setdefault: that would make an empty set for every task
                sent = job.functions_sent[node.node_id] = set()
            if task.fn not in sent:
                sent.add(task.fn)
                actions.append(SendFunction(node.node_id, job.job_id, task.fn, job.functions[task.fn]))
        task.state = TaskState.ASSIGNED  # from PENDING: only pending tasks are dispatched
        task.attempt += 1
        task.node_id = node.node_id
        node.inflight.add((job.job_id, task.task_id))
        actions.append(AssignTask(node.node_id, job.job_id, task.task_id, task.attempt, task.blob, task.fn))

    def _finish(self, job: _Job, task: _Task, node: _Node) -> None:
        """A task's current attempt completed on ``node``: DONE, its blob dropped.

        The caller gives its slot back (``FreeSlots.change``), once per frame of results.
        """
        task.state = TaskState.DONE  # ASSIGNED -> DONE, a legal move (_is_current checked ASSIGNED)
        del job.held[task.task_id]  # drops the task blob: results never need it again
        job.done.add(task.task_id)
        node.inflight.remove((job.job_id, task.task_id))
        node.tasks_done += 1

    def _end_job(
        self, job: _Job, outcome: JobOutcome, reason: str = "", task_id: int | None = None
    ) -> list[Action]:
        """End a started job, tell its nodes to drop it, and start a waiting job if the cluster is free."""
        actions: list[Action] = [JobEnded(job.controller_id, job.job_id, outcome, reason, task_id)]
        if outcome is not JobOutcome.DONE:
            actions += [CancelOnNode(node_id, job.job_id) for node_id in self._involved(job)]
        else:
            # Nodes keep a job's setup and functions until told: a Pool's job may idle for long.
            actions += [ReleaseOnNode(node_id, job.job_id) for node_id in self._involved(job)]
            self._jobs_done += 1
        for node_id in job.setup_sent_to:  # only these may hold its tasks
            node = self._nodes[node_id]
            mine = {pair for pair in node.inflight if pair[0] == job.job_id}
            if mine:
                node.inflight -= mine
                self._free.change(node_id, len(mine))
        del self._started[job.job_id]
        return actions + self._dispatch() + self._start_waiting()

    def _involved(self, job: _Job) -> list[str]:
        """Connected nodes that got the job's setup (so maybe its tasks), in join order."""
        return sorted(job.setup_sent_to, key=lambda node_id: self._nodes[node_id].joined)

    def _check_new_task(self, job: _Job, task_id: int, fn: int | None) -> None:
        where = f"task {task_id} of job {job.job_id}"
        if job.total_tasks is not None:
            raise ProtocolViolationError(f"{where} arrived after the job's input ended")
        if task_id < 0:
            raise ProtocolViolationError(f"{where} has a negative id; task ids start at 0")
        if task_id in job.held or task_id in job.done:
            raise ProtocolViolationError(f"{where} was already received; send each task id once")
        if job.credit <= 0:
            raise ProtocolViolationError(f"{where} arrived without credit; wait for a credit grant")
        if fn is not None and fn not in job.functions:
            raise ProtocolViolationError(f"{where} calls function {fn}, which was not sent; send FUNC first")


def _check_total(job: _Job, total_tasks: int) -> None:
    """Refuse an end of input that does not match the tasks actually received."""
    where = f"job {job.job_id}"
    if job.total_tasks is not None:
        raise ProtocolViolationError(f"{where} ended its input twice")
    if total_tasks != job.received():
        raise ProtocolViolationError(
            f"{where} ended its input at {total_tasks} tasks, but {job.received()} were received"
        )
    if job.max_task_id >= total_tasks:
        raise ProtocolViolationError(
            f"{where} ended its input at {total_tasks} tasks, but task ids must be "
            f"0..{total_tasks - 1} and task {job.max_task_id} was received"
        )


def _is_current(task: _Task, node_id: str, attempt: int) -> bool:
    """Only the attempt the task is assigned to right now may complete it."""
    return task.state is TaskState.ASSIGNED and task.node_id == node_id and task.attempt == attempt


def _lost_reason(task: _Task, how: str = "lost with its node") -> str:
    times = "time" if task.attempt == 1 else "times"
    return (
        f"task {task.task_id} was {how} {task.attempt} {times} (nodes: {', '.join(task.lost_on)}); giving up"
    )


def _require_at_least(name: str, value: int, least: int) -> None:
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")


def _node_status(node: _Node) -> dict[str, object]:
    return {
        "node_id": node.node_id,
        "slots": node.slots,
        "busy": len(node.inflight),
        "tasks_done": node.tasks_done,
    }


def _started_status(job: _Job) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "controller_id": job.controller_id,
        "label": job.label,
        "tasks_received": job.received(),
        "tasks_done": len(job.done),
        "tasks_failed": job.failed_tasks,
        "tasks_pending": len(job.pending),
        "tasks_assigned": len(job.held) - len(job.pending),
        "input_ended": job.total_tasks is not None,
        "submitted_at": job.submitted_at,
    }


def _queued_status(job: _Job) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "controller_id": job.controller_id,
        "label": job.label,
        "submitted_at": job.submitted_at,
    }
