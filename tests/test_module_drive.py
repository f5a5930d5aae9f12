"""The module functions' driving loop against a fake server in memory: writes, the memory bound, no stalls."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from achilles_like.client.api import _drive
from achilles_like.client.driver import JobDriver
from achilles_like.client.results import IMapIterator
from achilles_like.client.sources import IterSource
from achilles_like.config import Settings
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg
from achilles_like.serialization import dumps, loads


class _EchoServer:
    """A connection whose server runs every task at once (``x + 1``) and grants its credit back.

    Its answers to one write arrive as one inbox event, as frames read together do,
    or with ``one_by_one`` each task's result and credit as an event of its own (a
    busy cluster). Waiting for an event when none will come fails the test.
    """

    def __init__(self, window: int, one_by_one: bool = False) -> None:
        self.window = window
        self.one_by_one = one_by_one
        self.closed = False
        self.settings = Settings()
        self.writes: list[list[str]] = []  # the verbs of each write
        self.submits: list[msg.Submit] = []
        self._decoder = FrameDecoder()
        self._inbox: queue.SimpleQueue[Any] | None = None

    def route(self, ref: int, inbox: queue.SimpleQueue[Any]) -> None:
        self._inbox = inbox

    def unroute(self, ref: int, job_id: int | None) -> None:
        pass

    def send(self, *parts: bytes) -> None:
        sent = [msg.decode(frame) for frame in self._decoder.feed(b"".join(parts))]
        self.writes.append([message.VERB for message in sent])
        replies: list[msg.Message] = []
        for message in sent:
            replies += self._answer(message)
        events = [replies[i : i + 2] for i in range(0, len(replies), 2)] if self.one_by_one else [replies]
        for event in events:
            if event and self._inbox is not None:
                encoded = b"".join(part for reply in event for part in reply.encode())
                self._inbox.put(FrameDecoder().feed(encoded))

    def _answer(self, message: msg.Message) -> list[msg.Message]:
        if isinstance(message, msg.Submit):
            self.submits.append(message)
            if message.whole:  # as the server: nothing until the result, STARTED leading it
                return []
            return [msg.Started(job=1, ref=message.ref), msg.Credit(job=1, n=self.window)]
        if isinstance(message, msg.Tasks):
            replies: list[msg.Message] = []
            if self.submits[-1].whole:
                replies.append(msg.Started(job=1, ref=self.submits[-1].ref))
            for task, _, _, body in message.entries:
                entry = (task, 0, 1, dumps([x + 1 for x in loads(body)]))
                replies += [msg.Results(job=1, entries=[entry]), msg.Credit(job=1, n=1)]
            return replies
        if isinstance(message, msg.End):
            return [msg.Ended(job=1, outcome="done")]
        return []

    def next_event(self, inbox: queue.SimpleQueue[Any]) -> Any:
        try:
            return inbox.get_nowait()
        except queue.Empty:
            pytest.fail("the driver waits for an event that will never come")


def _run(
    items: list[int], chunksize: int, window: int, max_ahead: int, one_by_one: bool = False
) -> tuple[list[int], _EchoServer]:
    server = _EchoServer(window, one_by_one)
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    driver = JobDriver(server, inbox, label="test", stop_on_failure=True)  # type: ignore[arg-type]
    results = IMapIterator(ordered=True)
    results.stop_at_failure = True
    source = IterSource(b"f", iter(items), chunksize, results, max_ahead)
    return list(_drive(driver, source, results)), server


def test_a_one_item_map_is_one_write() -> None:
    """SUBMIT, the function, the task and END of a one-item map leave in a single write."""
    values, server = _run([1], chunksize=1, window=4, max_ahead=16)
    assert values == [2]
    assert server.writes == [["SUBMIT", "FUNC", "TASK", "END"]]
    assert server.submits[0].whole  # so the server wakes this process only with the result


def test_a_job_with_more_input_than_its_first_write_is_not_whole() -> None:
    """A SUBMIT whose END does not go with it says whole=0: its controller needs STARTED and CREDIT."""
    values, server = _run([1, 2, 3], chunksize=1, window=4, max_ahead=16)
    assert values == [2, 3, 4]
    assert [submit.whole for submit in server.submits] == [False]


def test_results_beyond_the_memory_bound_in_one_wake_up_do_not_stall_the_job() -> None:
    """More results than the bound arriving together throttle the input only until they are consumed."""
    values, _ = _run(list(range(1000)), chunksize=10, window=32, max_ahead=20)
    assert values == [x + 1 for x in range(1000)]


def test_freed_credit_is_gathered_into_fewer_writes() -> None:
    """With most of the window in flight, credit freed by results waits until a quarter of it can go."""
    values, server = _run(list(range(400)), chunksize=1, window=16, max_ahead=1024, one_by_one=True)
    assert values == [x + 1 for x in range(400)]
    task_writes = [verbs for verbs in server.writes if "TASK" in verbs]
    assert len(task_writes) < 400 // 4
