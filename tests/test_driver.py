"""The controller's job driver, driven with frames in memory: no cluster, no sockets, no threads."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest
import tasks

from achilles_like.client.calls import DEFAULT_MAX_AHEAD
from achilles_like.client.driver import Batch, JobDriver, Outcomes
from achilles_like.client.results import IMapIterator
from achilles_like.client.sources import IterSource
from achilles_like.config import Settings
from achilles_like.errors import ClusterConnectionError, JobFailedError
from achilles_like.protocol import FrameDecoder
from achilles_like.protocol import messages as msg
from achilles_like.serialization import RemoteFailure, dumps, loads


class FakeConnection:
    """Stands in for a Connection: records what the driver sends, as typed messages."""

    def __init__(self) -> None:
        self.sent: list[msg.Message] = []
        self.routes: dict[int, Any] = {}
        self.closed = False
        self.settings = Settings()
        self._decoder = FrameDecoder()

    def send(self, *parts: bytes) -> None:
        self.sent += [msg.decode(frame) for frame in self._decoder.feed(b"".join(parts))]

    def route(self, ref: int, inbox: Any) -> None:
        self.routes[ref] = inbox

    def unroute(self, ref: int, job_id: int | None) -> None:
        self.routes.pop(ref, None)

    def take(self) -> list[msg.Message]:
        sent, self.sent = self.sent, []
        return sent


def frames(*messages: msg.Message) -> list[Any]:
    """Messages as the routed frames a driver's inbox receives."""
    decoder = FrameDecoder()
    return decoder.feed(b"".join(part for m in messages for part in m.encode()))


def make_driver(**options: Any) -> tuple[JobDriver, FakeConnection]:
    connection = FakeConnection()
    driver = JobDriver(connection, queue.SimpleQueue(), label="test", **options)  # type: ignore[arg-type]
    driver.submit()
    return driver, connection


def failure_at(index: int) -> RemoteFailure:
    try:
        raise tasks.CustomError("boom")
    except tasks.CustomError as error:
        return RemoteFailure.capture(error, index)


def test_submit_carries_the_ref_options_and_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """SUBMIT names the driver's ref, its options and its setup blob; the ref is routed to its inbox."""
    monkeypatch.delenv("ACHILLES_FORWARD_OUTPUT", raising=False)  # output comes back by default
    driver, connection = make_driver(setup_blob=b"setup", stop_on_failure=True, timeout=2.5, max_tasks=3)
    [submit] = connection.take()
    assert submit == msg.Submit(
        ref=driver.ref, label="test", timeout=2.5, maxtasks=3, stop=True, output=True, body=b"setup"
    )
    assert connection.routes[driver.ref] is driver.inbox


def test_the_first_task_goes_at_once_then_tasks_wait_for_credit() -> None:
    """The first task (and its function) leaves with the SUBMIT, by ref; later ones wait for CREDIT."""
    driver, connection = make_driver()
    connection.take()
    delivered: list[Outcomes] = []
    batches = [Batch(b"f", [i], delivered.append, i) for i in range(4)]
    source = _ListSource(batches)
    assert driver.feed([source]) is True
    early = connection.take()
    assert early == [
        msg.Func(job=0, fn=0, ref=driver.ref, body=b"f"),
        msg.Tasks(job=0, entries=[(0, 0, 0, dumps([0]))], ref=driver.ref),
    ]
    assert driver.feed([source]) is False  # no credit until the server grants some
    driver.handle(frames(msg.Queued(job=7, position=1, ref=driver.ref)))
    assert driver.feed([source]) is False  # queued: still no credit
    # The first grant includes the task sent ahead: 3 granted, 2 more may go.
    driver.handle(frames(msg.Started(job=7, ref=driver.ref), msg.Credit(job=7, n=3)))
    assert driver.feed([source]) is True
    [sent] = connection.take()  # every task there is credit for, in one frame
    assert isinstance(sent, msg.Tasks) and sent.job == 7
    assert [(task, loads(blob)) for task, _, _, blob in sent.entries] == [(1, [1]), (2, [2])]
    driver.handle(frames(msg.Credit(job=7, n=1)))
    driver.feed([source])
    [task] = connection.take()  # the function went already
    assert isinstance(task, msg.Tasks) and loads(task.entries[0][3]) == [3]


def test_results_reach_their_sinks_whole_or_per_item() -> None:
    """An all-good result is one list; a mixed one names its failing item by its index in the input."""
    driver, _ = make_driver()
    delivered: list[Outcomes] = []
    source = _ListSource(
        [Batch(b"f", [1, 2], delivered.append, 10), Batch(b"f", [3, 4], delivered.append, 12)]
    )
    driver.handle(frames(msg.Started(job=1), msg.Credit(job=1, n=2)))
    driver.feed([source])
    mixed = dumps([(True, 9), (False, failure_at(1))])
    driver.handle(frames(msg.Results(job=1, entries=[(1, 0, 0, mixed), (0, 0, 1, dumps([1, 4]))])))
    assert delivered[1] == Outcomes(True, [1, 4])
    (ok, nine), (failed, error) = delivered[0].items
    assert (ok, nine, failed, type(error)) == (True, 9, False, tasks.CustomError)
    assert "(input item 13)" in str(error.__cause__)
    assert driver.idle


def test_a_failed_job_fails_what_is_in_flight_naming_the_task_items() -> None:
    """ENDED failed with tasks in flight fails them with JobFailedError naming the lost task's items."""
    driver, connection = make_driver()
    delivered: list[Outcomes] = []
    driver.handle(frames(msg.Started(job=1), msg.Credit(job=1, n=1)))
    driver.feed([_ListSource([Batch(b"f", [5, 6, 7], delivered.append, 30)])])
    ended = msg.Ended(job=1, outcome="failed", reason="task 0 was lost 4 times", task=0)
    driver.handle(frames(ended))
    [outcomes] = delivered
    error = outcomes.first_failure()
    assert isinstance(error, JobFailedError)
    assert "task 0 was lost 4 times (input items 30..32)" in str(error)
    assert driver.ref not in connection.routes  # an ended job's frames are no longer routed


def test_running_and_withdrawal_reach_their_batch() -> None:
    """RUNNING calls a batch's on_running; withdraw() asks once, and WITHDRAWN settles it without a result."""
    driver, connection = make_driver(report_running=True)
    [submit] = connection.take()
    assert isinstance(submit, msg.Submit) and submit.running is True
    events: list[str] = []
    batches = [
        Batch(b"f", [i], lambda o: events.append("result"), on_running=lambda i=i: events.append(f"run {i}"))
        for i in range(2)
    ]
    driver.handle(frames(msg.Started(job=2), msg.Credit(job=2, n=2)))
    driver.feed([_ListSource(batches)])
    connection.take()
    driver.handle(frames(msg.Running(job=2, entries=[(0, 0)])))
    batches[1].on_withdrawn = lambda: events.append("withdrawn 1")
    driver.withdraw(batches[1])
    driver.withdraw(batches[1])  # asked once only
    assert connection.take() == [msg.Withdraw(job=2, task=1)]
    driver.handle(frames(msg.Withdrawn(job=2, task=1)))
    driver.handle(frames(msg.Results(job=2, entries=[(0, 0, 1, dumps([0]))])))
    assert events == ["run 0", "withdrawn 1", "result"]
    assert driver.idle
    driver.withdraw(batches[0])  # answered already: nothing to ask
    assert connection.take() == []


def test_a_batch_of_running_notices_reaches_each_batch() -> None:
    """One RUNNING frame for several tasks calls each one's on_running; an unknown task is ignored."""
    driver, connection = make_driver(report_running=True)
    connection.take()
    events: list[str] = []
    batches = [
        Batch(b"f", [i], lambda o: None, on_running=lambda i=i: events.append(f"run {i}")) for i in range(3)
    ]
    driver.handle(frames(msg.Started(job=2), msg.Credit(job=2, n=3)))
    driver.feed([_ListSource(batches)])
    connection.take()
    driver.handle(frames(msg.Running(job=2, entries=[(2, 0), (0, 0), (9, 0)])))
    assert events == ["run 2", "run 0"]


def test_cancel_is_sent_when_a_caller_abandons_its_job() -> None:
    """cancel() sends CANCEL for a live job and stops routing it; a lost connection raises."""
    driver, connection = make_driver()
    driver.handle(frames(msg.Started(job=4)))
    connection.take()
    driver.cancel()
    assert connection.take() == [msg.Cancel(job=4)]
    from achilles_like.client.connection import Lost

    with pytest.raises(ClusterConnectionError, match="gone"):
        driver.handle(Lost("gone"))


def test_lazy_input_is_pulled_only_within_its_memory_bound() -> None:
    """An endless input is pulled until max_ahead results are unconsumed, then waits until they are."""
    pulled: list[int] = []

    def endless() -> Any:
        n = 0
        while True:
            pulled.append(n)
            yield n
            n += 1

    results = IMapIterator(ordered=True)
    source = IterSource(b"f", endless(), 2, results, max_ahead=6)
    batches = [source.next_batch() for _ in range(5)]  # in flight: bounded by credit, not here
    assert [b.first_index for b in batches if b is not None] == [0, 2, 4, 6, 8]
    assert len(pulled) == 12  # five chunks, and one read ahead
    batches[1].sink(Outcomes(True, [20, 30]))  # out of order: held by the reorder buffer, still counted
    assert results.pop_ready() is None and results.unconsumed == 2
    batches[2].sink(Outcomes(True, [40, 50]))
    assert source.next_batch() is not None  # 4 unconsumed: under the bound
    batches[3].sink(Outcomes(True, [60, 70]))
    assert source.next_batch() is None  # 6 unconsumed: the bound
    assert len(pulled) == 14
    batches[0].sink(Outcomes(True, [0, 10]))
    assert [results.pop_ready() for _ in range(4)] == [(True, 0), (True, 10), (True, 20), (True, 30)]
    assert source.next_batch() is not None  # consumed: room again


def test_a_large_credit_keeps_more_than_max_ahead_tasks_in_flight() -> None:
    """Tasks in flight are not capped at max_ahead: 3,000 one-item tasks go out while no result is back."""
    results = IMapIterator(ordered=False)
    source = IterSource(b"f", iter(range(10_000)), 1, results, max_ahead=DEFAULT_MAX_AHEAD)
    batches = [source.next_batch() for _ in range(3000)]
    assert all(batch is not None for batch in batches) and DEFAULT_MAX_AHEAD < 3000
    for batch in batches[:DEFAULT_MAX_AHEAD]:
        assert batch is not None
        batch.sink(Outcomes(True, batch.items))
    assert source.next_batch() is None  # nobody consumes: the input is not pulled further
    for _ in range(DEFAULT_MAX_AHEAD // 2):
        results.next()
    assert source.next_batch() is not None


def test_a_feed_reads_no_further_source_once_its_credit_is_spent() -> None:
    """With 1,000 one-call sources queued and credit for two, a feed reads three of them, not all."""
    driver, connection = make_driver()
    driver.handle(frames(msg.Started(job=1), msg.Credit(job=1, n=2)))
    read = 0

    def queued() -> Iterator[_ListSource]:
        nonlocal read
        for i in range(1000):
            read += 1
            yield _ListSource([Batch(b"f", [i], lambda outcomes: None, i)])

    assert driver.feed(queued()) is True
    assert read == 3  # two sent; the third found no credit left
    sent = [m for m in connection.take() if isinstance(m, msg.Tasks)]
    assert [entry[0] for m in sent for entry in m.entries] == [0, 1]


def test_every_task_of_one_feed_leaves_in_one_write() -> None:
    """Three calls fed together (their function included) are one send: one wake-up of the reactor."""
    driver, connection = make_driver()
    connection.take()
    writes: list[int] = []
    record = connection.send
    connection.send = lambda *parts: (writes.append(len(parts)), record(*parts))  # type: ignore[method-assign]
    driver.handle(frames(msg.Started(job=1), msg.Credit(job=1, n=3)))
    sources = [_ListSource([Batch(b"f", [i], lambda outcomes: None, i)]) for i in range(3)]
    assert driver.feed(sources) is True
    assert len(writes) == 1
    func, tasks = connection.take()
    assert isinstance(func, msg.Func) and isinstance(tasks, msg.Tasks)
    assert [entry[0] for entry in tasks.entries] == [0, 1, 2]  # one TASK frame for all three


class _ListSource:
    def __init__(self, batches: list[Batch]) -> None:
        self.batches = list(batches)

    def next_batch(self) -> Batch | None:
        return self.batches.pop(0) if self.batches else None

    @property
    def exhausted(self) -> bool:
        return not self.batches

    @property
    def has_batch(self) -> bool:
        return bool(self.batches)

    def fail(self, error: BaseException) -> None:
        self.batches = []
