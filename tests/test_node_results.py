"""A node gathers its workers' results into RESULT frames (no worker processes: a fake pool, a fake clock)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from achilles_like.config import Settings
from achilles_like.node import agent as agent_module
from achilles_like.node.agent import RESULT_DELAY, JobOptions, NodeAgent
from achilles_like.node.worker_pool import Outcome, WorkItem
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg


class FakePool:
    """Keeps what the agent submits; the test finishes items by calling the agent back."""

    def __init__(self, processes: int, deliver: Any, reactor: Any, on_output: Any = None) -> None:
        self.items: list[WorkItem] = []

    def submit(self, item: WorkItem) -> None:
        self.items.append(item)

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


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> tuple[NodeAgent, FakePool, FakeProtocol, Clock]:
    """An agent of 2 processes (8 slots: results leave by 4) with one job of 3 tasks submitted."""
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


def test_results_of_one_turn_leave_as_one_frame_once_the_job_has_nothing_left(node: Any) -> None:
    """Two results wait for the third; once the node holds nothing else of the job, all three leave as one."""
    agent, pool, protocol, clock = node
    finish(agent, pool.items[0])
    finish(agent, pool.items[1])
    clock.advance(0)
    assert protocol.sent == []  # the job still has a task here, and 2 < half the slots
    finish(agent, pool.items[2])
    clock.advance(0)
    assert protocol.sent == [
        msg.Results(job=1, entries=[(task, 1, 1, b"result-%d" % task) for task in range(3)])
    ]


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
