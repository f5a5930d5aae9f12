"""Races and interrupts in the controller engine, each found by review and pinned by a test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tasks
from conftest import status_of, target, wait_until

import achilles_like as al
from achilles_like import LocalCluster
from achilles_like.client import connection as connection_module
from achilles_like.client import shared
from achilles_like.frame_writer import FrameWriter


@pytest.fixture(scope="module")
def small() -> Iterator[LocalCluster]:
    """One server and one node of two processes for this module."""
    with LocalCluster(nodes=1, processes=2) as running:
        yield running


def test_an_interrupt_inside_send_does_not_wedge_the_shared_connection(
    small: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing between queuing bytes and waking the reactor must not stop every later send."""
    shared.close_all()
    assert al.map(tasks.square, [1], **target(small)) == [1]
    real_call_soon: Callable[..., Any] = connection_module.reactor_thread.call_soon
    calls = {"n": 0}

    def interrupted_once(function: Callable[..., Any], *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # as if Ctrl-C arrived just before the wake-up was scheduled
        real_call_soon(function, *args)

    monkeypatch.setattr(connection_module.reactor_thread, "call_soon", interrupted_once)
    # Every send queued for the reactor thread (as when the socket is busy), not sent directly.
    monkeypatch.setattr(FrameWriter, "send_direct", lambda self, data: 0)
    with pytest.raises(KeyboardInterrupt):
        al.map(tasks.square, [2], **target(small))
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(al.map(tasks.square, [3], **target(small))))
    worker.daemon = True
    worker.start()
    worker.join(20)
    assert outcome == [[9]], "the next map on the shared connection never completed"


def test_an_imap_waiting_for_its_input_does_not_block_other_jobs(small: LocalCluster) -> None:
    """While one thread's imap waits for its input, another thread's map still runs on the cluster."""
    shared.close_all()
    release = threading.Event()
    submitted = threading.Event()

    def waiting_input() -> Iterator[int]:
        submitted.set()  # its job is submitted: imap pulls its input only after SUBMIT
        release.wait(60)
        yield 1

    def consume() -> None:
        list(al.imap(tasks.square, waiting_input(), **target(small)))

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        assert submitted.wait(30)
        outcome: list[Any] = []
        other = threading.Thread(
            target=lambda: outcome.append(al.map(tasks.square, [3], **target(small))), daemon=True
        )
        other.start()
        other.join(20)
        assert outcome == [[9]], "a map stayed queued behind a started job that has sent nothing yet"
    finally:
        release.set()
        consumer.join(30)


def test_an_executor_whose_only_call_was_cancelled_does_not_block_other_jobs(small: LocalCluster) -> None:
    """An executor whose first future was cancelled before it was sent leaves the cluster to others."""
    executor = al.Executor(host=small.host, port=small.port, secret_key=small.secret_key)
    try:
        with executor._session._driving:  # hold the session thread back until the call is cancelled
            executor.submit(tasks.square, 1).cancel()
        wait_until(lambda: bool(status_of(small)["jobs"]), what="the executor's job to start")
        outcome: list[Any] = []
        other = threading.Thread(
            target=lambda: outcome.append(al.map(tasks.square, [3], **target(small))), daemon=True
        )
        other.start()
        other.join(20)
        assert outcome == [[9]], "a map stayed queued behind the executor's job, which sent nothing"
    finally:
        executor.shutdown()


def test_a_call_fed_while_a_lost_connection_breaks_the_pool_still_fails(small: LocalCluster) -> None:
    """A call a caller feeds while the session is failing the calls in flight gets an error, not a hang."""
    from achilles_like.client import reactor_thread
    from achilles_like.errors import ClusterConnectionError

    pool = al.Pool(host=small.host, port=small.port, secret_key=small.secret_key)
    late: list[Any] = []
    try:
        assert pool.apply(tasks.square, (2,)) == 4
        driver = pool._session._driver
        assert driver is not None
        real_fail_all = driver.fail_all

        def fail_all_then_a_caller_feeds(error: BaseException) -> None:
            real_fail_all(error)
            # Another caller's apply_async lands right now, between failing in-flight work and
            # marking the session broken.
            caller = threading.Thread(target=lambda: late.append(pool.apply_async(tasks.square, (3,))))
            caller.start()
            caller.join(10)

        driver.fail_all = fail_all_then_a_caller_feeds  # type: ignore[method-assign]
        transport = driver.connection._protocol.transport
        assert transport is not None
        reactor_thread.call_soon(transport.abortConnection)
        wait_until(lambda: bool(late), what="the late caller to submit")
        late[0].wait(20)
        assert late[0].ready(), "a call fed during the break never completed"
        with pytest.raises(ClusterConnectionError):
            late[0].get(0)
    finally:
        pool.terminate()


def test_a_started_job_that_sends_nothing_lets_the_queue_start_after_a_grace() -> None:
    """A started job with no task yet holds queued jobs back for FRESH_GRACE seconds, then not."""
    from achilles_like.scheduling.actions import GrantCredit, JobStarted
    from achilles_like.scheduling.scheduler import FRESH_GRACE, Scheduler

    s = Scheduler()
    s.node_joined("n1", 1)
    s.submit_job("a", b"f")
    s.submit_job("b", b"g")
    assert s.tick(100.0, 60.0) == []  # job 1 is fresh: job 2 waits
    assert s.tick(100.0 + FRESH_GRACE, 60.0) == [JobStarted("b", 2), GrantCredit("b", 2, 16)]
