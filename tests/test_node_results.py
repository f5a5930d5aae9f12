"""A node gathers its workers' results into RESULT frames (no worker processes: a fake pool, a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from achilles_like.config import Settings
from achilles_like.node import agent as agent_module
from achilles_like.node.agent import (
    DEPTH_SAMPLES,
    DEPTH_WINDOW,
    IDLE_RESET,
    MAX_PREFETCH_PER_PROCESS,
    PREFETCH_PER_PROCESS,
    QUEUED_BYTES,
    QUEUED_WORK,
    RESULT_DELAY,
    JobOptions,
    NodeAgent,
    depth_for,
)
from achilles_like.node.worker_pool import Outcome, WorkItem
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg

SHORT_TASK = QUEUED_WORK / 32  # a task length that makes a node deep (a few tasks per process)


class FakePool:
    """Keeps what the agent submits; the test finishes items by calling the agent back."""

    def __init__(
        self, processes: int, deliver: Any, reactor: Any, on_output: Any = None, on_start: Any = None
    ) -> None:
        self.items: list[WorkItem] = []

    def submit(self, item: WorkItem) -> None:
        self.items.append(item)

    def submit_many(self, items: list[WorkItem]) -> None:
        self.items += items

    def withdraw(self, should_drop: Any) -> list[WorkItem]:
        dropped = [item for item in self.items if should_drop(item)]
        self.items = [item for item in self.items if not should_drop(item)]
        return dropped

    def cancel(self, should_drop: Any) -> None:
        self.items = [item for item in self.items if not should_drop(item)]


class FakeProtocol:
    """Records the messages the agent sends."""

    def __init__(self) -> None:
        self.sent: list[msg.Message] = []

    def send_message(self, message: msg.Message) -> None:
        self.sent.append(message)

    def send(self, data: bytes) -> None:
        self.sent += [msg.decode(frame) for frame in FrameDecoder().feed(data)]

    def send_parts(self, parts: list[bytes]) -> None:
        self.send(b"".join(parts))


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> tuple[NodeAgent, FakePool, FakeProtocol, Clock]:
    """An agent of 2 processes (shallow: results leave by 2) with one job of 3 tasks submitted."""
    pools: list[FakePool] = []

    def make_pool(*args: Any) -> FakePool:
        pools.append(FakePool(*args))
        return pools[-1]

    monkeypatch.setattr(agent_module, "WorkerPool", make_pool)
    clock = Clock()
    agent = NodeAgent(Settings(), clock, processes=2)
    protocol = FakeProtocol()
    agent.attach(protocol)  # type: ignore[arg-type]
    agent.add_job(1, b"setup", JobOptions())
    agent.add_function(1, 0, b"func")
    for task in range(3):
        agent.add_task(1, task, 1, 0, b"items")
    return agent, pools[0], protocol, clock


def finish(agent: NodeAgent, item: WorkItem, outcome: Outcome = Outcome.OK) -> None:
    """The worker pool reports one item's outcome."""
    agent._finished(item, outcome, b"result-%d" % item.task_id, "exit code -9")


def test_results_leave_together_at_half_the_slots_or_when_the_job_has_nothing_left(node: Any) -> None:
    """A lone result waits; two (half the 4 slots) leave as one frame; the job's last leaves at once."""
    agent, pool, protocol, clock = node
    finish(agent, pool.items[0])
    clock.advance(0)
    assert protocol.sent == []  # the job still has tasks here, and 1 < half the slots
    finish(agent, pool.items[1])
    clock.advance(0)
    assert protocol.sent == [
        msg.Results(job=1, entries=[(task, 1, 1, b"result-%d" % task) for task in (0, 1)])
    ]
    finish(agent, pool.items[2])
    clock.advance(0)
    assert protocol.sent[1:] == [msg.Results(job=1, entries=[(2, 1, 1, b"result-2")])]


def test_a_gathered_result_waits_at_most_the_result_delay(node: Any) -> None:
    """A result held back for company leaves within RESULT_DELAY even if no other task finishes."""
    agent, pool, protocol, clock = node
    finish(agent, pool.items[0])
    clock.advance(RESULT_DELAY / 2)
    assert protocol.sent == []
    clock.advance(RESULT_DELAY / 2)
    assert [type(m) for m in protocol.sent] == [msg.Results]


def test_a_lost_task_sends_what_finished_before_it_first(node: Any) -> None:
    """LOST never overtakes a result gathered before it."""
    agent, pool, protocol, _ = node
    finish(agent, pool.items[0])
    finish(agent, pool.items[1], Outcome.LOST)
    assert [type(m) for m in protocol.sent] == [msg.Results, msg.Lost]


def test_a_cancelled_job_sends_none_of_its_gathered_results(node: Any) -> None:
    """CANCEL drops the job's results that were still waiting to be sent."""
    agent, pool, protocol, clock = node
    finish(agent, pool.items[0])
    agent.cancel(1)
    clock.advance(RESULT_DELAY)
    assert protocol.sent == []


def test_short_tasks_deepen_the_node_and_long_ones_make_it_shallow_again(node: Any) -> None:
    """Short tasks make the node offer about QUEUED_WORK of them per process; slow ones bring it back."""
    agent, pool, protocol, clock = node
    for task in range(3, 3 + DEPTH_SAMPLES * 2):
        agent.add_task(1, task, 1, 0, b"items")
    for item in pool.items[:-1]:  # the last stays held: the node is never idle here
        clock.advance(SHORT_TASK / 10)
        finish(agent, item)
    deep = 2 * depth_for(2 * SHORT_TASK / 10, len(b"items"))
    assert deep > 2 * PREFETCH_PER_PROCESS
    assert msg.Slots(slots=deep) in protocol.sent and agent.slots == deep
    protocol.sent.clear()
    agent.add_task(1, 1000, 1, 0, b"items")
    clock.advance(DEPTH_WINDOW)
    finish(agent, pool.items[-2])  # one task in a whole window: long
    assert msg.Slots(slots=2 * PREFETCH_PER_PROCESS) in protocol.sent


def test_a_node_left_with_nothing_goes_back_to_shallow_slots(node: Any) -> None:
    """Deepened by short tasks, a node left with no task for IDLE_RESET offers the shallow slots again."""
    agent, pool, protocol, clock = node
    for task in range(3, 3 + DEPTH_SAMPLES * 2):
        agent.add_task(1, task, 1, 0, b"items")
    for item in pool.items[:-1]:
        clock.advance(SHORT_TASK / 10)
        finish(agent, item)
    deep = 2 * depth_for(2 * SHORT_TASK / 10, len(b"items"))
    assert agent.slots == deep > 2 * PREFETCH_PER_PROCESS
    finish(agent, pool.items[-1])
    clock.advance(IDLE_RESET / 2)
    agent.add_task(1, 1000, 1, 0, b"items")  # a drained pipeline, refilled in time: still deep
    clock.advance(IDLE_RESET)
    assert agent.slots == deep
    finish(agent, pool.items[-1])
    clock.advance(IDLE_RESET)
    assert agent.slots == 2 * PREFETCH_PER_PROCESS
    assert protocol.sent[-1] == msg.Slots(slots=2 * PREFETCH_PER_PROCESS)


def test_withdrawing_the_job_s_last_held_tasks_lets_its_gathered_results_leave(
    node: tuple[NodeAgent, FakePool, FakeProtocol, Clock],
) -> None:
    """Results wait while the job has tasks on the node; once the rest are withdrawn they leave at once."""
    agent, pool, protocol, clock = node
    first = pool.items[0]
    finish(agent, first)
    clock.advance(0)
    assert not any(isinstance(m, msg.Results) for m in protocol.sent)
    agent.withdraw(1, 1, 1)
    agent.withdraw(1, 2, 1)
    agent.withdraw(1, 2, 1)  # gone already: no second WITHDRAWN
    clock.advance(0)
    withdrawn = [m.task for m in protocol.sent if isinstance(m, msg.Withdrawn)]
    results = [entry[0] for m in protocol.sent if isinstance(m, msg.Results) for entry in m.entries]
    assert (withdrawn, results) == ([1, 2], [0])


def test_the_depth_holds_about_queued_work_seconds_and_at_most_queued_bytes() -> None:
    """Depth doubles while the queued work and bytes stay within bounds, from 2 up to the maximum."""
    assert depth_for(0.0, 0) == MAX_PREFETCH_PER_PROCESS
    assert depth_for(QUEUED_WORK, 0) == PREFETCH_PER_PROCESS
    assert depth_for(QUEUED_WORK / 16, 0) == 16
    assert depth_for(QUEUED_WORK / 20, 0) == 16  # a power of two, within the bound
    assert depth_for(0.0, QUEUED_BYTES / 8) == 8
    assert depth_for(0.0, QUEUED_BYTES) == PREFETCH_PER_PROCESS  # large arguments: never deep
    assert depth_for(QUEUED_WORK / 4, QUEUED_BYTES / 64) == 4  # the tighter bound wins


def test_large_task_bodies_keep_the_node_shallow(node: Any) -> None:
    """Instant tasks with bodies of QUEUED_BYTES / 4 make the node hold four per process, not the maximum."""
    agent, pool, _, _ = node
    body = bytes(QUEUED_BYTES // 4)
    for task in range(3, 3 + DEPTH_SAMPLES * 2):
        agent.add_task(1, task, 1, 0, body)
    for item in pool.items[:-1]:
        finish(agent, item)
    assert agent.slots == 2 * 4


def test_running_notices_leave_with_the_next_results_or_within_the_result_delay(node: Any) -> None:
    """RUNNING waits for company: it leaves ahead of the next results, or alone after RESULT_DELAY."""
    agent, pool, protocol, clock = node
    first, second, third = pool.items[:3]
    agent._started(first)
    clock.advance(0)
    assert protocol.sent == []
    agent._started(second)
    finish(agent, first)
    finish(agent, second)  # half the slots: the results leave at the end of the turn
    clock.advance(0)
    # Both notices in one frame, ahead of the results.
    assert protocol.sent[0] == msg.Running(job=1, entries=[(first.task_id, 1), (second.task_id, 1)])
    assert [type(m) for m in protocol.sent] == [msg.Running, msg.Results]
    protocol.sent.clear()
    agent._started(third)
    clock.advance(RESULT_DELAY)
    assert protocol.sent == [msg.Running(job=1, entries=[(third.task_id, 1)])]


def test_a_cancelled_job_sends_none_of_its_running_notices(node: Any) -> None:
    """CANCEL drops the job's notices still waiting, as it drops its results."""
    agent, pool, protocol, clock = node
    agent._started(pool.items[0])
    agent.cancel(1)
    clock.advance(RESULT_DELAY)
    assert protocol.sent == []
